"""Time for the fleet service: a :class:`Clock` is anything with ``now()`` (seconds since the epoch).

The service never sleeps and never reads the system time itself, so tests drive rollouts, timeouts and
rate windows with a :class:`FakeClock` exactly and instantly.
"""

from __future__ import annotations

import time
from typing import Protocol

__all__ = ["Clock", "FakeClock", "SystemClock"]


class Clock(Protocol):
    """Seconds since the epoch, as a float."""

    def now(self) -> float: ...


class SystemClock:
    """The wall clock (``time.time()``)."""

    def now(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to: ``advance(seconds)`` or ``set(t)``."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = float(start)

    def now(self) -> float:
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
