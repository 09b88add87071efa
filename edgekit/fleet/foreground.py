"""``edgekit fleet serve``: a :class:`~edgekit.fleet.fleet_server.FleetServer` in the foreground, for real devices.

The broker (mTLS), the fleet service, the registry and the page, with no simulated device: devices are added with
``edgekit fleet add-device`` and run ``edgekit agent``. It listens on ``host`` (loopback unless told otherwise) and
keeps its ports in ``serve.json`` so the bundles it has handed out stay right across restarts. See
docs/local-fleet.md (real devices).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from edgekit.errors import ConfigError
from edgekit.fleet.errors import StateUnavailableError
from edgekit.fleet.fleet_server import FleetServer
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet.jobs_api import parse_member
from edgekit.fleet.provision import DEFAULT_HTTP_PORT, DEFAULT_MQTT_PORT, ServeEndpoints
from edgekit.fleet.state import is_database_url
from edgekit.fleet.stopping import run_until_signalled
from edgekit.progress import Progress

__all__ = ["ServedFleet", "serve_fleet"]

_WATCH_S: Final = 0.5


@dataclass(frozen=True)
class ServedFleet:
    """Where a served fleet listens (what ``fleet serve`` prints once it is up)."""

    folder: FleetFolder
    broker_url: str
    http_url: str

    @property
    def page_url(self) -> str:
        return f"{self.http_url}/ui"


def _port(given: int | None, saved: int | None, default: int) -> int:
    if given is not None:
        return given
    return saved if saved is not None else default


def _line(server: FleetServer) -> str:
    view = server.view()
    connected = sum(1 for d in view.devices if d.connected)
    active = [d for d in view.deployments if d.status == "ACTIVE"]
    text = f"devices {len(view.devices)}, connected {connected}"
    for d in active:
        counts = " ".join(f"{k}={v}" for k, v in sorted(d.counts.items()))
        text += f" | deployment {d.id[:8]} {d.target}: {counts or '-'}"
    return text


async def serve_fleet_async(
    folder: FleetFolder,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    http_port: int | None = None,
    public_host: str | None = None,
    tick_s: float = 1.0,
    progress: Progress | None = None,
    ready: Callable[[ServedFleet], None] | None = None,
    stop: asyncio.Event | None = None,
    database: str | None = None,
    member: str | None = None,
) -> None:
    """Serve the fleet in ``folder`` until ``stop`` is set (see :func:`serve_fleet`)."""
    say = progress or (lambda _m: None)
    saved = ServeEndpoints.read(folder)
    if member is not None and not is_database_url(database or folder.state_location):
        raise ConfigError(
            f"--member {member}: the Jobs requests are split between fleet service processes on PostgreSQL, and the "
            f"fleet in {folder.root} keeps its state in SQLite (one process answers them all); leave --member out, or "
            "serve with --database postgresql://..."
        )
    if host in ("0.0.0.0", "", "::") and not public_host:
        raise ConfigError(
            f"--host {host or '0.0.0.0'} listens everywhere: also give --public-host, the address devices reach this "
            "machine at (it goes into the broker's certificate and the device bundles)"
        )
    server = FleetServer(
        folder,
        devices=None,
        name=saved.fleet if saved else "fleet",
        tick_s=tick_s,
        about={"mode": "serve", **({"jobsMember": member} if member is not None else {})},
        progress=say,
        host=host,
        port=_port(port, saved.port if saved else None, DEFAULT_MQTT_PORT),
        http_port=_port(http_port, saved.http_port if saved else None, DEFAULT_HTTP_PORT),
        public_host=public_host or (saved.public_host if saved and saved.host == host else None),
        database=database,
        member=parse_member(member) if member is not None else None,
    )
    stop = stop or asyncio.Event()
    async with server:
        assert server.broker is not None and server.http is not None
        ServeEndpoints(
            fleet=server.name, host=host, public_host=server.public_host, port=server.broker.port, http_port=server.http.port
        ).write(folder)
        if ready is not None:
            ready(ServedFleet(folder, server.broker_url, server.http_url))
        last = ""
        while not stop.is_set():
            try:
                line = _line(server)
            except StateUnavailableError:  # PostgreSQL away for now: said once by the database; the line waits
                line = last
            if line != last:
                say(f"{time.strftime('%H:%M:%S')} {line}")
                last = line
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), _WATCH_S)
        say("stopping the fleet (broker, service, HTTP server)")


def serve_fleet(
    folder: FleetFolder,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    http_port: int | None = None,
    public_host: str | None = None,
    tick_s: float = 1.0,
    progress: Progress | None = None,
    ready: Callable[[ServedFleet], None] | None = None,
    database: str | None = None,
    member: str | None = None,
) -> None:
    """Serve the fleet in ``folder`` in the foreground until SIGTERM or SIGINT.

    ``port`` / ``http_port``: ``None`` reuses the last run's (``serve.json``), else 8883 / 8080; 0 picks free ones.
    ``public_host``: the address devices use (default ``host``; needed when ``host`` is a wildcard).
    ``database``: a ``postgresql://`` URL for the fleet's state (remembered in the folder; default its SQLite file).
    ``member`` (``"I/N"``): answer only the Jobs requests of things I of N (``fleet serve --join --member`` processes
    answer the others).
    """

    run_until_signalled(
        lambda stop: serve_fleet_async(
            folder, host=host, port=port, http_port=http_port, public_host=public_host, tick_s=tick_s,
            progress=progress, ready=ready, stop=stop, database=database, member=member,
        )
    )  # fmt: skip
