"""The fleet server: the broker, the fleet's state and service, the Jobs bridge, the telemetry ingest and the HTTP
server, started and stopped as one.

::

    async with FleetServer(FleetFolder.at(".edgekit/fleet"), devices=fleet.expand(), tls=True) as server:
        server.publish("greengrass-build")
        server.deploy({"targetArn": "thinggroup/line-1", "components": {...}})
        print(server.view().to_json())          # the fleet view: what every output shows

The simulation (:class:`edgekit.sim.Simulation`) is a fleet server plus simulated devices, network links and faults;
real devices connect to :attr:`FleetServer.broker_url` and download from :attr:`FleetServer.http_url` the same way.
(Named ``fleet_server`` so that no other module of edgekit shares its basename: ``cloud/server.py`` and
``device/ipc/server.py`` are other servers.) See docs/local-fleet.md (what runs).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from edgekit.fleet.component_registry import PublishedComponent, Registry, publish_local
from edgekit.fleet.errors import FleetError
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet.http import FleetHttpServer
from edgekit.fleet.jobs_api import FleetMqttBridge
from edgekit.fleet.presence import PresenceTracker
from edgekit.fleet.queries import deployment_summary
from edgekit.fleet.service import DeploymentSummary, FleetService
from edgekit.fleet.state import FleetState, is_database_url
from edgekit.fleet.stopping import stop_each
from edgekit.fleet.telemetry import SHARE_GROUP, TELEMETRY_CLIENT_ID, TelemetryIngest
from edgekit.fleet.view import FleetView
from edgekit.fleet.web.snapshot import Presence
from edgekit.fleet_file import FleetDevice
from edgekit.greengrass.deployment import DeploymentSpec
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import MqttClient
from edgekit.mqtt.tls import SERVICE_IDENTITY, TlsMaterial
from edgekit.progress import Progress

__all__ = ["FleetServer"]

log = logging.getLogger(__name__)

_WILDCARD = ("0.0.0.0", "", "::")
QUEUED_PER_DEVICE = 100
MIN_QUEUED = 10_000
"""QoS 1 messages the broker may queue for one client, per device of the fleet (at least 10,000: mosquitto's
``max_queued_messages``, one limit for every client). The fleet service's telemetry session
(:data:`~edgekit.fleet.telemetry.TELEMETRY_CLIENT_ID`) receives every device's telemetry; past the limit mosquitto drops
what it would queue for it — silently, after the device got its PUBACK — so a service a busy machine slows (a
deployment to 10,000 devices) would lose summaries. 100 a device: 1,000 s of a fleet's 10 s windows; the payloads are
the broker's either way (each stored once). The Jobs requests come on a session of their own (the control plane's)."""


def broker_queue_limit(devices: int) -> int:
    """The broker's ``max_queued_messages`` for a fleet of ``devices`` (see :data:`QUEUED_PER_DEVICE`)."""
    return max(MIN_QUEUED, QUEUED_PER_DEVICE * devices)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class FleetServer:
    """The fleet's server side on one folder (see the module's docstring); an async context manager.

    ``devices`` are registered (their groups made those of the list: members it no longer names leave) and, with
    ``tls``, given certificates; ``None`` leaves the registered things and groups as they are (``edgekit fleet serve``:
    real devices are added with ``edgekit fleet add-device``). Errors: :class:`~edgekit.fleet.errors.FleetError` when it is not started, or another
    process runs a fleet on the same folder. ``tick_s`` is the Jobs bridge's rollout / timeout tick. ``presence`` says which
    devices are connected (the fleet view's ``connected``), where the caller knows; without it the server listens to
    the agents' presence messages (:class:`~edgekit.fleet.presence.PresenceTracker`). ``host`` / ``port`` /
    ``http_port``: where the broker's device listener and the HTTP server listen (loopback, free ports by default);
    ``public_host``: the address devices reach them at (in the broker's certificate and the URLs; default ``host``). ``about`` goes into the
    folder's running file beside the server's own facts (pid, broker and HTTP URLs). ``name`` is the fleet's.
    ``stand_ins``: the devices a process of another platform stands in for (thing → its platform, the simulator's):
    every view of the fleet says so (``standIn``), ``edgekit fleet status`` too (from the running file).
    ``database``: a ``postgresql://`` URL to keep the fleet's state in (remembered in the folder; default: what the
    folder names, else its SQLite file); then the telemetry ingest subscribes in the shared group other fleet service
    processes join (:mod:`edgekit.fleet.scale_out`). ``member`` (index, count): answer only the Jobs requests of the
    things whose name hashes to index of count (the other processes answer the rest; see
    :class:`~edgekit.fleet.jobs_api.FleetMqttBridge`).
    """

    def __init__(
        self,
        folder: FleetFolder | str | Path | None = None,
        *,
        devices: Sequence[FleetDevice] | None = (),
        name: str = "fleet",
        tls: bool = True,
        tick_s: float = 1.0,
        presence: Presence | None = None,
        about: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        http_port: int = 0,
        public_host: str | None = None,
        stand_ins: Mapping[str, str] | None = None,
        database: str | None = None,
        member: tuple[int, int] | None = None,
    ) -> None:
        self.folder = folder if isinstance(folder, FleetFolder) else FleetFolder.at(folder)
        self.register = devices is not None
        self.devices = list(devices or ())
        self.host = host
        self.port = port
        self.http_port = http_port
        self.public_host = public_host or host
        self.name = name
        self.tls = tls
        self.tick_s = tick_s
        self.presence = presence
        self.about = dict(about or {})
        self.stand_ins = dict(stand_ins or {})
        self.database = database
        self.member = member
        self.progress: Progress = progress or (lambda _m: None)
        self.state: FleetState | None = None
        self.service: FleetService | None = None
        self.broker: MosquittoBroker | None = None
        self.material: TlsMaterial | None = None
        self.http: FleetHttpServer | None = None
        self.bridge: FleetMqttBridge | None = None
        self.telemetry: TelemetryIngest | None = None
        self.tracker: PresenceTracker | None = None
        self._client: MqttClient | None = None  # the control plane: the Jobs bridge and presence
        self._telemetry_client: MqttClient | None = None  # the devices' telemetry, on a connection of its own

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def started(self) -> bool:
        return self.state is not None

    def require(self) -> tuple[FleetState, FleetService]:
        """The state and service of the started server (:class:`~edgekit.fleet.errors.FleetError` when it is not started)."""
        if self.state is None or self.service is None:
            raise FleetError("the fleet server is not started; use 'async with FleetServer(...)' or await start()")
        return self.state, self.service

    @property
    def broker_url(self) -> str:
        """Where devices connect (``mqtt://`` or, with TLS, ``mqtts://``), at :attr:`public_host`."""
        if self.broker is None:
            raise FleetError("the fleet server is not started")
        return f"{'mqtts' if self.material else 'mqtt'}://{_url_host(self.public_host)}:{self.broker.port}"

    @property
    def http_url(self) -> str:
        """The HTTP server: the devices' downloads, the page (``/ui``), ``/api/fleet`` and ``/metrics``."""
        if self.http is None:
            raise FleetError("the fleet server is not started")
        return f"http://{_url_host(self.public_host)}:{self.http.port}"

    async def start(self) -> None:
        """Open the state, register the devices, then start the broker, the HTTP server, the Jobs bridge and the
        telemetry ingest; on any failure what started is stopped again."""
        if self.state is not None:
            return
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        running = self.folder.running()
        if running is not None:
            raise FleetError(
                f"a fleet already runs on {self.folder.root} (pid {running['pid']}); stop it, or give another --state"
            )
        self.folder.root.mkdir(parents=True, exist_ok=True)
        self.folder.use_database(self.database)
        self.state = FleetState(self.folder.state_location)
        self.service = FleetService(self.state)
        if self.register:
            self.progress(f"registering {len(self.devices)} device(s) in {self.state.path}")
            self._register()

        if self.tls:
            self.progress(f"the fleet's CA and certificates ({len(self.devices)} device(s)) in {self.folder.tls}")
            things = [d.thing for d in self.devices]
            hosts = list(dict.fromkeys(h for h in (self.public_host, self.host, "127.0.0.1", "localhost") if h not in _WILDCARD))
            self.material = await asyncio.to_thread(TlsMaterial.create, self.folder.tls, things, hosts=hosts)
        else:  # said every time, never silent: without certificates the broker can't tell devices apart
            log.warning(
                "fleet '%s' runs without mTLS (tls: false): devices are not authenticated, so any client may connect "
                "under any device's id and read its topics; set tls: true in the fleet file for per-device identities",
                self.name,
            )
            self.progress("no mTLS (tls: false): devices are not authenticated")
        self.broker = MosquittoBroker(
            self.folder.broker,
            tls=self.material,
            acl=self.tls,
            host=self.host,
            port=self.port,
            max_queued_messages=broker_queue_limit(len(self.devices)),
        )
        self.progress("starting mosquitto")
        await asyncio.to_thread(self.broker.start)
        service_tls = self.material.service if self.material else None
        self._client = MqttClient(SERVICE_IDENTITY, tls=service_tls)
        self._telemetry_client = MqttClient(TELEMETRY_CLIENT_ID, tls=service_tls)
        presence = self.presence
        if presence is None:
            self.tracker = PresenceTracker(self._client, self.folder.presence_file)
            presence = self.tracker
        registry = Registry(self.state, self.folder.store)
        try:
            self.http = FleetHttpServer(
                registry, presence=presence, host=self.host, port=self.http_port, stand_ins=self.stand_ins
            ).start()
        except OSError as exc:
            raise FleetError(f"can't serve HTTP on {self.host}:{self.http_port}: {exc.strerror or exc}") from None
        self.progress(f"fleet page: {self.http_url}/ui")

        # two persistent sessions: the control plane's (Jobs requests, device status, presence) and the telemetry's,
        # so that a Jobs request never waits behind the telemetry backlog in the broker's queue and in-flight window
        # for one client. What devices send while the service reconnects waits for it on the broker. Each handler is
        # in place before its client connects, so what the broker queued while no server ran is handled, not
        # dropped into an unread queue.
        if self.tracker is not None:
            await self.tracker.start()
        self.bridge = FleetMqttBridge(self.service, self._client, tick_s=self.tick_s, member=self.member)
        await self.bridge.start()
        # the devices' window summaries; on PostgreSQL in the shared group more service processes join (scale_out)
        share = SHARE_GROUP if is_database_url(self.folder.state_location) else None
        self.telemetry = TelemetryIngest(self.state, self._telemetry_client, share=share)
        self.telemetry.take_over(self._client)  # a session of the one-connection service may still queue telemetry
        await self.telemetry.start()
        await self._client.connect(self.broker.service_url)
        await self._telemetry_client.connect(self.broker.service_url)
        if self._client.session_present:  # once the telemetry's own session subscribes: the old one stops getting it
            await self.telemetry.unsubscribe_old(self._client)
        self._write_running()

    def _register(self) -> None:
        """Register every device; make the groups' memberships those of the list (leftovers of a bigger run leave)."""
        state, service = self.require()
        wanted: dict[str, set[str]] = {}
        for device in self.devices:
            for group in device.groups:
                wanted.setdefault(group, set()).add(device.thing)
        with state.transaction():
            for group in state.groups():
                for member in state.members(group):
                    if member not in wanted.get(group, set()):
                        service.remove_from_group(member, group)
            service.register_devices(self.devices)

    def _write_running(self) -> None:
        assert self.broker is not None and self.http is not None
        info = {
            "pid": os.getpid(),
            "fleet": self.name,
            **self.about,
            "tls": self.tls,
            "broker": self.broker_url,
            "serviceBroker": self.broker.service_url,  # where fleet-side tools connect as the service (compile --measure-on)
            "http": self.http_url,
            "startedAt": time.time(),
            **({"standIns": self.stand_ins} if self.stand_ins else {}),
        }
        self.folder.running_file.write_text(json.dumps(info, indent=1))

    async def close(self) -> None:
        """Stop the telemetry ingest, the bridge, its client, the HTTP server and the broker; close the state."""
        await stop_each(
            self.telemetry.stop if self.telemetry else None,
            self.bridge.stop if self.bridge else None,
            self._client.disconnect if self._client else None,
            self._telemetry_client.disconnect if self._telemetry_client else None,
        )
        self.telemetry, self.bridge, self._client, self._telemetry_client = None, None, None, None
        if self.tracker is not None:
            self.tracker.stop()
            self.tracker = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.broker is not None:
            await asyncio.to_thread(self.broker.stop)
        if self.state is not None:
            self.folder.running_file.unlink(missing_ok=True)
            self.state.close()
            self.state = None
            self.service = None

    # ------------------------------------------------------------------ the fleet

    def publish(self, build_dir: str | Path) -> list[PublishedComponent]:
        """Publish a packaged build folder (``edgekit package``'s) to the fleet's registry."""
        state, _ = self.require()
        return publish_local(build_dir, state, self.folder.store)

    def deploy(self, spec: DeploymentSpec | Mapping[str, Any]) -> str:
        """Create a deployment (CreateDeployment fields); the bridge rolls it out on its next tick. Returns its id."""
        _, service = self.require()
        return service.create_deployment(spec)

    def deployment(self, deployment_id: str) -> DeploymentSummary:
        """One deployment's status and counts (:class:`~edgekit.fleet.errors.NotFoundError` for an unknown id)."""
        state, _ = self.require()
        return deployment_summary(state, deployment_id)

    def view(self) -> FleetView:
        """The fleet now (:func:`~edgekit.fleet.view.fleet_view`), with each deployment's progress over time and,
        where the server knows, who is connected: what ``/api/fleet`` serves."""
        if self.http is None:
            raise FleetError("the fleet server is not started")
        return self.http.snapshots.view()
