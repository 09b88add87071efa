"""Putting folders and files in place whole: readers never see a half-written one.

See docs/architecture.md.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

__all__ = ["install_dir", "write_bytes"]


def install_dir(staged: Path, final: Path) -> None:
    """Move the complete ``staged`` folder to ``final``, replacing an older one only once the new one is whole."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(final, old)
    try:
        os.replace(staged, final)
    except OSError:
        if old is not None:
            os.replace(old, final)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``path`` through a temporary file and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
