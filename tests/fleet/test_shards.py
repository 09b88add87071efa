"""Simulator shards: devices in two processes against one broker and one fleet server; a shard killed and restarted."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from helpers import QUICK, eventually, make_mlp

import edgekit
from edgekit.fleet.telemetry import accounted
from edgekit.fleet.view import fleet_view
from edgekit.fleet_file import FleetFile
from edgekit.greengrass.package import package
from edgekit.sim import Simulation
from edgekit.sim.shards import shard_of, split

MODEL = "com.example.Mlp"
INFERENCE = f"{MODEL}.Inference"
FAST = {"IntervalSeconds": "0.02", "WindowSeconds": "0.3", "InputSource": "synthetic:ood=0.2"}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx

    work = tmp_path_factory.mktemp("packaged")
    onnx.save(make_mlp(), str(work / "mlp.onnx"))
    artifact = edgekit.compile(work / "mlp.onnx", "x86_64", work / "c", pipeline=QUICK).artifact_dir
    package([artifact], name=MODEL, version="1.0.0", output=work / "build")
    return work / "build"


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def test_devices_split_by_thing_name_the_same_on_every_run() -> None:
    names = [f"dev-{i:05d}" for i in range(2000)]
    parts = split(names, 4)
    assert sorted(t for part in parts for t in part) == names  # each device in exactly one shard
    assert all(400 <= len(part) <= 600 for part in parts)  # a hash of the name spreads them evenly
    again = split(list(reversed(names[:500])), 4)  # another fleet, another order: the same shard per device
    assert all(shard_of(t, 4) == i for i, part in enumerate(again) for t in part)
    assert all(t in parts[shard_of(t, 4)] for t in names[:500])
    assert split(names, 1) == [names]


@pytest.mark.slow
def test_two_shards_are_one_fleet_and_a_killed_shard_comes_back(packaged: Path, tmp_path: Path) -> None:
    fleet = FleetFile.model_validate(
        {"name": "t", "mode": "in_process", "devices": [{"prefix": "d-", "count": 6, "profile": "x86_64", "groups": ["all"]}]}
    )
    said: list[str] = []

    async def scenario() -> None:
        async with Simulation(fleet, state_dir=tmp_path / "state", shards=2, progress=said.append) as sim:
            assert sim.shard_set is not None and len(sim.shard_set.shards) == 2
            pids = sim.shard_set.pids()
            assert len(set(pids)) == 2 and os.getpid() not in pids and not sim.devices  # the devices are not here
            assert any(line.startswith("connecting: ") for line in said)  # progress while the shards connect
            status = sim.status()
            assert (status.devices, status.connected) == (6, 6)
            sim.publish(packaged)
            spec = {"componentVersion": "1.0.0", "configurationUpdate": {"merge": json.dumps(FAST)}}
            deployment = sim.deploy({"targetArn": "thinggroup/all", "components": {INFERENCE: spec}})
            assert (await sim.wait(deployment, timeout=90)).counts == {"SUCCEEDED": 6}
            assert sim.state is not None and sim.telemetry is not None
            state, telemetry = sim.state, sim.telemetry

            def windows() -> dict[str, int]:
                telemetry.flush()
                return {d.thing: d.telemetry.windows for d in fleet_view(state).devices}

            await eventually(lambda: all(n > 0 for n in windows().values()), 60, "telemetry from every device")
            points = await sim.inference_checkpoints()
            assert {p.thing for p in points} == {f"d-0{i}" for i in range(1, 7)}  # loops in both shards
            deadline = asyncio.get_running_loop().time() + 60
            while (got := accounted(state, points)).missing_windows and asyncio.get_running_loop().time() < deadline:
                telemetry.flush()
                await asyncio.sleep(0.1)
            assert got.readings == sum(p.readings for p in points) > 0 and got.missing_windows == 0
            page = json.loads(await asyncio.to_thread(_get, f"{sim.http.url}/api/fleet"))  # type: ignore[union-attr]
            assert sum(1 for d in page["devices"] if d["connected"]) == 6

            victim = sim.shard_set.shards[0]
            lost = set(victim.things)
            assert lost and victim.pid is not None
            os.kill(victim.pid, signal.SIGKILL)
            await eventually(lambda: any("died (killed by SIGKILL)" in f for f in sim.status().faults), 30, "the death")
            [line] = [f for f in sim.status().faults if "died" in f]
            assert all(t in line for t in sorted(lost)[:5]) and f"its {len(lost)} device(s) are down" in line
            assert any("died (killed by SIGKILL)" in s for s in said)  # said once, in one line
            offline = {t for t, up in sim.presence().items() if not up}
            assert offline == lost  # the other shard's devices stayed connected
            before = windows()
            await eventually(lambda: sim.status().connected == 6, 60, "the shard's devices to come back")
            assert victim.pid is not None and victim.pid not in pids and sim.shard_set.restarts == 1
            await eventually(lambda: all(windows()[t] > before[t] for t in lost), 60, "the restarted devices to report")

    asyncio.run(scenario())


@pytest.mark.parametrize(("value", "says"), [("0", "--shards 0: give 1 or more"), ("two", "'--shards'")])
def test_a_bad_shards_value_is_one_line(tmp_path: Path, value: str, says: str) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(json.dumps({"name": "f", "devices": [{"prefix": "d-", "count": 2, "profile": "x86_64"}]}))
    argv = [sys.executable, "-m", "edgekit", "simulate", "--fleet", str(fleet), "--state", str(tmp_path / "s"), "--shards", value]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "s").exists()  # refused before anything started
    if value == "0":
        assert done.stderr.strip().count("\n") == 0  # one line


def test_a_shard_freezes_its_objects_once_its_devices_have_settled() -> None:
    """gc.freeze() after a settled spell of the same devices up and loops running: once per change, never while
    they still change; a cycle made before a freeze is collected by it (the collector runs first)."""
    import gc
    import weakref

    from edgekit.sim.shard import GcFreeze

    now = [0.0]
    freezer = GcFreeze(settle_s=10.0, clock=lambda: now[0])

    class Node:
        other: object = None

    cycle = Node()
    cycle.other = cycle
    gone = weakref.ref(cycle)
    del cycle
    try:
        gc.disable()  # only the freezer's own collection may find the cycle
        assert not freezer.check((5, 0))
        now[0] = 5.0
        assert not freezer.check((5, 3))  # a deployment starting loops: the spell starts again
        now[0] = 14.0
        assert not freezer.check((5, 3)) and gc.get_freeze_count() == 0 and gone() is not None
        now[0] = 15.0
        assert freezer.check((5, 3)) and freezer.freezes == 1
        assert gc.get_freeze_count() > 0 and gone() is None
        now[0] = 60.0
        assert not freezer.check((5, 3))  # the same shape: frozen already
        assert not freezer.check((5, 5))
        now[0] = 71.0
        assert freezer.check((5, 5)) and freezer.freezes == 2
    finally:
        gc.enable()
        gc.unfreeze()
