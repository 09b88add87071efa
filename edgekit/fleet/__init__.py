"""The local fleet: AWS IoT Greengrass v2 + IoT Jobs on one machine.

* :mod:`edgekit.fleet.state` — the SQLite state file (things, groups, components, deployments, jobs);
* :mod:`edgekit.fleet.registry` — :func:`publish_local`, the component registry and artifact store;
* :mod:`edgekit.fleet.http` — the device-facing HTTP API (versions, recipes, artifact downloads);
* :mod:`edgekit.fleet.service` — deployments as jobs: replacement, rollout, abort, timeouts, status;
* :mod:`edgekit.fleet.rollout` — the rate and abort rules, pure;
* time comes from an injected :class:`edgekit.clock.Clock` (:class:`FakeClock` for tests).
"""

from __future__ import annotations

from edgekit.clock import Clock, FakeClock, SystemClock
from edgekit.fleet.errors import ComponentConflictError, FleetError, JobRejected, NotFoundError, StateError
from edgekit.fleet.http import FleetHttpServer
from edgekit.fleet.registry import PublishedComponent, Registry, publish_local
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
