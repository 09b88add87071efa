"""The fleet service's component registry, served from memory over loopback for device agent tests: the ``registry``
fixture (``/v1/components/...``, ``/v1/artifacts/...``, each artifact's absolute URI, Digest and Algorithm added the way the
service adds them), and recipes and job documents to put in it. conftest.py loads it as a plugin: the fixture is
there for every test."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from edgekit.mqtt.payloads import JobDocument

# --------------------------------------------------------------------------- the registry over loopback


class Registry:
    """Recipes and artifact bytes; ``corrupt[file]`` = how many more downloads of it get a flipped byte (-1: all).

    It stands in for the fleet service's registry (same paths, same Digest and Algorithm) so that an agent test can
    corrupt the Nth download of one file and count every request; the service's own registry serves the agents of
    tests/fleet (test_fleet_e2e, test_fleet_registry)."""

    def __init__(self) -> None:
        self.components: dict[str, dict[str, tuple[dict[str, Any], dict[str, bytes]]]] = {}
        self.corrupt: dict[str, int] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.base = ""
        self._lock = threading.Lock()

    def publish(self, recipe: dict[str, Any], files: dict[str, bytes] | None = None) -> None:
        name, version = recipe["ComponentName"], recipe["ComponentVersion"]
        self.components.setdefault(name, {})[version] = (copy.deepcopy(recipe), dict(files or {}))

    def recipe_json(self, name: str, version: str) -> dict[str, Any]:
        recipe, files = self.components[name][version]
        recipe = copy.deepcopy(recipe)
        for manifest in recipe.get("Manifests", []):
            for art in manifest.get("Artifacts", []):
                file = art["URI"].rsplit("/", 1)[-1]
                art["URI"] = f"{self.base}/v1/artifacts/{name}/{version}/{file}"
                art["Digest"] = base64.b64encode(hashlib.sha256(files[file]).digest()).decode()
                art["Algorithm"] = "SHA-256"
        return recipe

    def artifact(self, name: str, version: str, file: str) -> bytes:
        data = self.components[name][version][1][file]
        with self._lock:
            left = self.corrupt.get(file, 0)
            if left:
                self.corrupt[file] = left - 1 if left > 0 else left
                return bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    def downloads(self, file: str) -> int:
        return sum(1 for path, _ in self.requests if path.startswith("/v1/artifacts/") and path.endswith("/" + file))


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, code: int, body: bytes, kind: str = "application/json") -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        reg = self.server.registry
        reg.requests.append((self.path, self.headers.get("X-Edgekit-Thing")))
        parts = [urllib.parse.unquote(p) for p in urllib.parse.urlparse(self.path).path.split("/") if p]
        try:
            if parts[:2] == ["v1", "components"] and len(parts) == 3 and parts[2] in reg.components:
                body = {"name": parts[2], "versions": sorted(reg.components[parts[2]])}
                return self._send(200, json.dumps(body).encode())
            if parts[:2] == ["v1", "components"] and len(parts) == 5 and parts[4] == "recipe":
                return self._send(200, json.dumps(reg.recipe_json(parts[2], parts[3])).encode())
            if parts[:2] == ["v1", "artifacts"] and len(parts) == 5:
                return self._send(200, reg.artifact(parts[2], parts[3], parts[4]), "application/octet-stream")
        except KeyError:
            pass
        self._send(404, b'{"message": "not found"}')


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    registry: Registry


@pytest.fixture
def registry() -> Iterator[Registry]:
    reg = Registry()
    server = _Server(("127.0.0.1", 0), _Handler)
    server.registry = reg
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    reg.base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield reg
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# --------------------------------------------------------------------------- recipes and job documents


def recipe(
    name: str,
    version: str = "1.0.0",
    lifecycle: dict[str, Any] | None = None,
    *,
    deps: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    r: dict[str, Any] = {"RecipeFormatVersion": "2020-01-25", "ComponentName": name, "ComponentVersion": version}
    if config is not None:
        r["ComponentConfiguration"] = {"DefaultConfiguration": config}
    if deps:
        r["ComponentDependencies"] = {n: {"VersionRequirement": v, "DependencyType": "HARD"} for n, v in deps.items()}
    manifest: dict[str, Any] = {"Platform": {"os": "linux"}, "Lifecycle": lifecycle or {}}
    if artifacts:
        manifest["Artifacts"] = artifacts
    r["Manifests"] = [manifest]
    return r


def job(
    deployment_id: str,
    components: dict[str, str | dict[str, Any]],
    *,
    target: str = "thinggroup/line",
    policy: str = "ROLLBACK",
    created: int | None = None,
) -> JobDocument:
    specs = {n: ({"version": v} if isinstance(v, str) else v) for n, v in components.items()}
    doc: dict[str, Any] = {"deploymentId": deployment_id, "target": target, "components": specs, "failureHandlingPolicy": policy}
    if created is not None:
        doc["creationTimestamp"] = created
    return JobDocument.model_validate(doc)
