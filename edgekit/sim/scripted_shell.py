"""Lifecycle steps of ``in_process`` devices: the part of ``sh`` that recipes modelling faults need, nothing spawned.

See docs/local-fleet.md (faults).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Sequence

from edgekit.device.executor import RunningProcess, StepResult, StepSpec
from edgekit.sim.inference import InProcessRunners

__all__ = ["SimulatedExecutor"]

_STATEMENT = re.compile(r"\s*(&&|\|\||;|\n)\s*")


def _parse(script: str) -> list[tuple[str, list[str]]] | None:
    """``[(operator, words), ...]`` (the first operator is ``;``); ``None`` if any command is not one we model."""
    parts = _STATEMENT.split(script.strip())
    steps: list[tuple[str, list[str]]] = []
    operator = ";"
    known = True
    for i, part in enumerate(parts):
        if i % 2 == 1:
            operator = "&&" if part == "&&" else "||" if part == "||" else ";"
            continue
        words = part.split()
        if not words:
            continue
        if words[0] not in ("exit", "sleep", "true", "false", ":"):
            known = False
        steps.append((operator, words))
    return steps if known else None


async def _interpret(steps: Sequence[tuple[str, list[str]]]) -> int:
    status = 0
    for operator, words in steps:
        if (operator == "&&" and status != 0) or (operator == "||" and status == 0):
            continue
        command, args = words[0], words[1:]
        if command == "exit":
            try:
                return int(args[0]) & 0xFF if args else status
            except ValueError:
                return 2
        if command == "sleep":
            try:
                await asyncio.sleep(max(0.0, float(args[0].rstrip("s"))) if args else 0.0)
                status = 0
            except ValueError:
                status = 1
        else:
            status = 1 if command == "false" else 0
    return status


class _SimulatedRun:
    """A Run step in in_process mode: runs its modelled script, or stays RUNNING until stopped."""

    def __init__(self, steps: Sequence[tuple[str, list[str]]] | None) -> None:
        loop = asyncio.get_running_loop()
        self._done: asyncio.Future[int] = loop.create_future()
        self._task: asyncio.Task[None] | None = loop.create_task(self._run(steps)) if steps is not None else None

    async def _run(self, steps: Sequence[tuple[str, list[str]]]) -> None:
        code = await _interpret(steps)
        if not self._done.done():
            self._done.set_result(code)

    @property
    def pid(self) -> int | None:
        return None

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    async def stop(self, grace: float) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if not self._done.done():
            self._done.set_result(-signal.SIGTERM)


class SimulatedExecutor:
    """Lifecycle steps of in_process devices: ``exit``, ``sleep``, ``true``/``false`` modelled, nothing spawned;
    a Run step that runs a registered entry point (``inference.py``) starts that component's code in process
    (:mod:`edgekit.sim.inference`).

    One executor may serve every device (what it keeps is in ``runners``: each device's IPC, by thing name).
    """

    def __init__(self, runners: InProcessRunners | None = None) -> None:
        self.runners = runners if runners is not None else InProcessRunners()

    async def run(self, spec: StepSpec, timeout: float | None) -> StepResult:
        steps = _parse(spec.script)
        if not steps:
            await asyncio.sleep(0)
            return StepResult(0)
        try:
            code = await asyncio.wait_for(_interpret(steps), timeout)
        except TimeoutError:
            return StepResult(None, timed_out=True)
        return StepResult(code)

    async def start(self, spec: StepSpec) -> RunningProcess:
        started = await self.runners.start(spec) if spec.step == "Run" else None
        return started if started is not None else _SimulatedRun(_parse(spec.script))
