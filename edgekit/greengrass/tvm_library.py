"""``libtvm_runtime.so`` for each device platform, taken from the official ``apache-tvm`` wheels.

The TVM runtime component ships this one 3 MB library per platform instead of pip-installing the 305 MB
``apache-tvm`` wheel on the device. Wheels are downloaded once with ``pip download --platform`` into
``<cache>/wheels`` (or ``$EDGEKIT_WHEELHOUSE``, a folder of wheels shared between caches, looked in first);
the extracted library is kept in ``<cache>/tvm-runtime/<version>/<arch>``.
See docs/greengrass-packaging.md (the lean runtime).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

from edgekit.deps import TVM_FFI_VERSION, TVM_VERSION
from edgekit.downloads import DownloadError, download, pip_wheel_urls
from edgekit.errors import PackagingError
from edgekit.progress import Progress, no_progress
from edgekit.resources import cache_dir

__all__ = ["LIBRARY", "TVM_FFI_VERSION", "TVM_VERSION", "WHEEL_PLATFORMS", "runtime_library"]

log = logging.getLogger(__name__)

LIBRARY = "libtvm_runtime.so"
_MEMBER = f"tvm/lib/{LIBRARY}"
# Greengrass architecture -> the pip platform tags of the official wheels (newest first).
WHEEL_PLATFORMS: dict[str, tuple[str, ...]] = {
    "amd64": ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
    "aarch64": ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"),
}
_HOST_ARCH = {"x86_64": "amd64", "aarch64": "aarch64"}


def runtime_library(architecture: str, cache: Path | None = None, progress: Progress = no_progress) -> Path:
    """The official ``libtvm_runtime.so`` of TVM_VERSION for ``architecture`` (``amd64`` or ``aarch64``).

    Looked up in the cache, then taken from the installed ``apache-tvm`` when it is the official wheel of this
    version for this architecture (its file checked against the wheel's RECORD), else extracted from the wheel
    (downloaded once, with progress lines on ``progress``). Raises :class:`PackagingError` naming how to provide the wheel when it cannot be had.
    """
    if architecture not in WHEEL_PLATFORMS:
        raise PackagingError(
            f"no official TVM runtime for the architecture '{architecture}' (edgekit packages {sorted(WHEEL_PLATFORMS)}); "
            f"use --backend onnxruntime for this target"
        )
    root = cache or cache_dir()
    dest = root / "tvm-runtime" / TVM_VERSION / architecture / LIBRARY
    if dest.is_file():
        return dest
    installed = _installed_library(architecture)
    if installed is not None:
        _write_atomically(dest, installed.read_bytes())
        return dest
    house = os.environ.get("EDGEKIT_WHEELHOUSE")
    wheel = _wheel(architecture, Path(house) if house else root / "wheels", progress)
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise PackagingError(f"the wheel {wheel} is corrupt or has no {_MEMBER} ({exc}); delete it and package again") from None
    _write_atomically(dest, data)
    return dest


def _write_atomically(dest: Path, data: bytes) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except OSError as exc:
        raise PackagingError(f"cannot write the TVM runtime to {dest.parent} ({exc.strerror}); set EDGEKIT_CACHE_DIR") from None


def _installed_library(architecture: str) -> Path | None:
    """The installed apache-tvm's library, when it is byte for byte the official wheel's for ``architecture``."""
    import platform
    from importlib import metadata

    if _HOST_ARCH.get(platform.machine()) != architecture or not sys.platform.startswith("linux"):
        return None
    try:
        dist = metadata.distribution("apache-tvm")
    except metadata.PackageNotFoundError:
        return None
    if dist.version != TVM_VERSION:
        return None
    record = next((f for f in dist.files or [] if f.as_posix() == _MEMBER), None)
    if record is None or record.hash is None or record.hash.mode != "sha256":
        return None
    path = Path(str(dist.locate_file(record)))
    if not path.is_file():
        return None
    digest = base64.urlsafe_b64encode(hashlib.sha256(path.read_bytes()).digest()).rstrip(b"=").decode()
    return path if digest == record.hash.value else None


def _wheel_name(architecture: str) -> str:
    return f"apache_tvm-{TVM_VERSION}-*_{architecture.replace('amd64', 'x86_64')}.whl"


def _wheel(architecture: str, wheels: Path, progress: Progress) -> Path:
    found = sorted(wheels.glob(_wheel_name(architecture)))
    if found:
        return found[0]
    platforms = WHEEL_PLATFORMS[architecture]
    pip_args = [
        "--no-deps", "--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
        *(a for p in platforms for a in ("--platform", p)),
        "--disable-pip-version-check", "--no-input", "--retries", "1", "--timeout", "30",
    ]  # fmt: skip
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        *pip_args,
        "--progress-bar",
        "off",
        "-d",
        str(wheels),
        f"apache-tvm=={TVM_VERSION}",
    ]
    how = (
        f"download it where the network is (pip download --no-deps --only-binary=:all: --python-version 3.11 "
        f"--platform {platforms[-1]} apache-tvm=={TVM_VERSION}) and copy the .whl into {wheels}"
    )
    log.info("downloading apache-tvm %s for linux/%s (once; cached in %s)", TVM_VERSION, architecture, wheels)
    try:  # pip says where the wheel is; edgekit downloads it with progress (bytes, rate, time left)
        planned = pip_wheel_urls([sys.executable, "-m", "pip"], pip_args, [f"apache-tvm=={TVM_VERSION}"])
    except DownloadError as exc:
        log.debug("pip cannot plan the download (%s); pip downloads it", exc)
        planned = []
    if len(planned) == 1:
        what = f"apache-tvm {TVM_VERSION} wheel for linux/{architecture}"
        try:
            return download(planned[0].url, wheels / planned[0].filename, what, progress, sha256=planned[0].sha256)
        except DownloadError as exc:
            raise PackagingError(f"cannot download the {what} ({exc}); {how}") from None
    try:
        wheels.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackagingError(
            f"cannot download the apache-tvm {TVM_VERSION} wheel for linux/{architecture} ({exc}); {how}"
        ) from None
    found = sorted(wheels.glob(_wheel_name(architecture)))
    if proc.returncode != 0 or not found:
        log.debug("pip download failed:\n%s", proc.stderr)
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
        last = lines[-1] if lines else f"pip exit {proc.returncode}"
        last = re.sub(r"\s+", " ", last)[:200]
        raise PackagingError(f"cannot download the apache-tvm {TVM_VERSION} wheel for linux/{architecture} ({last}); {how}")
    return found[0]
