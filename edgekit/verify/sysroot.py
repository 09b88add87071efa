"""An aarch64 Python (with numpy, the TVM runtime and ONNX Runtime) that runs under qemu-user.

:func:`ensure_sysroot` builds it once (a small Debian bookworm arm64 root plus the aarch64 wheels),
:func:`run_python` runs a script with it under ``qemu-aarch64-static``: no root, no chroot, no binfmt.
``ensure_sysroot(device=True)`` adds the device layer (:data:`DEVICE_REQUIREMENTS`: what edgekit's device agent and
its inference component import) and :func:`write_launcher` a host script that runs this Python like any other, the
interpreter of an emulated device (docs/local-fleet.md). See docs/artifact.md (emulated target check).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import logging
import lzma
import os
import posixpath
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.deps import TVM_FFI_VERSION, TVM_VERSION
from edgekit.downloads import DownloadError, Meter, download, fetch, pip_wheel_urls
from edgekit.errors import ToolchainError
from edgekit.progress import Progress, no_progress

__all__ = [
    "DEVICE_REQUIREMENTS",
    "SYSROOT_NAME",
    "Sysroot",
    "default_sysroot_dir",
    "device_layer_dir",
    "ensure_sysroot",
    "python_command",
    "run_python",
    "write_launcher",
]

log = logging.getLogger(__name__)

# Bump the name whenever the content changes: it is the cache key.
SYSROOT_NAME = "aarch64-py311-tvm0.27.0.post1-ort"
PYTHON = "python3.11"

DEBIAN_SUITE = "bookworm"
DEBIAN_ARCH = "arm64"
DEFAULT_DEBIAN_MIRROR = "http://deb.debian.org/debian"
# Packages whose dependency closure makes up the root file system.
ROOT_PACKAGES = ("python3.11", "libstdc++6", "libgcc-s1")
# Dependencies only needed by maintainer scripts / interactive use: never unpacked.
SKIP_PACKAGES = frozenset({"dpkg", "tar", "install-info", "readline-common", "debconf", "perl-base"})
# Parts of the packages nobody needs to run Python.
SKIP_PREFIXES = (
    "usr/share/doc/",
    "usr/share/man/",
    "usr/share/info/",
    "usr/share/locale/",
    "usr/share/lintian/",
    "usr/share/bug/",
)

PIP_PLATFORMS = ("manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
RUNTIME_MEMBER = "tvm/lib/libtvm_runtime.so"
MANIFEST = "edgekit-sysroot.json"

# The device layer: what edgekit's device side imports beyond numpy (edgekit[device] + its core dependencies the agent
# imports, checked by tests/project/test_layout.py), awsiotsdk (the inference component's Greengrass IPC client) and
# the CLI's typer and rich ('edgekit agent --config' is how a device runs its agent).
# (distribution, fallback requirement): the host's exact version when it has one (both sides then agree), else the
# fallback; pip resolves their dependencies for aarch64.
DEVICE_REQUIREMENTS: tuple[tuple[str, str], ...] = (
    ("pydantic", "pydantic>=2.11"),
    ("pydantic-core", ""),  # pinned with pydantic when the host has both; else pydantic brings its own
    ("pyyaml", "pyyaml>=6.0.2"),
    ("semantic-version", "semantic-version>=2.10"),
    ("paho-mqtt", "paho-mqtt>=2.1,<3"),
    ("awsiotsdk", "awsiotsdk>=1.20"),
    ("awscrt", ""),  # pinned with awsiotsdk when the host has both
    # 'edgekit agent' is a command of edgekit's CLI: what the CLI imports (pure Python, ~4 MB)
    ("typer", "typer>=0.26.1"),
    ("rich", "rich>=13.8"),
)
DEVICE_CHECK = (
    "import pydantic, yaml, semantic_version, paho.mqtt.client, awscrt.io, awsiot.greengrasscoreipc.clientv2, typer, rich"
)

_NETWORK_HINT = "the network to deb.debian.org and PyPI is needed to build the aarch64 sysroot"
_QEMU_HINT = "install it with: apt-get install -y qemu-user-static"


@dataclass(frozen=True)
class Sysroot:
    """A ready aarch64 Python environment, run with :func:`run_python`."""

    root: Path  # the arm64 rootfs folder (contains usr/bin/python3)
    site: Path  # folder with the unpacked aarch64 wheels (numpy, tvm_ffi, libtvm_runtime.so, onnxruntime)
    runtime_lib: Path  # the aarch64 libtvm_runtime.so inside `site`
    qemu: str  # path of qemu-aarch64-static (or qemu-aarch64)
    layers: tuple[Path, ...] = ()  # more folders of aarch64 packages, after `site` on the path (the device layer)

    @property
    def python(self) -> Path:
        """Host path of the aarch64 interpreter."""
        return self.root / "usr" / "bin" / PYTHON


# --------------------------------------------------------------------------- public API


def default_sysroot_dir(cache_dir: Path | None = None) -> Path:
    """Folder of the cached sysroot: ``<cache>/sysroots/<SYSROOT_NAME>``.

    ``cache`` is ``cache_dir`` if given, else ``$EDGEKIT_SYSROOT_CACHE`` (the sysroot's alone: tests share one),
    else ``$EDGEKIT_CACHE_DIR``, else ``~/.cache/edgekit``.
    """
    if cache_dir is None:
        env = os.environ.get("EDGEKIT_SYSROOT_CACHE") or os.environ.get("EDGEKIT_CACHE_DIR")
        cache_dir = Path(env) if env else Path.home() / ".cache" / "edgekit"
    return Path(cache_dir).expanduser().resolve() / "sysroots" / SYSROOT_NAME


def ensure_sysroot(cache_dir: Path | None = None, progress: Progress | None = None, *, device: bool = False) -> Sysroot:
    """Return the aarch64 sysroot, building it on first use (a few tens of seconds).

    ``cache_dir`` is the edgekit cache folder (default ``$EDGEKIT_CACHE_DIR`` or
    ``~/.cache/edgekit``); the sysroot lives in ``cache_dir/sysroots/<SYSROOT_NAME>``.
    ``device``: with the device layer too (:data:`DEVICE_REQUIREMENTS`, cached beside it, a few seconds more).
    Raises :class:`ToolchainError` when qemu is missing or a download fails.
    """
    base = _ensure_base(cache_dir, progress)
    if not device:
        return base
    return _ensure_device_layer(base, progress or no_progress)


def _ensure_base(cache_dir: Path | None, progress: Progress | None) -> Sysroot:
    report: Progress = progress or no_progress
    qemu = _find_qemu()
    final = default_sysroot_dir(cache_dir)

    found = _load(final, qemu)
    if found is not None:
        return found

    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ToolchainError(f"cannot create the sysroot cache folder {final.parent}: {exc.strerror}") from None
    with _locked(final.parent / f"{final.name}.lock", report):
        found = _load(final, qemu)  # built by someone else while we waited
        if found is not None:
            return found
        _remove_stale(final)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
        try:
            _build(tmp, qemu, report)
            if final.exists():  # an invalid leftover (no manifest): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        log.debug("built sysroot %s in %.1f s", final, time.monotonic() - started)
        report(f"aarch64 sysroot ready in {time.monotonic() - started:.0f} s: {final}")
    found = _load(final, qemu)
    if found is None:  # pragma: no cover - the build just wrote it
        raise ToolchainError(f"the aarch64 sysroot at {final} is incomplete; delete that folder and retry")
    return found


def python_command(sysroot: Sysroot, path: Sequence[Path] = ()) -> tuple[list[str], dict[str, str]]:
    """The command line (qemu, the aarch64 interpreter, ``-s``) and the clean environment that run the aarch64 Python.

    ``PYTHONPATH`` is ``path``, then ``sysroot.site`` and its layers; ``EDGEKIT_TVM_RUNTIME`` is the aarch64
    ``libtvm_runtime.so``. Raises :class:`ToolchainError` when qemu or the interpreter is missing.
    """
    qemu = _resolve_qemu(sysroot.qemu)
    if not sysroot.python.is_file():
        raise ToolchainError(
            f"the aarch64 Python {sysroot.python} is missing; delete {sysroot.root.parent} and rerun to rebuild the sysroot"
        )
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/tmp"),
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join(str(p) for p in (*path, sysroot.site, *sysroot.layers)),
        "PYTHONNOUSERSITE": "1",
        "PYTHONUNBUFFERED": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "QEMU_LD_PREFIX": str(sysroot.root),
        "EDGEKIT_TVM_RUNTIME": str(sysroot.runtime_lib),
    }
    return [qemu, "-L", str(sysroot.root), str(sysroot.python), "-s"], env


def write_launcher(sysroot: Sysroot, dest: Path, path: Sequence[Path] = ()) -> Path:
    """Write ``dest``: a host shell script that runs the aarch64 Python under qemu with its arguments, an interpreter
    like any other (``dest -m module``, ``dest script.py``).

    The environment it is started with is kept, except ``PYTHONPATH``: the caller's (a component's ``Setenv``) first,
    then ``path``, ``sysroot.site`` and its layers. A process the aarch64 Python starts runs on the host (qemu-user
    leaves ``execve`` to the host kernel), so whatever runs Python again calls this launcher.
    """
    argv, env = python_command(sysroot, path)
    lines = [
        "#!/bin/sh",
        "# edgekit: the aarch64 Python of an emulated device, under qemu-user (edgekit.verify.sysroot.write_launcher)",
        f'PYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{_sh_quoted_inner(env["PYTHONPATH"])}"',
        f"QEMU_LD_PREFIX={shlex.quote(env['QEMU_LD_PREFIX'])}",
        "PYTHONNOUSERSITE=1 PYTHONUNBUFFERED=1 OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1}",
        f"EDGEKIT_TVM_RUNTIME=${{EDGEKIT_TVM_RUNTIME:-{shlex.quote(env['EDGEKIT_TVM_RUNTIME'])}}}",
        "export PYTHONPATH QEMU_LD_PREFIX PYTHONNOUSERSITE PYTHONUNBUFFERED OPENBLAS_NUM_THREADS EDGEKIT_TVM_RUNTIME",
        f'exec {" ".join(shlex.quote(a) for a in argv)} "$@"',
        "",
    ]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text("\n".join(lines))
    dest.chmod(0o755)
    return dest


def _sh_quoted_inner(text: str) -> str:
    """``text`` safe inside a double-quoted shell word."""
    return re.sub(r'(["\\$`])', r"\\\1", text)


def run_python(
    sysroot: Sysroot, script: Path, args: Sequence[str] = (), timeout: float = 600.0
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with the aarch64 Python under qemu; return its exit status and text output.

    The script sees a clean environment (:func:`python_command`): ``PYTHONPATH`` is ``sysroot.site`` (and its
    layers) and ``EDGEKIT_TVM_RUNTIME`` the path of the aarch64 ``libtvm_runtime.so``. A
    non-zero exit status is returned, not raised; a missing qemu / interpreter /
    script or a timeout raises :class:`ToolchainError`.
    """
    argv, env = python_command(sysroot)
    qemu = argv[0]
    script = Path(script).resolve()
    if not script.is_file():
        raise ToolchainError(f"script to run under qemu not found: {script}")
    cmd = [*argv, str(script), *map(str, args)]
    log.debug("running %s", " ".join(cmd))
    try:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        log.debug("timed out; stdout=%r stderr=%r", exc.stdout, exc.stderr)
        raise ToolchainError(
            f"{script.name} under {Path(qemu).name} did not finish within {timeout:g} s; raise the timeout"
        ) from None
    except OSError as exc:
        raise ToolchainError(f"cannot start {qemu}: {exc.strerror or exc}; {_QEMU_HINT}") from None


# --------------------------------------------------------------------------- the device layer


def _device_specs() -> list[str]:
    """The requirements of the device layer: the host's exact versions where it has them (see DEVICE_REQUIREMENTS)."""
    from importlib import metadata

    specs = []
    for dist, fallback in DEVICE_REQUIREMENTS:
        try:
            specs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            if fallback:
                specs.append(fallback)
    return specs


def device_layer_dir(base: Sysroot, specs: Sequence[str]) -> Path:
    """Where the device layer of ``specs`` is cached: beside the sysroot, named by a digest of the requirements."""
    digest = hashlib.sha256("\n".join(sorted(specs)).encode()).hexdigest()[:12]
    return base.root.parent.parent / f"{base.root.parent.name}-device-{digest}"


def _ensure_device_layer(base: Sysroot, report: Progress) -> Sysroot:
    specs = _device_specs()
    final = device_layer_dir(base, specs)
    with_layer = dataclasses.replace(base, layers=(*base.layers, final / "site"))
    if (final / MANIFEST).is_file():
        return with_layer
    with _locked(final.parent / f"{final.name}.lock", report):
        if (final / MANIFEST).is_file():
            return with_layer
        _remove_stale(final)
        started = time.monotonic()
        tmp = Path(tempfile.mkdtemp(prefix=f"{final.name}.tmp-", dir=final.parent))
        try:
            report(f"downloading the aarch64 device layer ({', '.join(specs)})")
            wheels = _pip_download_with_deps(specs, tmp / "_downloads")
            site = tmp / "site"
            site.mkdir()
            base_projects = {_project(p.name) for p in base.site.glob("*.dist-info")}
            kept = [w for w in wheels if _project(w.name) not in base_projects]  # numpy, typing-extensions: in the base
            for wheel in kept:
                _unzip(wheel, site)
            shutil.rmtree(tmp / "_downloads")
            _precompile_folder(site)
            check = dataclasses.replace(base, layers=(*base.layers, site))
            report("checking the device layer under qemu")
            _smoke_test(check, f"{DEVICE_CHECK}\nprint('ok')\n")
            manifest = {"name": final.name, "requirements": specs, "wheels": sorted(w.name for w in kept)}
            manifest["built"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        report(f"aarch64 device layer ready in {time.monotonic() - started:.0f} s: {final}")
    return with_layer


def _project(filename: str) -> str:
    """The normalised project name of a wheel or ``.dist-info`` file name."""
    return re.sub(r"[-_.]+", "-", filename.split("-", 1)[0]).lower()


# --------------------------------------------------------------------------- qemu / cache


def _find_qemu() -> str:
    for name in ("qemu-aarch64-static", "qemu-aarch64"):
        found = shutil.which(name)
        if found:
            return found
    raise ToolchainError(f"qemu-aarch64-static not found; {_QEMU_HINT}")


def _resolve_qemu(qemu: str) -> str:
    if os.sep in qemu:
        if os.path.isfile(qemu) and os.access(qemu, os.X_OK):
            return qemu
        raise ToolchainError(f"qemu-aarch64-static not found at {qemu}; {_QEMU_HINT}")
    found = shutil.which(qemu)
    if not found:
        raise ToolchainError(f"{qemu} not found; {_QEMU_HINT}")
    return found


def _sysroot_at(folder: Path, qemu: str) -> Sysroot:
    site = folder / "site"
    return Sysroot(root=folder / "root", site=site, runtime_lib=site / "tvm_runtime" / "lib" / "libtvm_runtime.so", qemu=qemu)


def _load(folder: Path, qemu: str) -> Sysroot | None:
    """The sysroot at ``folder`` if it is complete, else None."""
    if not (folder / MANIFEST).is_file():
        return None
    sysroot = _sysroot_at(folder, qemu)
    site = sysroot.site
    if not (
        sysroot.python.is_file()
        and sysroot.runtime_lib.is_file()
        and (site / "tvm_ffi").is_dir()
        and (site / "onnxruntime").is_dir()
    ):
        log.debug("sysroot %s has a manifest but misses files; rebuilding", folder)
        return None
    return sysroot


@contextlib.contextmanager
def _locked(path: Path, report: Progress) -> Iterator[None]:
    with open(path, "a+b") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report("waiting for another process building the aarch64 sysroot")
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _remove_stale(final: Path) -> None:
    """Remove temp folders of interrupted builds (we hold the lock: nobody else builds)."""
    for stale in final.parent.glob(f"{final.name}.tmp-*"):
        log.debug("removing leftover of an interrupted build: %s", stale)
        shutil.rmtree(stale, ignore_errors=True)


# --------------------------------------------------------------------------- build


def _build(tmp: Path, qemu: str, report: Progress) -> None:
    sysroot = _sysroot_at(tmp, qemu)
    downloads = tmp / "_downloads"
    downloads.mkdir()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        # The wheels download while the Debian packages are fetched and unpacked.
        wheels = pool.submit(_download_wheels, downloads / "wheels", report)
        report(f"downloading Debian {DEBIAN_SUITE} {DEBIAN_ARCH} packages ({', '.join(ROOT_PACKAGES)})")
        debs = _download_debs(downloads / "debs", report)
        report(f"unpacking {len(debs)} Debian packages")
        _make_rootfs(sysroot.root, debs)
        report("downloading aarch64 wheels (numpy, typing-extensions, apache-tvm-ffi, apache-tvm, onnxruntime)")
        wheel_files, numpy_version = wheels.result()
    report("unpacking wheels")
    _unpack_wheels(sysroot, wheel_files)
    shutil.rmtree(downloads)
    _precompile(sysroot)
    report("checking the aarch64 Python under qemu")
    _smoke_test(sysroot)
    manifest = {
        "name": SYSROOT_NAME,
        "debian": f"{DEBIAN_SUITE}/{DEBIAN_ARCH}",
        "packages": sorted(p.name for p in debs),
        "numpy": numpy_version,
        "apache-tvm-ffi": TVM_FFI_VERSION,
        "apache-tvm": TVM_VERSION,
        "onnxruntime": wheel_files["onnxruntime"].name.split("-")[1],
        "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # written last: marks it complete


def _fetch(url: str, what: str, attempts: int = 3, meter: Meter | None = None) -> bytes:
    for attempt in range(1, attempts + 1):
        try:
            return fetch(url, meter=meter, timeout=60)
        except DownloadError as exc:
            log.debug("download of %s failed (attempt %d): %s", url, attempt, exc)
            if attempt == attempts:
                raise ToolchainError(f"download of {what} from {url} failed ({exc}); {_NETWORK_HINT}") from None
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _parse_packages(text: str) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    packages: dict[str, dict[str, str]] = {}
    provides: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t"):
                if key is not None:
                    fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, value = line.split(":", 1)
                fields[key] = value.strip()
        name = fields.get("Package")
        if not name:
            continue
        packages[name] = fields
        for item in fields.get("Provides", "").split(","):
            virtual = item.strip().split(" ")[0]
            if virtual:
                provides.setdefault(virtual, name)
    return packages, provides


def _resolve(packages: dict[str, dict[str, str]], provides: dict[str, str]) -> list[str]:
    """Dependency closure (Pre-Depends + Depends, first satisfiable alternative) of ROOT_PACKAGES."""
    order: list[str] = []
    seen: set[str] = set()

    def pick(alternatives: str) -> str | None:
        names = [re.split(r"[\s(]", alt.strip(), maxsplit=1)[0].split(":")[0] for alt in alternatives.split("|")]
        for name in names:
            if name in SKIP_PACKAGES or name in seen:
                return None
        for name in names:
            if name in packages:
                return name
            if name in provides:
                return provides[name]
        raise ToolchainError(
            f"Debian {DEBIAN_SUITE} {DEBIAN_ARCH} has no package satisfying '{alternatives.strip()}'; "
            "the mirror's index looks incomplete, retry later or set EDGEKIT_DEBIAN_MIRROR"
        )

    stack = list(reversed(ROOT_PACKAGES))
    while stack:
        name = stack.pop()
        if name in seen or name in SKIP_PACKAGES:
            continue
        seen.add(name)
        order.append(name)
        for field in ("Pre-Depends", "Depends"):
            for alternatives in packages[name].get(field, "").split(","):
                if alternatives.strip():
                    dep = pick(alternatives)
                    if dep is not None and dep not in seen:
                        stack.append(dep)
    return order


def _download_debs(dest: Path, report: Progress = no_progress) -> list[Path]:
    mirror = os.environ.get("EDGEKIT_DEBIAN_MIRROR", DEFAULT_DEBIAN_MIRROR).rstrip("/")
    index_url = f"{mirror}/dists/{DEBIAN_SUITE}/main/binary-{DEBIAN_ARCH}/Packages.xz"
    raw = _fetch(index_url, f"the Debian {DEBIAN_SUITE} {DEBIAN_ARCH} package index")
    try:
        text = lzma.decompress(raw).decode("utf-8", "replace")
    except lzma.LZMAError:
        raise ToolchainError(f"the Debian package index {index_url} is corrupt; retry, or set EDGEKIT_DEBIAN_MIRROR") from None
    packages, provides = _parse_packages(text)
    for root in ROOT_PACKAGES:
        if root not in packages:
            raise ToolchainError(f"package {root} is missing from {index_url}; set EDGEKIT_DEBIAN_MIRROR to a full mirror")
    names = _resolve(packages, provides)
    log.debug("Debian packages: %s", " ".join(names))
    dest.mkdir(parents=True)
    total = sum(int(packages[n].get("Size", "0") or 0) for n in names)
    meter = Meter(f"{len(names)} Debian packages", total or None, report)

    def one(name: str) -> Path:
        fields = packages[name]
        url = f"{mirror}/{fields['Filename']}"
        data = _fetch(url, f"Debian package {name}", meter=meter)
        if fields.get("SHA256") and hashlib.sha256(data).hexdigest() != fields["SHA256"]:
            raise ToolchainError(f"Debian package {name} from {url} has a wrong SHA-256; retry the build")
        path = dest / posixpath.basename(fields["Filename"])
        path.write_bytes(data)
        return path

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as pool:
        debs = list(pool.map(one, names))
    meter.finish()
    return debs


def _deb_data(deb: Path) -> tuple[str, bytes]:
    """Name and bytes of the data.tar.* member of a .deb (an ar archive)."""
    with open(deb, "rb") as fh:
        if fh.read(8) != b"!<arch>\n":
            raise ToolchainError(f"{deb.name} is not a Debian package; delete the sysroot cache and retry")
        while True:
            header = fh.read(60)
            if len(header) < 60:
                break
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            if name.startswith("data.tar"):
                return name, fh.read(size)
            fh.seek(size + (size & 1), io.SEEK_CUR)
    raise ToolchainError(f"{deb.name} has no data.tar member; delete the sysroot cache and retry")


def _member_path(name: str) -> str:
    """A tar member name as a normalised path relative to the root ("" for the root itself)."""
    path = posixpath.normpath(re.sub(r"^(\./)+", "", name).lstrip("/") or ".")
    return "" if path == "." else path


def _open_tar(name: str, deb: Path, data: bytes) -> tarfile.TarFile:
    try:
        return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    except tarfile.TarError:
        raise ToolchainError(f"cannot unpack {name} of {deb.name} (unsupported compression)") from None


def _extract_deb(deb: Path, root: Path) -> None:
    name, data = _deb_data(deb)
    with _open_tar(name, deb, data) as tar:
        for member in tar:
            path = _member_path(member.name)
            if not path or path.startswith("..") or path.startswith(SKIP_PREFIXES):
                continue
            target = root / path
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() or target.exists():
                if target.is_dir() and not target.is_symlink():
                    continue
                target.unlink()
            if member.issym():
                link = member.linkname
                if link.startswith("/"):  # keep every link inside the root: qemu -L would follow it to the host
                    link = os.path.relpath(root / link.lstrip("/"), target.parent)
                os.symlink(link, target)
            elif member.islnk():
                source = root / _member_path(member.linkname)
                shutil.copy2(source, target)
            elif member.isfile():
                src = tar.extractfile(member)
                assert src is not None
                with open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                os.chmod(target, (member.mode & 0o777) | stat.S_IRUSR | stat.S_IWUSR)
            # device files, fifos: not needed


def _make_rootfs(root: Path, debs: list[Path]) -> None:
    # Merged /usr, as debootstrap does for bookworm.
    for sub in ("bin", "sbin", "lib"):
        (root / "usr" / sub).mkdir(parents=True, exist_ok=True)
        os.symlink(f"usr/{sub}", root / sub)
    (root / "etc").mkdir()
    # qemu -L falls back to the host's file when the root lacks one: keep ld.so away
    # from the host's x86-64 ld.so.cache / ld.so.preload.
    (root / "etc" / "ld.so.cache").write_bytes(b"")
    (root / "etc" / "ld.so.preload").write_bytes(b"")
    (root / "tmp").mkdir()
    _cpu_files(root)
    for deb in debs:
        _extract_deb(deb, root)
    python = root / "usr" / "bin" / PYTHON
    if not python.is_file():
        raise ToolchainError(f"the Debian packages did not provide usr/bin/{PYTHON}; delete the sysroot cache and retry")
    if not (root / "usr" / "bin" / "python3").exists():
        os.symlink(PYTHON, root / "usr" / "bin" / "python3")


def _cpu_files(root: Path, cores: int = 4) -> None:
    """An aarch64 ``/proc/cpuinfo`` and CPU lists (a Raspberry Pi 4: Cortex-A72) where qemu -L finds them first.

    qemu-user shows the host's x86 /proc/cpuinfo; ONNX Runtime's cpuinfo library crashes (SIGSEGV at import)
    parsing it as an aarch64 one.
    """
    (root / "proc").mkdir()
    (root / "proc" / "cpuinfo").write_text(
        "".join(
            f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\n"
            f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n"
            for i in range(cores)
        )
    )
    cpus = root / "sys" / "devices" / "system" / "cpu"
    cpus.mkdir(parents=True)
    for name in ("possible", "present", "online"):
        (cpus / name).write_text(f"0-{cores - 1}\n")


def _pip_command() -> list[str]:
    import importlib.util

    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        found = shutil.which(name)
        if found:
            return [found]
    raise ToolchainError("pip not found to download the aarch64 wheels; install it with: python -m ensurepip")


def _host_specs(dist: str, fallback: str) -> list[str]:
    """``dist`` at the host's exact version first (both sides then compute alike), then ``fallback``."""
    from importlib import metadata

    try:
        version = metadata.version(dist)
    except metadata.PackageNotFoundError:
        return [fallback]
    specs = [f"{dist}=={version}"]
    if dist == "numpy":
        major = int(version.split(".")[0])
        return [*specs, f"numpy>={major},<{major + 1}"]
    return [*specs, fallback]


def _pip_download(spec: str, dest: Path, report: Progress = no_progress) -> Path:
    before = set(dest.glob("*.whl")) if dest.exists() else set()
    args = [
        "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
        "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
        *(arg for platform in PIP_PLATFORMS for arg in ("--platform", platform)),
        "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30",
    ]  # fmt: skip
    try:  # pip says which wheel; edgekit downloads it with progress (bytes, rate, time left)
        planned = pip_wheel_urls(_pip_command(), args, [spec])
    except DownloadError as exc:
        log.debug("pip cannot plan %s (%s); pip downloads it", spec, exc)
        planned = []
    if len(planned) == 1:
        try:
            return download(planned[0].url, dest / planned[0].filename, f"aarch64 wheel {spec}", report, sha256=planned[0].sha256)
        except DownloadError as exc:
            raise ToolchainError(f"download of the aarch64 wheel {spec} failed ({exc}); {_NETWORK_HINT}") from None
    cmd = [*_pip_command(), "download", *args, "--progress-bar", "off", "-d", str(dest), spec]
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"download of the aarch64 wheel {spec} failed ({exc}); {_NETWORK_HINT}") from None
    if proc.returncode != 0:
        log.debug("pip download %s failed:\n%s", spec, proc.stderr)
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "pip failed").strip()
        if re.search(r"connection|resolution|timed out|SSLError", proc.stderr, re.IGNORECASE):
            last = f"cannot reach the package index: {last}"
        raise ToolchainError(f"download of the aarch64 wheel {spec} failed ({last}); {_NETWORK_HINT}")
    new = sorted(set(dest.glob("*.whl")) - before) or sorted(dest.glob(f"{re.split(r'[=<>]', spec)[0].replace('-', '_')}-*.whl"))
    if not new:
        raise ToolchainError(f"pip download of the aarch64 wheel {spec} produced no wheel; {_NETWORK_HINT}")
    return new[0]


def _pip_download_with_deps(specs: Sequence[str], dest: Path) -> list[Path]:
    """aarch64 cp311 wheels of ``specs`` and their dependencies, resolved by pip for that platform."""
    dest.mkdir(parents=True)
    cmd = [
        *_pip_command(), "download", "--only-binary=:all:", "--python-version", "3.11",
        "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
        *(arg for platform in PIP_PLATFORMS for arg in ("--platform", platform)),
        "--disable-pip-version-check", "--no-input", "--retries", "2", "--timeout", "30", "--progress-bar", "off",
        "-d", str(dest), *specs,
    ]  # fmt: skip
    log.debug("running %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=1800, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ToolchainError(f"download of the aarch64 device layer failed ({exc}); {_NETWORK_HINT}") from None
    if proc.returncode != 0:
        log.debug("pip download %s failed:\n%s", specs, proc.stderr)
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), "pip failed").strip()
        if re.search(r"connection|resolution|timed out|SSLError", proc.stderr, re.IGNORECASE):
            last = f"cannot reach the package index: {last}"
        raise ToolchainError(f"download of the aarch64 device layer failed ({last}); {_NETWORK_HINT}")
    return sorted(dest.glob("*.whl"))


def _download_wheels(dest: Path, report: Progress = no_progress) -> tuple[dict[str, Path], str]:
    dest.mkdir(parents=True)
    wanted = {
        "numpy": _host_specs("numpy", "numpy>=2,<3"),
        "typing_extensions": _host_specs("typing-extensions", "typing-extensions>=4.13"),  # needed by tvm_ffi
        "tvm_ffi": [f"apache-tvm-ffi=={TVM_FFI_VERSION}"],
        "tvm": [f"apache-tvm=={TVM_VERSION}"],
        # ONNX Runtime artifacts are checked with the host's version when it has an aarch64 cp311 wheel
        "onnxruntime": _host_specs("onnxruntime", "onnxruntime>=1.20"),
    }
    wheels: dict[str, Path] = {}
    for key, specs in wanted.items():
        for i, spec in enumerate(specs):
            try:
                wheels[key] = _pip_download(spec, dest, report)
                break
            except ToolchainError:
                if i == len(specs) - 1:
                    raise
                log.debug("no aarch64 cp311 wheel for %s; trying %s", spec, specs[i + 1])
    numpy_version = wheels["numpy"].name.split("-")[1]
    return wheels, numpy_version


def _unzip(wheel: Path, dest: Path, members: Sequence[str] | None = None) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf:
            infos = zf.infolist() if members is None else [zf.getinfo(m) for m in members]
            for info in infos:
                name = posixpath.normpath(info.filename)
                if name.startswith("..") or name.startswith("/"):
                    continue
                zf.extract(info, dest)
                mode = (info.external_attr >> 16) & 0o777
                if mode and not info.is_dir():
                    os.chmod(dest / name, mode | stat.S_IRUSR | stat.S_IWUSR)
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ToolchainError(f"the wheel {wheel.name} is corrupt or incomplete ({exc}); retry the build") from None


def _unpack_wheels(sysroot: Sysroot, wheels: dict[str, Path]) -> None:
    site = sysroot.site
    site.mkdir(parents=True)
    _unzip(wheels["numpy"], site)
    _unzip(wheels["typing_extensions"], site)
    _unzip(wheels["tvm_ffi"], site)
    _unzip(wheels["onnxruntime"], site)  # imports with numpy alone (flatbuffers, protobuf: only for its tools)
    # Only the runtime of the 94 MB apache-tvm wheel (the 240 MB compiler is not needed).
    staging = site / "_tvm_staging"
    _unzip(wheels["tvm"], staging, [RUNTIME_MEMBER])
    libdir = sysroot.runtime_lib.parent
    libdir.mkdir(parents=True)
    os.replace(staging / RUNTIME_MEMBER, sysroot.runtime_lib)
    shutil.rmtree(staging)
    # libtvm_runtime.so NEEDs libtvm_ffi.so with RUNPATH $ORIGIN: make it loadable before tvm_ffi is imported.
    ffi = site / "tvm_ffi" / "lib" / "libtvm_ffi.so"
    if not ffi.is_file():
        raise ToolchainError(f"the wheel {wheels['tvm_ffi'].name} has no tvm_ffi/lib/libtvm_ffi.so")
    os.symlink(os.path.relpath(ffi, libdir), libdir / "libtvm_ffi.so")


def _precompile(sysroot: Sysroot) -> None:
    """Write the .pyc files now (Debian ships none): every later run under qemu starts faster.

    The host compiles them when it runs the same Python version; otherwise the
    aarch64 Python writes them on first use.
    """
    for folder in (sysroot.root / "usr" / "lib" / PYTHON, sysroot.site):
        _precompile_folder(folder)


def _precompile_folder(folder: Path) -> None:
    """The .pyc files of ``folder``, written by the host when it runs Python 3.11 (the same bytecode)."""
    if sys.version_info[:2] != (3, 11):
        return
    import compileall

    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        compileall.compile_dir(folder, quiet=2, workers=0, rx=re.compile(r"[/\\](tests?|3rdparty)[/\\]"))


_SMOKE = """\
import ctypes, os, platform, sys
assert platform.machine() == "aarch64", platform.machine()
import numpy
ctypes.CDLL(os.environ["EDGEKIT_TVM_RUNTIME"], ctypes.RTLD_GLOBAL)
import tvm_ffi
import onnxruntime
print("ok", sys.version.split()[0], numpy.__version__)
"""


def _smoke_test(sysroot: Sysroot, code: str = _SMOKE) -> None:
    script = sysroot.root / "tmp" / f"edgekit_smoke_{os.getpid()}.py"
    script.write_text(code)
    proc = run_python(sysroot, script, timeout=600)
    script.unlink()
    if proc.returncode != 0 or not proc.stdout.startswith("ok"):
        log.debug("smoke test failed:\nstdout=%s\nstderr=%s", proc.stdout, proc.stderr)
        last = next((line for line in reversed(proc.stderr.splitlines()) if line.strip()), f"exit {proc.returncode}")
        raise ToolchainError(f"the freshly built aarch64 Python does not run under qemu ({last.strip()}); see the debug log")
    log.debug("smoke test: %s", proc.stdout.strip())
