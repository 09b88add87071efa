"""Measured on the target: 'edgekit compile --measure-on THING' sends each candidate to a device of the running fleet,
which times it itself; the ranking is by the device's timings. (On this host the figures mean little: the test checks
the mechanism, not the numbers.)"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import onnx
import pytest
from helpers import make_mlp, requires, wait_until

import edgekit
from edgekit.cli import main
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import EXIT_CODES, ConfigError
from edgekit.fleet.device_timing import FleetDeviceTimer
from edgekit.fleet.errors import FleetError
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet.presence import read_presence
from edgekit.manifest import read_manifest
from edgekit.wire.device_bundle import BUNDLE_CONFIG

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
TWO_ORT = Pipeline.model_validate(
    {
        "name": "two-ort",
        "candidates": [
            {"name": "ort-basic", "backend": "onnxruntime", "options": {"optimization": "basic"}},
            {"name": "ort-extended", "backend": "onnxruntime", "options": {"optimization": "extended"}},
        ],
        "measure": {"samples": 2, "warmup": 1, "repeat": 5},
    }
)


def _edgekit(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, "-m", "edgekit", *args], stdout=out, stderr=out, env=ENV)


@contextlib.contextmanager
def _fleet(tmp_path: Path, *things: str) -> Iterator[tuple[Path, list[subprocess.Popen[bytes]]]]:
    """'edgekit fleet serve' with ``things`` added (a linux/amd64 device each); no agent runs yet."""
    state = tmp_path / "fleet"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        serve = _edgekit(
            "fleet",
            "serve",
            "--state",
            str(state),
            "--tick",
            "0.2",
            "--port",
            "0",
            "--http-port",
            "0",
            log=tmp_path / "serve.log",
        )
        procs.append(serve)
        wait_until(
            lambda: FleetFolder.at(state).running() is not None or serve.poll() is not None, 30, "fleet serve up", every=0.1
        )
        assert serve.poll() is None, (tmp_path / "serve.log").read_text()
        for thing in things:
            argv = ["fleet", "add-device", thing, "--group", "bench", "--create-group", "--platform", "linux/amd64"]
            assert main([*argv, "--state", str(state), "--out", str(tmp_path / thing), "--force"]) == 0
        yield state, procs
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _mlp(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    return path


@requires("mosquitto")
def test_each_candidate_is_timed_on_the_device_and_the_manifest_says_so(tmp_path: Path) -> None:
    with _fleet(tmp_path, "pc-01") as (state, procs):
        procs.append(_edgekit("agent", "--config", str(tmp_path / "pc-01" / BUNDLE_CONFIG), log=tmp_path / "pc-01.log"))
        wait_until(
            lambda: (read_presence(FleetFolder.at(state).presence_file) or {}).get("pc-01") is True, 60, "pc-01 online", every=0.2
        )

        said: list[str] = []
        result = edgekit.compile(
            _mlp(tmp_path),
            "x86_64",
            tmp_path / "build",
            pipeline=TWO_ORT,
            measure_on="pc-01",
            state_dir=state,
            progress=said.append,
        )
        manifest = read_manifest(result.artifact_dir)
        assert manifest.measured is not None
        assert (manifest.measured.on, manifest.measured.measured_on) == ("device", "pc-01")
        dumped = manifest.model_dump(mode="json", by_alias=True)
        assert dumped["measured"]["measuredOn"] == "pc-01"
        timed = [c for c in manifest.candidates if c.measured is not None]
        assert sorted(c.name for c in timed) == ["ort-basic", "ort-extended"]
        for c in timed:
            assert c.measured is not None and c.measured.on == "device" and c.measured.measured_on == "pc-01"
            assert c.measured.latency.runs == 5 and c.measured.latency.median_ms > 0
        assert any("timing 2 candidate(s) on pc-01" in line for line in said), said
        # the device downloaded both archives (verified by digest into its cache) and timed them itself
        cached = sorted((tmp_path / "pc-01" / "work" / "packages" / "cache").iterdir())
        assert len(cached) == 2
        for archive in cached:
            with tarfile.open(archive) as tar:
                assert "manifest.json" in tar.getnames()
        assert not result.cache_hit  # timings of the moment: never from, nor into, the cache

        # an archive the device can't load is its reason, one line, not a crash on either side
        bogus = tmp_path / "bogus.tar.gz"
        with tarfile.open(bogus, "w:gz") as tar:
            tar.add(_mlp(tmp_path), arcname="model.onnx")
        [reason] = FleetDeviceTimer("pc-01", state).time([bogus], 0, 1, said.append)
        assert isinstance(reason, str) and "manifest" in reason and "\n" not in reason, reason


@requires("mosquitto")
def test_no_fleet_an_unknown_or_an_offline_device_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = str(_mlp(tmp_path))
    compile_ = ["compile", model, "--target", "x86_64", "-o", str(tmp_path / "build"), "--pipeline", "ort"]

    capsys.readouterr()
    assert main([*compile_, "--measure-on", "pc-01", "--state", str(tmp_path / "nothing")]) == EXIT_CODES[ConfigError]
    err = capsys.readouterr().err.strip()
    assert "no fleet runs on" in err and "edgekit fleet serve" in err and "edgekit simulate" in err, err
    assert len(err.splitlines()) == 1, err

    with _fleet(tmp_path, "pc-02") as (state, _):
        for thing, message in [("ghost", "no device 'ghost' in the fleet"), ("pc-02", "offline")]:
            capsys.readouterr()
            assert main([*compile_, "--measure-on", thing, "--state", str(state)]) == FleetError.exit_code
            err = capsys.readouterr().err.strip()
            assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "build").exists() or not any((tmp_path / "build").iterdir())
