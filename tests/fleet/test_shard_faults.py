"""A simulation's faults reach the devices in its shard processes: a cut network, a killed device (with and without
a comeback) and a restarted one act on that device only, in its shard, which stays up; a fault for a device no shard
runs, or for one whose shard is down, is one clear error."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from helpers import eventually

from edgekit.fleet_file import Fault, FleetFile
from edgekit.sim import Simulation
from edgekit.sim.errors import SimulationError


@pytest.mark.slow
def test_faults_are_forwarded_to_the_shard_that_runs_the_device(tmp_path: Path) -> None:
    fleet = FleetFile.model_validate(
        {"name": "t", "mode": "in_process", "devices": [{"prefix": "d-", "count": 4, "profile": "x86_64", "groups": ["all"]}]}
    )

    async def scenario() -> None:
        async with Simulation(fleet, state_dir=tmp_path / "state", shards=2) as sim:
            shard_set = sim.shard_set
            assert shard_set is not None and not sim.devices  # every device in a shard
            first, second = shard_set.shards
            a, b = first.things[0], second.things[0]
            pids = shard_set.pids()

            def up(thing: str) -> bool:
                return sim.presence().get(thing, False)

            await eventually(lambda: len(sim.presence()) == 4 and all(sim.presence().values()), 60, "every device up")

            await sim.apply_fault(Fault(fault="cut_network", things=[a], seconds=3))  # the fleet file's path
            await eventually(lambda: not up(a), 15, f"{a} cut off in {first.name}")
            assert all(connected for thing, connected in sim.presence().items() if thing != a)  # that device only
            await eventually(lambda: up(a), 30, f"{a} back once the cut is over")

            await sim.apply_fault(Fault(fault="kill_device", things=[b], seconds=2))
            await eventually(lambda: not up(b), 15, f"{b} killed in {second.name}")
            await eventually(lambda: up(b), 30, f"{b} back after 2 s")

            await sim.apply_fault(Fault(fault="kill_device", things=[a]))  # no comeback: stays down
            await eventually(lambda: not up(a), 15, f"{a} killed")
            await asyncio.sleep(2.0)
            assert not up(a)
            await sim.apply_fault(Fault(fault="restart_device", things=[a]))  # a fresh agent on the same folder
            await eventually(lambda: up(a), 30, f"{a} restarted in its shard")

            # the devices died and came back, never their shards
            assert shard_set.pids() == pids and shard_set.restarts == 0 and shard_set.deaths == 0
            faults = sim.status().faults
            assert any(f"network of {a} cut for 3 s" in f for f in faults) and any(
                f"{b} killed, back in 2 s" in f for f in faults
            )

            with pytest.raises(SimulationError, match="no device 'nope'"):
                await sim.cut_network("nope", 1.0)
            assert second.pid is not None
            os.kill(second.pid, signal.SIGKILL)
            await eventually(lambda: not second.alive, 15, f"{second.name} dead")
            with pytest.raises(SimulationError, match=f"{second.name} is down: can't apply cut_network to {b}"):
                await sim.cut_network(b, 1.0)

    asyncio.run(scenario())
