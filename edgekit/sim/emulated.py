"""Emulated devices: the device agent as its own aarch64 process under qemu-user, running the real aarch64 build.

A fleet file marks a device ``mode: emulated``; the simulation then writes the device a bundle
(:class:`~edgekit.wire.device_bundle.DeviceBundle`: its own certificate from the fleet's CA, the broker reached over
TCP through the device's network link, so the fleet's faults reach it) and starts ``python -m edgekit agent --config
<bundle>/config.yaml``, what a real device runs (:mod:`edgekit.device.agent_process`), with the aarch64 Python of
``edgekit verify``'s sysroot plus its device layer (:func:`edgekit.verify.sysroot.ensure_sysroot`). Its lifecycle steps are real processes; the runtime component's Install points the device's ``python`` at
:data:`LAUNCHER` (the aarch64 Python again, under qemu), so the inference component loads the aarch64 artifact with
the aarch64 numpy / ONNX Runtime / TVM runtime. See docs/local-fleet.md (emulated devices).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import edgekit
from edgekit.children import die_with_parent
from edgekit.edge.component import CHECKPOINT_ENV
from edgekit.edge.loop import Checkpoint
from edgekit.progress import Progress
from edgekit.sim.errors import SimulationError
from edgekit.verify.sysroot import Sysroot, ensure_sysroot, python_command, write_launcher
from edgekit.wire.device_bundle import BUNDLE_CONFIG, DeviceBundle

__all__ = ["LAUNCHER", "READY", "EmulatedAgent", "Emulation", "prepare_emulation", "write_bundle"]

log = logging.getLogger(__name__)

LAUNCHER: Final = "python-aarch64"
"""The emulated devices' Python (a host script running the aarch64 one under qemu), in the emulation folder."""
READY: Final = "agent: connected to "
"""What ``edgekit agent`` prints (stderr) once its MQTT connection is up."""
HOST_PYTHON_ENV: Final = "EDGEKIT_HOST_PYTHON"
"""The runtime component's Install uses this interpreter (recipes/runtime.yaml): here the launcher."""
_SOURCE_SKIP = ("_data", "__pycache__", "web")


@dataclass(frozen=True)
class Emulation:
    """What every emulated device of a simulation shares: the sysroot, edgekit's source for the agent, the launcher."""

    sysroot: Sysroot
    folder: Path
    source: Path  # holds edgekit/ (the agent's code; a component uses its runtime component's subset)
    launcher: Path

    def agent_command(self, config: Path) -> tuple[list[str], dict[str, str]]:
        """The command line and environment of one emulated agent: ``edgekit agent --config`` in the aarch64 Python;
        its lifecycle steps inherit ``EDGEKIT_HOST_PYTHON``, the launcher."""
        argv, env = python_command(self.sysroot, [self.source])
        env[HOST_PYTHON_ENV] = str(self.launcher)
        env[CHECKPOINT_ENV] = str(checkpoint_dir(config))  # the inference components say where they stand there
        return [*argv, "-m", "edgekit", "agent", "--config", str(config)], env


def checkpoint_dir(config: Path) -> Path:
    """Where the inference components of the emulated device whose bundle is ``config`` write their checkpoints."""
    return config.parent / "checkpoints"


def read_checkpoints(config: Path) -> list[Checkpoint]:
    """The latest :class:`~edgekit.edge.loop.Checkpoint` of each inference run of that device (one file a run,
    replaced after every window it closes)."""
    found = []
    for path in sorted(checkpoint_dir(config).glob("*.json")):
        try:
            found.append(Checkpoint(**json.loads(path.read_text())))
        except (OSError, ValueError, TypeError) as exc:
            log.warning("unreadable checkpoint %s: %s", path, exc)
    return found


def prepare_emulation(folder: Path, cache_dir: Path | None = None, progress: Progress | None = None) -> Emulation:
    """The sysroot with its device layer (built on first use: about half a minute), edgekit's source copied to
    ``folder/src`` and precompiled, the launcher written. Raises :class:`~edgekit.errors.ToolchainError`."""
    say = progress or (lambda _m: None)
    started = time.monotonic()
    sysroot = ensure_sysroot(cache_dir, progress=say, device=True)
    source = folder / "src"
    if source.exists():
        shutil.rmtree(source)
    package = Path(edgekit.__file__).resolve().parent
    shutil.copytree(package, source / "edgekit", ignore=shutil.ignore_patterns(*_SOURCE_SKIP, "*.pyc"))
    _precompile(source)
    launcher = write_launcher(sysroot, folder / LAUNCHER)
    log.debug("emulation ready in %.1f s: %s", time.monotonic() - started, folder)
    return Emulation(sysroot, folder, source, launcher)


def _precompile(folder: Path) -> None:
    """Bytecode written by the host (the same Python 3.11): the agent under qemu starts seconds sooner."""
    import compileall
    import sys

    if sys.version_info[:2] == (3, 11):
        compileall.compile_dir(folder, quiet=2, workers=0)


def write_bundle(folder: Path, bundle: DeviceBundle) -> Path:
    """Write ``bundle``'s ``config.yaml`` into ``folder`` (what ``edgekit agent --config`` reads); return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / BUNDLE_CONFIG
    path.write_text(bundle.to_yaml())
    return path


def _descendants(pid: int) -> list[int]:
    """``pid``'s descendants now (read from /proc), children before grandchildren."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        children = parents.get(todo.pop(), [])
        out += children
        todo += children
    return out


class EmulatedAgent:
    """One emulated device's agent process (output in ``log``): started, stopped cleanly (SIGTERM: its components
    stop and hand over their last window) or killed with everything it started (a crash: SIGKILL)."""

    def __init__(self, thing: str, emulation: Emulation, config: Path, log_path: Path) -> None:
        self.thing = thing
        self.emulation = emulation
        self.config = config
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.ready_s: float | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self, timeout: float = 120.0) -> None:
        """Start the process; return once it printed that it is connected (:class:`SimulationError` if it ends or
        takes longer than ``timeout`` seconds)."""
        argv, env = self.emulation.agent_command(self.config)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent(),
            )
        deadline = time.monotonic() + timeout
        while True:
            text = self._log_since(offset)
            if READY in text:
                self.ready_s = time.monotonic() - self.started_at
                return
            if self.proc.returncode is not None or time.monotonic() > deadline:
                ended = "ended" if self.proc.returncode is not None else f"not connected after {timeout:g} s"
                await self.kill()
                tail = " | ".join(text.strip().splitlines()[-5:])
                raise SimulationError(f"emulated device {self.thing}: the agent {ended} (see {self.log_path}): {tail}")
            await asyncio.sleep(0.1)

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    async def stop(self, grace: float = 30.0) -> None:
        """SIGTERM the agent (it stops its components, whose Shutdown runs); SIGKILL what is left after ``grace``."""
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace)
        await self.kill()

    async def kill(self) -> None:
        """A crash: SIGKILL the agent and every process it started (its components), nothing runs or is saved."""
        proc = self.proc
        if proc is None:
            return
        victims = [proc.pid, *_descendants(proc.pid)] if proc.returncode is None else []
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        await proc.wait()
