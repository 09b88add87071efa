"""Artifacts onto the device: download, verify, cache by digest, unpack safely, set permissions.

Simulated devices of one process may share an :class:`ArtifactShare`: one download per artifact digest and one
unpack per (digest, permissions) for all of them, each device still verifying the file against its own recipe's
digest. A real device (the packaged agent) has none and downloads and unpacks on its own.

See docs/device-agent.md (downloads, digests, safe unzip) and docs/local-fleet.md (what a simulated device shares).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import functools
import hashlib
import logging
import os
import re
import shutil
import stat
import threading
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
import zlib
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from edgekit.device.errors import ArtifactDownloadError, DeviceError, UnsafeArchiveError
from edgekit.digests import file_sha256_b64

__all__ = [
    "DEFAULT_MAX_CACHE_BYTES",
    "DEFAULT_MAX_DOWNLOAD_BYTES",
    "DEFAULT_MAX_UNZIPPED_BYTES",
    "ArtifactFetcher",
    "ArtifactShare",
    "artifact_file_name",
    "link_tree",
    "open_url",
    "permission_modes",
    "place",
    "safe_unzip",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

DEFAULT_MAX_UNZIPPED_BYTES = 2 * 1024**3
DEFAULT_MAX_DOWNLOAD_BYTES = 4 * 1024**3  # one artifact; a longer download is cut off and deleted
DEFAULT_MAX_CACHE_BYTES = 2 * 1024**3  # the download cache; past it the least recently used files go
_PARTIAL = re.compile(r"\.[0-9a-f]{64}\.[0-9a-f]{8}")  # a download in progress: .<digest hex>.<8 hex>
DEFAULT_MAX_ENTRIES = 100_000
_CHUNK = 1 << 16
_DOWNLOAD = ("ARTIFACT_DOWNLOAD_ERROR",)


@functools.cache
def _direct_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def open_url(request: urllib.request.Request, timeout: float) -> Any:
    """``urlopen``, except that loopback hosts never go through a proxy from the environment."""
    host = urllib.parse.urlparse(request.full_url).hostname or ""
    if host in ("localhost", "::1") or host.startswith("127."):
        return _direct_opener().open(request, timeout=timeout)
    return urllib.request.urlopen(request, timeout=timeout)


def artifact_file_name(uri: str) -> str:
    """The file an artifact URI names (its last path segment)."""
    name = urllib.parse.unquote(urllib.parse.urlparse(uri).path.rsplit("/", 1)[-1])
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise DeviceError((*_DOWNLOAD, "ARTIFACT_URI_NOT_VALID"), f"artifact URI '{uri}' names no file")
    return name


def permission_modes(permission: Mapping[str, Any] | None) -> tuple[int, int]:
    """``(file mode, folder mode)`` for a recipe's ``Permission``."""
    perm = permission or {}
    read = str(perm.get("Read", "OWNER")).upper()
    execute = str(perm.get("Execute", "NONE")).upper()
    levels = {"NONE": 0, "OWNER": 0o100, "ALL": 0o111}
    if read not in levels or execute not in levels:
        raise DeviceError("RECIPE_PARSE_ERROR", f"Permission {dict(perm)} must use NONE, OWNER or ALL")
    file_mode = (levels[read] << 2) | levels[execute]
    folder_mode = 0o755 if read == "ALL" else 0o700
    return file_mode, folder_mode


def _refuse(zip_path: Path, entry: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(f"{zip_path.name}: entry '{entry}' {why}; the archive was refused and nothing was extracted")


def _check_entries(zip_path: Path, infos: list[zipfile.ZipInfo], staging: Path, max_bytes: int, max_entries: int) -> None:
    if len(infos) > max_entries:
        raise UnsafeArchiveError(f"{zip_path.name} has {len(infos)} entries, over the limit of {max_entries}")
    declared = 0
    seen: set[str] = set()
    root = os.path.normpath(os.path.abspath(staging))
    for info in infos:
        name = info.filename
        if "\x00" in name:
            raise _refuse(zip_path, name, "has a NUL character")
        if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
            raise _refuse(zip_path, name, "has an absolute path")
        parts = [p for p in re.split(r"[\\/]", name) if p]
        if ".." in parts:
            raise _refuse(zip_path, name, "climbs out with '..'")
        mode = info.external_attr >> 16
        if stat.S_ISLNK(mode):
            raise _refuse(zip_path, name, "is a symbolic link")
        if mode and stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise _refuse(zip_path, name, "is not a regular file or folder")
        if not parts:
            raise _refuse(zip_path, name, "has an empty path")
        key = "/".join(parts)
        if key in seen and not info.is_dir():
            raise _refuse(zip_path, name, "appears twice")
        seen.add(key)
        # lexical: no part is '..' or empty and symbolic links are refused, so nothing can lead out of the fresh
        # staging folder; this stays as a guard (resolve() here was ~half of a device's unzip, an lstat a part)
        joined = os.path.normpath(os.path.join(root, key))
        if not joined.startswith(root + os.sep):
            raise _refuse(zip_path, name, "resolves outside the folder")
        declared += info.file_size
    if declared > max_bytes:
        raise UnsafeArchiveError(
            f"{zip_path.name} would unpack to {declared} bytes, over the {max_bytes}-byte limit; refused as a zip bomb"
        )


def _chmod_tree(root: Path, file_mode: int, folder_mode: int) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for f in filenames:
            os.chmod(os.path.join(dirpath, f), file_mode)
        for d in dirnames:
            os.chmod(os.path.join(dirpath, d), folder_mode)
    os.chmod(root, folder_mode)


def safe_unzip(
    zip_path: Path,
    dest: Path,
    *,
    max_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES,
    max_entries: int = DEFAULT_MAX_ENTRIES,
    file_mode: int = 0o600,
    folder_mode: int = 0o700,
) -> None:
    """Unpack ``zip_path`` into ``dest`` (which must not exist) whole, or raise and leave nothing behind."""
    if dest.exists():
        raise FileExistsError(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.unzip-{uuid.uuid4().hex[:8]}"
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            _check_entries(zip_path, infos, staging, max_bytes, max_entries)
            staging.mkdir()
            written = 0
            for info in infos:
                target = staging.joinpath(*[p for p in re.split(r"[\\/]", info.filename) if p])
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(_CHUNK):
                        written += len(chunk)
                        if written > max_bytes:
                            raise UnsafeArchiveError(
                                f"{zip_path.name} inflates past the {max_bytes}-byte limit; refused as a zip bomb"
                            )
                        out.write(chunk)
        _chmod_tree(staging, file_mode, folder_mode)
        os.replace(staging, dest)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        EOFError,
        FileExistsError,
        OSError,
        zlib.error,
        NotImplementedError,
        RuntimeError,
    ) as exc:
        # NotImplementedError: a compression Python can't inflate (Deflate64, ...); RuntimeError: encrypted (AES,
        # ZipCrypto); zlib.error: a corrupt stream (its digest matched: it was zipped that way)
        if isinstance(exc, FileExistsError) and exc.filename and str(exc.filename).startswith(str(staging)):
            raise UnsafeArchiveError(f"{zip_path.name}: an entry appears twice; refused") from exc
        raise UnsafeArchiveError(f"{zip_path.name} can't be unpacked: {exc}") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _remove_partials(cache_dir: Path) -> None:
    """Delete what a download killed with its process left in ``cache_dir``."""
    if not cache_dir.is_dir():
        return
    for leftover in cache_dir.iterdir():
        if _PARTIAL.fullmatch(leftover.name) and leftover.is_file():
            logger.info("removing %s, left by a download that did not finish", leftover)
            leftover.unlink(missing_ok=True)


@dataclass(frozen=True)
class _Attempt:
    digest: str | None = None
    error: str | None = None
    retry: bool = True
    stack: tuple[str, ...] = ()


class ArtifactFetcher:
    """Downloads artifacts over HTTP(S) with the device's headers, verified and cached by digest."""

    def __init__(
        self,
        cache_dir: Path,
        *,
        headers: Mapping[str, str] | None = None,
        attempts: int = 10,
        backoff_s: float = 0.05,
        timeout_s: float = 30.0,
        max_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
        share: ArtifactShare | None = None,
    ) -> None:
        self.share = share
        self.cache_dir = share.cache_dir if share is not None else cache_dir
        self.headers = dict(headers or {})
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self.max_cache_bytes = max_cache_bytes
        if share is None:  # a share did this once, when it was made: the other devices' downloads may be under way
            _remove_partials(self.cache_dir)

    def alone(self, cache_dir: Path) -> None:
        """Download on its own from now on, into ``cache_dir`` (a simulated device that a download fault targets)."""
        self.share = None
        self.cache_dir = cache_dir
        _remove_partials(cache_dir)

    def _shrink(self, keep: Path) -> None:
        """Hold the cache under ``max_cache_bytes``: the least recently used files go (never ``keep``). The placed
        artifacts are hard links or copies, so they stay."""
        entries = []
        for path in self.cache_dir.iterdir():
            if path == keep or not re.fullmatch(r"[0-9a-f]{64}", path.name):
                continue
            with contextlib.suppress(OSError):
                st = path.stat()
                entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries) + (keep.stat().st_size if keep.is_file() else 0)
        for _, size, path in sorted(entries):
            if total <= self.max_cache_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size

    def _download_once(self, url: str, tmp: Path) -> _Attempt:
        request = urllib.request.Request(url, headers=self.headers)
        h = hashlib.sha256()
        size = 0
        try:
            with open_url(request, self.timeout_s) as resp, open(tmp, "wb") as out:
                declared = resp.headers.get("Content-Length", "")
                if declared.isdigit() and int(declared) > self.max_bytes:
                    return self._too_large(url, int(declared))
                while chunk := resp.read(_CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        return self._too_large(url, size)
                    h.update(chunk)
                    out.write(chunk)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code >= 500 or exc.code == 429:
                return _Attempt(error=f"HTTP {exc.code} from {url}", stack=("HTTP_REQUEST_ERROR",))
            stack = ("HTTP_REQUEST_ERROR", "RESOURCE_NOT_FOUND") if exc.code == 404 else ("HTTP_REQUEST_ERROR",)
            return _Attempt(error=f"HTTP {exc.code} from {url}", retry=False, stack=stack)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            return _Attempt(error=f"{url}: {reason}", stack=("NETWORK_ERROR",))
        return _Attempt(digest=base64.b64encode(h.digest()).decode())

    def _too_large(self, url: str, size: int) -> _Attempt:
        return _Attempt(
            error=f"{url} is over the {self.max_bytes}-byte download limit ({size} bytes or more)",
            retry=False,
            stack=("HTTP_REQUEST_ERROR",),
        )

    async def fetch(self, url: str, digest: str, algorithm: str = "SHA-256") -> Path:
        """The verified file for ``digest``: from the cache, or downloaded (with retries) into it."""
        if algorithm.replace("-", "").upper() != "SHA256":
            raise ArtifactDownloadError(
                (*_DOWNLOAD, "HASHING_ALGORITHM_UNAVAILABLE"), f"artifact {url}: algorithm '{algorithm}' is not SHA-256"
            )
        scheme = urllib.parse.urlparse(url).scheme
        if scheme not in ("http", "https"):
            raise ArtifactDownloadError(
                (*_DOWNLOAD, "UNSUPPORTED_ARTIFACT_SCHEME"), f"artifact URI '{url}': this agent downloads http(s) only"
            )
        try:
            hex_name = base64.b64decode(digest, validate=True).hex()
        except ValueError as exc:
            raise ArtifactDownloadError((*_DOWNLOAD, "RECIPE_PARSE_ERROR"), f"artifact {url}: Digest is not base64") from exc
        cached = self.cache_dir / hex_name
        if await self._verified(cached, digest):
            return cached
        if self.share is None:
            return await self._download(url, digest, hex_name, cached)
        share = self.share

        async def download() -> Path:
            share.downloads += 1
            return await self._download(url, digest, hex_name, cached)

        # one download per digest for the share's devices; each then verifies the file against its own Digest
        await share.once(("download", hex_name), download)
        if not await self._verified(cached, digest, after_download=True):
            raise ArtifactDownloadError(
                (*_DOWNLOAD, "ARTIFACT_CHECKSUM_MISMATCH"),
                f"artifact {url}: the shared download does not match the recipe's Digest; it was deleted",
            )
        return cached

    async def _verified(self, cached: Path, digest: str, *, after_download: bool = False) -> bool:
        """Whether ``cached`` is there and hashes to ``digest``; one that doesn't is deleted."""
        if not cached.is_file():
            return False
        try:
            if await asyncio.to_thread(file_sha256_b64, cached) == digest:
                if not after_download:
                    os.utime(cached)  # recently used: the last the cache lets go
                return True
        except OSError:
            pass
        logger.warning(
            "%s artifact %s does not match its digest; %s",
            "downloaded" if after_download else "cached",
            cached,
            "deleted" if after_download else "downloading it again",
        )
        cached.unlink(missing_ok=True)
        return False

    async def _download(self, url: str, digest: str, hex_name: str, cached: Path) -> Path:
        """Download ``url`` into the cache as ``cached`` (with retries), verified against ``digest`` on the way."""
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        last = _Attempt()
        mismatches = 0
        for attempt in range(1, self.attempts + 1):
            tmp = self.cache_dir / f".{hex_name}.{uuid.uuid4().hex[:8]}"
            try:
                last = await asyncio.to_thread(self._download_once, url, tmp)
                if last.digest == digest:
                    os.replace(tmp, cached)
                    await asyncio.to_thread(self._shrink, cached)
                    return cached
            finally:
                tmp.unlink(missing_ok=True)
            if last.digest is not None:
                mismatches += 1
                logger.warning("artifact %s: SHA-256 mismatch (attempt %d of %d); deleted, retrying", url, attempt, self.attempts)
            elif not last.retry:
                break
            else:
                logger.warning("artifact %s: %s (attempt %d of %d)", url, last.error, attempt, self.attempts)
            if attempt < self.attempts:
                await asyncio.sleep(min(self.backoff_s * attempt, 2.0))
        if last.digest is not None:
            raise ArtifactDownloadError(
                (*_DOWNLOAD, "ARTIFACT_CHECKSUM_MISMATCH"),
                f"artifact {url}: SHA-256 did not match the recipe's Digest in {mismatches} download(s); every copy was deleted",
            )
        raise ArtifactDownloadError((*_DOWNLOAD, *last.stack), f"artifact {url} could not be downloaded: {last.error}")


def place(cached: Path, dest: Path) -> None:
    """Put the cached file at ``dest`` (a hard link where possible, else a copy), replacing what is there."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
    try:
        try:
            os.link(cached, tmp)
        except OSError:
            shutil.copyfile(cached, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def link_tree(source: Path, dest: Path, folder_mode: int = 0o700) -> None:
    """Give ``dest`` (which must not exist) the files of ``source`` as hard links (copies where links fail), whole or
    not at all: staged beside ``dest`` like :func:`safe_unzip`'s, then renamed. Folders get ``folder_mode``; the
    files keep ``source``'s (shared by the links: :func:`safe_unzip` makes them read-only)."""
    if dest.exists():
        raise FileExistsError(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = dest.parent / f".{dest.name}.unzip-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        for dirpath, dirnames, filenames in os.walk(source):
            here = staging / os.path.relpath(dirpath, source)
            for d in dirnames:
                (here / d).mkdir()
            for f in filenames:
                try:
                    os.link(os.path.join(dirpath, f), here / f)
                except OSError:
                    shutil.copy2(os.path.join(dirpath, f), here / f)
        for dirpath, dirnames, _files in os.walk(staging):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), folder_mode)
        os.chmod(staging, folder_mode)
        os.replace(staging, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


class ArtifactShare:
    """What the simulated devices of one process (one event loop) share: the download cache in ``cache_dir``, one
    download per artifact digest at a time, one unpacked copy per (digest, permissions) that each device gets as hard
    links, the recipes they fetched (a published component version never changes: the registry refuses another
    with the same version), and one registry request for the devices that ask the same at the same time
    (:meth:`ask`: versions lists are not kept, each later question asks again). Each device still checks the cached
    file against its own recipe's Digest before it places it, so a corrupted cache entry is caught by the next device
    that installs it, and downloaded again.

    Not for real devices: the packaged agent downloads and unpacks on its own. See docs/local-fleet.md (what a
    simulated device shares).
    """

    def __init__(self, cache_dir: Path, *, unpack: bool = True) -> None:
        self.cache_dir = Path(cache_dir).absolute()
        self.share_unpacks = unpack
        """Whether the devices get hard links to one unpacked copy (:meth:`unpack`), or unpack on their own (their
        components run as processes that might write into their artifacts: the simulator's ``subprocess`` mode)."""
        self.recipes: dict[tuple[str, str, str], Mapping[str, Any]] = {}
        """(registry URL, component, version) → the recipe the registry sent."""
        self.downloads = 0
        """Downloads this share ran (each may have retried); the other devices verified the cached file."""
        self.unpacks = 0
        """Archives this share unpacked; the other devices got hard links to the files."""
        self._running: dict[Hashable, asyncio.Task[Any]] = {}
        self._asking: dict[Hashable, concurrent.futures.Future[Any]] = {}
        self._asking_lock = threading.Lock()
        _remove_partials(self.cache_dir)
        for leftover in (self.cache_dir / "unpacked").glob(".*.unzip-*"):  # a killed process's (the share is its own)
            shutil.rmtree(leftover, ignore_errors=True)

    def ask(self, key: Hashable, fetch: Callable[[], _T]) -> _T:
        """``fetch()`` (blocking, from any thread), shared with the callers that ask for ``key`` while it is under way:
        they get its answer (or its error) instead of a request of their own."""
        with self._asking_lock:
            pending = self._asking.get(key)
            if pending is None:
                mine: concurrent.futures.Future[Any] = concurrent.futures.Future()
                self._asking[key] = mine
        if pending is not None:
            answer: _T = pending.result()
            return answer
        try:
            value = fetch()
        except BaseException as exc:
            mine.set_exception(exc)
            raise
        else:
            mine.set_result(value)
            return value
        finally:
            with self._asking_lock:
                self._asking.pop(key, None)

    async def once(self, key: Hashable, work: Callable[[], Awaitable[_T]]) -> _T:
        """``work()``'s result, run once for the callers that ask for ``key`` while it runs (a caller cancelled
        does not cancel it for the others). A later call runs it again."""
        task = self._running.get(key)
        if task is None:

            async def run() -> _T:
                try:
                    return await work()
                finally:
                    self._running.pop(key, None)

            task = asyncio.get_running_loop().create_task(run())
            self._running[key] = task
        result: _T = await asyncio.shield(task)
        return result

    async def unpack(
        self, archive: Path, digest_hex: str, dest: Path, *, max_bytes: int, file_mode: int, folder_mode: int
    ) -> None:
        """Unpack ``archive`` (verified: its SHA-256 is ``digest_hex``) into ``dest`` as hard links to the share's
        one unpacked copy (made with :func:`safe_unzip` the first time)."""
        shared = self.cache_dir / "unpacked" / f"{digest_hex}-{file_mode:o}-{folder_mode:o}"

        async def make() -> None:
            if not shared.is_dir():
                self.unpacks += 1
                await asyncio.to_thread(
                    safe_unzip, archive, shared, max_bytes=max_bytes, file_mode=file_mode, folder_mode=folder_mode
                )

        await self.once(("unpack", shared.name), make)
        await asyncio.to_thread(link_tree, shared, dest, folder_mode)
