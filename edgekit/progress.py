"""The one progress-callback type: long work reports one line at a time, the CLI decides how to draw it.

See docs/architecture.md (seams).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "no_progress"]

Progress = Callable[[str], None]
"""Hears a line of progress (``"tvm: tuning: 40/200 trials measured"``); must not block."""


def no_progress(_: str) -> None:
    """A :data:`Progress` that ignores every line."""
