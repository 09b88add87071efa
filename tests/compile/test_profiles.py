"""Device profiles: bundled ones, user ones, and bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgekit.errors import ConfigError, UnknownTargetError
from edgekit.profiles import list_profiles, load_profile

REQUIRED = {"x86_64", "ml_c5", "rasp4b", "imx8mplus", "jetson_nano"}


def test_bundled_profiles_cover_the_required_devices() -> None:
    profiles = {p.name: p for p in list_profiles()}
    assert profiles.keys() >= REQUIRED
    assert profiles["rasp4b"].greengrass.architecture == "aarch64"
    assert profiles["rasp4b"].neo.arch == "ARM64"
    assert profiles["rasp4b"].tvm.target["mcpu"] == "cortex-a72"
    assert profiles["rasp4b"].toolchain.cxx == "aarch64-linux-gnu-g++"
    assert profiles["imx8mplus"].tvm.target["mcpu"] == "cortex-a53"
    assert profiles["ml_c5"].greengrass.architecture == "amd64"
    assert "avx512f" in profiles["ml_c5"].cpu_flags
    jetson = profiles["jetson_nano"]
    assert jetson.has_cuda and jetson.tvm.target["arch"] == "sm_53" and jetson.neo.accelerator == "NVIDIA"
    assert jetson.tvm.host is not None and jetson.tvm.host["mtriple"] == "aarch64-linux-gnu"
    for p in profiles.values():
        assert p.memory_mb > 0


def test_host_runnability_follows_architecture() -> None:
    assert load_profile("x86_64").runs_on_host()
    assert not load_profile("rasp4b").runs_on_host()
    assert not load_profile("jetson_nano").runs_on_host()


def _write_profile(path: Path, **changes: object) -> Path:
    data = yaml.safe_load(Path(load_profile("rasp4b").source).read_text())
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def test_user_profile_from_env_dir_and_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "mydevices"
    d.mkdir()
    _write_profile(d / "myboard.yaml", name="myboard", memoryMb=512)
    monkeypatch.setenv("EDGEKIT_DEVICES", str(d))
    assert load_profile("myboard").memory_mb == 512
    assert "myboard" in {p.name for p in list_profiles()}
    assert load_profile(str(d / "myboard.yaml")).name == "myboard"


def test_user_profile_in_cwd_devices_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "devices").mkdir()
    _write_profile(tmp_path / "devices" / "bench_board.yaml", name="bench_board")
    monkeypatch.chdir(tmp_path)
    assert load_profile("bench_board").greengrass.architecture == "aarch64"


def test_unknown_target_lists_known_ones() -> None:
    with pytest.raises(UnknownTargetError, match=r"unknown target 'rasp9'.*rasp4b"):
        load_profile("rasp9")


def test_invalid_profile_names_file_and_field(tmp_path: Path) -> None:
    bad = _write_profile(tmp_path / "bad.yaml", name="bad", greengrass={"os": "linux", "architecture": "arm64"})
    with pytest.raises(ConfigError, match=r"bad\.yaml: field 'greengrass\.architecture'"):
        load_profile(str(bad))
    typo = _write_profile(tmp_path / "typo.yaml", name="typo", memroyMb=1)
    with pytest.raises(ConfigError, match=r"typo\.yaml: field 'memroyMb'"):
        load_profile(str(typo))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml"):
        load_profile(str(broken))


def test_profile_fingerprint_tracks_content(tmp_path: Path) -> None:
    a = load_profile(str(_write_profile(tmp_path / "a.yaml", name="same")))
    b = load_profile(str(_write_profile(tmp_path / "b.yaml", name="same")))
    c = load_profile(str(_write_profile(tmp_path / "c.yaml", name="same", memoryMb=1)))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
