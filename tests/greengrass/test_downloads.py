"""Long downloads show bytes, rate and time left; pip says where a wheel is and edgekit downloads it, checked against
the index's hash. A real HTTP server on a free port (and a real pip against a simple index served by it)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import re
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgekit.downloads import DownloadError, Meter, download, pip_wheel_urls


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(base URL, folder it serves)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_a_download_reports_bytes_rate_and_time_left(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    blob = bytes(range(256)) * (3 * 4096)  # 3 MiB
    (root / "blob.bin").write_bytes(blob)
    lines: list[str] = []
    got = download(f"{url}/blob.bin", tmp_path / "out" / "blob.bin", "test blob", lines.append,
                   sha256=hashlib.sha256(blob).hexdigest(), every=0.0)  # fmt: skip
    assert got.read_bytes() == blob
    during = [ln for ln in lines[:-1] if re.fullmatch(r"test blob: \d+\.\d of 3\.1 MB, \d+\.\d MB/s, \d+ (s|min) left", ln)]
    assert len(during) >= 10  # a line per 64 KiB chunk with every=0 (the default is at most one a second)
    assert re.fullmatch(r"test blob: 3\.1 MB in \d+ s", lines[-1])
    assert list((tmp_path / "out").iterdir()) == [got]  # no partial file left beside it


def test_a_wrong_hash_is_refused_and_leaves_nothing(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    (root / "blob.bin").write_bytes(b"not what the index says")
    with pytest.raises(DownloadError, match="SHA-256 .* not 00"):
        download(f"{url}/blob.bin", tmp_path / "out" / "blob.bin", "blob", sha256="00" * 32)
    assert list((tmp_path / "out").iterdir()) == []


def test_a_missing_file_names_the_reason(served: tuple[str, Path], tmp_path: Path) -> None:
    url, _ = served
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{url}/nothing.whl", tmp_path / "nothing.whl", "nothing", attempts=1)


def test_meter_says_time_left_from_the_rate() -> None:
    now = [0.0]
    lines: list[str] = []
    meter = Meter("wheel", 100_000_000, lines.append, clock=lambda: now[0])
    now[0] = 5.0
    meter.add(40_000_000)  # 8 MB/s: 60 MB left in 7.5 s
    assert lines == ["wheel: 40.0 of 100.0 MB, 8.0 MB/s, 8 s left"]
    now[0] = 5.5
    meter.add(1_000_000)  # within a second of the last line: not reported
    assert len(lines) == 1


def _wheel(folder: Path, name: str, version: str) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{name}/__init__.py", "")
        zf.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        zf.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: edgekit-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        zf.writestr(f"{info}/RECORD", "")
    return path


def test_pip_says_where_the_wheel_is_and_edgekit_downloads_it(served: tuple[str, Path], tmp_path: Path) -> None:
    url, root = served
    project = root / "simple" / "edgekit-probe"
    project.mkdir(parents=True)
    wheel = _wheel(project, "edgekit_probe", "1.0")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (project / "index.html").write_text(f'<a href="{wheel.name}#sha256={digest}">{wheel.name}</a>\n')
    pip = [sys.executable, "-m", "pip"]
    args = ["--no-deps", "--only-binary=:all:", "--index-url", f"{url}/simple/", "--disable-pip-version-check", "--no-input"]
    (planned,) = pip_wheel_urls(pip, args, ["edgekit-probe==1.0"])
    assert planned.url.startswith(url) and planned.filename == wheel.name and planned.sha256 == digest
    lines: list[str] = []
    got = download(planned.url, tmp_path / planned.filename, "probe wheel", lines.append, sha256=planned.sha256)
    assert got.read_bytes() == wheel.read_bytes() and lines[-1].startswith("probe wheel: 0.0 MB in ")
    with pytest.raises(DownloadError):
        pip_wheel_urls(pip, args, ["edgekit-probe==2.0"])  # no such version on the index: pip can't say


@pytest.mark.parametrize("command", ["verify", "package", "simulate", "demo"])
def test_help_of_a_command_that_downloads_says_it_needs_the_network(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    from edgekit.cli import main

    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "network" in text and ("212 MB" in text or "95 MB" in text)
