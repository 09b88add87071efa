"""Writing artifacts: atomically into place, as a directory plus a Neo-style .tar.gz."""

from __future__ import annotations

import os
import tarfile
import tempfile
import uuid
from pathlib import Path

from edgekit.atomic import install_dir
from edgekit.errors import OutputError

__all__ = ["check_writable", "install_dir", "make_archive"]


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and prove it is writable, before any work is done."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".edgekit-probe-"):
            pass
    except OSError as exc:
        raise OutputError(f"cannot write to output directory '{directory}': {exc.strerror or exc}; choose another -o") from exc


def make_archive(artifact_dir: Path) -> Path:
    """``<dir>.tar.gz`` of the artifact's files (reproducible: sorted, zeroed times and owners)."""
    archive = artifact_dir.with_name(artifact_dir.name + ".tar.gz")
    tmp = archive.with_name(f".{archive.name}.{uuid.uuid4().hex[:8]}")

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for path in sorted(p for p in artifact_dir.rglob("*") if p.is_file()):
                tar.add(path, arcname=str(path.relative_to(artifact_dir)), filter=clean)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)
    return archive
