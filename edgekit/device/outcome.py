"""What a deployment did on one device, shaped for an IoT Jobs ``statusDetails`` map (within its limits).

See docs/device-agent.md (jobs over MQTT).
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from edgekit.mqtt.payloads import ComponentState, DeploymentInfo, DeploymentResultCode, LifecycleState

__all__ = ["ComponentOutcome", "DeploymentOutcome", "DeploymentStatus"]

DeploymentStatus = Literal["SUCCEEDED", "FAILED", "REJECTED"]
"""The job execution status a device reports for a deployment."""

_KEY_BAD = re.compile(r"[^a-zA-Z0-9:_-]")


def _value(text: str) -> str:
    clean = "".join(ch if not unicodedata.category(ch).startswith("C") else " " for ch in text).strip()
    clean = clean or "-"
    return clean if len(clean) <= 1024 else clean[:1021] + "..."


def _key(text: str) -> str:
    return _KEY_BAD.sub("_", text)[:128]


class ComponentOutcome(BaseModel):
    """One component as the deployment left it."""

    model_config = ConfigDict(frozen=True)
    version: str
    state: LifecycleState
    status_codes: list[str] = Field(default_factory=list)
    status_reason: str | None = None


class DeploymentOutcome(BaseModel):
    """The result of :meth:`edgekit.device.DeviceAgent.apply`.

    ``status`` is the job execution status to report, ``result`` the nucleus's detailed status,
    ``error_stack`` the nucleus error codes from least to most specific and ``error_code`` the most
    specific one (``None`` on success). ``components`` holds every component on the device afterwards.
    """

    model_config = ConfigDict(frozen=True)
    deployment_id: str
    target: str
    status: DeploymentStatus
    result: DeploymentResultCode
    error_code: str | None = None
    error_stack: list[str] = Field(default_factory=list)
    message: str = ""
    components: dict[str, ComponentOutcome] = Field(default_factory=dict)
    finished_at: float = Field(description="seconds since the epoch, from the agent's clock")

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"

    def status_details(self) -> dict[str, str]:
        """The IoT Jobs ``statusDetails`` map: nucleus keys plus one ``component:<name>`` key per component.

        Keys: ``detailed-deployment-status``; on failure ``deployment-error-code``,
        ``deployment-error-stack`` (a JSON list) and ``deployment-failure-cause``; then
        ``component:<name>`` → ``"<version> <STATE>"`` (characters outside ``[a-zA-Z0-9:_-]`` in the
        name become ``_``, as AWS refuses them in keys).
        """
        details: dict[str, str] = {"detailed-deployment-status": self.result}
        if self.error_code:
            details["deployment-error-code"] = _value(self.error_code)
        if self.error_stack:
            details["deployment-error-stack"] = _value(json.dumps(self.error_stack))
        if self.message:
            details["deployment-failure-cause" if not self.succeeded else "deployment-message"] = _value(self.message)
        for name, comp in sorted(self.components.items()):
            details[_key(f"component:{name}")] = _value(f"{comp.version} {comp.state}")
        return details

    def deployment_info(self, job_id: str | None = None) -> DeploymentInfo:
        """The ``deployment`` part of a :class:`edgekit.mqtt.payloads.DeviceStatus`."""
        return DeploymentInfo(
            deployment_id=self.deployment_id,
            job_id=job_id,
            status=self.status,
            detailed_status=self.result,
            error_codes=list(self.error_stack),
            failure_cause=self.message if not self.succeeded and self.message else None,
        )

    def component_states(self) -> list[ComponentState]:
        """``components`` as :class:`edgekit.mqtt.payloads.ComponentState` entries, sorted by name."""
        return [
            ComponentState(
                name=name, version=c.version, state=c.state, status_codes=list(c.status_codes), status_reason=c.status_reason
            )
            for name, c in sorted(self.components.items())
        ]
