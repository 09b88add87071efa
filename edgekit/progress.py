"""The one progress-callback type of edgekit: a library call reports what it is doing as short lines; the CLI draws them.

A function that takes ``progress: Progress | None = None`` uses ``progress or no_progress``.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Progress", "no_progress"]

Progress = Callable[[str], None]


def no_progress(_message: str) -> None:
    """A :data:`Progress` that reports nothing: the default of library calls."""
