"""The errors of :mod:`edgekit.fleet`, all under :class:`edgekit.errors.EdgekitError`::

    EdgekitError
    ├── FleetError                  the local fleet service refused or failed an operation
    │   ├── StateError              the state file can't be opened: not SQLite, not edgekit's, or from a newer edgekit
    │   ├── NotFoundError           no thing / thing group / deployment / component of that name
    │   └── JobRejected             the Jobs API refused a device's request; ``code`` is the IoT Jobs
    │                               rejection code (VersionMismatch, TerminalStateReached, ...)
    ├── PublishError
    │   └── ComponentConflictError  a published component version exists with other content (bump the version)
    ├── DeploymentError             a deployment names an unknown target or an unpublished component version
    └── ConfigError                 a thing or group name is invalid

:class:`JobRejected` maps one to one onto the ``.../rejected`` reply of the Jobs MQTT API
(:class:`edgekit.mqtt.payloads.JobsRejected`): ``code``, ``message`` and ``execution_state``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError, PublishError

if TYPE_CHECKING:
    from edgekit.mqtt.payloads import JobExecutionState, RejectedCode

__all__ = ["ComponentConflictError", "FleetError", "JobRejected", "NotFoundError", "StateError"]


class FleetError(EdgekitError):
    """The local fleet service refused or failed an operation."""

    exit_code = 21


class StateError(FleetError):
    """The fleet's SQLite state file can't be used (not a database, not edgekit's, or a newer schema)."""


class NotFoundError(FleetError):
    """No thing, thing group, deployment or component of the given name exists."""


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
