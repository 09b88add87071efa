"""The errors of :mod:`edgekit.fleet` (exit code 21, and 16, 17, 2 for their shared kinds). See docs/errors.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError, PublishError

if TYPE_CHECKING:
    from edgekit.mqtt.payloads import JobExecutionState, RejectedCode

__all__ = [
    "ComponentConflictError",
    "DeviceUnreachableError",
    "FleetError",
    "JobRejected",
    "NotFoundError",
    "StateError",
    "StateUnavailableError",
]


class FleetError(EdgekitError):
    """The local fleet service refused or failed an operation."""

    exit_code = 21


class StateError(FleetError):
    """The fleet's SQLite state file can't be used (not a database, not edgekit's, or a newer schema)."""


class StateUnavailableError(StateError):
    """The fleet's PostgreSQL database is unreachable for now (its connection was lost): the operation was not done,
    and the connection is tried again with backoff (see docs/local-fleet.md, the fleet on PostgreSQL)."""


class NotFoundError(FleetError):
    """No thing, thing group, deployment or component of the given name exists."""


class DeviceUnreachableError(FleetError):
    """``edgekit compile --measure-on THING``: THING is not a device of the fleet, is offline, or did not answer."""


class JobRejected(FleetError):
    """A Jobs API request was refused, as AWS IoT Jobs would refuse it.

    ``code`` is the rejection code of the Jobs API (``VersionMismatch``, ``TerminalStateReached``,
    ``InvalidStateTransition``, ``ResourceNotFound``, ``InvalidRequest``); ``execution_state`` is the
    execution's current state where one exists (IoT Jobs sends it with ``VersionMismatch``).
    """

    def __init__(self, code: RejectedCode, message: str, execution_state: JobExecutionState | None = None) -> None:
        self.code: RejectedCode = code
        self.execution_state = execution_state
        super().__init__(f"{code}: {message}")
        self.reason = message


class ComponentConflictError(PublishError):
    """A component version is already published with different content; versions are immutable."""
