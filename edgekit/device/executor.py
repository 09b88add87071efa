"""How lifecycle steps run: real ``sh -c`` subprocesses (the default) or, for scale simulations, not at all.

See docs/device-agent.md (lifecycle) and docs/local-fleet.md (faults) for the in-process mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

__all__ = [
    "Executor",
    "InProcessExecutor",
    "RunningProcess",
    "StepResult",
    "StepSpec",
    "SubprocessExecutor",
    "group_alive",
    "kill_group",
    "kill_owned_group",
    "owned_group",
    "process_stamp",
    "wait_group_gone",
]


@dataclass(frozen=True)
class StepSpec:
    """One lifecycle step, ready to run: its script and environment are already interpolated."""

    component: str
    step: str  # Install, Run, Startup, ...
    script: str
    env: Mapping[str, str]
    cwd: Path
    log: Path
    on_spawn: Callable[[int], None] | None = field(default=None, compare=False)
    """Called with the step's process group as soon as it exists (before the wait), for the agent to record it."""


@dataclass(frozen=True)
class StepResult:
    """How a foreground step ended. ``exit_code`` is ``None`` when it was killed or never started."""

    exit_code: int | None
    timed_out: bool = False
    skipped: bool = False
    error: str | None = None  # could not be started (I/O error, invalid step)
    pgid: int | None = None  # the step's process group, which may outlive it (Startup's background service)

    @property
    def ok(self) -> bool:
        return self.skipped or (self.exit_code == 0 and not self.timed_out and self.error is None)

    def describe(self, step: str) -> str:
        if self.error:
            return f"{step} could not run: {self.error}"
        if self.timed_out:
            return f"{step} timed out and was killed"
        return f"{step} exited with code {self.exit_code}"


class RunningProcess(Protocol):
    """A long-running step (Run)."""

    @property
    def pid(self) -> int | None: ...

    async def wait(self) -> int: ...

    async def stop(self, grace: float) -> None:
        """End the process and its group: SIGTERM, then SIGKILL after ``grace`` seconds."""


class Executor(Protocol):
    async def run(self, spec: StepSpec, timeout: float | None) -> StepResult:
        """Run a foreground step to its end (or its timeout)."""

    async def start(self, spec: StepSpec) -> RunningProcess:
        """Start a long-running step (Run); raises OSError if it can't start."""


def kill_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to process group ``pgid``; False if no process is left in it."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _start_ticks(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started, in clock ticks since boot (None: no such process)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[19])  # fields after the command: state is field 3, starttime field 22


def process_stamp(pid: int) -> str:
    """``<boot id>/<start time>`` of a process: who it is, which a recycled pid (or a reboot) does not share.

    A leader that already exited (and was reaped) gets ``<boot id>/gone``: a process found later under its pid is
    another one, while members left in its group are still its own.
    """
    start = _start_ticks(pid)
    return f"{_boot_id()}/{'gone' if start is None else start}"


def owned_group(pgid: int, stamp: str | None) -> bool:
    """Whether process group ``pgid`` is still the one whose leader had ``stamp`` (see :func:`process_stamp`).

    The leader alive with the same start time: ours. The leader alive with another start time, another boot, or no
    stamp recorded: not ours (a recycled pid, a daemon after a power cut). The leader gone: what is left of the group
    is ours, since Linux does not hand out a pid while a process group of that id still has members.
    """
    if stamp is None:
        return False
    boot, _, start = stamp.partition("/")
    if boot != _boot_id():
        return False
    now = _start_ticks(pgid)
    return now is None or str(now) == start


def group_alive(pgid: int) -> bool:
    """Whether process group ``pgid`` has a member that is not a zombie (``killpg(pgid, 0)`` counts zombies too)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return kill_group(pgid, 0)
    for stat_file in proc.glob("[0-9]*/stat"):
        try:
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


async def wait_group_gone(pgid: int, wait_s: float = 5.0) -> bool:
    """Wait until process group ``pgid`` has no member but zombies, at most ``wait_s`` (a process in uninterruptible
    sleep outlives SIGKILL until its I/O ends); False if one is still there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while group_alive(pgid):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def kill_owned_group(pgid: int, stamp: str | None, sig: int) -> bool:
    """:func:`kill_group`, only while the group is still the one that was recorded (:func:`owned_group`)."""
    if not owned_group(pgid, stamp):
        return False
    return kill_group(pgid, sig)


async def _end(proc: asyncio.subprocess.Process, grace: float) -> None:
    """SIGTERM the process group, wait up to ``grace``, SIGKILL what is left, reap the leader."""
    if proc.returncode is None:
        kill_group(proc.pid, signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
    kill_group(proc.pid, signal.SIGKILL)  # members that outlived the leader
    await proc.wait()
    # SIGKILLed members die when the kernel next runs them (on a loaded machine, a moment later): the step is over
    # once they are gone, so that nothing it started runs beside what comes next (a retry, the next step)
    await wait_group_gone(proc.pid)


class _Subprocess:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    async def wait(self) -> int:
        return await self._proc.wait()

    async def stop(self, grace: float) -> None:
        await asyncio.shield(_end(self._proc, grace))


class SubprocessExecutor:
    """Steps as real ``sh -c`` processes, each in its own session / process group."""

    def __init__(self, kill_grace: float = 2.0) -> None:
        self.kill_grace = kill_grace

    async def _spawn(self, spec: StepSpec) -> asyncio.subprocess.Process:
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log, "ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(f"--- {stamp} {spec.component} {spec.step}\n".encode())
            log.flush()
            return await asyncio.create_subprocess_shell(
                spec.script,
                cwd=spec.cwd,
                env=dict(spec.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )

    async def run(self, spec: StepSpec, timeout: float | None) -> StepResult:
        try:
            proc = await self._spawn(spec)
        except OSError as exc:
            return StepResult(None, error=str(exc))
        if spec.on_spawn is not None:
            spec.on_spawn(proc.pid)
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            await asyncio.shield(_end(proc, self.kill_grace))
            return StepResult(None, timed_out=True, pgid=proc.pid)
        except asyncio.CancelledError:
            await asyncio.shield(_end(proc, 0.0))
            raise
        return StepResult(code, pgid=proc.pid)

    async def start(self, spec: StepSpec) -> RunningProcess:
        return _Subprocess(await self._spawn(spec))


FaultHook = Callable[[StepSpec], "int | None"]


class _Placeholder:
    """A Run step that is not executed: RUNNING until stopped (or exits with an injected code)."""

    def __init__(self, code: int | None) -> None:
        self._done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if code is not None:
            self._done.set_result(code)

    @property
    def pid(self) -> int | None:
        return None

    async def wait(self) -> int:
        return await asyncio.shield(self._done)

    async def stop(self, grace: float) -> None:
        if not self._done.done():
            self._done.set_result(-signal.SIGTERM)


class InProcessExecutor:
    """Runs no scripts at all (``DeviceAgent(mode="in_process")``); ``fail(spec)`` may return an exit code to inject.

    Everything before a step still happens for real: artifacts are downloaded, verified and unpacked, the work
    folder is made, every variable in Script/Setenv/Skipif is interpolated and Skipif is evaluated. What is skipped
    is exactly the execution of the scripts: Bootstrap, Install, Startup, Shutdown and Recover count as exit 0 (or
    the code ``fail`` returns for them), and a Run "process" is a placeholder that stays RUNNING until the component
    is stopped (or exits with what ``fail`` returns for Run).
    """

    def __init__(self, fail: FaultHook | None = None) -> None:
        self.fail = fail

    async def run(self, spec: StepSpec, timeout: float | None) -> StepResult:
        code = self.fail(spec) if self.fail else None
        await asyncio.sleep(0)
        return StepResult(code if code is not None else 0)

    async def start(self, spec: StepSpec) -> RunningProcess:
        return _Placeholder(self.fail(spec) if self.fail else None)
