"""The local fleet's HTTP API for devices: component versions, recipes and artifact downloads (a fixed contract).

See docs/local-fleet.md (the HTTP API for devices).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

from edgekit.fleet.component_registry import Registry, artifact_file, safe_segment
from edgekit.fleet.errors import NotFoundError, StateUnavailableError
from edgekit.fleet.web.fleet_metrics import render_metrics
from edgekit.fleet.web.snapshot import Presence, Snapshotter

__all__ = ["MAX_CONNECTIONS", "READ_TIMEOUT_S", "THING_HEADER", "FleetHttpServer"]

log = logging.getLogger(__name__)

THING_HEADER: Final = "X-Edgekit-Thing"
_STATIC_DIR: Final = Path(__file__).parent / "web" / "static"
_STATIC: Final = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
READ_TIMEOUT_S: Final = 30.0
MAX_CONNECTIONS: Final = 512
MAX_EVENT_STREAMS: Final = 64  # /api/events streams have their own budget: open pages never starve the devices' API
_BUSY: Final = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
_INITIAL: Final = b'<script id="fleet-initial" type="application/json"></script>'
_CHUNK = 64 * 1024
_FLIP = bytes(b ^ 0xFF for b in range(256))


def inline_json(value: object) -> bytes:
    """``value`` as JSON that is safe inside an HTML ``<script>`` element: ``<``, ``>`` and ``&`` escaped, so no
    device's text can end the element (``</script>``) or open a comment."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode("utf-8")


class _BadPath(Exception):
    pass


class _Server(ThreadingHTTPServer):
    """A thread per connection, at most ``slots`` at once: past that a connection gets 503 and is closed at once
    (a device retries after a back-off) instead of a thread of its own."""

    daemon_threads = True
    block_on_close = False
    fleet: FleetHttpServer
    slots: threading.BoundedSemaphore

    active = 0  # connections holding a slot now
    count_lock: threading.Lock
    streams: threading.BoundedSemaphore  # the event streams' own budget
    moved: set[Any]  # connections whose slot went back when they became an event stream

    def to_stream(self, request: Any) -> bool:
        """Move ``request`` from the devices' budget to the event streams' (False: every stream slot is taken)."""
        if not self.streams.acquire(blocking=False):
            return False
        with self.count_lock:
            self.moved.add(request)
            self.active -= 1
        self.slots.release()
        return True

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.fleet.refused += 1
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        with self.count_lock:
            self.active += 1
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.count_lock:
                stream = request in self.moved
                self.moved.discard(request)
                if not stream:
                    self.active -= 1
            (self.streams if stream else self.slots).release()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = READ_TIMEOUT_S  # an idle or trickling connection is closed after this many seconds without a byte
    protocol_version = "HTTP/1.1"
    server_version = "edgekit-fleet"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------------ responses

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: HTTPStatus, message: str) -> None:
        self._json(status, {"error": message})

    def _bytes(self, status: int, data: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _static(self, name: str) -> None:
        """The fleet page's own files, shipped in the package (no CDN: it works offline). The page comes with the
        fleet view inlined, so it paints at once, before its event stream opens."""
        data = (_STATIC_DIR / name).read_bytes()
        if name == "index.html":
            view = inline_json(self.server.fleet.snapshots.snapshot())
            data = data.replace(_INITIAL, _INITIAL.replace(b"></", b">" + view + b"</"))
        self._bytes(HTTPStatus.OK, data, _STATIC[name])

    def _events(self) -> None:
        """Server-sent events: a snapshot whenever the fleet changed, checked every ``interval_s``; a comment line
        keeps idle connections alive. Ends when the client goes away or the server stops."""
        fleet = self.server.fleet
        if not self.server.to_stream(self.request):
            fleet.refused_streams += 1
            self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
            self.send_header("Retry-After", "5")
            self.send_header("Content-Length", "0")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            return
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        previous = b""
        quiet = 0.0
        while not fleet.stopping.is_set():
            try:
                snap = fleet.snapshots.snapshot()
            except StateUnavailableError:  # PostgreSQL away for now: the page keeps its last view until it is back
                fleet.stopping.wait(fleet.events_interval_s)
                quiet += fleet.events_interval_s
                continue
            data = json.dumps({k: v for k, v in snap.items() if k != "generatedAt"}, separators=(",", ":")).encode()
            if data != previous:
                snap_bytes = json.dumps(snap, separators=(",", ":")).encode()
                self.wfile.write(b"data: " + snap_bytes + b"\n\n")
                self.wfile.flush()
                previous, quiet = data, 0.0
            elif quiet >= 15.0:
                self.wfile.write(b": keep-alive\n\n")
                self.wfile.flush()
                quiet = 0.0
            fleet.stopping.wait(fleet.events_interval_s)
            quiet += fleet.events_interval_s

    def do_GET(self) -> None:
        fleet = self.server.fleet
        try:
            parts = self._segments()
            if len(parts) == 3 and parts[:2] == ["v1", "components"]:
                name = parts[2]
                self._json(HTTPStatus.OK, {"name": name, "versions": fleet.registry.versions(name)})
            elif len(parts) == 5 and parts[:2] == ["v1", "components"] and parts[4] == "recipe":
                self._json(HTTPStatus.OK, fleet.recipe(parts[2], parts[3]))
            elif len(parts) == 5 and parts[:2] == ["v1", "artifacts"]:
                self._artifact(parts[2], parts[3], parts[4])
            elif parts == ["ui"] or (len(parts) == 2 and parts[0] == "ui" and parts[1] in _STATIC):
                self._static(parts[1] if len(parts) == 2 else "index.html")
            elif parts == ["api", "fleet"]:
                self._json(HTTPStatus.OK, fleet.snapshots.snapshot())
            elif parts == ["api", "events"]:
                self._events()
            elif parts == ["metrics"]:
                body, content_type = render_metrics(fleet.snapshots)
                self._bytes(HTTPStatus.OK, body, content_type)
            else:
                self._error(HTTPStatus.NOT_FOUND, f"no such resource: {self.path}")
        except _BadPath as exc:
            self._error(HTTPStatus.BAD_REQUEST, str(exc))
        except NotFoundError as exc:
            self._error(HTTPStatus.NOT_FOUND, str(exc))
        except StateUnavailableError as exc:  # PostgreSQL away for now (logged once by the database): ask again later
            self._error(HTTPStatus.SERVICE_UNAVAILABLE, str(exc))
        except (BrokenPipeError, ConnectionResetError):
            log.debug("client went away during %s", self.path)
        except Exception as exc:
            log.exception("fleet HTTP %s failed", self.path)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")

    do_HEAD = do_GET

    def _refuse(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not supported; the fleet API is read-only (GET)")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _segments(self) -> list[str]:
        raw = urlsplit(self.path).path
        parts = [unquote(p) for p in raw.split("/")[1:]]
        if parts and parts[-1] == "":  # "/v1/components/x/" is "/v1/components/x"; "/" is no segment
            parts = parts[:-1]
        if any(not safe_segment(p) for p in parts):
            raise _BadPath(f"refused path {raw!r}: every segment must be a plain name (no '..', '/', '\\' or NUL)")
        return parts

    def _artifact(self, name: str, version: str, file: str) -> None:
        fleet = self.server.fleet
        record, path = fleet.registry.artifact(name, version, file)
        thing = self.headers.get(THING_HEADER)
        corrupt = self.command == "GET" and fleet._take_corruption(thing)
        size = path.stat().st_size
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(size))
        self.send_header("X-Edgekit-Sha256", record.sha256)
        self.end_headers()
        if self.command == "HEAD":
            return
        with fleet._faults_lock:
            fleet.artifacts_served += 1
        if corrupt:
            log.warning(
                "fault injection: serving %s/%s/%s to %s with every byte flipped", name, version, file, thing or "a device"
            )
        sent = 0
        with path.open("rb") as f:
            while sent < size and (chunk := f.read(min(_CHUNK, size - sent))):
                self.wfile.write(chunk.translate(_FLIP) if corrupt else chunk)
                sent += len(chunk)


class FleetHttpServer:
    """The device-facing HTTP API on ``host`` (loopback) and ``port`` (0 = a free port); a context manager."""

    def __init__(
        self,
        registry: Registry,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        read_timeout_s: float = READ_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
        max_event_streams: int = MAX_EVENT_STREAMS,
        presence: Presence | None = None,
        events_interval_s: float = 0.5,
        stand_ins: Mapping[str, str] | None = None,
    ) -> None:
        self.registry = registry
        self.snapshots = Snapshotter(registry.state, presence, stand_ins=stand_ins)
        self.events_interval_s = events_interval_s
        self.stopping = threading.Event()  # ends the live event streams
        self.read_timeout_s = read_timeout_s
        self.max_connections = max_connections
        self.refused = 0  # connections turned away with 503 because every slot was taken
        self.max_event_streams = max_event_streams
        self.refused_streams = 0  # /api/events turned away with 503 because every stream slot was taken
        self.artifacts_served = 0  # artifact GETs answered with the file (a simulated shard downloads each once)
        self.host = host
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._faults: list[list[Any]] = []  # [thing or None, remaining]
        self._faults_lock = threading.Lock()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the fleet HTTP server is not started")
        return int(self._server.server_address[1])

    @property
    def active_connections(self) -> int:
        """Connections being served now (each holds one of ``max_connections`` slots; event streams hold their own)."""
        return self._server.active if self._server is not None else 0

    @property
    def url(self) -> str:
        """``http://HOST:PORT`` of the running server."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> FleetHttpServer:
        if self._server is not None:
            return self
        self.stopping.clear()
        handler = type("Handler", (_Handler,), {"timeout": self.read_timeout_s})
        server = _Server((self.host, self._requested_port), handler)
        server.fleet = self
        server.slots = threading.BoundedSemaphore(self.max_connections)
        server.count_lock = threading.Lock()
        server.streams = threading.BoundedSemaphore(self.max_event_streams)
        server.moved = set()
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fleet-http", daemon=True
        )
        self._thread.start()
        log.info("fleet HTTP API listening on %s", self.url)
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        self.stopping.set()
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None
        log.info("fleet HTTP API stopped")

    def __enter__(self) -> FleetHttpServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ content

    def artifact_url(self, name: str, version: str, file: str) -> str:
        return f"{self.url}/v1/artifacts/{quote(name, safe='')}/{quote(version, safe='')}/{quote(file, safe='')}"

    def recipe(self, name: str, version: str) -> dict[str, Any]:
        """The stored recipe with every stored artifact's URI pointing at this server."""
        recipe = json.loads(json.dumps(self.registry.recipe(name, version)))
        stored = {a.file for a in self.registry.state.artifacts(name, version)}
        for manifest in recipe.get("Manifests") or []:
            for artifact in manifest.get("Artifacts") or []:
                file = artifact_file(artifact.get("URI", ""))
                if file is not None and file in stored:
                    artifact["URI"] = self.artifact_url(name, version, file)
        return dict(recipe)

    # ------------------------------------------------------------------ faults

    def corrupt_downloads(self, thing: str | None, count: int) -> None:
        """Flip every byte of the next ``count`` artifact downloads (only those of ``thing`` when given)."""
        if count < 1:
            raise ValueError(f"count must be at least 1, got {count}")
        with self._faults_lock:
            self._faults.append([thing, count])
        log.info("fault injection: the next %d download(s) of %s will be corrupted", count, thing or "any device")

    def pending_corruptions(self) -> int:
        """Corrupted downloads still to serve."""
        with self._faults_lock:
            return sum(int(f[1]) for f in self._faults)

    def _take_corruption(self, thing: str | None) -> bool:
        with self._faults_lock:
            for fault in self._faults:
                if fault[0] is None or fault[0] == thing:
                    fault[1] -= 1
                    if fault[1] <= 0:
                        self._faults.remove(fault)
                    return True
        return False
