"""Rollout rate and abort rules of IoT jobs, as pure functions of counts and times.

See docs/local-fleet.md (deployments as jobs).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from edgekit.fleet.jobs import EXECUTED_STATUSES, FAILURE_STATUSES
from edgekit.greengrass.deployment import AbortCriteria, DeploymentSpec

__all__ = [
    "BURST_SECONDS",
    "DEFAULT_MAXIMUM_PER_MINUTE",
    "WINDOW_SECONDS",
    "AbortDecision",
    "RolloutPolicy",
    "evaluate_abort",
]

DEFAULT_MAXIMUM_PER_MINUTE: Final = 1000
"""AWS IoT Jobs' rate when ``maximumPerMinute`` is not given."""
BURST_SECONDS: Final = 10.0
"""The bucket holds this many seconds of the rate: the service may tick this seldom without slowing a rollout."""
WINDOW_SECONDS: Final = 60.0


@dataclass(frozen=True)
class RolloutPolicy:
    """The rate of one deployment's rollout; see docs/local-fleet.md (deployments as jobs)."""

    maximum_per_minute: int = DEFAULT_MAXIMUM_PER_MINUTE
    base_per_minute: int | None = None
    increment_factor: float = 1.0
    increase_every: int | None = None
    increase_on: Literal["notified", "succeeded"] = "notified"

    @classmethod
    def from_spec(cls, spec: DeploymentSpec) -> RolloutPolicy:
        job = spec.iot_job_configuration
        config = job.job_executions_rollout_config if job is not None else None
        if config is None:
            return cls()
        maximum = config.maximum_per_minute or DEFAULT_MAXIMUM_PER_MINUTE
        exponential = config.exponential_rate
        if exponential is None:
            return cls(maximum_per_minute=maximum)
        criteria = exponential.rate_increase_criteria
        by_notified = criteria.number_of_notified_things is not None
        step = criteria.number_of_notified_things if by_notified else criteria.number_of_succeeded_things
        return cls(
            maximum_per_minute=maximum,
            base_per_minute=exponential.base_rate_per_minute,
            increment_factor=exponential.increment_factor,
            increase_every=step,
            increase_on="notified" if by_notified else "succeeded",
        )

    def rate(self, notified: int, succeeded: int) -> float:
        """Things per minute, given how many were notified and how many succeeded so far."""
        if self.base_per_minute is None or self.increase_every is None:
            return float(self.maximum_per_minute)
        count = notified if self.increase_on == "notified" else succeeded
        rate = float(self.base_per_minute)
        if self.increment_factor > 1:
            for _ in range(count // self.increase_every):
                if rate >= self.maximum_per_minute:
                    break
                rate *= self.increment_factor
        return min(float(self.maximum_per_minute), rate)

    @staticmethod
    def capacity(rate: float) -> float:
        """The most tokens the bucket holds at ``rate``: ``BURST_SECONDS`` of the rate, plus one for the fraction carried over."""
        return 1.0 + rate * BURST_SECONDS / 60.0

    @staticmethod
    def tokens(stored: float | None, stored_at: float | None, rate: float, now: float) -> float:
        """Tokens in the bucket at ``now``: ``stored`` at ``stored_at``, refilled at ``rate`` per minute, capped."""
        capacity = RolloutPolicy.capacity(rate)
        if stored is None or stored_at is None:
            return capacity
        return min(capacity, stored + max(0.0, now - stored_at) * rate / 60.0)

    @staticmethod
    def take(stored: float | None, stored_at: float | None, rate: float, now: float) -> tuple[float, float]:
        """Take one token at ``now``: the bucket's new (tokens, refill-from time).

        A burst taken from a bucket that sat full (a new rollout, or one idle for longer than
        :data:`BURST_SECONDS`) pays for itself: the refill starts only once the burst's extra tokens would
        have been earned at ``rate``. So a burst followed by steady pacing keeps within ``rate`` over the
        minute that follows, and the sliding window never has to stop the rollout. Tokens earned between
        two ticks of a busy rollout are not delayed: a service ticking every few seconds loses nothing.
        """
        tokens = RolloutPolicy.tokens(stored, stored_at, rate, now)
        capacity = RolloutPolicy.capacity(rate)
        if stored is None or stored_at is None:
            idle = True
        else:
            full_since = stored_at + max(0.0, capacity - stored) * 60.0 / rate
            idle = now - full_since >= BURST_SECONDS
        if idle and tokens >= capacity - 1e-9:
            refill_from = now + (capacity - 1.0) * 60.0 / rate
        else:
            refill_from = max(stored_at if stored_at is not None else now, now)
        return tokens - 1.0, refill_from

    @staticmethod
    def allowance(tokens: float, rate: float, in_window: int) -> int:
        """How many things may be notified now: whole tokens, and what the sliding minute still allows."""
        return max(0, min(math.floor(tokens + 1e-9), math.floor(rate + 1e-9) - in_window))


@dataclass(frozen=True)
class AbortDecision:
    """Which abort criterion fired, and the numbers that made it fire."""

    index: int
    failure_type: str
    threshold_percentage: float
    min_number_of_executed_things: int
    failures: int
    executed: int

    @property
    def percentage(self) -> float:
        return 100.0 * self.failures / self.executed if self.executed else 0.0

    def describe(self) -> str:
        return (
            f"abort criterion {self.index} ({self.failure_type} >= {self.threshold_percentage:g}% once "
            f"{self.min_number_of_executed_things} executed) fired: {self.failures} of {self.executed} executed "
            f"things failed ({self.percentage:.2f}%)"
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "criterion": self.index,
            "failureType": self.failure_type,
            "thresholdPercentage": self.threshold_percentage,
            "minNumberOfExecutedThings": self.min_number_of_executed_things,
            "failures": self.failures,
            "executed": self.executed,
            "percentage": round(self.percentage, 2),
            "reason": self.describe(),
        }


def evaluate_abort(criteria: Sequence[AbortCriteria], counts: Mapping[str, int]) -> AbortDecision | None:
    """The first criterion of ``criteria`` that fires for these execution ``counts`` (status -> number), if any."""
    executed = sum(counts.get(s, 0) for s in EXECUTED_STATUSES)
    for index, criterion in enumerate(criteria):
        failures = sum(counts.get(s, 0) for s in FAILURE_STATUSES[criterion.failure_type])
        if executed < criterion.min_number_of_executed_things or executed == 0:
            continue
        # integer-safe form of failures / executed * 100 >= threshold (threshold has at most two decimals)
        if failures * 10_000 >= round(criterion.threshold_percentage * 100) * executed:
            return AbortDecision(
                index=index,
                failure_type=criterion.failure_type,
                threshold_percentage=criterion.threshold_percentage,
                min_number_of_executed_things=criterion.min_number_of_executed_things,
                failures=failures,
                executed=executed,
            )
    return None
