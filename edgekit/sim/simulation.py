"""The simulation harness: a broker, the local fleet service and N device agents in one asyncio loop.

::

    async with Simulation(load_fleet("demo"), state_dir=".edgekit/fleet") as sim:
        sim.publish("greengrass-build")
        deployment = sim.deploy({"targetArn": "thinggroup/line-1", "components": {"com.example.Mlp": {"componentVersion": "1.0.0"}}})
        summary = await sim.wait(deployment, timeout=120)      # a DeploymentSummary: status and counts

See docs/local-fleet.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self

from edgekit.device.agent import DeviceAgent
from edgekit.device.download import ArtifactShare
from edgekit.device.jobs_runner import DeviceMqttRunner
from edgekit.device.lifecycle import StateCallback
from edgekit.edge.component import STAND_IN_ENV
from edgekit.edge.errors import EdgeError
from edgekit.edge.loop import Checkpoint
from edgekit.edge.sources import Scenario
from edgekit.errors import ConfigError, ToolchainError
from edgekit.fleet.errors import NotFoundError
from edgekit.fleet.fleet_server import FleetServer
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet_file import Fault, FleetDevice, FleetFile
from edgekit.greengrass.deployment import DeploymentSpec
from edgekit.mqtt.broker import raise_fd_limit
from edgekit.mqtt.client import Backoff, MqttClient
from edgekit.mqtt.errors import ConnectError
from edgekit.mqtt.tls import TlsMaterial
from edgekit.profiles import host_platform
from edgekit.progress import Progress
from edgekit.sim.emulated import EmulatedAgent, Emulation, prepare_emulation, read_checkpoints, write_bundle
from edgekit.sim.errors import SimulationError, SimulationTimeoutError
from edgekit.sim.inference import InProcessRunners
from edgekit.sim.network import NetworkLink
from edgekit.sim.scripted_shell import SimulatedExecutor
from edgekit.sim.shards import (
    FILES_PER_DEVICE,
    ShardSet,
    ShardSpec,
    devices_per_process,
    shards_for_open_files,
    split,
)
from edgekit.wire.device_bundle import BUNDLE_CONFIG, DeviceBundle

if TYPE_CHECKING:  # the fleet itself is one class here, FleetServer; these are the types of its parts
    from edgekit.fleet.component_registry import PublishedComponent
    from edgekit.fleet.http import FleetHttpServer
    from edgekit.fleet.jobs_api import FleetMqttBridge
    from edgekit.fleet.service import DeploymentSummary, FleetService
    from edgekit.fleet.state import FleetState
    from edgekit.fleet.telemetry import TelemetryIngest
    from edgekit.fleet.view import FailureView, FleetView
    from edgekit.mqtt.broker import MosquittoBroker

__all__ = ["SimulatedDevice", "Simulation", "SimulationStatus", "stand_in_for"]

log = logging.getLogger(__name__)

_POLL_S: Final = 0.1
_CONNECT_TIMEOUT_S: Final = 30.0
_CONNECT_ATTEMPTS: Final = 3
"""Tries of a device's first connect that times out (30 s each: TLS handshakes queue on a loaded machine) before
start fails."""
_UPLINK_IDLE_S: Final = 10.0
"""A simulated agent's uplink looks at its spool at least this often when nothing wakes it (a packaged agent's: 1 s)."""
HOST_PYTHON_ENV: Final = "EDGEKIT_HOST_PYTHON"
"""Set for simulated ``subprocess`` devices: the runtime component's Install uses this interpreter (offline)."""


def stand_in_for(device: FleetDevice, host: Mapping[str, str] | None = None) -> str | None:
    """The platform of the process standing in for ``device`` (``linux/amd64``) when it is not the device's own
    (``host``: this machine's), else None. Such a device runs a host build of the same candidate: the artifact's host
    twin, or its portable files (:func:`edgekit.load` with ``stand_in``); every view of the fleet says so."""
    here = dict(host or host_platform())
    if all(device.platform.get(k) == here[k] for k in ("os", "architecture")):
        return None
    return f"{here['os']}/{here['architecture']}"


@dataclass(frozen=True)
class SimulationStatus:
    """The fleet view (:class:`~edgekit.fleet.view.FleetView`, with who is connected) plus what only the simulator
    knows: how long it has run, its devices and how many agents are up, the faults it applied."""

    elapsed_s: float
    devices: int
    """Simulated devices (the fleet's state may know more things, left from an earlier, bigger run)."""
    alive: int
    faults: list[str]
    broker_url: str
    view: FleetView

    @property
    def connected(self) -> int:
        return self.view.connected

    @property
    def failures(self) -> list[FailureView]:
        """Failures of each target's latest deployment, newest first."""
        return self.view.failures

    def group_counts(self) -> dict[str, dict[str, int]]:
        """Per group: members, and the counts of its latest deployment's executions by status."""
        return {g.name: {"devices": g.members, **g.counts} for g in self.view.groups}


@dataclass
class SimulatedDevice:
    """One device of a simulation: its fleet entry, folder and network link, and (while it is up) its agent,
    MQTT client and job runner (``None`` while it is killed), or for an emulated device its agent process
    (``process``). ``restarts`` counts :meth:`Simulation.restart_device`."""

    device: FleetDevice
    root: Path
    link: NetworkLink
    agent: DeviceAgent | None = None
    client: MqttClient | None = None
    runner: DeviceMqttRunner | None = None
    process: EmulatedAgent | None = None
    restarts: int = 0
    revive: asyncio.TimerHandle | None = None

    @property
    def thing(self) -> str:
        return self.device.thing

    @property
    def connected(self) -> bool:
        if self.process is not None:  # its MQTT connection is in another process: one open through its link
            return self.process.alive and bool(self.link.pipes) and not self.link.down
        return self.client is not None and self.client.connected

    @property
    def alive(self) -> bool:
        return self.agent is not None or (self.process is not None and self.process.alive)


class Simulation:
    """N simulated devices of a fleet file against a real broker and the local fleet service; see docs/local-fleet.md.

    ``devices`` rescales the fleet (:meth:`edgekit.fleet_file.FleetFile.scaled`); ``mode`` and ``tls`` override the
    fleet file. ``tick_s`` is the bridge's rollout / timeout tick. ``agent_options`` go to every
    :class:`~edgekit.device.DeviceAgent` (e.g. ``settle_s``), ``runner_options`` to every ``DeviceMqttRunner``.
    ``progress`` hears what starting up does. Simulated agents don't fsync their state (a simulated crash kills
    the agent, not the machine) unless ``agent_options`` says ``fsync=True``.

    Devices the fleet file marks ``mode: emulated`` run as aarch64 agent processes under qemu-user
    (:mod:`edgekit.sim.emulated`); ``sysroot_cache`` is the cache folder of their sysroot (default edgekit's).
    Where their aarch64 Python can't be had (no qemu-user, no network for the first build), starting fails, or with
    ``emulation_fallback`` they run as the fleet's other devices do (``progress`` says why).

    ``shards`` > 1 runs the devices in that many processes (:mod:`edgekit.sim.shards`), split by thing name, against
    this process's fleet server; :meth:`status`, :meth:`presence`, :meth:`inference_checkpoints` and the faults cover
    them all, :attr:`devices` holds this process's only (emulated ones), :attr:`shard_set` the shards. ``attach`` is
    for the shard process itself (:mod:`edgekit.sim.shard`): run the spec's devices against a running fleet server.
    ``database``: a ``postgresql://`` URL for the fleet's state (:class:`~edgekit.fleet.fleet_server.FleetServer`'s).
    """

    def __init__(
        self,
        fleet: FleetFile,
        *,
        state_dir: str | Path | None = None,
        devices: int | None = None,
        mode: Literal["in_process", "subprocess"] | None = None,
        tls: bool | None = None,
        tick_s: float = 1.0,
        connect_concurrency: int = 200,
        reconnect: Backoff | None = None,
        agent_options: Mapping[str, Any] | None = None,
        runner_options: Mapping[str, Any] | None = None,
        apply_faults: bool = True,
        seed: int = 0,
        progress: Progress | None = None,
        sysroot_cache: Path | None = None,
        emulation_fallback: bool = False,
        shards: int = 1,
        attach: ShardSpec | None = None,
        database: str | None = None,
    ) -> None:
        if shards < 1:
            raise ConfigError(f"shards {shards}: give 1 or more processes for the devices")
        self.fleet = fleet.scaled(devices) if devices is not None else fleet
        self.shards = shards
        self.attach = attach
        self.shard_set: ShardSet | None = None
        self.booted = 0
        """Devices booted in this process so far (while :meth:`start` connects them)."""
        self.folder = FleetFolder.at(state_dir)
        self.mode: Literal["in_process", "subprocess"] = mode or self.fleet.run_mode()
        self.tls = self.fleet.tls if tls is None else tls
        self.tick_s = tick_s
        self.connect_concurrency = max(1, connect_concurrency)
        self.reconnect = reconnect
        self.agent_options = dict(agent_options or {})
        self.runner_options = dict(runner_options or {})
        self.apply_faults = apply_faults
        self.seed = seed
        self.progress: Progress = progress or (lambda _m: None)
        self.devices: dict[str, SimulatedDevice] = {}
        self.sysroot_cache = sysroot_cache
        self.emulation_fallback = emulation_fallback
        self.emulation: Emulation | None = None
        things = self.fleet.expand()
        _check_scenarios(self.fleet.name, things)
        emulated = sum(1 for t in things if t.emulated)
        self.stand_ins = {d.thing: on for d in things if not d.emulated and (on := stand_in_for(d)) is not None}
        if attach is not None:
            self.stand_ins.update(attach.stand_ins)
        """The devices a process of another platform (this one's) stands in for: thing → that platform."""
        self.server = FleetServer(
            self.folder,
            devices=things,
            name=self.fleet.name,
            tls=self.tls,
            tick_s=tick_s,
            presence=self._presence,
            about={"devices": len(things), "mode": self.mode}
            | ({"emulated": emulated} if emulated else {})
            | ({"shards": shards} if shards > 1 else {}),
            progress=lambda message: self.progress(message),
            stand_ins=self.stand_ins,
            database=database,
        )
        self._executor = SimulatedExecutor()
        self._started_at = 0.0
        self._fault_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._fault_log: list[str] = []
        self.connect_s: float | None = None
        self._share: ArtifactShare | None = None
        self._downloads_alone = self._download_fault_targets()
        """Devices that download on their own, not through :attr:`artifact_share`: a download fault targets them."""

    # ------------------------------------------------------------------ the fleet server's parts

    @property
    def state(self) -> FleetState | None:
        return self.server.state

    @property
    def service(self) -> FleetService | None:
        return self.server.service

    @property
    def http(self) -> FleetHttpServer | None:
        return self.server.http

    @property
    def broker(self) -> MosquittoBroker | None:
        return self.server.broker

    @property
    def material(self) -> TlsMaterial | None:
        if self.attach is not None:
            return self._attached_material
        return self.server.material

    _attached_material: TlsMaterial | None = None

    @property
    def registry_url(self) -> str:
        """Where the devices download from: the fleet server's HTTP server (a shard's: the parent's)."""
        if self.attach is not None:
            return self.attach.registry_url
        if self.http is None:
            raise SimulationError("the simulation is not started")
        return self.http.url

    @property
    def bridge(self) -> FleetMqttBridge | None:
        return self.server.bridge

    @property
    def telemetry(self) -> TelemetryIngest | None:
        return self.server.telemetry

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    @property
    def broker_url(self) -> str:
        if self.broker is None:
            raise SimulationError("the simulation is not started")
        return self.broker.url

    def _presence(self) -> dict[str, bool]:
        return self.presence()

    def presence(self) -> dict[str, bool]:
        """Which devices are connected now, in this process and in the shards (read by the fleet page's server
        thread: plain attribute reads)."""
        here = {thing: dev.connected for thing, dev in list(self.devices.items())}
        if self.shard_set is not None:
            here.update(self.shard_set.presence())
        return here

    def _require(self) -> tuple[FleetState, FleetService]:
        if self.state is None or self.service is None:
            raise SimulationError("the simulation is not started; use 'async with Simulation(...)' or await start()")
        return self.state, self.service

    async def start(self) -> None:
        """Start the fleet server (broker, state, service, bridge, HTTP server) and every device; return once every
        device is connected."""
        if self.state is not None or self._started_at:
            return
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise

    async def _start(self) -> None:
        things = self.server.devices
        raise_fd_limit()
        self._check_open_files(things)
        if self.attach is not None:  # a shard: the parent's fleet server runs; this process runs the spec's devices
            named = set(self.attach.things)
            things = [d for d in things if d.thing in named]
            if self.tls:
                assert self.attach.tls_folder is not None
                self._attached_material = TlsMaterial.open(self.attach.tls_folder)
            await self._connect(things, "127.0.0.1", self.attach.broker_port)
            return
        running = self.folder.running()
        if running is not None:
            raise SimulationError(
                f"a simulation already runs on {self.folder.root} (pid {running['pid']}); stop it, or give another --state"
            )
        await self.server.start()
        assert self.broker is not None
        if any(d.emulated for d in things):
            self.progress("preparing the emulated devices' aarch64 Python (qemu-user)")
            try:
                self.emulation = await asyncio.to_thread(
                    prepare_emulation, self.folder.root / "emulated", self.sysroot_cache, self.progress
                )
            except ToolchainError as exc:
                if not self.emulation_fallback:
                    raise
                log.warning("emulated devices run as simulated ones (%s): %s", self.mode, exc)
                self.progress(f"emulated devices run as simulated ones ({self.mode}): {exc}")
                fallen = {d.thing: on for d in things if d.emulated and (on := stand_in_for(d)) is not None}
                self.stand_ins.update(fallen)  # now they are stand-ins too (the page and /api/fleet share this map)
                self.server.stand_ins.update(fallen)
        here, sharded = list(things), []
        if self.shards > 1:  # emulated devices are processes of their own already: they stay with this one
            here = [d for d in things if d.emulated and self.emulation is not None]
            sharded = [d for d in things if not (d.emulated and self.emulation is not None)]
        started = time.monotonic()
        if sharded:
            await self._start_shards([d.thing for d in sharded])
        await self._connect(here, "127.0.0.1", self.broker.port, started)
        if self.apply_faults and self.fleet.faults:
            self._fault_task = asyncio.get_running_loop().create_task(self._run_faults(self.fleet.faults))

    async def _connect(self, things: Sequence[FleetDevice], host: str, port: int, started: float | None = None) -> None:
        """Open a network link for each of ``things`` and boot its agent; return once every one is connected."""
        for device in things:
            link = NetworkLink(device.thing, host, port)
            await link.open()
            self.devices[device.thing] = SimulatedDevice(device, self.folder.device(device.thing), link)
        if things or self.shard_set is None:
            self.progress(f"connecting {len(things)} device(s) ({self.mode}{', mTLS' if self.tls else ''})")
        started = time.monotonic() if started is None else started
        gate = asyncio.Semaphore(self.connect_concurrency)

        async def boot(dev: SimulatedDevice) -> None:
            async with gate:
                for attempt in range(1, _CONNECT_ATTEMPTS + 1):
                    try:
                        await self._boot(dev)
                        break
                    except ConnectError as exc:  # a handshake that timed out on a busy machine: try again
                        if attempt == _CONNECT_ATTEMPTS or "timed out" not in str(exc):
                            raise
                        log.warning("%s: %s; trying again (%d of %d)", dev.thing, exc, attempt + 1, _CONNECT_ATTEMPTS)
                self.booted += 1

        await asyncio.gather(*(boot(d) for d in self.devices.values()))
        self.connect_s = time.monotonic() - started
        self._started_at = time.monotonic()
        total = len(things) + (self.shard_set.devices if self.shard_set is not None else 0)
        shards = f" ({self.shards} shards)" if self.shard_set is not None else ""
        self.progress(f"{total} device(s) connected in {self.connect_s:.2f} s{shards}")

    def _check_open_files(self, things: Sequence[FleetDevice]) -> None:
        """Refuse, in one line, a split that would run a process out of open files while its devices connect."""
        if self.attach is not None:  # the parent checked the split
            return
        names = [d.thing for d in things]
        busiest = max((len(p) for p in (split(names, self.shards) if self.shards > 1 else [names])), default=0)
        fits = devices_per_process()
        if busiest > fits:
            raise ConfigError(
                f"{busiest:,} simulated devices in one process need ~{busiest * FILES_PER_DEVICE:,} open files, more than "
                f"this machine's hard limit allows (ulimit -Hn: at most {fits:,} devices a process): give --shards "
                f"{max(shards_for_open_files(len(names)), self.shards + 1)}, or raise the hard limit"
            )

    async def _start_shards(self, things: list[str]) -> None:
        """Start the shard processes for ``things`` (split by name); return once their devices are connected."""
        assert self.broker is not None and self.http is not None
        parts = [p for p in split(things, self.shards) if p]
        fleet = self.fleet.model_dump(mode="json", exclude_none=True)
        tls_folder = str(self.material.folder) if self.material is not None else None
        specs = []
        for i, part in enumerate(parts):
            spec = ShardSpec(
                index=i, count=len(parts), things=part, fleet=fleet, state_dir=str(self.folder.root),
                broker_port=self.broker.port, registry_url=self.http.url, tls_folder=tls_folder, mode=self.mode,
                stand_ins={t: self.stand_ins[t] for t in part if t in self.stand_ins},
                agent_options=self.agent_options, runner_options=self.runner_options,
                connect_concurrency=max(1, self.connect_concurrency // len(parts)), seed=self.seed,
            )  # fmt: skip
            specs.append(spec)
        self.progress(
            f"connecting {len(things)} device(s) in {len(parts)} shard processes ({self.mode}{', mTLS' if self.tls else ''})"
        )
        self.shard_set = ShardSet(specs, self.folder.root / "shards", self.progress, self._record)
        await self.shard_set.start()

    async def close(self) -> None:
        """Stop every device (cleanly: Shutdown steps run), then the fleet server (bridge, HTTP server, broker)."""
        if self._fault_task is not None:
            self._fault_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fault_task
            self._fault_task = None
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(self._shutdown(d, crash=False) for d in self.devices.values()), return_exceptions=True)
        await asyncio.gather(*(d.link.close() for d in self.devices.values()), return_exceptions=True)
        if self.shard_set is not None:
            await self.shard_set.stop()
        await self.server.close()

    # ------------------------------------------------------------------ devices

    def _download_fault_targets(self) -> set[str]:
        """The devices a ``corrupt_downloads`` fault of the fleet file targets (picked as :meth:`_pick` does)."""
        names = sorted(d.thing for d in self.fleet.expand())
        out: set[str] = set()
        for index, fault in enumerate(self.fleet.faults):
            if fault.fault != "corrupt_downloads":
                continue
            if fault.things is not None:
                out.update(fault.things)
            elif fault.fraction is None:
                out.update(names)
            else:
                k = max(1, round(fault.fraction * len(names)))
                out.update(random.Random(f"{self.fleet.name}:{self.seed}:{index}").sample(names, k))
        return out

    @property
    def artifact_share(self) -> ArtifactShare:
        """What this process's simulated devices share: one download and unpack per artifact, each device verifying
        it (:class:`~edgekit.device.download.ArtifactShare`); a shard has its own, in its own folder."""
        if self._share is None:
            name = f"shard-{self.attach.index}" if self.attach is not None else "simulation"
            # in subprocess mode components are real processes: each device unpacks its own copy, as it may write it
            self._share = ArtifactShare(self.folder.root / "shared" / name, unpack=self.mode == "in_process")
        return self._share

    def _make_agent(self, dev: SimulatedDevice, report: StateCallback) -> DeviceAgent:
        options: dict[str, Any] = {"fsync": False, "settle_s": 0.5, "download_backoff_s": 0.02}
        options.update(self.agent_options)
        if "cache_dir" not in options and dev.thing not in self._downloads_alone:
            options.setdefault("share", self.artifact_share)  # one download, unpack, recipe per process (local-fleet.md)
        if self.mode == "in_process":
            options.setdefault("executor", self._executor)
            options.setdefault("ipc", True)  # in-process components (the inference loop) publish through it
        else:  # the runtime component's Install uses this interpreter and its packages: no network (docs/local-fleet.md)
            stand_in = {STAND_IN_ENV: "1"} if dev.thing in self.stand_ins else {}  # runs the artifact's host twin
            options["env"] = {HOST_PYTHON_ENV: sys.executable, **stand_in, **dict(options.get("env") or {})}
        agent = DeviceAgent(
            dev.thing,
            dev.root,
            dev.device.platform,
            self.registry_url,
            dev.device.groups,
            mode=self.mode,
            report=report,
            **options,
        )
        if agent.ipc is not None:
            self._executor.runners.devices[dev.thing] = agent.ipc
            # its uplink drains when a publish arrives or the client reconnects; between those, idle checks of an
            # empty spool (a SQLite query a second per device, ~15 % of a shard at 1 reading/s) are spaced out
            agent.ipc.iot_core.interval_s = max(agent.ipc.iot_core.interval_s, _UPLINK_IDLE_S)
            if dev.device.scenario:
                self._executor.runners.scenarios[dev.thing] = dev.device.scenario
        return agent

    def _bundle(self, dev: SimulatedDevice) -> Path:
        """The emulated device's bundle (as ``edgekit fleet add-device`` makes one: the certificate the fleet's CA
        issued it), its broker being its network link; returns its ``config.yaml``."""
        assert self.http is not None and self.emulation is not None
        tls = self.material.device(dev.thing) if self.material is not None else None
        bundle = DeviceBundle(
            thing_name=dev.thing,
            thing_groups=dev.device.groups,
            platform=dev.device.platform,
            profile=dev.device.profile,
            fleet=self.fleet.name,
            broker_url=f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{dev.link.local_port}",
            registry_url=self.http.url,
            root_ca_path=str(tls.ca) if tls else None,
            certificate_file_path=str(tls.cert) if tls else None,
            private_key_path=str(tls.key) if tls else None,
            rootpath=str(dev.root),
        )
        return write_bundle(self.emulation.folder / dev.thing, bundle)

    async def _boot_emulated(self, dev: SimulatedDevice) -> None:
        """Start ``dev``'s agent process under qemu; return once it is connected."""
        assert self.emulation is not None
        config = self._bundle(dev)
        process = EmulatedAgent(dev.thing, self.emulation, config, config.parent / "agent.log")
        dev.process = process
        await process.start()

    async def _boot(self, dev: SimulatedDevice) -> None:
        """A fresh agent, client and runner for ``dev``, connected; the runner resumes the agent from its folder."""
        if dev.device.emulated and self.emulation is not None:
            await self._boot_emulated(dev)
            return
        runner: DeviceMqttRunner | None = None

        def report(component: str, old: str, new: str, detail: str) -> None:
            if runner is not None:
                runner.component_changed(component, old, new, detail)

        agent = self._make_agent(dev, report)
        tls = self.material.device(dev.thing) if self.material is not None else None
        client = MqttClient(
            dev.thing, tls=tls, reconnect=self.reconnect or Backoff(initial=0.2, maximum=5.0), connect_timeout=_CONNECT_TIMEOUT_S
        )
        runner = DeviceMqttRunner(agent, client, owns_client=True, **self.runner_options)
        dev.agent, dev.client, dev.runner = agent, client, runner
        await runner.start()
        try:
            await client.connect(f"{'mqtts' if tls else 'mqtt'}://127.0.0.1:{dev.link.local_port}")
        except BaseException:
            dev.agent = dev.client = dev.runner = None
            await runner.stop()
            await agent.kill()
            raise

    async def _shutdown(self, dev: SimulatedDevice, *, crash: bool) -> None:
        """Stop ``dev``: cleanly (Shutdown steps run, the client says DISCONNECT) or as a crash (nothing runs or is saved)."""
        if dev.revive is not None:
            dev.revive.cancel()
            dev.revive = None
        runner, agent, process = dev.runner, dev.agent, dev.process
        dev.runner = dev.agent = dev.client = None
        if process is not None:
            if crash:
                dev.link.drop()
                await process.kill()
            else:
                await process.stop()
            return
        if crash:
            self._executor.runners.kill(dev.thing)  # in-process components die with the agent
            dev.link.drop()  # the process is gone: its TCP connection dies without a DISCONNECT
            if agent is not None:
                await agent.kill()
            if runner is not None:
                await runner.stop()
            return
        if runner is not None:
            await runner.stop()
        if agent is not None:
            await agent.stop()

    def _device(self, thing: str) -> SimulatedDevice:
        dev = self.devices.get(thing)
        if dev is None:
            raise SimulationError(f"the simulation has no device '{thing}'")
        return dev

    def _sharded(self, thing: str) -> bool:
        """Whether ``thing`` runs in a shard process (else here; :class:`SimulationError` when nowhere)."""
        if thing in self.devices:
            return False
        if self.shard_set is not None and thing in self.shard_set.owner:
            return True
        raise SimulationError(f"the simulation has no device '{thing}'")

    def _pick(self, fault: Fault, index: int) -> list[str]:
        if fault.things is not None:
            for thing in fault.things:
                self._sharded(thing)
            return list(fault.things)
        names = sorted([*self.devices, *(self.shard_set.owner if self.shard_set is not None else ())])
        if fault.fraction is None:
            return names
        k = max(1, round(fault.fraction * len(names)))
        return sorted(random.Random(f"{self.fleet.name}:{self.seed}:{index}").sample(names, k))

    # ------------------------------------------------------------------ the fleet

    def publish(self, build_dir: str | Path) -> list[PublishedComponent]:
        """Publish a packaged build folder (``edgekit package``'s) to the local registry."""
        self._require()
        return self.server.publish(build_dir)

    def deploy(self, spec: DeploymentSpec | Mapping[str, Any]) -> str:
        """Create a deployment (CreateDeployment fields); the bridge rolls it out on its next tick. Returns its id."""
        self._require()
        return self.server.deploy(spec)

    async def wait(self, deployment_id: str, timeout: float) -> DeploymentSummary:
        """Wait until ``deployment_id`` is no longer ACTIVE; :class:`SimulationTimeoutError` after ``timeout`` seconds."""
        self._require()
        deadline = time.monotonic() + timeout
        while True:
            try:
                summary = self.server.deployment(deployment_id)
            except NotFoundError as exc:
                raise SimulationError(str(exc)) from exc
            if summary.status != "ACTIVE":
                return summary
            if time.monotonic() >= deadline:
                raise SimulationTimeoutError(
                    f"deployment {deployment_id} still ACTIVE after {timeout:g} s: {summary.counts}; "
                    "see 'edgekit fleet status' for the devices that did not finish"
                )
            await asyncio.sleep(_POLL_S)

    @property
    def inference(self) -> InProcessRunners:
        """The in-process components' runs (the inference loops), by thing: see :mod:`edgekit.sim.inference`."""
        return self._executor.runners

    async def inference_checkpoints(self) -> list[Checkpoint]:
        """A :class:`~edgekit.edge.loop.Checkpoint` of every in-process inference loop this simulation started:
        running ones close their window now; ended ones give their last (a crashed one's counts its lost window).
        An emulated device's components are processes: theirs is the one each wrote after its last closed window."""
        runs = [run for runs in self._executor.runners.runs.values() for run in runs]
        points = list(await asyncio.gather(*(run.loop.checkpoint() for run in runs)))
        if self.shard_set is not None:  # the shards' loops: each shard checkpoints its own
            points += await self.shard_set.checkpoints()
        if self.emulation is not None:  # their components write theirs after each window (up to its last closed one)
            for dev in self.devices.values():
                config = self.emulation.folder / dev.thing / BUNDLE_CONFIG
                if dev.device.emulated and config.is_file():
                    points += read_checkpoints(config)
        return points

    def status(self) -> SimulationStatus:
        """The fleet at a glance (see :class:`SimulationStatus`)."""
        self._require()
        return SimulationStatus(
            elapsed_s=time.monotonic() - self._started_at if self._started_at else 0.0,
            devices=len(self.devices) + (self.shard_set.devices if self.shard_set is not None else 0),
            alive=sum(1 for d in self.devices.values() if d.alive) + (self.shard_set.alive() if self.shard_set else 0),
            faults=list(self._fault_log),
            broker_url=self.broker_url,
            view=self.server.view(),
        )

    # ------------------------------------------------------------------ faults

    def _note(self, text: str) -> None:
        self._record(text)
        log.warning("fault injection: %s", text)

    def _record(self, text: str) -> None:
        """Add ``text`` to the faults the status shows (a fault applied, a shard that died or came back)."""
        stamp = time.monotonic() - self._started_at if self._started_at else 0.0
        self._fault_log.append(f"t+{stamp:.1f}s {text}")

    async def cut_network(self, thing: str, seconds: float) -> None:
        """Drop ``thing``'s MQTT connection and refuse its reconnects for ``seconds``."""
        if self._sharded(thing):
            assert self.shard_set is not None
            await self.shard_set.fault("cut_network", thing, seconds)
        else:
            self._device(thing).link.cut(seconds)
        self._note(f"network of {thing} cut for {seconds:g} s")

    async def kill_device(self, thing: str, *, restart_after: float | None = None) -> None:
        """Crash ``thing``: the agent dies mid-whatever (no Shutdown, nothing saved), its connection drops.

        ``restart_after``: a fresh agent resumes from the same folder after that many seconds.
        """
        if self._sharded(thing):
            assert self.shard_set is not None
            await self.shard_set.fault("kill_device", thing, restart_after)
            self._note(f"{thing} killed" + (f", back in {restart_after:g} s" if restart_after else ""))
            return
        dev = self._device(thing)
        await self._shutdown(dev, crash=True)
        self._note(f"{thing} killed" + (f", back in {restart_after:g} s" if restart_after else ""))
        if restart_after is not None:
            dev.revive = asyncio.get_running_loop().call_later(
                restart_after, lambda: self._spawn(self.restart_device(thing, crash=False))
            )

    async def restart_device(self, thing: str, *, crash: bool = True) -> None:
        """Crash ``thing`` (unless already down) and start a fresh agent and runner on the same folder: it resumes."""
        if self._sharded(thing):
            assert self.shard_set is not None
            await self.shard_set.fault("restart_device", thing, None)
            self._note(f"{thing} restarted in its shard")
            return
        dev = self._device(thing)
        if crash or dev.alive:
            await self._shutdown(dev, crash=True)
        dev.restarts += 1
        await self._boot(dev)
        self._note(f"{thing} restarted (resumes from {dev.root})")

    def corrupt_downloads(self, thing: str | None, n: int) -> None:
        """Corrupt the next ``n`` artifact downloads of ``thing`` (of any device when None); 10 in a row fail the device."""
        if thing is not None and not self._sharded(thing):  # its own downloads, not the share's: the fault hits them
            self._downloads_alone.add(thing)
            agent = self.devices[thing].agent
            if agent is not None:
                agent.fetcher.alone(agent.layout.packages / "cache")
        if self.http is None:
            raise SimulationError("the simulation is not started")
        self.http.corrupt_downloads(thing, n)
        self._note(f"next {n} download(s) of {thing or 'any device'} corrupted")

    async def restart_broker(self, down_s: float = 0.0) -> None:
        """Stop the broker and start it again on the same port (``down_s`` seconds later: an outage); every device
        reconnects and asks for its pending jobs, and its uplink sends what it spooled meanwhile."""
        broker = self.broker
        if broker is None:
            raise SimulationError("the simulation is not started")
        for dev in self.devices.values():
            dev.link.drop()
        if down_s > 0:
            await asyncio.to_thread(broker.stop)
            self._note(f"broker down for {down_s:g} s")
            await asyncio.sleep(down_s)
            await asyncio.to_thread(broker.start)
        else:
            await asyncio.to_thread(broker.restart)
        self._note("broker restarted")

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[Any] = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("simulation task failed", exc_info=task.exception())

    async def apply_fault(self, fault: Fault, index: int = 0) -> None:
        """Apply one fault of a fleet file now."""
        if fault.fault == "restart_broker":
            await self.restart_broker(fault.seconds or 0.0)
            return
        things = self._pick(fault, index)
        if fault.fault == "cut_network":
            for thing in things:
                await self.cut_network(thing, fault.seconds or 0.0)
        elif fault.fault == "corrupt_downloads":
            for thing in things:
                self.corrupt_downloads(thing, fault.count)
        elif fault.fault == "kill_device":
            for thing in things:
                await self.kill_device(thing, restart_after=fault.seconds)
        elif fault.fault == "restart_device":
            await asyncio.gather(*(self.restart_device(t) for t in things))
        else:  # pragma: no cover - Fault validates the kind
            raise ConfigError(f"unknown fault '{fault.fault}'")

    async def _run_faults(self, faults: Sequence[Fault]) -> None:
        order = sorted(enumerate(faults), key=lambda item: item[1].at)
        for index, fault in order:
            delay = self._started_at + fault.at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                await self.apply_fault(fault, index)
            except Exception:
                log.exception("fault %s failed", fault)


def _check_scenarios(fleet: str, devices: Sequence[FleetDevice]) -> None:
    """A device's ``scenario`` in the fleet file must read as a synthetic source's keys; else one line naming it."""
    for device in devices:
        if device.scenario is not None:
            try:
                Scenario.parse(device.scenario, what=f"fleet '{fleet}': device '{device.thing}': scenario '{device.scenario}'")
            except EdgeError as exc:
                raise ConfigError(f"{exc}; see docs/local-fleet.md (fleet files)") from None
