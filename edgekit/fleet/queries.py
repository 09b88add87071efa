"""Read-only views of a local fleet's state, cheap enough to poll while a rollout runs; see docs/local-fleet.md."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from edgekit.fleet.errors import NotFoundError
from edgekit.fleet.service import DeploymentSummary
from edgekit.fleet.state import FleetState

__all__ = ["FAILURE_STATUSES", "DeviceFailure", "deployment_summary", "device_failures"]

FAILURE_STATUSES: Final = ("FAILED", "TIMED_OUT", "REJECTED")


@dataclass(frozen=True)
class DeviceFailure:
    """A device whose execution of a deployment ended badly, with the device's reason."""

    thing: str
    deployment_id: str
    status: str
    error_code: str | None
    cause: str | None
    at: float


def device_failures(state: FleetState, limit: int | None = 10, deployment_id: str | None = None) -> list[DeviceFailure]:
    """The ``limit`` most recent failed / timed-out / rejected executions (every one with ``None``), newest first."""
    records = state.executions(deployment_id=deployment_id, statuses=FAILURE_STATUSES)
    records.sort(key=lambda r: r.updated_at, reverse=True)
    out = []
    for r in records[:limit]:
        details = r.status_details
        out.append(
            DeviceFailure(
                thing=r.thing,
                deployment_id=r.deployment_id,
                status=r.status,
                error_code=details.get("deployment-error-code") or details.get("error-code"),
                cause=details.get("deployment-failure-cause"),
                at=r.updated_at,
            )
        )
    return out


def deployment_summary(state: FleetState, deployment_id: str) -> DeploymentSummary:
    """One deployment's status and counts, read straight from the state (no service needed)."""
    record = state.get_deployment(deployment_id)
    if record is None:
        raise NotFoundError(f"no deployment '{deployment_id}' in {state.path}")
    return DeploymentSummary.of(record, state.status_counts(record.id))
