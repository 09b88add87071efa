"""Simulator shards: a simulation's devices in N processes against one broker and one fleet server.

::

    Simulation(fleet, shards=2)        # the fleet server here, the devices in two shard processes

The parent (:class:`~edgekit.sim.simulation.Simulation`) runs the fleet server (broker, state, service, bridge,
HTTP) and starts one ``python -m edgekit.sim.shard`` process per shard; each runs its devices (agents, MQTT clients,
in-process components) in its own asyncio loop, as an unsharded simulation does, and connects to the parent's broker
and registry. Devices are split by a hash of their thing name (:func:`shard_of`): the same device lands in the same
shard on every run, whatever else the fleet holds.

Parent and shard talk in JSON lines: the shard writes its progress while connecting, then who of its devices is
connected (changes only), how many agents are up and how many readings its inference loops produced; the parent
asks it for checkpoints and forwards device faults. A shard that dies (``kill -9``, out of memory) is reported in
one line naming its devices, they show as disconnected, and the parent starts it again: each agent resumes from its
folder, as a restarted device does. See docs/local-fleet.md (shards) and docs/scale.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from edgekit.children import die_with_parent
from edgekit.edge.loop import Checkpoint
from edgekit.progress import Progress
from edgekit.sim.errors import SimulationError

__all__ = [
    "FILES_PER_DEVICE",
    "ShardProcess",
    "ShardSet",
    "ShardSpec",
    "default_shards",
    "devices_per_process",
    "shard_of",
    "shards_for_open_files",
    "split",
]

log = logging.getLogger(__name__)

_START_TIMEOUT_S: Final = 600.0
_RESTART_AFTER_S: Final = 1.0
_QUICK_DEATH_S: Final = 20.0
"""A shard that dies this soon after it started counts as failing to start: after 3 in a row it is not restarted."""
_MAX_QUICK_DEATHS: Final = 3
_NAMES_SHOWN: Final = 5
_SILENT_S: Final = 60.0
"""A shard asked for its checkpoints that writes nothing (not even its twice-a-second status) this long is stalled."""
_LATE_SAY_S: Final = 30.0


FILES_PER_DEVICE: Final = 8
"""Open files a simulated device holds in its process: its MQTT socket, its network link's three sockets (listening,
device side, broker side), its spool's SQLite database, WAL and shared-memory files (7, counted in a shard at 1,000
devices), and one to spare."""
_FILES_BASE: Final = 256  # the process's own: the interpreter, the loop, logs, pipes, a few HTTP requests at once


def _open_file_limit() -> int:
    """The most open files this process may have (its hard limit, which :func:`raise_fd_limit` raises the soft to)."""
    import resource

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if hard == resource.RLIM_INFINITY else int(hard)


def devices_per_process(limit: int | None = None) -> int:
    """How many simulated devices one process can hold within ``limit`` open files (default: this process's hard
    limit, which shards inherit)."""
    return max(1, ((limit if limit is not None else _open_file_limit()) - _FILES_BASE) // FILES_PER_DEVICE)


def shards_for_open_files(devices: int) -> int:
    """The fewest shards that hold ``devices`` within the open-file limit (with a tenth to spare: the split by name
    is not quite even): 10,000 devices under a hard limit of 20,000 need 5."""
    return max(1, -(-devices * 11 // (devices_per_process() * 10)))


def default_shards(devices: int = 0) -> int:
    """``--shards``' default: the cores this process may run on, or more where ``devices`` would not fit the
    open-file limit in that many processes (:func:`shards_for_open_files`)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = max(1, os.cpu_count() or 1)
    return max(cores, shards_for_open_files(devices))


def shard_of(thing: str, shards: int) -> int:
    """The shard (0 … ``shards``-1) that runs ``thing``: a hash of its name, the same on every run and machine."""
    digest = hashlib.blake2b(thing.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def split(things: Sequence[str], shards: int) -> list[list[str]]:
    """``things`` by shard (:func:`shard_of`), each list in the order given."""
    parts: list[list[str]] = [[] for _ in range(shards)]
    for thing in things:
        parts[shard_of(thing, shards)].append(thing)
    return parts


def _names(things: Sequence[str]) -> str:
    shown = ", ".join(things[:_NAMES_SHOWN])
    return shown + (f" and {len(things) - _NAMES_SHOWN} more" if len(things) > _NAMES_SHOWN else "")


@dataclass(frozen=True)
class ShardSpec:
    """What a shard process is told (a JSON file): its devices, and where the running fleet server is."""

    index: int
    count: int
    things: list[str]
    fleet: dict[str, Any]
    """The fleet file (as JSON), already scaled: the shard runs the entries named in ``things``."""
    state_dir: str
    broker_port: int
    registry_url: str
    tls_folder: str | None
    mode: str
    stand_ins: dict[str, str] = field(default_factory=dict)
    agent_options: dict[str, Any] = field(default_factory=dict)
    runner_options: dict[str, Any] = field(default_factory=dict)
    connect_concurrency: int = 200
    seed: int = 0

    def write(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.write_text(json.dumps(asdict(self)))
        except TypeError as exc:  # an agent option that is an object (an executor): it can't cross a process
            raise SimulationError(
                f"shard {self.index}: agent_options / runner_options must be plain JSON values with shards > 1 ({exc})"
            ) from None
        return path

    @classmethod
    def read(cls, path: Path) -> ShardSpec:
        return cls(**json.loads(path.read_text()))


class ShardProcess:
    """One shard process, seen from the parent: its devices, who of them is connected, how many readings."""

    def __init__(self, spec: ShardSpec, folder: Path, on_death: Callable[[ShardProcess, int], None]) -> None:
        self.spec = spec
        self.index = spec.index
        self.things = list(spec.things)
        self.folder = folder
        self.on_death = on_death
        self.connected: dict[str, bool] = {}
        self.alive_devices = 0
        self.readings = 0
        self.booted = 0
        self.starts = 0
        self.quick_deaths = 0
        self.started_at = 0.0
        self.heard_at = 0.0
        """When the shard last wrote a line (``time.monotonic()``): it writes its status once a second."""
        self.connect_s: float | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.stopping = False
        self._reader: asyncio.Task[None] | None = None
        self._replies: dict[int, asyncio.Future[list[Checkpoint]]] = {}
        self._next_id = 0
        self._log: Any = None
        self.error: str | None = None

    @property
    def name(self) -> str:
        return f"shard {self.index + 1} of {self.spec.count}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    @property
    def log_path(self) -> Path:
        return self.folder / f"shard-{self.index}.log"

    async def start(self) -> None:
        """Start the process (its devices connect in it); :attr:`ready` is set once they are connected."""
        spec_file = self.spec.write(self.folder / f"shard-{self.index}.json")
        self.ready = asyncio.Event()
        self.connected = {}
        self.alive_devices = self.booted = self.readings = 0
        if self._log is not None:
            self._log.close()
        self._log = self.log_path.open("ab")
        self.starts += 1
        self.started_at = self.heard_at = time.monotonic()
        self.proc = await asyncio.create_subprocess_exec(
            *self.command(spec_file),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._log,
            preexec_fn=die_with_parent(signal.SIGKILL), limit=1 << 24,
        )  # fmt: skip
        self._reader = asyncio.get_running_loop().create_task(self._read())

    def command(self, spec_file: Path) -> list[str]:
        """The shard process's command line."""
        return [sys.executable, "-m", "edgekit.sim.shard", str(spec_file)]

    async def _read(self) -> None:
        proc = self.proc
        assert proc is not None and proc.stdout is not None
        while line := await proc.stdout.readline():
            self.heard_at = time.monotonic()
            try:
                self._on_line(json.loads(line))
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("%s: unreadable line %r (%s)", self.name, line[:200], exc)
        code = await proc.wait()
        for future in self._replies.values():
            if not future.done():
                future.set_result([])
        self._replies.clear()
        self.connected = dict.fromkeys(self.things, False)
        self.alive_devices = 0
        if not self.stopping:
            self.on_death(self, code)

    def _on_line(self, message: dict[str, Any]) -> None:
        event = message["event"]
        if event == "booting":
            self.booted = int(message["booted"])
        elif event == "ready":
            self.booted = len(self.things)
            self.connect_s = float(message["connect_s"])
            self.ready.set()
        elif event == "status":
            for thing in message.get("up", ()):
                self.connected[thing] = True
            for thing in message.get("down", ()):
                self.connected[thing] = False
            self.alive_devices = int(message["alive"])
            self.readings = int(message["readings"])
        elif event == "checkpoints":
            future = self._replies.pop(int(message["id"]), None)
            if future is not None and not future.done():
                future.set_result([Checkpoint(**p) for p in message["points"]])
        elif event == "error":
            log.error("%s: %s", self.name, message["message"])
            self.error = str(message["message"])

    async def _send(self, message: dict[str, Any]) -> bool:
        proc = self.proc
        if proc is None or proc.stdin is None or proc.returncode is not None:
            return False
        try:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
            await proc.stdin.drain()
        except (ConnectionError, RuntimeError):
            return False
        return True

    async def checkpoints(self, silent_s: float = _SILENT_S) -> list[Checkpoint]:
        """A checkpoint of every inference loop in the shard (none when it is down).

        However long a busy shard takes to answer, it is waited for while it keeps writing (its status comes twice a
        second); one that writes nothing for ``silent_s`` seconds is stalled: :class:`SimulationError`.
        """
        self._next_id += 1
        request = self._next_id
        future: asyncio.Future[list[Checkpoint]] = asyncio.get_running_loop().create_future()
        self._replies[request] = future
        if not await self._send({"op": "checkpoints", "id": request}):
            self._replies.pop(request, None)
            return []
        asked = said = time.monotonic()
        try:
            while True:
                quiet = time.monotonic() - self.heard_at
                if quiet >= silent_s:
                    raise SimulationError(
                        f"{self.name} (pid {self.pid}) wrote nothing for {quiet:.0f} s while asked for its checkpoints: "
                        f"stalled; see {self.log_path}"
                    )
                with contextlib.suppress(TimeoutError):
                    return await asyncio.wait_for(asyncio.shield(future), min(1.0, silent_s - quiet))
                if time.monotonic() - said >= _LATE_SAY_S:
                    said = time.monotonic()
                    log.warning("%s: still waiting for its checkpoints after %.0f s (it is busy, not stalled)",
                                self.name, said - asked)  # fmt: skip
        finally:
            self._replies.pop(request, None)

    async def fault(self, op: str, thing: str, seconds: float | None) -> None:
        """Apply a device fault (``cut_network``, ``kill_device``, ``restart_device``) to ``thing`` in the shard."""
        if not await self._send({"op": op, "thing": thing, "seconds": seconds}):
            raise SimulationError(f"{self.name} is down: can't apply {op} to {thing}")

    async def stop(self, timeout: float = 60.0) -> None:
        """Stop cleanly: the shard stops its agents (Shutdown steps run, clients disconnect) and exits."""
        self.stopping = True
        proc = self.proc
        if proc is not None and proc.returncode is None:
            if proc.stdin is not None:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    proc.stdin.close()
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                log.warning("%s did not stop in %g s; killing it", self.name, timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
            self._reader = None
        if self._log is not None:
            self._log.close()
            self._log = None


def _how(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class ShardSet:
    """The shard processes of a simulation: start them (progress while their devices connect), merge what they
    report, restart one that dies (its devices come back: each agent resumes from its folder)."""

    def __init__(self, specs: Sequence[ShardSpec], folder: Path, progress: Progress, note: Callable[[str], None]) -> None:
        self.folder = folder
        self.progress = progress
        self.note = note
        self.shards = [ShardProcess(spec, folder, self._died) for spec in specs]
        self.owner = {thing: shard for shard in self.shards for thing in shard.things}
        self.deaths = 0
        self.restarts = 0
        self.starting = False
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def devices(self) -> int:
        return len(self.owner)

    async def start(self) -> None:
        """Start every shard; return once every device in them is connected (progress said once a second)."""
        self.starting = True
        try:
            await self._start_all()
        finally:
            self.starting = False

    async def _start_all(self) -> None:
        for shard in self.shards:
            await shard.start()
        total, last = self.devices, -1
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not all(s.ready.is_set() for s in self.shards):
            for shard in self.shards:
                if not shard.alive and not shard.ready.is_set():
                    await shard.stop()
                    code = shard.proc.returncode if shard.proc is not None else None
                    raise SimulationError(
                        f"{shard.name} ended while starting ({_how(1 if code is None else code)}): "
                        f"{shard.error or 'see ' + str(shard.log_path)}"
                    )
            booted = sum(s.booted for s in self.shards)
            if booted != last:
                self.progress(f"connecting: {booted:,}/{total:,} device(s) in {len(self.shards)} shard(s)")
                last = booted
            if time.monotonic() > deadline:
                raise SimulationError(f"the shards did not connect their devices in {_START_TIMEOUT_S:g} s: {booted}/{total}")
            await asyncio.sleep(1.0)

    def presence(self) -> dict[str, bool]:
        """Thing → connected, for every device of every shard (a dead shard's: False)."""
        out: dict[str, bool] = {}
        for shard in self.shards:
            known = shard.connected
            out.update({thing: known.get(thing, False) for thing in shard.things})
        return out

    def alive(self) -> int:
        return sum(s.alive_devices for s in self.shards if s.alive)

    def readings(self) -> int:
        """Readings the shards' inference loops produced (as last reported, once a second)."""
        return sum(s.readings for s in self.shards)

    def pids(self) -> list[int]:
        return [pid for s in self.shards if (pid := s.pid) is not None and s.alive]

    async def checkpoints(self) -> list[Checkpoint]:
        parts = await asyncio.gather(*(s.checkpoints() for s in self.shards))
        return [p for part in parts for p in part]

    async def fault(self, op: str, thing: str, seconds: float | None) -> None:
        await self.owner[thing].fault(op, thing, seconds)

    def _died(self, shard: ShardProcess, code: int) -> None:
        if self.starting:  # start() says so and stops
            return
        self.deaths += 1
        quick = time.monotonic() - shard.started_at < _QUICK_DEATH_S and not shard.ready.is_set()
        shard.quick_deaths = shard.quick_deaths + 1 if quick else 0
        again = shard.quick_deaths < _MAX_QUICK_DEATHS
        line = (
            f"{shard.name} (pid {shard.pid}) died ({_how(code)}): its {len(shard.things)} device(s) are down "
            f"({_names(shard.things)}); "
            + (f"restarting it in {_RESTART_AFTER_S:g} s" if again else f"not restarted after {shard.quick_deaths} "
               f"failed starts: see {shard.log_path}")
        )  # fmt: skip
        log.error("%s", line)
        self.note(line)
        self.progress(line)
        if again:
            task = asyncio.get_running_loop().create_task(self._restart(shard))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _restart(self, shard: ShardProcess) -> None:
        await asyncio.sleep(_RESTART_AFTER_S)
        if shard.stopping:
            return
        await shard.start()
        self.restarts += 1
        await shard.ready.wait()
        line = f"{shard.name} restarted (pid {shard.pid}): its {len(shard.things)} device(s) resumed from their folders"
        log.warning("%s", line)
        self.note(line)
        self.progress(line)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for shard in self.shards:
            shard.stopping = True
        await asyncio.gather(*(s.stop() for s in self.shards), return_exceptions=True)
