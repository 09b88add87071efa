"""Simulated devices of one process share one download and unpack per artifact, and each still verifies it.

The share is for the simulator (docs/local-fleet.md, what a simulated device shares): a real device downloads alone.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import zip_bytes

from edgekit.device.download import ArtifactFetcher, ArtifactShare, safe_unzip
from edgekit.device.errors import ArtifactDownloadError


def _digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, str, list[str]]]:
    """A folder served over HTTP on loopback, and the paths of the GETs it answered."""
    folder = tmp_path / "served"
    folder.mkdir()
    gets: list[str] = []

    class Counting(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            gets.append(self.path)
            super().do_GET()

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counting, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}", gets
    finally:
        server.shutdown()
        server.server_close()


def test_many_devices_download_once_and_a_corrupted_cache_entry_is_caught_by_the_next_device(
    tmp_path: Path, served: tuple[Path, str, list[str]]
) -> None:
    folder, base, gets = served
    data = b"component " * 20_000
    (folder / "a.bin").write_bytes(data)
    share = ArtifactShare(tmp_path / "shared")
    fetchers = [ArtifactFetcher(tmp_path / f"d{i}" / "cache", share=share, backoff_s=0.0) for i in range(20)]

    async def scenario() -> None:
        paths = await asyncio.gather(*(f.fetch(f"{base}/a.bin", _digest(data)) for f in fetchers))
        assert {p.read_bytes() for p in paths} == {data}
        assert len(gets) == 1 and share.downloads == 1  # twenty devices, one download
        # the shared copy goes bad on disk: the next device to install it checks it against its own Digest, drops
        # it and downloads it again; the one after gets the good copy
        paths[0].chmod(0o600)
        paths[0].write_bytes(b"X" + data[1:])
        again = await fetchers[5].fetch(f"{base}/a.bin", _digest(data))
        assert again.read_bytes() == data and len(gets) == 2
        later = await fetchers[6].fetch(f"{base}/a.bin", _digest(data))
        assert later.read_bytes() == data and len(gets) == 2
        # a device whose recipe names another digest is not handed the shared file
        other = b"other " * 100
        (folder / "b.bin").write_bytes(other)
        with pytest.raises(ArtifactDownloadError, match="SHA-256 did not match"):
            await ArtifactFetcher(tmp_path / "x", share=share, attempts=2, backoff_s=0.0).fetch(
                f"{base}/b.bin", _digest(b"not what is served")
            )

    asyncio.run(asyncio.wait_for(scenario(), 60))
    assert not any(p.name.startswith(".") for p in share.cache_dir.iterdir())  # no partial download left


def test_a_shared_unpack_is_one_unzip_and_each_device_gets_its_own_folder_of_hard_links(tmp_path: Path) -> None:
    entries = {"model/a.txt": b"a" * 1000, "model/sub/b.txt": b"b" * 10, "c.txt": b"c"}
    archive = tmp_path / "m.zip"
    archive.write_bytes(zip_bytes(entries))
    hex_digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    share = ArtifactShare(tmp_path / "shared")
    dests = [tmp_path / f"d{i}" / "unpacked" / "m" for i in range(8)]

    async def scenario() -> None:
        await asyncio.gather(
            *(share.unpack(archive, hex_digest, d, max_bytes=1 << 20, file_mode=0o400, folder_mode=0o700) for d in dests)
        )

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert share.unpacks == 1
    alone = tmp_path / "alone"
    safe_unzip(archive, alone, file_mode=0o400, folder_mode=0o700)  # what a device unpacking on its own gets
    want = sorted(str(p.relative_to(alone)) for p in alone.rglob("*"))
    for dest in dests:
        assert sorted(str(p.relative_to(dest)) for p in dest.rglob("*")) == want
        for name, data in entries.items():
            assert (dest / name).read_bytes() == data
            assert (dest / name).stat().st_mode & 0o777 == 0o400  # read-only: the devices share the files
        assert not any(p.name.startswith(".") for p in dest.parent.iterdir())  # no staging left
    assert (dests[0] / "c.txt").stat().st_ino == (dests[7] / "c.txt").stat().st_ino
    assert (dests[0] / "c.txt").stat().st_nlink == len(dests) + 1  # + the share's copy
