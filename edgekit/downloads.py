"""Long downloads with progress: bytes, rate and time left, reported as :data:`~edgekit.progress.Progress` lines.

``package`` downloads the ~95 MB aarch64 ``apache-tvm`` wheel once and ``verify`` builds a ~212 MB aarch64 root
once (Debian packages and wheels): :func:`download` streams a file over HTTP(S) and reports
``apache-tvm wheel: 41.9 of 95.0 MB, 8.4 MB/s, 6 s left`` at most once a second; :class:`Meter` adds up several
downloads (the Debian packages, fetched eight at a time). :func:`pip_wheel_urls` asks pip where the wheels are (pip
resolves them with the user's index settings, ``--dry-run --report``: nothing is downloaded), so that edgekit
downloads them itself with progress and checks each against the hash the index gives. See docs/cli.md (network).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.progress import Progress, no_progress

__all__ = ["DownloadError", "Meter", "PlannedFile", "download", "fetch", "pip_wheel_urls"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 16


class DownloadError(OSError):
    """A download failed (network, HTTP status, wrong hash): callers turn it into their own edgekit error."""


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f}"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Meter:
    """Bytes received of ``total`` (None: unknown), reported to ``progress`` at most every ``every`` seconds as
    ``<what>: <done> of <total> MB, <rate> MB/s, <time> left``; thread-safe (several downloads may add to one)."""

    def __init__(
        self,
        what: str,
        total: int | None,
        progress: Progress,
        *,
        every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self._progress, self._every, self._clock = what, total, progress, every, clock
        self.done = 0
        self._start = clock()
        self._last = self._start
        self._lock = threading.Lock()

    def line(self) -> str:
        """The progress line for what has been received so far."""
        elapsed = max(self._clock() - self._start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {_mb(self.done)}"
        if self.total:
            text += f" of {_mb(self.total)} MB"
        else:
            text += " MB"
        text += f", {rate / 1e6:.1f} MB/s"
        if self.total and rate > 0 and self.done < self.total:
            text += f", {_duration((self.total - self.done) / rate)} left"
        return text

    def add(self, n: int) -> None:
        with self._lock:
            self.done += n
            now = self._clock()
            if now - self._last < self._every:
                return
            self._last = now
            text = self.line()
        self._progress(text)

    def finish(self) -> None:
        """The last line: what was received, in how long."""
        elapsed = self._clock() - self._start
        with self._lock:
            self._progress(f"{self.what}: {_mb(self.done)} MB in {_duration(elapsed)}")


def fetch(url: str, *, meter: Meter | None = None, timeout: float = 60, sink: Callable[[bytes], None] | None = None) -> bytes:
    """The body at ``url`` (or, with ``sink``, each chunk given to it and b"" returned), counted on ``meter``.

    Raises :class:`DownloadError` with the reason on a network error, an HTTP error or a short body."""
    parts: list[bytes] = []
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if meter is not None and meter.total is None:
                meter.total = expected  # the size the response announces
            got = 0
            while chunk := resp.read(_CHUNK):
                got += len(chunk)
                if sink is not None:
                    sink(chunk)
                else:
                    parts.append(chunk)
                if meter is not None:
                    meter.add(len(chunk))
    except urllib.error.HTTPError as exc:
        exc.close()  # it holds the response: its socket
        raise DownloadError(f"HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DownloadError(str(getattr(exc, "reason", exc))) from exc
    if expected is not None and got != expected:
        raise DownloadError(f"the connection closed after {got} of {expected} bytes")
    return b"".join(parts)


def download(
    url: str,
    dest: Path,
    what: str,
    progress: Progress = no_progress,
    *,
    sha256: str | None = None,
    attempts: int = 3,
    timeout: float = 60,
    every: float = 1.0,
) -> Path:
    """``url`` saved as ``dest`` (atomically), with progress lines on ``progress`` and its SHA-256 checked when given.

    Retries ``attempts`` times; raises :class:`DownloadError` naming the reason of the last failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        try:
            return _download_once(url, dest, what, progress, sha256, timeout, every)
        except DownloadError as exc:
            log.debug("download of %s failed (attempt %d): %s", url, attempt, exc)
            if attempt == attempts or "SHA-256" in str(exc):
                raise
            time.sleep(attempt)
    raise AssertionError("unreachable")


def _download_once(url: str, dest: Path, what: str, progress: Progress, sha256: str | None, timeout: float, every: float) -> Path:
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
    digest = hashlib.sha256()
    meter = Meter(what, None, progress, every=every)
    try:
        with tmp.open("wb") as out:

            def sink(chunk: bytes) -> None:
                digest.update(chunk)
                out.write(chunk)

            fetch(url, meter=meter, timeout=timeout, sink=sink)
        if sha256 is not None and digest.hexdigest() != sha256.lower():
            raise DownloadError(f"{what} from {url} has SHA-256 {digest.hexdigest()}, not {sha256} as its index says")
        os.replace(tmp, dest)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise exc if isinstance(exc, DownloadError) else DownloadError(f"cannot write {dest} ({exc.strerror})") from exc
    meter.finish()
    return dest


@dataclass(frozen=True)
class PlannedFile:
    """A wheel pip chose: where it is, its file name and the SHA-256 the index gives for it (None if it gives none)."""

    url: str
    filename: str
    sha256: str | None


def pip_wheel_urls(pip: Sequence[str], args: Sequence[str], specs: Sequence[str], timeout: float = 300) -> list[PlannedFile]:
    """The wheels ``pip install --dry-run --report`` picks for ``specs`` with ``args`` (platform, ABI, --no-deps...).

    pip resolves with the user's own index settings and downloads nothing but metadata. Raises :class:`DownloadError`
    when pip can't say (no network, an index without them, a pip without ``--report``)."""
    with tempfile.TemporaryDirectory(prefix="edgekit-pip-") as tmp:
        report = Path(tmp) / "report.json"
        cmd = [*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), *args, *specs]
        log.debug("running %s", " ".join(cmd))
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DownloadError(f"pip could not resolve {' '.join(specs)} ({exc})") from exc
        if proc.returncode != 0 or not report.is_file():
            lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("WARNING")]
            raise DownloadError(lines[-1] if lines else f"pip exit {proc.returncode}")
        try:
            installs = json.loads(report.read_text())["install"]
            planned = []
            for item in installs:
                info = item["download_info"]
                url = str(info["url"])
                hashes = info.get("archive_info", {}).get("hashes", {})
                planned.append(PlannedFile(url, url.rsplit("/", 1)[-1].split("#")[0], hashes.get("sha256")))
        except (ValueError, KeyError, TypeError) as exc:
            raise DownloadError(f"pip's report cannot be read ({exc})") from exc
    if any(not p.url.startswith(("http://", "https://")) for p in planned):
        raise DownloadError("pip resolved a file that isn't on an HTTP index")  # a local wheelhouse: let pip copy it
    return planned
