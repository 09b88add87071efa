"""Varied devices: each simulated device's synthetic stream is its own (seeded by its thing name), and a fleet file may
give a device its own scenario over the component's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import QUICK, make_mlp

import edgekit
from edgekit.device.executor import StepSpec
from edgekit.device.ipc.device_ipc import DeviceIpc
from edgekit.errors import ConfigError
from edgekit.fleet_file import load_fleet
from edgekit.sim.inference import InferenceRun, InProcessRunners
from edgekit.sim.simulation import Simulation

COMPONENT = "com.example.Inference"


class Host:
    """The agent's side of the IPC handler, in memory: these tests are about the simulator's in-process runners, not
    the agent (its own handler is tested in tests/device/test_ipc_device.py)."""

    def __init__(self, thing: str) -> None:
        self.thing = thing

    def configuration(self, component: str) -> dict[str, Any] | None:
        return {} if component == COMPONENT else None

    def set_configuration(self, component: str, configuration: dict[str, Any]) -> None:
        pass

    def report_state(self, component: str, state: str) -> None:
        pass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("mlp")
    onnx.save(make_mlp(), str(work / "mlp.onnx"))
    return edgekit.compile(work / "mlp.onnx", "x86_64", work / "c", pipeline=QUICK).artifact_dir


def write_fleet(path: Path, scenario: str) -> Path:
    path.write_text(
        "schemaVersion: 1\nname: varied\nmode: in_process\ndevices:\n"
        "  - {prefix: gw-, count: 2, profile: x86_64}\n"
        f"  - {{name: noisy-01, profile: x86_64, scenario: '{scenario}'}}\n"
    )
    return path


def test_a_fleet_file_gives_a_device_its_own_scenario_and_the_simulator_refuses_a_bad_one(tmp_path: Path) -> None:
    fleet = load_fleet(write_fleet(tmp_path / "ok.yaml", "ood=0.9,noise=1.5"))
    scenarios = {d.thing: d.scenario for d in fleet.expand()}
    assert scenarios == {"gw-01": None, "gw-02": None, "noisy-01": "ood=0.9,noise=1.5"}
    bad = load_fleet(write_fleet(tmp_path / "bad.yaml", "size=3"))
    with pytest.raises(ConfigError, match=r"device 'noisy-01': scenario 'size=3': 'size=3' is not KEY=VALUE"):
        Simulation(bad, state_dir=tmp_path / "state")


def test_simulated_devices_stream_their_own_readings(model_dir: Path, tmp_path: Path) -> None:
    """Three in-process inference runs, as the simulator starts them: two devices with the component's scenario, one
    with its own from the fleet file; each stream differs, and a device started again streams the same as before."""
    fleet = load_fleet(write_fleet(tmp_path / "fleet.yaml", "ood=0.9,noise=1.5"))

    async def start(things: list[str]) -> dict[str, InferenceRun]:
        runners = InProcessRunners()
        ipcs = []
        runs: dict[str, InferenceRun] = {}
        for device in fleet.expand():
            if device.thing not in things:
                continue
            ipc = DeviceIpc(tmp_path / device.thing, Host(device.thing), serve_socket=False)
            ipcs.append(ipc)
            runners.devices[device.thing] = ipc
            if device.scenario:
                runners.scenarios[device.thing] = device.scenario
            spec = StepSpec(
                component=COMPONENT,
                step="Run",
                script=f"python3 {{artifacts:path}}/inference.py {model_dir} --input-source synthetic:ood=0.1 --max-inferences 1",
                env={"AWS_IOT_THING_NAME": device.thing, "SVCUID": ipc.token(COMPONENT)},
                cwd=tmp_path,
                log=tmp_path / f"{device.thing}.log",
            )
            run = await runners.start(spec)
            assert isinstance(run, InferenceRun), (tmp_path / f"{device.thing}.log").read_text()
            runs[device.thing] = run
        for run in runs.values():
            await run.stop(1.0)
        for ipc in ipcs:
            await ipc.close()
        return runs

    runs = asyncio.run(start(["gw-01", "gw-02", "noisy-01"]))
    seeds = {thing: run.loop.source.seed for thing, run in runs.items()}  # type: ignore[attr-defined]
    assert len(set(seeds.values())) == 3  # same scenario, two devices: two streams
    streams = {thing: _stream(run.loop.source) for thing, run in runs.items()}
    assert not np.allclose(streams["gw-01"], streams["gw-02"])
    noisy = runs["noisy-01"].loop.source.scenario  # type: ignore[attr-defined]
    assert (noisy.ood, noisy.noise) == (0.9, 1.5)  # the device's keys over the component's
    assert runs["gw-01"].loop.source.scenario.ood == 0.1  # type: ignore[attr-defined]
    again = asyncio.run(start(["gw-01"]))
    assert again["gw-01"].loop.source.seed == seeds["gw-01"]  # type: ignore[attr-defined]  # the same device, the same stream


def _stream(source: Any, n: int = 200) -> np.ndarray:
    return np.stack([source.take(i * 0.1)["x"] for i in range(n)])
