"""Writing artifacts: atomically into place, as a directory plus a Neo-style .tar.gz."""

from __future__ import annotations

import math
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Final

from edgekit.atomic import install_dir
from edgekit.errors import InputShapeError, OutputError
from edgekit.profiles import DeviceProfile

__all__ = [
    "HOST_PEAK_FACTOR",
    "WORK_PREFIX",
    "available_memory",
    "check_host_memory",
    "check_input_memory",
    "check_writable",
    "install_dir",
    "make_archive",
    "sweep_stale_work",
]

WORK_PREFIX: Final = ".edgekit-compile-"
"""A compile's scratch folder in the output folder: ``.edgekit-compile-<pid>-<random>``."""


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


def sweep_stale_work(out: Path) -> list[Path]:
    """Remove scratch folders that compiles killed outright (``kill -9``, a power cut) left in ``out``."""
    removed = []
    for folder in out.glob(f"{WORK_PREFIX}*"):
        pid_text = folder.name[len(WORK_PREFIX) :].split("-", 1)[0]
        if not pid_text.isdigit() or Path(f"/proc/{pid_text}").exists():
            continue  # another compile's, still running (or not ours to judge)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


_ITEMSIZE = {"float64": 8, "int64": 8, "uint64": 8, "float32": 4, "int32": 4, "uint32": 4, "float16": 2, "bfloat16": 2,
             "int16": 2, "uint16": 2}  # fmt: skip


def check_input_memory(
    shapes: Mapping[str, Sequence[int]], profile: DeviceProfile, dtypes: Mapping[str, str] | None = None
) -> None:
    """Refuse inputs that could not fit in the device's memory (``memoryMb``) before anything is allocated.

    Without ``dtypes`` each element counts as 1 byte: a lower bound, so no input that fits is ever refused.
    """
    budget = profile.memory_mb * 1024 * 1024
    total = 0
    for name, shape in shapes.items():
        size = math.prod(max(int(d), 0) for d in shape) * _ITEMSIZE.get((dtypes or {}).get(name, ""), 1)
        total += size
        if size > budget or total > budget:
            raise InputShapeError(
                f"input '{name}' with shape {list(shape)} needs {size / 2**20:,.0f} MiB (inputs together "
                f"{total / 2**20:,.0f} MiB), more than {profile.name}'s {profile.memory_mb} MiB of memory; "
                "check --input-shape (or the model's own input shapes)"
            )


HOST_PEAK_FACTOR = 30
"""A compile's peak memory on the build host, in multiples of its inputs' size: measured (default pipeline) at
4.8 GB for 160 MB of input; the synthesized or given samples, the reference outputs and each candidate's buffers."""


def available_memory() -> int | None:
    """Bytes of memory this host can give without swapping (``MemAvailable``), or None where it can't be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_host_memory(shapes: Mapping[str, Sequence[int]], dtypes: Mapping[str, str] | None = None) -> None:
    """Refuse, before anything is allocated, a compile whose inputs would take this host past its available memory
    (about :data:`HOST_PEAK_FACTOR` times the inputs' size); the build host is protected as the device is."""
    available = available_memory()
    if available is None:
        return
    total = sum(
        math.prod(max(int(d), 0) for d in shape) * _ITEMSIZE.get((dtypes or {}).get(name, ""), 1)
        for name, shape in shapes.items()
    )
    need = total * HOST_PEAK_FACTOR
    if need > available:
        raise InputShapeError(
            f"inputs of {total / 2**20:,.0f} MiB ({', '.join(f'{n} {list(s)}' for n, s in shapes.items())}) would take this "
            f"host about {need / 2**30:,.1f} GiB to compile (about {HOST_PEAK_FACTOR}x the inputs: samples, reference "
            f"outputs, every candidate's buffers), and {available / 2**30:,.1f} GiB are available; "
            "use a smaller --input-shape or compile on a machine with more memory"
        )
