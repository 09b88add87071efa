"""Rollout pacing with a FakeClock: maximumPerMinute, the exponential ramp, and a restart in the middle of a rollout."""

from __future__ import annotations

import bisect
import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edgekit.fleet import FakeClock, FleetService, FleetState
from edgekit.fleet.rollout import RolloutPolicy
from edgekit.greengrass.deployment import DeploymentSpec, parse_rollout


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(0.0)


@pytest.fixture
def state(fleet_db: str | Path) -> Iterator[FleetState]:
    with FleetState(fleet_db) as s:
        yield s


def rollout_spec(rollout: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"targetArn": "thinggroup/fleet", "components": {}}
    if rollout is not None:
        body["iotJobConfiguration"] = {"jobExecutionsRolloutConfig": rollout}
    return body


def start(state: FleetState, clock: FakeClock, n: int, rollout: dict[str, Any] | None) -> tuple[FleetService, str]:
    svc = FleetService(state, clock)
    with state.transaction():
        for i in range(n):
            svc.register_thing(f"dev-{i:04d}", "rasp4b", {"os": "linux", "architecture": "aarch64"}, ["fleet"])
    return svc, svc.create_deployment(rollout_spec(rollout))


def tick(svc: FleetService, clock: FakeClock, seconds: float, step: float = 1.0, succeed: bool = False) -> list[float]:
    """Run the service's loop for ``seconds``: every ``step``, notify what is due (devices succeed at once if asked)."""
    times = []
    end = clock.now() + seconds
    while clock.now() < end - 1e-9:
        for thing, job in svc.notify_due():
            times.append(clock.now())
            if succeed:
                svc.update_execution(thing, job, "SUCCEEDED")
        clock.advance(step)
    return times


def max_in_any_minute(times: list[float]) -> int:
    return max((bisect.bisect_left(times, t + 60.0) - i for i, t in enumerate(times)), default=0)


@pytest.mark.parametrize("step", [1.0, 5.0])
def test_maximum_per_minute_over_a_thousand_things(state: FleetState, clock: FakeClock, step: float) -> None:
    svc, job = start(state, clock, 1000, {"maximumPerMinute": 100})
    times = tick(svc, clock, 660, step)
    per_minute = collections.Counter(int(t // 60) for t in times)
    assert (
        len(times) == 1000
        and len({e.thing for e in svc.state.executions(deployment_id=job) if e.notified_at is not None}) == 1000
    )
    assert all(95 <= per_minute[m] <= 105 for m in range(1, 10)), per_minute
    assert 90 <= per_minute[0] <= 105, per_minute  # the first minute starts with one tick of catching up
    assert max_in_any_minute(times) <= 100  # never more than the rate in any sliding minute
    # spread over the minute, not bursting at its start: every 10 s of the steady state gets about a sixth
    tens = collections.Counter(int(t // 10) for t in times if 60 <= t < 540)
    assert all(14 <= c <= 19 for c in tens.values()), tens


def test_no_rollout_config_means_aws_default_of_1000_per_minute(state: FleetState, clock: FakeClock) -> None:
    svc, job = start(state, clock, 50, None)
    assert svc.rollout_rate(job) == 1000
    assert len(svc.notify_due()) == 50  # a small fleet is notified at once


def test_exponential_ramp_doubles_after_every_ten_successes(state: FleetState, clock: FakeClock) -> None:
    rollout = parse_rollout("100/min")  # the CLI's shorthand: base 10, x2 every 10 succeeded, capped at 100
    assert rollout.exponential_rate is not None and rollout.exponential_rate.base_rate_per_minute == 10
    svc, _ = start(state, clock, 120, rollout.model_dump(by_alias=True, exclude_none=True))
    times = tick(svc, clock, 200, succeed=True)
    assert len(times) == 120
    # phase k: things 10k..10k+9 notified at the rate reached after 10k successes: 10, 20, 40, 80, then 100
    for k, rate in enumerate([10, 20, 40, 80, 100, 100]):
        phase = times[10 * k : 10 * k + 10]
        expected = 9 * 60 / rate
        assert abs((phase[-1] - phase[0]) - expected) <= max(1.0, 0.1 * expected), (k, phase)
    assert times[10] - times[9] == pytest.approx(3, abs=1)  # the 10th success doubles the rate at once: 60 s / 20


def test_exponential_ramp_on_notified_things(state: FleetState, clock: FakeClock) -> None:
    rollout = {
        "maximumPerMinute": 50,
        "exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 3, "rateIncreaseCriteria": {"numberOfNotifiedThings": 5}},
    }
    svc, job = start(state, clock, 40, rollout)
    rates = []
    for _ in range(4):
        rates.append(svc.rollout_rate(job))
        notified = len(svc.state.executions(deployment_id=job)) - len(svc.state.unnotified(job, 10_000))
        while len(svc.state.executions(deployment_id=job)) - len(svc.state.unnotified(job, 10_000)) < notified + 5:
            tick(svc, clock, 1)
    assert rates == [5, 15, 45, 50]  # nobody succeeded: notifications alone raise the rate


def test_rate_policy_from_spec() -> None:
    spec = DeploymentSpec.from_dict(
        rollout_spec(
            {
                "maximumPerMinute": 1000,
                "exponentialRate": {
                    "baseRatePerMinute": 50,
                    "incrementFactor": 2,
                    "rateIncreaseCriteria": {"numberOfSucceededThings": 1000},
                },
            }
        )
    )
    policy = RolloutPolicy.from_spec(spec)
    # the AWS IoT guide's example: 50/min until 1000 succeeded, then 100, 200, ... never above 1000
    assert [policy.rate(0, s) for s in (0, 999, 1000, 2000, 3000, 4000, 5000, 10**9)] == [50, 50, 100, 200, 400, 800, 1000, 1000]


def test_a_restart_in_the_middle_of_a_rollout_continues_where_it_left_off(fleet_db: str | Path, clock: FakeClock) -> None:
    path = fleet_db
    state = FleetState(path)
    svc, job = start(state, clock, 300, {"maximumPerMinute": 100})
    before = tick(svc, clock, 90)
    state.close()  # the service dies...
    clock.advance(2)

    with FleetState(path) as again:  # ...and a new one starts from the file
        svc = FleetService(again, clock)
        assert len(svc.state.unnotified(job, 10_000)) == 300 - len(before)
        after = tick(svc, clock, 150)
        times = before + after
        assert len(times) == 300
        assert len({e.thing for e in svc.state.executions(deployment_id=job) if e.notified_at is not None}) == 300
        assert max_in_any_minute(times) <= 100  # the restart did not reset the rate window
        assert after[0] - before[-1] <= 3  # and did not pause the rollout
