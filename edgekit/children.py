"""Child processes edgekit starts (mosquitto, components) end with it, even after a ``kill -9`` of edgekit.

Two guards, both Linux: the child asks the kernel for SIGTERM when its parent dies (``PR_SET_PDEATHSIG``), and a
pidfile lets the next start find and stop a child left running anyway. See docs/local-fleet.md.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = ["die_with_parent", "reap_stale", "write_pidfile"]

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG: Final = 1


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get ``sig`` when the process that started it dies.

    The kernel ties this to the starting *thread*: start long-lived children from a thread that lives as long as
    they should (the main thread, or an executor's worker, which lives until the executor shuts down).
    """
    parent = os.getpid()
    libc_name = ctypes.util.find_library("c")

    def preexec() -> None:
        if libc_name is None:
            return
        libc = ctypes.CDLL(libc_name, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), sig)

    return preexec


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def write_pidfile(path: Path, pid: int) -> None:
    """Record ``pid`` (and its command line, to recognise it later) in ``path``."""
    path.write_bytes(f"{pid}\n".encode() + _cmdline(pid))


def reap_stale(path: Path, timeout: float = 5.0) -> int | None:
    """Stop the process a previous run recorded in ``path`` if it still runs the same command; return its pid.

    A pid reused by another program (different command line) is left alone.
    """
    try:
        head, _, cmdline = path.read_bytes().partition(b"\n")
        pid = int(head)
    except (OSError, ValueError):
        return None
    path.unlink(missing_ok=True)
    if not cmdline or _cmdline(pid) != cmdline:
        return None
    log.warning("stopping pid %d left running by an earlier run that ended without stopping it (%s)", pid, path)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while _cmdline(pid) == cmdline and time.monotonic() < deadline:
            time.sleep(0.02)
        if _cmdline(pid) == cmdline:
            os.kill(pid, signal.SIGKILL)
    return pid
