"""Running a fleet service process until it is told to stop, and stopping its parts: the steps ``fleet serve``,
``fleet serve --join`` and ``python -m edgekit.fleet.scale_out`` share (see :mod:`edgekit.fleet.foreground`,
:mod:`edgekit.fleet.scale_out`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

__all__ = ["run_until_signalled", "stop_each"]

_T = TypeVar("_T")


async def stop_each(*steps: Callable[[], Awaitable[object]] | None) -> None:
    """Await each of ``steps`` in turn (``None``: a part that never started); one that fails does not keep the rest
    from running — a shutdown goes all the way, whatever one part says on its way out."""
    for step in steps:
        if step is not None:
            with contextlib.suppress(Exception):
                await step()


def run_until_signalled(main: Callable[[asyncio.Event], Awaitable[_T]]) -> _T:
    """``main(stop)`` in a new event loop, ``stop`` set by SIGTERM or SIGINT (handled where this runs in the main
    thread; elsewhere only the caller sets it); returns what ``main`` returns."""

    async def run() -> _T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
                handled.append(signum)
        try:
            return await main(stop)
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)

    return asyncio.run(run())
