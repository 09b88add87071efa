"""Emulated devices: 'edgekit agent' in an aarch64 Python under qemu-user installs the real aarch64 build of a model
(ONNX Runtime and TVM, rasp4b) from the local fleet, runs the inference component, and its summaries land in the fleet."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import onnx
import pytest
from helpers import QUICK, eventually, make_mlp, requires

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import ConfigError
from edgekit.fleet_file import FleetFile
from edgekit.greengrass.package import package
from edgekit.sim import Simulation

MODEL = "com.example.Mlp"
INFERENCE = f"{MODEL}.Inference"
THING = "emu-pi-01"
TVM_ONLY = Pipeline.model_validate(
    {"name": "tvm", "candidates": [{"name": "tvm", "backend": "tvm"}], "measure": {"samples": 2, "warmup": 0, "repeat": 2}}
)
needs_qemu = requires("qemu-aarch64")


def emulated_fleet(extra: list[dict[str, Any]] | None = None) -> FleetFile:
    devices = [{"name": THING, "profile": "rasp4b", "groups": ["line-1"], "mode": "emulated"}, *(extra or [])]
    return FleetFile.model_validate({"name": "emu", "tls": True, "mode": "in_process", "devices": devices})


def test_a_fleet_file_marks_devices_emulated() -> None:
    things = {d.thing: d for d in emulated_fleet([{"prefix": "gw-", "count": 1, "profile": "x86_64"}]).expand()}
    assert things[THING].emulated and things[THING].platform["architecture"] == "aarch64"
    assert not things["gw-01"].emulated


def test_only_aarch64_devices_can_be_emulated() -> None:
    fleet = FleetFile.model_validate({"name": "bad", "devices": [{"name": "gw", "profile": "x86_64", "mode": "emulated"}]})
    with pytest.raises(ConfigError, match=r"profile 'x86_64' is amd64; only aarch64 devices can be emulated"):
        fleet.expand()


def build(tmp_path: Path, pipeline: Pipeline) -> Path:
    """The rasp4b build of a small MLP, packaged: runtime, model and inference components."""
    onnx.save(make_mlp(), str(tmp_path / "mlp.onnx"))
    art = edgekit.compile(tmp_path / "mlp.onnx", "rasp4b", tmp_path / "compiled", pipeline=pipeline, use_cache=False)
    package([art.artifact_dir], name=MODEL, version="1.0.0", output=tmp_path / "gg")
    return tmp_path / "gg"


def deployment(readings: int) -> dict[str, Any]:
    settings = {"MaxInferences": str(readings), "IntervalSeconds": "0", "WindowSeconds": "1"}
    return {
        "targetArn": "thinggroup/line-1",
        "components": {INFERENCE: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": json.dumps(settings)}}},
    }


def windows(sim: Simulation) -> list[tuple[str, int, int, float, float]]:
    """(run, window, readings, start, end) of every window the fleet stored of the emulated device."""
    assert sim.state is not None and sim.telemetry is not None
    sim.telemetry.flush()
    with sim.state._read() as db:
        rows = db.execute(
            "SELECT run, seq, readings, window_start, window_end FROM telemetry_windows WHERE thing = ? ORDER BY run, seq",
            (THING,),
        )
        return [(str(r[0]), int(r[1]), int(r[2]), float(r[3]), float(r[4])) for r in rows]


async def run_emulated(packaged: Path, state: Path, cache: Path, readings: int, *, restart: bool = False) -> dict[str, float]:
    figures: dict[str, float] = {}
    started = time.monotonic()
    async with Simulation(emulated_fleet(), state_dir=state, sysroot_cache=cache) as sim:
        figures["start_s"] = time.monotonic() - started
        dev = sim.devices[THING]
        assert dev.process is not None and dev.alive
        await eventually(lambda: sim.status().connected == 1, 10, "the emulated device connected")
        sim.publish(packaged)
        deployed = time.monotonic()
        summary = await sim.wait(sim.deploy(deployment(readings)), timeout=240)
        assert summary.counts == {"SUCCEEDED": 1}, summary
        figures["deployment_s"] = time.monotonic() - deployed
        await eventually(lambda: bool(windows(sim)), 120, "the first window summary", every=0.1)
        figures["first_reading_s"] = time.monotonic() - deployed
        await eventually(lambda: sum(w[2] for w in windows(sim)) >= readings, 300, f"{readings} readings", every=0.1)
        got = windows(sim)
        figures["windows"] = len(got)
        figures["readings_per_s"] = readings / max(got[-1][4] - got[0][3], 1e-9)  # as fast as it goes (IntervalSeconds 0)
        # every reading accounted for: one run, its windows 1..n each stored once, their readings adding up
        assert len({w[0] for w in got}) == 1
        assert [w[1] for w in got] == list(range(1, len(got) + 1))
        assert sum(w[2] for w in got) == readings
        view = sim.status().view
        assert view.connected == 1
        if restart:  # a crash kills the agent and its component; a fresh agent resumes and the component runs again
            await sim.restart_device(THING)
            await eventually(lambda: sim.status().connected == 1, 120, "the emulated device back")
            await eventually(lambda: len({w[0] for w in windows(sim)}) == 2, 120, "a second run's summaries", every=0.2)
    log = (state / "devices" / THING / "logs" / f"{INFERENCE}.log").read_text()
    assert "on aarch64; self-test passed" in log, log
    bundle = (state / "emulated" / THING / "config.yaml").read_text()
    assert '"architecture": "aarch64"' in bundle and "mqtts://" in bundle
    return figures


@pytest.mark.slow
@needs_qemu
@pytest.mark.parametrize("backend", ["onnxruntime", "tvm"])
def test_an_emulated_pi_installs_and_runs_the_aarch64_build(
    backend: str, tmp_path: Path, sysroot_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packaged = build(tmp_path, QUICK if backend == "onnxruntime" else TVM_ONLY)
    readings = 2000
    figures = asyncio.run(run_emulated(packaged, tmp_path / "state", sysroot_cache, readings, restart=backend == "onnxruntime"))
    unpacked = tmp_path / "state" / "devices" / THING / "packages" / "artifacts-unarchived" / MODEL / "1.0.0"
    manifest = json.loads((unpacked / "model-rasp4b" / "manifest.json").read_text())
    assert manifest["profile"]["name"] == "rasp4b"
    with capsys.disabled():
        print(f"\nemulated Pi ({backend}): " + ", ".join(f"{k} {v:.2f}" for k, v in figures.items()))
