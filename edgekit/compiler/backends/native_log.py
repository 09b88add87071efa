"""What native code writes to the process's stderr (TVM's C++ ``LOG(WARNING)``, LLVM, MetaSchedule's workers) goes
to edgekit's log instead of the terminal.

TVM's C++ logging writes to file descriptor 2 directly: no Python logger or ``sys.stderr`` sees it, and
``TVM_LOG_DEBUG`` only turns debug lines on. So while TVM compiles or tunes, descriptor 2 points at a temporary
file, and its lines are logged afterwards (info: shown with ``-v``). Python's own ``sys.stderr`` (the progress
spinner, warnings) and logging handlers that wrote to it keep the terminal. See docs/compile.md (TVM's own log).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["native_stderr_to_log"]


def _writes_to_fd2(stream: Any) -> bool:
    try:
        return bool(stream.fileno() == 2)
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO: not the descriptor
        return False


@contextlib.contextmanager
def native_stderr_to_log(logger: logging.Logger, prefix: str) -> Iterator[None]:
    """Inside: what is written to descriptor 2 by native code is kept; after: each line logged as ``prefix + line``."""
    with contextlib.suppress(Exception):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 at all
        yield
        return
    python_stderr = sys.stderr
    terminal: IO[str] | None = None
    handlers: list[logging.StreamHandler[Any]] = []
    with tempfile.TemporaryFile() as sink:
        if _writes_to_fd2(python_stderr):
            terminal = os.fdopen(os.dup(saved), "w", buffering=1, encoding=python_stderr.encoding, errors="backslashreplace")
            sys.stderr = terminal
            for handler in _stream_handlers():
                if handler.stream is python_stderr:
                    handler.setStream(terminal)
                    handlers.append(handler)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if terminal is not None:
                for handler in handlers:
                    handler.setStream(python_stderr)
                sys.stderr = python_stderr
                terminal.close()
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    logger.info("%s%s", prefix, line.rstrip())


def _stream_handlers() -> list[logging.StreamHandler[Any]]:
    loggers = [logging.getLogger(), *(lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger))]
    return [h for lg in loggers for h in lg.handlers if isinstance(h, logging.StreamHandler)]
