"""The local fleet service: deployments as jobs — replacement, late joiners, the Jobs API, abort, timeouts, status."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekit.errors import ConfigError, DeploymentError
from edgekit.fleet import ExecutionEvent, FakeClock, FleetService, FleetState, JobRejected, NotFoundError, publish_local
from edgekit.fleet_file import FleetDevice
from edgekit.mqtt.payloads import DescribeJobExecutionResponse, decode, encode

AARCH64 = {"os": "linux", "architecture": "aarch64"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1_800_000_000.0)


@pytest.fixture
def state(fleet_db: str | Path) -> Iterator[FleetState]:
    with FleetState(fleet_db) as s:
        yield s


@pytest.fixture
def svc(state: FleetState, clock: FakeClock) -> FleetService:
    counter = itertools.count(1)
    return FleetService(state, clock, new_id=lambda: f"dep-{next(counter)}")


def fleet(svc: FleetService, n: int, group: str = "line-1", prefix: str = "dev") -> list[str]:
    names = [f"{prefix}-{i:03d}" for i in range(n)]
    with svc.state.transaction():
        for name in names:
            svc.register_thing(name, "rasp4b", AARCH64, [group])
    return names


def spec(target: str = "thinggroup/line-1", version: str = "1.0.0", **job: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "targetArn": target,
        "components": {
            "com.example.Detector": {"componentVersion": version, "configurationUpdate": {"merge": {"threshold": "0.6"}}}
        },
        "deploymentPolicies": {"failureHandlingPolicy": "DO_NOTHING", "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS"}},
    }
    if job:
        body["iotJobConfiguration"] = job
    return body


def deploy(svc: FleetService, target: str = "thinggroup/line-1", version: str = "1.0.0", **job: Any) -> str:
    return svc.create_deployment(spec(target, version, **job), require_published=False)


def abort(pct: float, minimum: int, failure_type: str = "ALL") -> dict[str, Any]:
    return {
        "criteriaList": [
            {"failureType": failure_type, "action": "CANCEL", "thresholdPercentage": pct, "minNumberOfExecutedThings": minimum}
        ]
    }


def statuses(svc: FleetService, job_id: str) -> dict[str, str]:
    return {e.thing: e.status for e in svc.state.executions(deployment_id=job_id)}


# --------------------------------------------------------------------------- things, groups, targets


def test_thing_names_follow_aws_iot_rules(svc: FleetService) -> None:
    with pytest.raises(ConfigError, match="valid thing name"):
        svc.register_thing("dev/1", "rasp4b", AARCH64)
    with pytest.raises(ConfigError, match="valid thing group name"):
        svc.register_thing("dev-1", "rasp4b", AARCH64, ["line 1"])


def test_a_thing_may_be_in_several_groups(svc: FleetService) -> None:
    svc.register_devices([FleetDevice(thing="cam-1", profile="rasp4b", groups=("line-1", "cameras"), platform=AARCH64)])
    svc.add_to_group("cam-1", "floor-2")
    assert svc.state.groups_of("cam-1") == ["cameras", "floor-2", "line-1"]
    with pytest.raises(NotFoundError, match="register_thing"):
        svc.add_to_group("ghost", "line-1")


def test_deployments_need_a_known_target_and_published_versions(tmp_path: Path, svc: FleetService) -> None:
    fleet(svc, 1)
    with pytest.raises(DeploymentError, match="thing group 'nope' does not exist"):
        deploy(svc, "thinggroup/nope")
    with pytest.raises(DeploymentError, match="thing 'ghost' is not registered"):
        deploy(svc, "thing/ghost")
    with pytest.raises(DeploymentError, match=r"not published.*com.example.Detector 1.0.0"):
        svc.create_deployment(spec())
    build = tmp_path / "build"
    (build / "recipes").mkdir(parents=True)
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": "com.example.Detector",
        "ComponentVersion": "1.0.0",
        "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": {"Run": "true"}}],
    }
    (build / "recipes" / "com.example.Detector-1.0.0.json").write_text(json.dumps(recipe))
    publish_local(build, svc.state, tmp_path / "store")
    assert svc.create_deployment(spec()) == "dep-1"
    with pytest.raises(DeploymentError, match="invalid deployment"):
        svc.create_deployment(
            {"targetArn": "thinggroup/line-1", "iotJobConfiguration": {"timeoutConfig": {"inProgressTimeoutInMinutes": 0}}}
        )


def test_full_arn_targets_are_the_same_target_as_short_ones(svc: FleetService) -> None:
    fleet(svc, 2)
    first = deploy(svc, "arn:aws:iot:eu-west-1:123456789012:thinggroup/line-1")
    second = deploy(svc, "thinggroup/line-1")
    assert svc.deployment(first).status == "INACTIVE"
    assert svc.deployment(first).replaced_by == second


# --------------------------------------------------------------------------- replacement and late joiners


def test_a_new_deployment_replaces_the_previous_one(svc: FleetService) -> None:
    things = fleet(svc, 3)
    events: list[ExecutionEvent] = []
    svc.subscribe(events.append)
    old = deploy(svc)
    svc.notify_due()
    svc.update_execution(things[0], old, "IN_PROGRESS")
    new = deploy(svc, version="1.1.0")

    assert svc.deployment(old).status == "INACTIVE"
    assert svc.deployment(old).replaced_by == new
    assert statuses(svc, old) == {things[0]: "IN_PROGRESS", things[1]: "CANCELED", things[2]: "CANCELED"}
    assert statuses(svc, new) == dict.fromkeys(things, "QUEUED")
    assert [(e.thing, e.kind) for e in events if e.job_id == old and e.kind == "canceled"] == [
        (things[1], "canceled"),
        (things[2], "canceled"),
    ]
    # the run already in progress ends normally, and doesn't revive the replaced deployment
    result = svc.update_execution(things[0], old, "SUCCEEDED")
    assert result.deployment_status == "INACTIVE"
    # a deployment to another target (one thing) replaces nothing of the group's
    single = deploy(svc, f"thing/{things[1]}", version="2.0.0")
    assert svc.deployment(new).status == "ACTIVE"
    assert deploy(svc, f"thing/{things[1]}", version="2.0.1") != single
    assert svc.deployment(single).status == "INACTIVE"


def test_the_job_document_carries_the_whole_deployment(svc: FleetService) -> None:
    [thing] = fleet(svc, 1)
    job = deploy(svc, timeoutConfig={"inProgressTimeoutInMinutes": 30})
    svc.notify_due()
    execution = svc.describe(thing, job)
    assert execution is not None
    doc = execution.job_document
    assert doc is not None
    assert doc.deployment_id == job and doc.target == "thinggroup/line-1"
    assert doc.components["com.example.Detector"].version == "1.0.0"
    assert doc.components["com.example.Detector"].configuration_update.merge == {"threshold": "0.6"}  # type: ignore[union-attr]
    assert doc.failure_handling_policy == "DO_NOTHING"
    assert doc.component_update_policy.action == "NOTIFY_COMPONENTS"
    assert doc.timeouts.in_progress_timeout_in_minutes == 30
    assert doc.creation_timestamp == 1_800_000_000_000
    reply = DescribeJobExecutionResponse(execution=execution, timestamp=0)
    assert decode(DescribeJobExecutionResponse, encode(reply)).execution == execution  # goes over MQTT unchanged


def test_late_joiners_get_the_groups_latest_deployment(svc: FleetService) -> None:
    fleet(svc, 2)
    svc.register_thing("loner", "rasp4b", AARCH64)
    first = deploy(svc)
    latest = deploy(svc, version="1.1.0")
    assert svc.register_thing("late-1", "rasp4b", AARCH64, ["line-1"]) == [latest]
    assert svc.add_to_group("loner", "line-1") == [latest]
    assert svc.add_to_group("loner", "line-1") == []  # once
    assert svc.state.get_execution(first, "late-1") is None
    assert statuses(svc, latest)["late-1"] == "QUEUED"


def test_a_late_joiner_reopens_a_completed_deployment_but_not_a_canceled_one(svc: FleetService) -> None:
    things = fleet(svc, 2)
    job = deploy(svc)
    svc.notify_due()
    for thing in things:
        svc.update_execution(thing, job, "SUCCEEDED")
    assert svc.deployment(job).status == "COMPLETED"
    svc.register_thing("late", "rasp4b", AARCH64, ["line-1"])
    assert svc.deployment(job).status == "ACTIVE"
    svc.notify_due()
    svc.update_execution("late", job, "SUCCEEDED")
    assert svc.deployment(job).status == "COMPLETED"

    svc.cancel_deployment(job)
    assert svc.deployment(job).status == "CANCELED"
    assert svc.register_thing("later", "rasp4b", AARCH64, ["line-1"]) == []


def test_leaving_a_group_cancels_what_was_queued_for_it(svc: FleetService) -> None:
    things = fleet(svc, 2)
    job = deploy(svc)
    svc.remove_from_group(things[0], "line-1")
    assert statuses(svc, job) == {things[0]: "CANCELED", things[1]: "QUEUED"}


def test_listeners_hear_only_committed_changes(svc: FleetService) -> None:
    events: list[ExecutionEvent] = []
    svc.subscribe(events.append)
    things = fleet(svc, 2)
    job = deploy(svc)
    assert [(e.thing, e.job_id, e.kind) for e in events] == [(t, job, "queued") for t in things]
    with pytest.raises(RuntimeError), svc.state.transaction():
        svc.register_thing("late", "rasp4b", AARCH64, ["line-1"])
        assert len(events) == 2  # not before the outer transaction commits...
        raise RuntimeError("rolled back")
    assert len(events) == 2  # ...and never, since it rolled back
    assert svc.state.get_thing("late") is None and svc.state.get_execution(job, "late") is None
    svc.notify_due()
    assert [e.kind for e in events[2:]] == ["notified", "notified"]


# --------------------------------------------------------------------------- the Jobs API


def test_devices_see_an_execution_only_once_the_rollout_released_it(svc: FleetService, clock: FakeClock) -> None:
    [thing] = fleet(svc, 1)
    job = deploy(svc)
    assert svc.pending_jobs(thing).queued == []
    assert svc.describe(thing) is None
    with pytest.raises(JobRejected) as info:
        svc.update_execution(thing, job, "IN_PROGRESS")
    assert info.value.code == "ResourceNotFound"

    assert svc.notify_due() == [(thing, job)]
    assert svc.notify_due() == []  # released once
    clock.advance(5)
    pending = svc.pending_jobs(thing)  # what a device asks on every reconnect
    assert [j.job_id for j in pending.queued] == [job] and pending.in_progress == []
    assert svc.state.get_thing(thing).last_seen == clock.now()  # type: ignore[union-attr]
    svc.update_execution(thing, job, "IN_PROGRESS", {"step": "downloading"})
    pending = svc.pending_jobs(thing)
    assert [j.job_id for j in pending.in_progress] == [job] and pending.queued == []
    nxt = svc.describe(thing, "$next")
    assert nxt is not None and nxt.job_id == job and nxt.status == "IN_PROGRESS"
    assert nxt.status_details == {"step": "downloading"} and nxt.started_at == int(clock.now())


def test_optimistic_versions(svc: FleetService) -> None:
    [thing] = fleet(svc, 1)
    job = deploy(svc)
    svc.notify_due()
    assert svc.describe(thing, job).version_number == 1  # type: ignore[union-attr]
    first = svc.update_execution(thing, job, "IN_PROGRESS", expected_version=1)
    assert first.state.version_number == 2
    with pytest.raises(JobRejected) as info:
        svc.update_execution(thing, job, "SUCCEEDED", expected_version=1)  # a stale writer
    assert info.value.code == "VersionMismatch"
    assert "expected version 1" in info.value.reason and "at version 2" in info.value.reason
    assert info.value.execution_state is not None and info.value.execution_state.version_number == 2
    assert svc.state.get_execution(job, thing).status == "IN_PROGRESS"  # type: ignore[union-attr]
    assert svc.update_execution(thing, job, "SUCCEEDED", expected_version=2).state.status == "SUCCEEDED"


@pytest.mark.parametrize("final", ["SUCCEEDED", "FAILED", "REJECTED", "CANCELED", "TIMED_OUT"])
def test_terminal_states_never_change(svc: FleetService, clock: FakeClock, final: str) -> None:
    [thing] = fleet(svc, 1)
    job = deploy(svc, timeoutConfig={"inProgressTimeoutInMinutes": 1})
    svc.notify_due()
    if final == "CANCELED":
        svc.cancel_deployment(job)
    elif final == "TIMED_OUT":
        svc.update_execution(thing, job, "IN_PROGRESS")
        clock.advance(60)
        svc.expire()
    else:
        svc.update_execution(thing, job, final, {"reason": "done"})
    before = svc.state.get_execution(job, thing)
    assert before is not None and before.status == final
    for status in ("IN_PROGRESS", "SUCCEEDED", "FAILED"):
        with pytest.raises(JobRejected) as info:
            svc.update_execution(thing, job, status, expected_version=before.version_number)
        assert info.value.code == "TerminalStateReached"
        assert info.value.execution_state is not None and info.value.execution_state.status == final
    assert svc.state.get_execution(job, thing) == before


def test_requests_a_device_cant_make(svc: FleetService) -> None:
    [thing] = fleet(svc, 1)
    job = deploy(svc)
    svc.notify_due()
    for status in ("QUEUED", "CANCELED", "TIMED_OUT", "DONE"):
        with pytest.raises(JobRejected) as info:
            svc.update_execution(thing, job, status)
        assert info.value.code == "InvalidRequest"
    with pytest.raises(JobRejected, match="statusDetails") as info:
        svc.update_execution(thing, job, "IN_PROGRESS", {"bad key!": "x"})
    assert info.value.code == "InvalidRequest"
    with pytest.raises(JobRejected) as info:
        svc.update_execution("someone-else", job, "IN_PROGRESS")
    assert info.value.code == "ResourceNotFound"
    assert svc.state.get_execution(job, thing).version_number == 1  # type: ignore[union-attr]


# --------------------------------------------------------------------------- completion, abort, timeouts


def test_a_deployment_completes_when_every_execution_is_terminal(svc: FleetService) -> None:
    things = fleet(svc, 3)
    job = deploy(svc)
    svc.notify_due()
    svc.update_execution(things[0], job, "SUCCEEDED")
    svc.update_execution(things[1], job, "FAILED")
    assert svc.deployment(job).status == "ACTIVE"
    assert svc.update_execution(things[2], job, "REJECTED").deployment_status == "COMPLETED"


def test_abort_fires_on_exactly_the_update_that_crosses_the_threshold(svc: FleetService) -> None:
    things = fleet(svc, 20)
    # cancel at 25 % failures (of any kind) once 8 devices have run it; release only 10 of the 20
    job = deploy(svc, abortConfig=abort(25, 8), jobExecutionsRolloutConfig={"maximumPerMinute": 10})
    released = svc.notify_due()
    while len(released) < 10:
        svc.clock.advance(6)  # type: ignore[attr-defined]
        released += svc.notify_due()
    run = [n.thing for n in released]
    results = [svc.update_execution(run[0], job, "FAILED"), svc.update_execution(run[1], job, "REJECTED")]
    # 2 of 2 failed (100 %), but fewer than 8 executed: no abort yet
    results += [svc.update_execution(t, job, "SUCCEEDED") for t in run[2:7]]
    assert all(r.abort is None for r in results) and svc.deployment(job).status == "ACTIVE"  # 2/7 = 28.6 %, 7 < 8
    svc.update_execution(run[7], job, "IN_PROGRESS")
    svc.update_execution(run[8], job, "IN_PROGRESS")
    crossing = svc.update_execution(run[9], job, "SUCCEEDED")  # 8 executed, 2 failed: exactly 25 %

    assert crossing.abort is not None
    assert (crossing.abort.failures, crossing.abort.executed, crossing.abort.percentage) == (2, 8, 25.0)
    assert crossing.deployment_status == "CANCELED"
    assert set(crossing.canceled) == set(things) - set(run)  # queued, never released: canceled too
    reason = svc.deployment(job).status_reason
    assert reason is not None and reason["criterion"] == 0 and reason["failureType"] == "ALL" and "25%" in reason["reason"]
    after = statuses(svc, job)
    assert [after[t] for t in run[7:9]] == ["IN_PROGRESS", "IN_PROGRESS"]  # runs in progress are left to finish
    assert svc.notify_due() == []
    assert svc.update_execution(run[7], job, "SUCCEEDED").deployment_status == "CANCELED"
    with pytest.raises(JobRejected) as info:
        svc.update_execution(sorted(set(things) - set(run))[0], job, "IN_PROGRESS")
    assert info.value.code in ("ResourceNotFound", "TerminalStateReached")


def test_abort_counts_only_its_failure_type_and_reports_which_criterion_fired(svc: FleetService) -> None:
    things = fleet(svc, 6)
    criteria = {
        "criteriaList": [
            {"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 50, "minNumberOfExecutedThings": 1},
            {"failureType": "REJECTED", "action": "CANCEL", "thresholdPercentage": 60, "minNumberOfExecutedThings": 3},
        ]
    }
    job = deploy(svc, abortConfig=criteria)
    svc.notify_due()
    assert svc.update_execution(things[0], job, "SUCCEEDED").abort is None
    assert svc.update_execution(things[1], job, "REJECTED").abort is None  # FAILED: 0 %; REJECTED: 50 %, 2 < 3 executed
    fired = svc.update_execution(things[2], job, "REJECTED").abort  # REJECTED 2 of 3 = 66.7 %
    assert fired is not None and fired.index == 1 and fired.failure_type == "REJECTED"


def test_in_progress_timeouts(svc: FleetService, clock: FakeClock) -> None:
    things = fleet(svc, 4)
    job = deploy(svc, timeoutConfig={"inProgressTimeoutInMinutes": 10}, abortConfig=abort(50, 2, "TIMED_OUT"))
    svc.notify_due()
    svc.update_execution(things[0], job, "IN_PROGRESS")
    clock.advance(300)
    svc.update_execution(things[1], job, "IN_PROGRESS")
    svc.update_execution(things[0], job, "IN_PROGRESS", {"step": "installing"})  # progress doesn't restart the timer
    clock.advance(299)
    assert svc.expire() == []
    clock.advance(1)  # things[0] has been in progress for 10 minutes
    assert svc.expire() == [(things[0], job)]
    assert statuses(svc, job)[things[0]] == "TIMED_OUT"
    assert svc.deployment(job).status == "ACTIVE"  # 1 executed < 2
    svc.update_execution(things[2], job, "SUCCEEDED")  # 1 of 2 timed out: 50 %
    assert svc.deployment(job).status == "CANCELED"
    assert svc.deployment(job).status_reason["failureType"] == "TIMED_OUT"  # type: ignore[index]
    assert statuses(svc, job)[things[3]] == "CANCELED"
    clock.advance(300)
    assert svc.expire() == [(things[1], job)]  # in-progress runs of a canceled deployment still time out


# --------------------------------------------------------------------------- status


def test_summary_for_the_status_table(svc: FleetService) -> None:
    things = fleet(svc, 3)
    other = fleet(svc, 1, group="line-2", prefix="cam")
    svc.add_to_group(things[0], "line-2")
    job = deploy(svc)
    job2 = deploy(svc, "thinggroup/line-2")
    svc.notify_due()
    svc.update_execution(things[0], job, "SUCCEEDED")
    svc.update_execution(things[1], job, "IN_PROGRESS")
    svc.clock.advance(1)  # type: ignore[attr-defined]
    svc.update_execution(things[0], job2, "FAILED")

    summary = svc.summary()
    by_id = {d.id: d for d in summary.deployments}
    assert by_id[job].counts == {"SUCCEEDED": 1, "IN_PROGRESS": 1, "QUEUED": 1} and by_id[job].total == 3
    assert by_id[job2].counts == {"FAILED": 1, "QUEUED": 1}
    groups = {g.name: g for g in summary.groups}
    assert (groups["line-1"].members, groups["line-1"].deployment_id, groups["line-1"].counts) == (3, job, by_id[job].counts)
    assert groups["line-2"].members == 2
    last = {t.name: t.last_status for t in summary.things}
    assert last == {things[0]: "FAILED", things[1]: "IN_PROGRESS", things[2]: "QUEUED", other[0]: "QUEUED"}
