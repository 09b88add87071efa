"""Shards at scale: the end-of-run checkpoint request waits for a busy shard as long as it writes and gives up on a
stalled one; a split that would run a process out of open files is refused before anything starts.

The shard here is a real process speaking the shard's JSON lines (a stand-in script: its loop's slowness on demand).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgekit.sim.errors import SimulationError
from edgekit.sim.shards import (
    FILES_PER_DEVICE,
    ShardProcess,
    ShardSpec,
    default_shards,
    devices_per_process,
    shards_for_open_files,
)

_SCRIPT = r"""
import json, sys, threading, time
mode, delay = sys.argv[1], float(sys.argv[2])
out, lock, quiet = sys.stdout, threading.Lock(), threading.Event()
def emit(**fields):
    with lock:
        out.write(json.dumps(fields) + "\n"); out.flush()
emit(event="ready", connect_s=0.0)
def status():
    while not quiet.is_set():
        emit(event="status", up=[], down=[], alive=1, readings=0)
        time.sleep(0.1)
threading.Thread(target=status, daemon=True).start()
for line in sys.stdin:
    request = json.loads(line)
    if mode == "stall":
        quiet.set()  # its loop stuck: not a line more
    time.sleep(delay)
    point = {"thing": "d-1", "component": "c", "run": "r", "window": 1, "readings": 7}
    emit(event="checkpoints", id=request["id"], points=[point])
"""


class _StandIn(ShardProcess):
    def __init__(self, folder: Path, mode: str, delay: float) -> None:
        spec = ShardSpec(0, 1, ["d-1"], {}, str(folder), 1, "http://127.0.0.1:1", None, "in_process")
        super().__init__(spec, folder, lambda _shard, _code: None)
        self.script = folder / "stand_in.py"
        self.script.write_text(_SCRIPT)
        self.args = [mode, str(delay)]

    def command(self, spec_file: Path) -> list[str]:
        return [sys.executable, str(self.script), *self.args]


@pytest.mark.anyio
async def test_a_busy_shard_is_waited_for_past_the_silence_limit_while_it_writes(tmp_path: Path) -> None:
    shard = _StandIn(tmp_path, "slow", 2.5)
    await shard.start()
    try:
        await asyncio.wait_for(shard.ready.wait(), 30)
        started = time.monotonic()
        [point] = await shard.checkpoints(silent_s=1.0)  # answers after 2.5 s, writing its status meanwhile
        assert point.readings == 7 and time.monotonic() - started >= 2.5
    finally:
        await shard.stop(timeout=5)


@pytest.mark.anyio
async def test_a_stalled_shard_fails_the_checkpoint_request_in_one_line_naming_it(tmp_path: Path) -> None:
    shard = _StandIn(tmp_path, "stall", 60.0)
    await shard.start()
    try:
        await asyncio.wait_for(shard.ready.wait(), 30)
        with pytest.raises(SimulationError, match=r"shard 1 of 1 \(pid \d+\) wrote nothing for 1 s .*stalled"):
            await asyncio.wait_for(shard.checkpoints(silent_s=1.0), 20)
    finally:
        if shard.proc is not None and shard.proc.returncode is None:
            shard.proc.kill()
        await shard.stop(timeout=5)


_LOW_LIMIT = r"""
import asyncio, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512))  # room for (512 - 256) // 8 = 32 devices a process
from edgekit.errors import ConfigError
from edgekit.fleet_file import FleetFile
from edgekit.sim import Simulation
fleet = FleetFile.model_validate({"name": "fds", "mode": "in_process",
                                  "devices": [{"prefix": "d-", "count": 40, "profile": "x86_64"}]})
try:
    asyncio.run(Simulation(fleet, state_dir=sys.argv[1], shards=1).start())
except ConfigError as exc:
    print(exc)
"""


def test_a_process_that_would_run_out_of_open_files_is_refused_in_one_line_naming_the_shards_to_give(
    tmp_path: Path,
) -> None:
    assert devices_per_process(20_000) == (20_000 - 256) // FILES_PER_DEVICE  # 10,000 devices: 5 processes
    fits = devices_per_process()  # under this machine's hard limit
    assert shards_for_open_files(3 * fits) == 4 and default_shards(3 * fits) >= 4  # a tenth to spare: the split's skew
    assert shards_for_open_files(fits // 2) == 1
    out = subprocess.run(
        [sys.executable, "-c", _LOW_LIMIT, str(tmp_path / "state")], capture_output=True, text=True, timeout=60, check=True
    )
    [line] = out.stdout.splitlines()
    assert line.startswith("40 simulated devices in one process need ~320 open files")
    assert "at most 32 devices a process" in line and "give --shards 2" in line
    assert not (tmp_path / "state" / "broker").exists()  # refused before the broker started
