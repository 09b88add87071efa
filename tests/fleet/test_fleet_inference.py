"""The fleet runs the model: in-process devices infer on a real mosquitto and the fleet service counts every reading."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from helpers import QUICK, make_mlp

import edgekit
from edgekit.edge import Spool
from edgekit.fleet.telemetry import accounted
from edgekit.fleet.view import fleet_view
from edgekit.fleet_file import FleetFile
from edgekit.greengrass.package import package
from edgekit.sim import Simulation

MODEL = "com.example.Mlp"
INFERENCE = f"{MODEL}.Inference"


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx

    work = tmp_path_factory.mktemp("packaged")
    onnx.save(make_mlp(), str(work / "mlp.onnx"))
    arts = [edgekit.compile(work / "mlp.onnx", t, work / "c", pipeline=QUICK).artifact_dir for t in ("x86_64", "rasp4b")]
    package(arts, name=MODEL, version="1.0.0", output=work / "build")
    return work / "build"


def fleet(n: int) -> FleetFile:
    return FleetFile.model_validate(
        {
            "name": "t",
            "mode": "in_process",
            "devices": [
                {"prefix": "pi-", "count": n // 2, "profile": "rasp4b", "groups": ["line-1"]},
                {"prefix": "gw-", "count": n - n // 2, "profile": "x86_64", "groups": ["line-2"]},
            ],
        }
    )


def deploy(sim: Simulation, group: str, settings: dict[str, str], components: dict[str, str] | None = None) -> str:
    wanted = components or {INFERENCE: "1.0.0"}
    return sim.deploy(
        {
            "targetArn": f"thinggroup/{group}",
            "components": {
                name: {
                    "componentVersion": v,
                    **({"configurationUpdate": {"merge": json.dumps(settings)}} if name == INFERENCE else {}),
                }
                for name, v in wanted.items()
            },
        }
    )


FAST = {"IntervalSeconds": "0.01", "WindowSeconds": "0.3", "InputSource": "synthetic:ood=0.2"}


async def settle(sim: Simulation, timeout: float = 30.0) -> Any:
    """Checkpoint every loop, then wait until the fleet has every window the checkpoints cover."""
    points = await sim.inference_checkpoints()
    assert sim.state is not None and sim.telemetry is not None
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        sim.telemetry.flush()
        got = accounted(sim.state, points)
        if got.missing_windows == 0 or asyncio.get_running_loop().time() > deadline:
            return points, got
        await asyncio.sleep(0.1)


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def test_devices_infer_and_the_fleet_counts_add_up_exactly(packaged: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Simulation(fleet(6), state_dir=tmp_path / "state") as sim:
            sim.publish(packaged)
            for group in ("line-1", "line-2"):
                assert (await sim.wait(deploy(sim, group, FAST), timeout=60)).counts == {"SUCCEEDED": 3}
            await asyncio.sleep(2.0)
            points, got = await settle(sim)
            assert len(points) == 6 and {p.thing for p in points} == set(sim.devices)
            produced = sum(p.readings for p in points)
            assert produced > 6 * 50  # ~100 readings/s each
            assert got.readings == produced and got.missing_windows == 0  # 0 lost, 0 counted twice
            assert len(sim.inference.models) == 2  # one model per artifact (x86_64, rasp4b), shared by the devices
            assert sim.state is not None
            view = fleet_view(sim.state)
            by_group = {g.group: g for g in view.telemetry}
            assert by_group["line-1"].reporting == 3 and by_group["line-2"].reporting == 3
            assert sum(g.readings for g in view.telemetry) >= produced
            device = view.device("pi-01").telemetry
            assert device.windows > 0 and device.local == device.readings and device.uplink_messages >= device.windows

    run(scenario())


def test_a_broker_outage_mid_stream_loses_no_reading(packaged: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Simulation(fleet(4), state_dir=tmp_path / "state") as sim:
            sim.publish(packaged)
            for group in ("line-1", "line-2"):
                await sim.wait(deploy(sim, group, FAST), timeout=60)
            await asyncio.sleep(0.5)
            await sim.restart_broker(2.0)  # every device keeps inferring; its windows wait in the agent's spool
            await asyncio.sleep(1.0)
            points, got = await settle(sim)
            produced = sum(p.readings for p in points)
            assert got.readings == produced and got.missing_windows == 0
            assert any("broker down" in f for f in sim.status().faults)

    run(scenario())


def test_a_removed_component_hands_over_its_open_window_first(packaged: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Simulation(fleet(2), state_dir=tmp_path / "state") as sim:
            sim.publish(packaged)
            slow = {**FAST, "WindowSeconds": "3600"}  # nothing is sent until the window closes
            await sim.wait(deploy(sim, "line-1", slow), timeout=60)
            await asyncio.sleep(1.0)
            assert sim.state is not None
            assert fleet_view(sim.state).device("pi-01").telemetry.windows == 0  # all still open
            # the group's new deployment keeps the model and drops the inference component: it is removed
            await sim.wait(deploy(sim, "line-1", {}, {MODEL: "1.0.0"}), timeout=60)
            final = run_of(sim).loop.finished
            assert final is not None and final.readings > 0 and final.unsent == 0
            await asyncio.sleep(0.5)
            _, got = await settle(sim)
            assert got.readings == final.readings  # every reading of the removed component's last window arrived

    run(scenario())


def run_of(sim: Simulation) -> Any:
    runs = sim.inference.runs["pi-01"]
    return runs[-1]


def test_a_damaged_uplink_spool_is_quarantined_while_the_others_flow(packaged: Path, tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Simulation(fleet(2), state_dir=tmp_path / "state") as sim:
            sim.publish(packaged)
            await sim.wait(deploy(sim, "line-1", FAST), timeout=60)
            await sim.wait(deploy(sim, "line-2", FAST), timeout=60)
            await sim.kill_device("pi-01")
            spool = sim.folder.device("pi-01") / "config" / "uplink.db"
            for suffix in ("-wal", "-shm"):
                Path(f"{spool}{suffix}").unlink(missing_ok=True)
            spool.write_bytes(b"not a database" * 100)
            await sim.restart_device("pi-01", crash=False)  # resumes: the inference component starts again
            await asyncio.sleep(1.5)
            points, _ = await settle(sim)
            alive = [p for p in points if not (p.thing == "pi-01" and p.run == sim.inference.runs["pi-01"][0].loop.run_id)]
            assert sim.state is not None and accounted(sim.state, alive).missing_windows == 0
            assert sum(p.readings for p in alive if p.thing == "pi-01") > 0  # the damaged device's new windows flow
            agent = sim.devices["pi-01"].agent
            assert agent is not None and agent.ipc is not None and agent.ipc.iot_core.spool.quarantined == 1
            assert list(spool.parent.glob("uplink.db.damaged-*"))
            assert Spool(spool).quarantined == 1

    run(scenario())


def test_a_dead_fallback_shows_as_errors_and_an_open_breaker(packaged: Path, tmp_path: Path) -> None:
    holder = socket.socket()  # bound, never listening, held for the whole test: connections are refused, and no
    holder.bind(("127.0.0.1", 0))  # server of the simulation can take the port meanwhile
    dead = f"http://127.0.0.1:{holder.getsockname()[1]}"

    async def scenario() -> None:
        async with Simulation(fleet(2), state_dir=tmp_path / "state") as sim:
            sim.publish(packaged)
            settings = {**FAST, "FallbackEndpoint": dead, "MinConfidence": "1.0", "FallbackModel": "big"}
            await sim.wait(deploy(sim, "line-1", settings), timeout=60)
            await asyncio.sleep(1.0)
            points, got = await settle(sim)
            assert got.readings == sum(p.readings for p in points)
            assert sim.state is not None
            device = fleet_view(sim.state).device("pi-01").telemetry
            assert device.fallback_errors.get("unreachable") == 3  # then the breaker opened ...
            assert device.fallback_errors.get("breaker_open", 0) > 0 and device.breaker == "open"
            assert device.local == device.readings and device.cloud == 0  # ... and the local answers stood

    try:
        run(scenario())
    finally:
        holder.close()
