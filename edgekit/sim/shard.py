"""One shard process of a simulation: ``python -m edgekit.sim.shard SPEC.json`` (started by :mod:`edgekit.sim.shards`).

It runs the devices its spec names (a :class:`~edgekit.sim.simulation.Simulation` attached to the parent's running
fleet server: no broker, state or service of its own) and speaks JSON lines with the parent: on stdout its progress
while connecting, then once a second who of its devices connected or disconnected, how many agents are up and how
many readings its inference loops produced; on stdin the parent's requests (checkpoints, device faults). Closing
its stdin or SIGTERM stops it cleanly. See docs/local-fleet.md (shards).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import IO, Any, Final

from edgekit.errors import EdgekitError
from edgekit.fleet_file import FleetFile
from edgekit.sim.shards import ShardSpec
from edgekit.sim.simulation import Simulation

__all__ = ["GcFreeze", "main"]

log = logging.getLogger(__name__)

_REPORT_S: Final = 1.0
_SETTLE_S: Final = 10.0
_YOUNG_GC: Final = 10_000
"""A shard's youngest-generation threshold (Python's default: 700 allocations): a window's objects live seconds,
so collecting every 700 allocations only moves them up a generation to be walked again there."""


class GcFreeze:
    """``gc.freeze()`` once a shard's devices have settled: its thousands of agents, clients and loops (~150,000
    objects at 1,000 devices) are then left out of the collector's full passes, which otherwise walk them all now
    and then (55–340 ms each, the shard's loop stopped meanwhile) to find nothing.

    :meth:`check` is given what the shard runs (its agents up, its inference loops running) once a second; when that
    has not changed for ``settle_s`` and differs from what was frozen last, it unfreezes, collects and freezes again
    (the garbage of a deployment is collected first; a later one's is collected at its own freeze). Objects frozen
    still go when nothing refers to them: only cycles among them wait for the next freeze."""

    def __init__(self, settle_s: float = _SETTLE_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.settle_s = settle_s
        self.clock = clock
        self.freezes = 0
        self._shape: tuple[int, ...] | None = None
        self._since = 0.0
        self._frozen: tuple[int, ...] | None = None

    def check(self, shape: tuple[int, ...]) -> bool:
        """Freeze now if ``shape`` has held for ``settle_s`` and was not frozen already; True when it froze."""
        now = self.clock()
        if shape != self._shape:
            self._shape, self._since = shape, now
            return False
        if shape == self._frozen or now - self._since < self.settle_s:
            return False
        gc.unfreeze()
        gc.collect()
        gc.freeze()
        self._frozen = shape
        self.freezes += 1
        return True


class _Shard:
    def __init__(self, spec: ShardSpec, out: IO[str]) -> None:
        self.spec = spec
        self.out = out
        self.sim = Simulation(
            FleetFile.model_validate(spec.fleet),
            state_dir=spec.state_dir,
            attach=spec,
            mode="subprocess" if spec.mode == "subprocess" else "in_process",
            tls=spec.tls_folder is not None,
            agent_options=spec.agent_options,
            runner_options=spec.runner_options,
            connect_concurrency=spec.connect_concurrency,
            seed=spec.seed,
            apply_faults=False,
        )
        self.reported: dict[str, bool] = {}
        self.freezer = GcFreeze()

    def emit(self, event: str, **fields: Any) -> None:
        self.out.write(json.dumps({"event": event, **fields}) + "\n")
        self.out.flush()

    async def report(self, *, booting: bool = False) -> None:
        while True:
            if booting:
                self.emit("booting", booted=self.sim.booted)
            else:
                now = self.sim.presence()
                up = [t for t, c in now.items() if c and self.reported.get(t) is not True]
                down = [t for t, c in now.items() if not c and self.reported.get(t) is not False]
                self.reported = now
                alive = sum(1 for d in self.sim.devices.values() if d.alive)
                readings = sum(run.loop.readings for runs in self.sim.inference.runs.values() for run in runs)
                self.emit("status", up=up, down=down, alive=alive, readings=readings)
                self.freezer.check((alive, sum(1 for t, c in now.items() if c), len(self.sim.inference.active())))
            await asyncio.sleep(_REPORT_S)

    async def serve(self, stop: asyncio.Event) -> None:
        reader = asyncio.StreamReader(limit=1 << 20)
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        try:
            while not stop.is_set():
                line = await reader.readline()
                if not line:
                    return
                await self.handle(json.loads(line))
        finally:
            transport.close()

    async def handle(self, request: dict[str, Any]) -> None:
        op = request["op"]
        if op == "checkpoints":
            points = await self.sim.inference_checkpoints()
            self.emit("checkpoints", id=request["id"], points=[asdict(p) for p in points])
            return
        thing, seconds = str(request["thing"]), request.get("seconds")
        try:
            if op == "cut_network":
                await self.sim.cut_network(thing, float(seconds or 0.0))
            elif op == "kill_device":
                await self.sim.kill_device(thing, restart_after=seconds)
            elif op == "restart_device":
                await self.sim.restart_device(thing)
            else:
                log.error("unknown request %r", op)
        except EdgekitError as exc:
            log.error("%s %s: %s", op, thing, exc)

    async def run(self) -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        booting = loop.create_task(self.report(booting=True))
        started = time.monotonic()
        try:
            await self.sim.start()
        except EdgekitError as exc:
            self.emit("error", message=str(exc))
            return 1
        finally:
            booting.cancel()
        self.emit("ready", connect_s=round(time.monotonic() - started, 3))
        reporter = loop.create_task(self.report())
        server = loop.create_task(self.serve(stop))
        stopped = loop.create_task(stop.wait())
        try:
            await asyncio.wait({server, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reporter, server, stopped):
                task.cancel()
            await asyncio.gather(reporter, server, stopped, return_exceptions=True)
            await self.sim.close()
        return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = os.fdopen(os.dup(1), "w")  # the parent's channel; anything else printed goes to stderr (the shard's log)
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    spec = ShardSpec.read(Path(args[0]))
    gc.set_threshold(_YOUNG_GC, *gc.get_threshold()[1:])
    with contextlib.closing(out):
        return asyncio.run(_Shard(spec, out).run())


if __name__ == "__main__":
    sys.exit(main())
