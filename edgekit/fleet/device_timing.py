"""``edgekit compile --measure-on THING``: a device of the running local fleet times each candidate itself.

The compile side (this module, on the fleet's machine) serves each candidate's archive over HTTP from a small server of
its own, beside the fleet's (the same host the devices download from), connects to the broker with the fleet
service's identity and publishes ``{id, url, sha256, warmup, repeat}`` on ``devices/<thing>/benchmark/request`` (the
broker's ACL lets only that device and the service read it). The device's agent downloads the archive (checked against
the digest), loads it with its self-test and times ``predict`` on the golden inputs
(:mod:`edgekit.edge.benchmark`), and replies ``{id, medianMs, p90Ms, runs}`` or ``{id, error}`` on
``devices/<thing>/benchmark/reply``. See docs/compile.md (measured on the target).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from edgekit.errors import ConfigError
from edgekit.fleet.errors import DeviceUnreachableError
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet.presence import read_presence
from edgekit.manifest import Latency
from edgekit.mqtt import topics
from edgekit.mqtt.client import MqttClient, MqttMessage
from edgekit.mqtt.tls import TlsMaterial
from edgekit.progress import Progress

__all__ = ["FleetDeviceTimer"]


class _Files(ThreadingHTTPServer):
    daemon_threads = True
    files: dict[str, Path]


class _Handler(BaseHTTPRequestHandler):
    server: _Files

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        path = self.server.files.get(self.path.lstrip("/"))
        if path is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        data = path.read_bytes()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FleetDeviceTimer:
    """A device timer (:class:`edgekit.compiler.phases.DeviceTimer`) over the local fleet running on ``state_dir``."""

    def __init__(
        self, thing: str, state_dir: str | Path | None = None, *, timeout_s: float = 300.0, online_wait_s: float = 10.0
    ) -> None:
        self._thing = thing
        self.folder = FleetFolder.at(state_dir)
        self.timeout_s = timeout_s
        self.online_wait_s = online_wait_s
        self.running = self.folder.running()
        if self.running is None or not self.running.get("broker"):
            raise ConfigError(
                f"--measure-on {thing}: no fleet runs on {self.folder.root}; start one with "
                f"'edgekit fleet serve --state {self.folder.root}' or 'edgekit simulate --state {self.folder.root}'"
            )
        with self.folder.open_state() as state:
            known = state.get_thing(thing) is not None
        if not known:
            raise DeviceUnreachableError(
                f"--measure-on {thing}: no device '{thing}' in the fleet on {self.folder.root}; 'edgekit fleet status' lists them"
            )
        self._check_online(grace_s=min(online_wait_s, 3.0))  # before anything is compiled

    @property
    def thing(self) -> str:
        return self._thing

    def time(self, archives: list[Path], warmup: int, repeat: int, say: Progress) -> list[Latency | str]:
        self._check_online(grace_s=self.online_wait_s)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self._time(archives, warmup, repeat, say))
        with ThreadPoolExecutor(1) as pool:  # called from a running loop (a notebook): a loop of its own in a thread
            return pool.submit(asyncio.run, self._time(archives, warmup, repeat, say)).result()

    def _check_online(self, grace_s: float) -> None:
        """Refuse a device that ``edgekit fleet serve``'s presence tracker says is not connected (``presence.json``:
        written on each change, absent until a device connects). A simulation keeps presence in memory: there the
        device's acknowledgment of the request (or its absence) says it."""
        if self.running is None or self.running.get("mode") != "serve":
            return
        deadline = time.monotonic() + grace_s
        while not (read_presence(self.folder.presence_file) or {}).get(self._thing):
            if time.monotonic() >= deadline:
                raise DeviceUnreachableError(
                    f"--measure-on {self._thing}: the device is offline (not connected to the fleet's broker); "
                    f"start its agent ('edgekit agent --config ...') and try again"
                )
            time.sleep(0.2)

    async def _time(self, archives: list[Path], warmup: int, repeat: int, say: Progress) -> list[Latency | str]:
        assert self.running is not None
        host = urlparse(str(self.running.get("http") or "http://127.0.0.1")).hostname or "127.0.0.1"
        files = _Files((host, 0), _Handler)
        files.files = {}
        server = threading.Thread(target=files.serve_forever, name="measure-on-files", daemon=True)
        server.start()
        tls = TlsMaterial.open(self.folder.tls).service if self.running.get("tls") else None
        url = str(self.running.get("serviceBroker") or self.running["broker"])
        client = MqttClient(f"edgekit-measure-{os.getpid()}-{uuid.uuid4().hex[:6]}", tls=tls, clean_start=True)
        replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        def on_reply(message: MqttMessage) -> None:
            try:
                body = json.loads(message.payload)
            except ValueError:
                return
            if isinstance(body, dict):
                replies.put_nowait(body)

        try:
            try:
                await client.connect(url)
            except Exception as exc:
                raise DeviceUnreachableError(
                    f"--measure-on {self._thing}: can't reach the fleet's broker at {url}: {exc}"
                ) from exc
            await client.subscribe(topics.device_topic(self._thing, "benchmark", "reply"), 1, on_reply)
            timings: list[Latency | str] = []
            for archive in archives:
                request_id = uuid.uuid4().hex
                files.files[f"{request_id}/{archive.name}"] = archive
                digest = base64.b64encode(hashlib.sha256(archive.read_bytes()).digest()).decode()
                port = files.server_address[1]
                request = {
                    "id": request_id,
                    "url": f"http://{host}:{port}/{request_id}/{archive.name}",
                    "sha256": digest,
                    "warmup": warmup,
                    "repeat": repeat,
                }
                say(f"{archive.name}: sent to {self._thing} to be timed")
                await client.publish(topics.device_topic(self._thing, "benchmark", "request"), json.dumps(request), qos=1)
                timings.append(await self._reply(replies, request_id))
            return timings
        finally:
            await client.disconnect()
            files.shutdown()
            files.server_close()

    async def _reply(self, replies: asyncio.Queue[dict[str, Any]], request_id: str) -> Latency | str:
        """The device's answer: first ``{id, accepted}`` (within ``online_wait_s``: else it is offline), then the timing."""
        started = time.monotonic()
        accepted = False
        while True:
            limit = self.timeout_s if accepted else self.online_wait_s
            left = started + limit - time.monotonic()
            try:
                body = await asyncio.wait_for(replies.get(), max(left, 0.0))
            except TimeoutError:
                break
            if body.get("id") != request_id:
                continue  # an old request's
            if body.get("accepted") is True:
                accepted = True
                continue
            if body.get("error"):
                return str(body["error"])[:300] or "failed"
            try:
                return Latency(median_ms=float(body["medianMs"]), p90_ms=float(body["p90Ms"]), runs=int(body.get("runs", 0)))
            except (KeyError, TypeError, ValueError):
                return f"an unreadable reply: {json.dumps(body)[:200]}"
        if not accepted:
            raise DeviceUnreachableError(
                f"--measure-on {self._thing}: the device did not take the request within {self.online_wait_s:g} s: is it "
                "offline, or its agent an edgekit without benchmark requests? ('edgekit fleet status')"
            )
        raise DeviceUnreachableError(
            f"--measure-on {self._thing}: the device took the request but gave no timing within {self.timeout_s:g} s"
        )
