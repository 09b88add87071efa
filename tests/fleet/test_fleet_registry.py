"""The local fleet's registry (publish_local) and its device-facing HTTP API, over real loopback HTTP."""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import write_model_build

from edgekit.atomic import install_dir
from edgekit.errors import PublishError, RecipeError
from edgekit.fleet import ComponentConflictError, FakeClock, FleetHttpServer, FleetState, NotFoundError, Registry, publish_local
from edgekit.fleet.http import THING_HEADER

NAME = "com.example.Detector"


def write_build(
    root: Path,
    name: str = NAME,
    version: str = "1.0.0",
    files: dict[str, bytes] | None = None,
    run: str = "python3 -u {artifacts:decompressedPath}/model/run.py",
    skip_files: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A packaged build whose component runs the model's run.py (helpers.write_model_build)."""
    return write_model_build(root, name, version, files, run=run, skip_files=skip_files)


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.fixture
def state(tmp_path: Path) -> Iterator[FleetState]:
    with FleetState(tmp_path / "fleet.db") as s:
        yield s


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def store_entries(store: Path) -> list[str]:
    return sorted(p.relative_to(store).as_posix() for p in store.rglob("*")) if store.exists() else []


# --------------------------------------------------------------------------- publish_local


def test_publish_adds_digests_and_stores_artifacts(tmp_path: Path, state: FleetState, store: Path) -> None:
    big = bytes(range(256)) * 5000
    write_build(tmp_path / "build", files={"model.zip": big, "labels.txt": b"cat\ndog\n"})
    result = publish_local(tmp_path / "build", state, store, clock=FakeClock(1000.0))

    assert [(c.name, c.version, c.status) for c in result] == [(NAME, "1.0.0", "published")]
    recipe = Registry(state, store).recipe(NAME, "1.0.0")
    first, second = recipe["Manifests"]
    assert [(a["Digest"], a["Algorithm"]) for a in first["Artifacts"]] == [
        (b64sha(big), "SHA-256"),
        (b64sha(b"cat\ndog\n"), "SHA-256"),
    ]
    assert second["Artifacts"][0]["Digest"] == b64sha(big)  # every manifest naming the file gets it
    assert (store / NAME / "1.0.0" / "model.zip").read_bytes() == big
    records = {a.file: a for a in state.artifacts(NAME, "1.0.0")}
    assert records["model.zip"].sha256 == hashlib.sha256(big).hexdigest()
    assert records["model.zip"].size == len(big)
    assert state.get_component(NAME, "1.0.0").published_at == 1000.0  # type: ignore[union-attr]
    assert not [p for p in store.iterdir() if p.name.startswith(".")]  # no staging left


def test_publish_is_idempotent(tmp_path: Path, state: FleetState, store: Path) -> None:
    write_build(tmp_path / "build")
    publish_local(tmp_path / "build", state, store, clock=FakeClock(1000.0))
    again = publish_local(tmp_path / "build", state, store, clock=FakeClock(2000.0))
    assert [c.status for c in again] == ["unchanged"]
    assert again[0].recipe == Registry(state, store).recipe(NAME, "1.0.0")
    assert state.get_component(NAME, "1.0.0").published_at == 1000.0  # type: ignore[union-attr]


@pytest.mark.parametrize("change", ["bytes", "recipe"])
def test_republishing_a_version_with_other_content_is_refused(
    tmp_path: Path, state: FleetState, store: Path, change: str
) -> None:
    write_build(tmp_path / "build", files={"model.zip": b"v1"})
    publish_local(tmp_path / "build", state, store)
    if change == "bytes":
        write_build(tmp_path / "build", files={"model.zip": b"v1 but different"})
    else:
        write_build(tmp_path / "build", files={"model.zip": b"v1"}, run="python3 other.py")
    with pytest.raises(ComponentConflictError, match="--version NEXT_PATCH --state"):
        publish_local(tmp_path / "build", state, store)
    assert (store / NAME / "1.0.0" / "model.zip").read_bytes() == b"v1"
    assert Registry(state, store).recipe(NAME, "1.0.0")["Manifests"][0]["Artifacts"][0]["Digest"] == b64sha(b"v1")


def test_missing_artifact_publishes_nothing(tmp_path: Path, state: FleetState, store: Path) -> None:
    write_build(tmp_path / "build", name="com.example.A")
    write_build(tmp_path / "build", name="com.example.B", skip_files=("model.zip",))
    with pytest.raises(PublishError, match=r"artifact 'model.zip' is missing"):
        publish_local(tmp_path / "build", state, store)
    assert state.components() == {}
    assert store_entries(store) == []


def test_failure_while_installing_rolls_back_every_component(
    tmp_path: Path, state: FleetState, store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_build(tmp_path / "build", name="com.example.A")
    write_build(tmp_path / "build", name="com.example.B")
    calls: list[Path] = []

    def failing(staged: Path, final: Path) -> None:
        calls.append(final)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        install_dir(staged, final)

    # a disk that fills up at the second component, staged: a real full disk needs a filesystem mounted for the test
    monkeypatch.setattr("edgekit.fleet.component_registry.install_dir", failing)
    with pytest.raises(OSError, match="No space"):
        publish_local(tmp_path / "build", state, store)
    assert state.components() == {}
    assert [p for p in store_entries(store) if "/" in p] == []  # A's folder was put in place, then removed
    monkeypatch.undo()
    assert [c.status for c in publish_local(tmp_path / "build", state, store)] == ["published", "published"]


def test_invalid_recipe_is_refused_before_anything_is_written(tmp_path: Path, state: FleetState, store: Path) -> None:
    write_build(tmp_path / "build", name="com.example.Good")
    recipe = write_build(tmp_path / "build", name="com.example.Bad")
    recipe["Manifests"][0]["Lifecycle"] = {"Run": "a", "Startup": "b"}  # exclusive steps
    (tmp_path / "build" / "recipes" / "com.example.Bad-1.0.0.json").write_text(json.dumps(recipe))
    with pytest.raises(RecipeError, match="Run and Startup"):
        publish_local(tmp_path / "build", state, store)
    assert state.components() == {}
    assert store_entries(store) == []


def test_an_orphan_folder_from_a_crash_is_invisible_and_replaced(tmp_path: Path, state: FleetState, store: Path) -> None:
    orphan = store / NAME / "1.0.0"
    orphan.mkdir(parents=True)
    (orphan / "model.zip").write_bytes(b"half-written by a killed publish")
    registry = Registry(state, store)
    with pytest.raises(NotFoundError):
        registry.artifact(NAME, "1.0.0", "model.zip")
    write_build(tmp_path / "build", files={"model.zip": b"the real bytes"})
    publish_local(tmp_path / "build", state, store)
    _, path = registry.artifact(NAME, "1.0.0", "model.zip")
    assert path.read_bytes() == b"the real bytes"


def test_empty_build_folder_is_an_error(tmp_path: Path, state: FleetState, store: Path) -> None:
    with pytest.raises(PublishError, match="edgekit package"):
        publish_local(tmp_path / "nothing", state, store)


# --------------------------------------------------------------------------- the HTTP API


@pytest.fixture
def server(tmp_path: Path, state: FleetState, store: Path) -> Iterator[FleetHttpServer]:
    for version, data in [("1.0.0", b"one"), ("1.10.0", bytes(range(256)) * 4096), ("1.2.0", b"one-two")]:
        write_build(tmp_path / "build", version=version, files={"model.zip": data})
    publish_local(tmp_path / "build", state, store)
    with FleetHttpServer(Registry(state, store)) as srv:
        yield srv


def get(srv: FleetHttpServer, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_versions_are_listed_in_semver_order(server: FleetHttpServer) -> None:
    with urllib.request.urlopen(f"{server.url}/v1/components/{NAME}", timeout=10) as resp:
        assert resp.headers["Content-Type"] == "application/json"
        assert json.load(resp) == {"name": NAME, "versions": ["1.0.0", "1.2.0", "1.10.0"]}


def test_recipe_points_at_this_server_and_its_digests_match_the_downloads(server: FleetHttpServer) -> None:
    with urllib.request.urlopen(f"{server.url}/v1/components/{NAME}/1.10.0/recipe", timeout=10) as resp:
        recipe = json.load(resp)
    assert recipe["ComponentVersion"] == "1.10.0"
    artifact = recipe["Manifests"][0]["Artifacts"][0]
    assert artifact["URI"] == f"http://127.0.0.1:{server.port}/v1/artifacts/{NAME}/1.10.0/model.zip"
    assert artifact["Algorithm"] == "SHA-256"
    with urllib.request.urlopen(artifact["URI"], timeout=10) as resp:
        data = resp.read()
        assert int(resp.headers["Content-Length"]) == len(data) == 256 * 4096
    assert b64sha(data) == artifact["Digest"]


def test_unknown_things_are_404_json(server: FleetHttpServer) -> None:
    for path in [
        "/v1/components/com.example.Nope",
        f"/v1/components/{NAME}/9.9.9/recipe",
        f"/v1/artifacts/{NAME}/1.0.0/nope.zip",
        f"/v1/artifacts/{NAME}/9.9.9/model.zip",
        "/v2/whatever",
        "/",
    ]:
        status, headers, body = get(server, path)
        assert status == 404, path
        assert headers["Content-Type"] == "application/json"
        assert "error" in json.loads(body)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/artifacts/../../../etc/passwd",
        f"/v1/artifacts/{NAME}/1.0.0/..%2F..%2F..%2Ffleet.db",
        f"/v1/artifacts/{NAME}/%2e%2e/model.zip",
        f"/v1/artifacts/{NAME}/1.0.0/..%5Cfleet.db",
        "/v1/components/..%2F..%2Fetc",
    ],
)
def test_path_traversal_is_refused(server: FleetHttpServer, path: str) -> None:
    status, _, body = get(server, path)
    assert status == 400
    assert "refused path" in json.loads(body)["error"]


def test_a_symlink_out_of_the_store_is_not_followed(tmp_path: Path, server: FleetHttpServer, store: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("not for devices")
    target = store / NAME / "1.0.0" / "model.zip"
    target.unlink()
    target.symlink_to(secret)
    status, _, _ = get(server, f"/v1/artifacts/{NAME}/1.0.0/model.zip")
    assert status == 404


def test_only_get_is_allowed(server: FleetHttpServer) -> None:
    req = urllib.request.Request(f"{server.url}/v1/components/{NAME}", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=10)
    info.value.close()
    assert info.value.code == 405


def test_corrupt_downloads_for_one_thing(server: FleetHttpServer) -> None:
    path = f"/v1/artifacts/{NAME}/1.2.0/model.zip"
    server.corrupt_downloads("dev-1", 1)
    assert get(server, path, {THING_HEADER: "dev-2"})[2] == b"one-two"  # another device is not affected
    assert get(server, path)[2] == b"one-two"  # nor a request naming no device
    status, headers, corrupted = get(server, path, {THING_HEADER: "dev-1"})
    assert status == 200 and int(headers["Content-Length"]) == len(corrupted) == len(b"one-two")
    assert bytes(b ^ 0xFF for b in corrupted) == b"one-two"
    assert b64sha(corrupted) != b64sha(b"one-two")
    assert get(server, path, {THING_HEADER: "dev-1"})[2] == b"one-two"  # only the next one
    assert server.pending_corruptions() == 0


def test_corrupt_downloads_for_any_thing(server: FleetHttpServer) -> None:
    path = f"/v1/artifacts/{NAME}/1.0.0/model.zip"
    server.corrupt_downloads(None, 2)
    bodies = [get(server, path, {THING_HEADER: f"dev-{i}"})[2] for i in range(3)]
    assert bodies[0] == bodies[1] == bytes(b ^ 0xFF for b in b"one")
    assert bodies[2] == b"one"


def test_server_stops_and_frees_its_port(tmp_path: Path, state: FleetState, store: Path) -> None:
    srv = FleetHttpServer(Registry(state, store)).start()
    port = srv.port
    srv.stop()
    with pytest.raises(OSError):
        http.client.HTTPConnection("127.0.0.1", port, timeout=2).request("GET", "/")


# --------------------------------------------------------------------------- a device's round trip


def test_a_device_round_trip_with_a_corrupted_download(tmp_path: Path, state: FleetState, store: Path) -> None:
    """Job → recipe over HTTP → download → digest check; the corrupted download fails with ARTIFACT_CHECKSUM_MISMATCH."""
    from edgekit.fleet import FleetService

    write_build(tmp_path / "build", files={"model.zip": b"weights" * 1000})
    publish_local(tmp_path / "build", state, store)
    svc = FleetService(state, FakeClock())
    for thing in ("dev-1", "dev-2"):
        svc.register_thing(thing, "rasp4b", {"os": "linux", "architecture": "aarch64"}, ["line-1"])
    job = svc.create_deployment({"targetArn": "thinggroup/line-1", "components": {NAME: {"componentVersion": "1.0.0"}}})
    svc.notify_due()

    with FleetHttpServer(Registry(state, store)) as srv:
        srv.corrupt_downloads("dev-2", 1)
        for thing in ("dev-1", "dev-2"):
            execution = svc.describe(thing)
            assert execution is not None and execution.job_document is not None
            svc.update_execution(thing, job, "IN_PROGRESS", expected_version=execution.version_number)
            [(name, component)] = execution.job_document.components.items()
            _, _, body = get(srv, f"/v1/components/{name}/{component.version}/recipe")
            artifact = json.loads(body)["Manifests"][0]["Artifacts"][0]
            request = urllib.request.Request(artifact["URI"], headers={THING_HEADER: thing})
            with urllib.request.urlopen(request, timeout=10) as resp:
                ok = b64sha(resp.read()) == artifact["Digest"]
            details = {"detailed-deployment-status": "SUCCESSFUL"} if ok else {"error-code": "ARTIFACT_CHECKSUM_MISMATCH"}
            svc.update_execution(thing, job, "SUCCEEDED" if ok else "FAILED", details)

    assert {e.thing: (e.status, e.status_details) for e in state.executions(deployment_id=job)} == {
        "dev-1": ("SUCCEEDED", {"detailed-deployment-status": "SUCCESSFUL"}),
        "dev-2": ("FAILED", {"error-code": "ARTIFACT_CHECKSUM_MISMATCH"}),
    }
    assert svc.deployment(job).status == "COMPLETED"


def test_idle_connections_are_closed_and_connections_are_bounded(tmp_path: Path, state: FleetState, store: Path) -> None:
    write_build(tmp_path / "build", version="1.0.0", files={"model.zip": b"one"})
    publish_local(tmp_path / "build", state, store)
    with FleetHttpServer(Registry(state, store), read_timeout_s=0.5, max_connections=2) as srv:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(2)]  # say nothing
        try:
            deadline = time.monotonic() + 10  # only catches a hang
            while srv.active_connections < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert srv.active_connections == 2
            extra = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            with extra:
                assert extra.recv(1024).startswith(b"HTTP/1.1 503 ")  # refused at once, no thread of its own
            assert srv.refused == 1
            for sock in idle:  # the server hangs up on a silent client after its read timeout
                assert sock.recv(1024) == b""
        finally:
            for sock in idle:
                sock.close()
        status, _, body = get(srv, f"/v1/components/{NAME}")  # the slots are free again
        assert status == 200 and json.loads(body)["versions"] == ["1.0.0"]


def test_event_streams_have_their_own_budget(tmp_path: Path, state: FleetState, store: Path) -> None:
    """Issue 19: 512 open /api/events streams made every device download get 503."""
    write_build(tmp_path / "build", version="1.0.0", files={"model.zip": b"one"})
    publish_local(tmp_path / "build", state, store)
    with FleetHttpServer(Registry(state, store), max_connections=4, max_event_streams=6) as srv:
        streams = []
        try:
            for _ in range(8):
                sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                sock.sendall(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
                streams.append(sock)
            heads = [sock.recv(4096) for sock in streams]
            assert sum(h.startswith(b"HTTP/1.1 200 ") for h in heads) == 6
            assert sum(h.startswith(b"HTTP/1.1 503 ") for h in heads) == 2 and srv.refused_streams == 2
            for _ in range(3):  # the devices' API answers with six pages open
                status, _, body = get(srv, f"/v1/components/{NAME}")
                assert status == 200 and json.loads(body)["versions"] == ["1.0.0"]
            assert srv.refused == 0
        finally:
            for sock in streams:
                sock.close()
