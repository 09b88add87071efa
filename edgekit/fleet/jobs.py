"""Deployments as IoT jobs: execution statuses, the transitions a device may ask for, and the job document.

See docs/local-fleet.md (deployments as jobs).
"""

from __future__ import annotations

import re
from typing import Any, Final, Literal

from edgekit.errors import DeploymentError
from edgekit.greengrass.deployment import DeploymentSpec
from edgekit.mqtt.payloads import ComponentSpec, JobDocument

__all__ = [
    "DEVICE_STATUSES",
    "EXECUTED_STATUSES",
    "FAILURE_STATUSES",
    "TERMINAL_STATUSES",
    "DeploymentStatus",
    "ExecutionStatus",
    "Target",
    "job_document",
    "parse_target",
    "target_key",
]

ExecutionStatus = Literal["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED", "CANCELED"]
DeploymentStatus = Literal["ACTIVE", "COMPLETED", "CANCELED", "FAILED", "INACTIVE"]
Target = tuple[Literal["thing", "thinggroup"], str]

TERMINAL_STATUSES: Final = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED", "CANCELED"})
"""Statuses an execution never leaves."""
EXECUTED_STATUSES: Final = frozenset({"SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED"})
"""Terminal statuses a device's run ended in: the denominator of the abort percentage (CANCELED is not a run)."""
FAILURE_STATUSES: Final = {
    "FAILED": frozenset({"FAILED"}),
    "REJECTED": frozenset({"REJECTED"}),
    "TIMED_OUT": frozenset({"TIMED_OUT"}),
    "ALL": frozenset({"FAILED", "REJECTED", "TIMED_OUT"}),
}
"""What each abort ``failureType`` counts."""
DEVICE_STATUSES: Final = ("IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED")
"""Statuses a device may report with UpdateJobExecution."""

_TARGET = re.compile(r"^(?:arn:[^:]*:iot:[^:]*:[0-9]*:)?(thing|thinggroup)/([a-zA-Z0-9:_-]{1,128})$", re.IGNORECASE)


def parse_target(target_arn: str) -> Target:
    """``thing/NAME``, ``thinggroup/NAME`` or a full ARN of either → (kind, name)."""
    match = _TARGET.match(target_arn)
    if not match:
        raise DeploymentError(f"target '{target_arn}' is neither 'thing/<name>' nor 'thinggroup/<name>' (nor an ARN of one)")
    if match.group(1).lower() == "thing":
        return "thing", match.group(2)
    return "thinggroup", match.group(2)


def target_key(target: Target) -> str:
    """The stored form of a target, ``thing/NAME`` or ``thinggroup/NAME``: deployments to the same key replace each other."""
    return f"{target[0]}/{target[1]}"


def job_document(deployment_id: str, spec: DeploymentSpec, created_at: float) -> JobDocument:
    """The job document a device receives for ``spec``: pinned component versions and the deployment's policies."""
    components = {
        name: ComponentSpec(
            version=component.component_version,
            configuration_update=component.configuration_update,
            run_with=component.run_with,
        )
        for name, component in spec.components.items()
    }
    document: dict[str, Any] = {
        "deploymentId": deployment_id,
        "target": spec.target_arn,
        "creationTimestamp": int(created_at * 1000),
        "components": components,
        **spec.deployment_policies.to_job_document(),  # the request's deploymentPolicies are top-level keys here
    }
    job = spec.iot_job_configuration
    if job is not None and job.timeout_config is not None:
        document["timeouts"] = {"inProgressTimeoutInMinutes": job.timeout_config.in_progress_timeout_in_minutes}
    return JobDocument.model_validate(document)
