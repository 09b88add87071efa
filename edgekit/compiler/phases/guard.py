"""No backend exception leaves ``edgekit.compile``: whatever ONNX Runtime, TVM, torch or skl2onnx raise in a
stage becomes one edgekit error naming the model, the stage and what to do."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import CompilationError, EdgekitError, last_line

__all__ = ["one_line", "stage"]


def one_line(text: str, limit: int = 400) -> str:
    """``text`` on one line (runs of whitespace, newlines included, become one space), at most ``limit`` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


@contextlib.contextmanager
def stage(model: str | Path, doing: str, fix: str) -> Iterator[None]:
    """Run a stage of a compile; an exception that is not an edgekit error becomes a CompilationError."""
    try:
        yield
    except EdgekitError:
        raise
    except Exception as exc:  # the point: ORT's Fail, TVM's errors, torch's and skl2onnx's are no edgekit errors
        cause = one_line(f"{type(exc).__name__}: {last_line(exc, 300)}")
        raise CompilationError(f"'{model}': {doing} failed ({cause}); {fix}") from exc
