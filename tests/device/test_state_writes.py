"""The agent's state file: written a bounded number of times per deployment, off the loop, and enough to resume.

Every write is counted by the real file on disk too (its inode changes with each atomic replace).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from device_registry import Registry, job, recipe  # and the registry fixture (a plugin: conftest.py)
from helpers import eventually

from edgekit.device import DeviceAgent, InProcessExecutor
from edgekit.device.agent_state import (
    DeviceLayout,
    DeviceState,
    InstalledComponent,
    StateStore,
    StateWriter,
    TargetRecord,
    restart_view,
)

PLATFORM = {"os": "linux", "architecture": "amd64"}
# a deployment's start and its outcome; with scripts, one more per process started (Install, Run: resume kills what
# a crashed agent left of them), unless it lands while another write is in flight
IN_PROCESS_WRITES = 2
WRITES_PER_PROCESS = 1


def make_agent(root: Path, registry: Registry, **kw: Any) -> DeviceAgent:
    options: dict[str, Any] = {"settle_s": 0.2, "kill_grace_s": 0.5, "download_backoff_s": 0.0, "fsync": False}
    options.update(kw)
    return DeviceAgent("dev-1", root, PLATFORM, registry.base, groups=["line"], **options)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def saved(root: Path) -> DeviceState:
    return DeviceState.model_validate_json((root / "config" / "state.json").read_text())


def test_a_deployment_writes_the_state_a_bounded_number_of_times_and_a_restart_resumes_from_it(
    tmp_path: Path, registry: Registry
) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    for version in ("1.0.0", "2.0.0"):
        registry.publish(
            recipe(
                "com.example.Svc",
                version,
                lifecycle={"Install": f"echo {version} >> {marks}/installs", "Run": f"echo $$ > {marks}/pid; exec sleep 600"},
            )
        )
    root = tmp_path / "device"

    async def scenario() -> None:
        first = make_agent(root, registry)
        counts = []
        try:
            assert await first.resume() is None  # a fresh device: its first state file
            await eventually(lambda: first.state_writes == 1, 5)
            for n, version in enumerate(("1.0.0", "2.0.0"), 1):
                before = first.state_writes
                outcome = await first.apply(job(f"d-{n}", {"com.example.Svc": version}))
                assert outcome.succeeded, outcome.message
                counts.append(first.state_writes - before)
                on_disk = saved(root)  # the last write holds what a restart needs: done, the new version, its group
                assert on_disk.in_progress is None and on_disk.last_deployment is not None
                assert on_disk.last_deployment.deployment_id == f"d-{n}"
                assert on_disk.components["com.example.Svc"].version == version
                assert on_disk.components["com.example.Svc"].process_groups
            await first.kill(leave_processes=True)  # a crash after the last write
        finally:
            await first.stop()
        # each deployment here starts two processes (Install and Run): 4 writes at most, not a dozen
        assert all(IN_PROCESS_WRITES <= c <= IN_PROCESS_WRITES + 2 * WRITES_PER_PROCESS for c in counts), counts

        second = make_agent(root, registry)
        try:
            assert await second.resume() is None  # nothing was in progress
            assert await second.wait_for("com.example.Svc", ["RUNNING"], 10)
            record = second.state.components["com.example.Svc"]
            assert record.version == "2.0.0" and record.installed
            assert set(second.state.outcomes) == {"d-1", "d-2"}
            again = await second.apply(job("d-2", {"com.example.Svc": "2.0.0"}))  # a redelivered job: its stored outcome
            assert again.succeeded and second.state_writes <= 2  # the resume's own write and its Run's group
        finally:
            await second.stop()

    run(scenario)
    assert (marks / "installs").read_text().split() == ["1.0.0", "2.0.0"]  # Install not run again by the resume


def test_in_process_deployments_write_twice_and_changes_of_one_loop_turn_once(tmp_path: Path, registry: Registry) -> None:
    registry.publish(recipe("com.example.Sim", lifecycle={"Install": "true", "Run": "exec sleep 600"}))
    root = tmp_path / "device"

    async def scenario() -> None:
        agent = make_agent(root, registry, mode="in_process", executor=InProcessExecutor())
        try:
            assert (await agent.apply(job("d-1", {"com.example.Sim": "1.0.0"}))).succeeded
            first = agent.state_writes
            assert first <= 1 + IN_PROCESS_WRITES  # the fresh device's file, the deployment's start and its outcome
            # a configuration change through IPC is a change a restart needs; many in one loop turn are one write
            inode = (root / "config" / "state.json").stat().st_ino
            for n in range(20):
                agent.state.components["com.example.Sim"].configuration = {"n": n}
                agent._save()  # what every transition and IPC update calls
            await eventually(lambda: agent.state_writes == first + 1, 5)
            await asyncio.sleep(0.05)
            assert agent.state_writes == first + 1
            assert (root / "config" / "state.json").stat().st_ino != inode  # replaced, not rewritten in place
            assert saved(root).components["com.example.Sim"].configuration == {"n": 19}
        finally:
            await agent.stop()

    run(scenario)


def test_the_writer_skips_what_a_restart_does_not_read_and_writes_without_a_loop(tmp_path: Path) -> None:
    state = DeviceState(thing="t")
    store = StateStore(DeviceLayout(tmp_path), fsync=False)
    writer = StateWriter(store, lambda: state, label="t")
    writer.request()  # no running loop: written at once
    assert writer.writes == 1 and json.loads(store.layout.state_file.read_text())["thing"] == "t"
    writer.request()
    assert writer.writes == 1  # nothing changed
    state.components["a"] = InstalledComponent(name="a", version="1", recipe={}, manifest_index=0, state="STARTING")
    writer.request()
    assert writer.writes == 2
    state.components["a"].state = "RUNNING"  # a resume starts it over either way
    writer.request()
    assert writer.writes == 2
    writer.active = False  # the agent died
    state.targets["thing/t"] = TargetRecord(deployment_id="d-1")
    writer.request()
    assert writer.writes == 2 and "thing/t" not in json.loads(store.layout.state_file.read_text())["targets"]
    writer.active = True
    writer.request()
    assert writer.writes == 3 and "thing/t" in json.loads(store.layout.state_file.read_text())["targets"]


def test_the_restart_view_leaves_out_steps_a_resume_starts_over() -> None:
    base = {
        "thing": "t",
        "components": {"a": {"state": "RUNNING", "process_groups": [], "process_stamps": {}, "version": "1"}},
        "targets": {},
        "in_progress": None,
    }

    def view(**changes: Any) -> tuple[str, frozenset[tuple[str, int]]]:
        data = json.loads(json.dumps(base))
        data["components"]["a"].update(changes)
        return restart_view(data)

    assert view(state="STARTING") == view(state="RUNNING") == view(state="INSTALLED")
    assert view(process_groups=[7])[1] == {("a", 7)} and view(process_groups=[7])[0] == view()[0]
    assert view(state="BROKEN") != view(state="RUNNING") != view(state="FINISHED")
    assert view(version="2") != view()
    progress = dict(base, in_progress={"job": {}, "phase": "prepare"})
    applying = dict(base, in_progress={"job": {}, "phase": "apply"})
    assert restart_view(progress) == restart_view(applying)  # the phase is not read by a resume
    grouped = json.loads(json.dumps(progress))
    grouped["components"]["a"]["process_groups"] = [123]
    assert restart_view(grouped)[1] == {("a", 123)}  # a group to kill on resume is
    grouped["components"]["a"]["version"] = "2"
    assert restart_view(grouped)[0] == restart_view(progress)[0]  # a restart puts the previous components back
