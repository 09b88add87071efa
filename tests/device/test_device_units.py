"""edgekit.device building blocks: safe unzip, variables, configuration merge, Skipif, ordering, targets."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import http.server
import os
import stat
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekit.device import DeviceError, UnsafeArchiveError, parse_target
from edgekit.device.configuration import get_pointer, next_configuration
from edgekit.device.download import ArtifactFetcher, permission_modes, safe_unzip
from edgekit.device.lifecycle import dependency_layers, should_skip
from edgekit.device.variables import ComponentView, VariableContext, interpolate
from edgekit.wire.deployment_parts import ConfigurationUpdate

# --------------------------------------------------------------------------- safe unzip


def _zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def _symlink(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def test_unzip_puts_the_tree_in_place_with_permissions(tmp_path: Path) -> None:
    z = _zip(tmp_path / "bundle.zip", [("a.txt", b"a"), ("sub/b.sh", b"echo b"), ("sub/deeper/", b"")])
    dest = tmp_path / "out" / "bundle"
    file_mode, folder_mode = permission_modes({"Read": "ALL", "Execute": "OWNER"})
    assert (file_mode, folder_mode) == (0o544, 0o755)
    safe_unzip(z, dest, file_mode=file_mode, folder_mode=folder_mode)
    assert (dest / "a.txt").read_bytes() == b"a" and (dest / "sub" / "b.sh").read_bytes() == b"echo b"
    assert (dest / "sub" / "deeper").is_dir()
    assert stat.S_IMODE((dest / "sub" / "b.sh").stat().st_mode) == 0o544
    assert stat.S_IMODE((dest / "sub").stat().st_mode) == 0o755
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["bundle"]  # no staging left behind
    assert permission_modes(None) == (0o400, 0o700)  # Read OWNER, Execute NONE by default


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([("ok.txt", b"fine"), ("../evil", b"x")], "'..'"),
        ([("ok.txt", b"fine"), ("sub/../../evil", b"x")], "'..'"),
        ([("ok.txt", b"fine"), ("/tmp/evil-absolute", b"x")], "absolute"),
        ([("ok.txt", b"fine"), ("C:/evil", b"x")], "absolute"),
        ([("ok.txt", b"fine"), (_symlink("link", "/etc/passwd"), b"/etc/passwd")], "symbolic link"),
        ([("dup.txt", b"one"), ("dup.txt", b"two")], "twice"),
        ([("ok.txt", b"fine"), ("zeros.bin", bytes(3_000_000))], "zip bomb"),
    ],
    ids=["dotdot", "nested-dotdot", "absolute", "drive-letter", "symlink", "duplicate", "bomb"],
)
def test_unsafe_archives_are_refused_whole(tmp_path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]], why: str) -> None:
    z = tmp_path / "in" / "bad.zip"
    z.parent.mkdir()
    if why == "twice":
        with pytest.warns(UserWarning, match="Duplicate name"):
            _zip(z, entries)
    else:
        _zip(z, entries)
    dest = tmp_path / "out" / "deep" / "bad"
    with pytest.raises(UnsafeArchiveError, match=why) as info:
        safe_unzip(z, dest, max_bytes=1_000_000)
    assert info.value.stack == ("IO_ERROR", "IO_UNZIP_ERROR") and info.value.code == "IO_UNZIP_ERROR"
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # nothing extracted, no staging folder
    assert not (tmp_path / "out" / "evil").exists() and not (tmp_path / "evil").exists()
    assert not Path("/tmp/evil-absolute").exists()


def test_a_corrupt_zip_is_refused(tmp_path: Path) -> None:
    z = tmp_path / "broken.zip"
    z.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(UnsafeArchiveError, match="can't be unpacked"):
        safe_unzip(z, tmp_path / "broken")
    assert not (tmp_path / "broken").exists()


# --------------------------------------------------------------------------- downloads


@pytest.fixture
def files_url(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served over HTTP on loopback."""
    folder = tmp_path / "served"
    folder.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _digest(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_downloads_are_bounded_the_cache_shrinks_and_partials_go(tmp_path: Path, files_url: tuple[Path, str]) -> None:
    """Issue 19: no size limit, a cache that never shrinks, and the partial file a killed download leaves."""
    folder, base = files_url
    cache = tmp_path / "cache"
    cache.mkdir()
    partial = cache / f".{'ab' * 32}.0123abcd"  # what a download killed with its process leaves
    partial.write_bytes(b"half")
    blobs = {f"b{i}.bin": os.urandom(4096) for i in range(4)}
    for name, data in blobs.items():
        (folder / name).write_bytes(data)
    (folder / "big.bin").write_bytes(b"x" * 20_000)
    fetcher = ArtifactFetcher(cache, attempts=2, backoff_s=0.0, max_bytes=10_000, max_cache_bytes=3 * 4096)
    assert not partial.exists()

    async def scenario() -> None:
        for name, data in blobs.items():
            cached = await fetcher.fetch(f"{base}/{name}", _digest(data))
            assert cached.read_bytes() == data
            await asyncio.sleep(0.02)  # distinct modification times: the order the cache lets them go
        with pytest.raises(DeviceError, match="over the 10000-byte download limit"):
            await fetcher.fetch(f"{base}/big.bin", _digest(b"x" * 20_000))

    asyncio.run(asyncio.wait_for(scenario(), 30))
    held = sorted(p.name for p in cache.iterdir())
    assert len(held) == 3 and hashlib.sha256(blobs["b3.bin"]).hexdigest() in held  # the oldest went
    assert hashlib.sha256(blobs["b0.bin"]).hexdigest() not in held


# --------------------------------------------------------------------------- variables


def _ctx(tmp_path: Path) -> VariableContext:
    def view(name: str, config: dict[str, object]) -> ComponentView:
        return ComponentView(tmp_path / "a" / name, tmp_path / "d" / name, tmp_path / "w" / name, config)

    return VariableContext(
        name="app",
        thing="pi-7",
        kernel_root=tmp_path,
        own=view("app", {"Msg": "hi there", "N": 3, "Obj": {"k": [1, True]}, "a/b": "slash", "Null": None}),
        dependencies={"com.example.Base": view("base", {"Port": 8080, "Name": "b"})},
    )


def test_every_variable_kind_is_interpolated(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    text = (
        "{artifacts:path}|{artifacts:decompressedPath}|{work:path}|{kernel:rootPath}|{iot:thingName}|"
        "{configuration:/Msg}|{configuration:/N}|{configuration:/Obj}|{configuration:/Obj/k/1}|{configuration:/a~1b}|"
        "{configuration:/Null}|{com.example.Base:artifacts:path}|{com.example.Base:artifacts:decompressedPath}|"
        "{com.example.Base:work:path}|{com.example.Base:configuration:/Port}"
    )
    assert interpolate(text, ctx).split("|") == [
        f"{tmp_path}/a/app",
        f"{tmp_path}/d/app",
        f"{tmp_path}/w/app",
        str(tmp_path),
        "pi-7",
        "hi there",
        "3",
        '{"k":[1,true]}',
        "true",
        "slash",
        "null",
        f"{tmp_path}/a/base",
        f"{tmp_path}/d/base",
        f"{tmp_path}/w/base",
        "8080",
    ]


def test_unresolvable_variables_and_shell_syntax_stay_as_they_are(tmp_path: Path) -> None:
    ctx = _ctx(tmp_path)
    text = "{configuration:/Missing} {com.example.NotADep:work:path} {iot:nope} ${HOME:-x} {plain} a{b}c"
    assert interpolate(text, ctx) == text


# --------------------------------------------------------------------------- configuration


def test_configuration_merge_reset_and_defaults() -> None:
    default = {"Mode": "fast", "Limits": {"cpu": "1", "mem": "64"}, "Tags": ["a"]}
    # a new component: the defaults, then the merge
    first = next_configuration(None, default, ConfigurationUpdate(merge={"Limits": {"cpu": "2"}, "Extra": 1}))
    assert first == {"Mode": "fast", "Limits": {"cpu": "2", "mem": "64"}, "Tags": ["a"], "Extra": 1}
    # no update: the configuration stays, plus any new default key
    assert next_configuration(first, {**default, "New": "x"}, None) == {**first, "New": "x"}
    # reset takes the default back (or removes a key that has none), then merge applies
    update = ConfigurationUpdate(reset=["/Limits/cpu", "/Extra"], merge={"Mode": "slow"})
    assert next_configuration(first, default, update) == {"Mode": "slow", "Limits": {"cpu": "1", "mem": "64"}, "Tags": ["a"]}
    # "" resets everything; a merge given as a JSON string is accepted
    everything = ConfigurationUpdate.model_validate({"reset": [""], "merge": '{"Tags": ["b"]}'})
    assert next_configuration(first, default, everything) == {**default, "Tags": ["b"]}
    assert get_pointer({"a": [{"b": 1}]}, "/a/0/b") == (True, 1) and get_pointer({}, "/x") == (False, None)


# --------------------------------------------------------------------------- Skipif, ordering, targets


def test_skipif_expressions(tmp_path: Path) -> None:
    (tmp_path / "flag").write_text("")
    path = "/usr/bin:/bin"
    assert should_skip("onpath sh", path, tmp_path) is True
    assert should_skip("onpath no-such-command-xyz", path, tmp_path) is False
    assert should_skip("exists flag", path, tmp_path) is True  # relative to the work folder
    assert should_skip(f"exists {tmp_path}/missing", path, tmp_path) is False
    assert should_skip("! exists flag", path, tmp_path) is False
    with pytest.raises(ValueError, match="onpath"):
        should_skip("whenever it rains", path, tmp_path)


def test_dependency_layers_and_cycles() -> None:
    assert dependency_layers({"app": ["rt", "model"], "model": [], "rt": ["outside"]}) == [["model", "rt"], ["app"]]
    with pytest.raises(DeviceError) as info:
        dependency_layers({"a": ["b"], "b": ["a"], "c": []})
    assert info.value.code == "COMPONENT_CIRCULAR_DEPENDENCY_ERROR"


def test_job_targets() -> None:
    assert parse_target("thinggroup/line-1") == "thinggroup/line-1"
    assert parse_target("arn:aws:iot:eu-west-1:123456789012:thinggroup/line-1") == "thinggroup/line-1"
    assert parse_target("arn:aws:iot:eu-west-1:123456789012:thing/pi-1") == "thing/pi-1"
    with pytest.raises(DeviceError, match="DEPLOYMENT_DOCUMENT_NOT_VALID"):
        parse_target("group/x")
