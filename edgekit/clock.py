"""The one clock abstraction: every part that reads time takes a :class:`Clock`, so tests drive it exactly.

A :class:`FakeClock` moves only when told to. See docs/architecture.md (seams).
"""

from __future__ import annotations

import time
from typing import Final, Protocol

__all__ = ["SYSTEM_CLOCK", "Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    def now(self) -> float:
        """Seconds since the epoch (wall time: stored, compared across processes)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals: breakers, timeouts)."""
        ...


class SystemClock:
    """The machine's clocks: ``time.time()`` and ``time.monotonic()``."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


SYSTEM_CLOCK: Final = SystemClock()


class FakeClock:
    """A clock that moves only when told to: ``advance(seconds)`` or ``set(t)``; both readings move together."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (never backwards) and return the new time."""
        if seconds < 0:
            raise ValueError(f"a FakeClock moves forward only; got {seconds} seconds")
        self._now += seconds
        return self._now

    def set(self, t: float) -> None:
        """Jump to ``t`` (forward only)."""
        if t < self._now:
            raise ValueError(f"a FakeClock moves forward only: {t} is before {self._now}")
        self._now = float(t)
