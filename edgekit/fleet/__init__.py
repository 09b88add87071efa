"""The local fleet: AWS IoT Greengrass v2 + IoT Jobs on one machine (state, registry, HTTP API, jobs, rollout).

See docs/local-fleet.md.
"""

from __future__ import annotations

from edgekit.clock import Clock, FakeClock, SystemClock
from edgekit.fleet.component_registry import PublishedComponent, Registry, publish_local
from edgekit.fleet.errors import (
    ComponentConflictError,
    DeviceUnreachableError,
    FleetError,
    JobRejected,
    NotFoundError,
    StateError,
)
from edgekit.fleet.http import FleetHttpServer
from edgekit.fleet.service import (
    DeploymentSummary,
    ExecutionEvent,
    FleetService,
    FleetSummary,
    GroupSummary,
    Notification,
    PendingJobs,
    ThingSummary,
    UpdateResult,
)
from edgekit.fleet.state import FleetState

__all__ = [
    "Clock",
    "ComponentConflictError",
    "DeploymentSummary",
    "DeviceUnreachableError",
    "ExecutionEvent",
    "FakeClock",
    "FleetError",
    "FleetHttpServer",
    "FleetService",
    "FleetState",
    "FleetSummary",
    "GroupSummary",
    "JobRejected",
    "NotFoundError",
    "Notification",
    "PendingJobs",
    "PublishedComponent",
    "Registry",
    "StateError",
    "SystemClock",
    "ThingSummary",
    "UpdateResult",
    "publish_local",
]
