"""The parts of a Greengrass deployment, defined once: what CreateDeployment sends and what the job document carries.

The same configuration update, ``runWith`` and policies travel in two messages: the CreateDeployment request
(:class:`edgekit.greengrass.deployment.DeploymentSpec`, the botocore greengrassv2 model) and the job document a
device reads (:class:`edgekit.mqtt.payloads.JobDocument`, the nucleus's deployment document). Each part is one
model here with the stricter of the two sides' rules (the API's limits included, so a part that validates is one
AWS accepts). Where the two messages spell a part differently, the part has two serializers:

=============================  =====================================  ======================================
part                           :meth:`to_create_deployment`           :meth:`to_job_document`
=============================  =====================================  ======================================
``configurationUpdate.merge``  a JSON *string* (the API's             a JSON *object* (what the nucleus
                               ``ComponentConfigurationString``)      merges)
``deploymentPolicies``         one object of the three policies       the three policies at the top level
                                                                      of the document
=============================  =====================================  ======================================

A policy's unset timeout stays unset on both wires (the nucleus fills in 60 s / 30 s, as AWS does);
:attr:`ComponentUpdatePolicy.timeout_s` reads it with the default applied. See docs/publishing.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

__all__ = [
    "DEFAULT_COMPONENT_UPDATE_TIMEOUT_S",
    "DEFAULT_CONFIGURATION_VALIDATION_TIMEOUT_S",
    "MAX_MERGE_CHARS",
    "MAX_POINTER_CHARS",
    "ComponentUpdatePolicy",
    "ConfigurationUpdate",
    "ConfigurationValidationPolicy",
    "DeploymentPart",
    "DeploymentPolicies",
    "FailureHandlingPolicy",
    "RunWith",
    "SystemResourceLimits",
    "check_json_pointers",
]

DEFAULT_COMPONENT_UPDATE_TIMEOUT_S: Final = 60
"""What the nucleus waits for components to defer an update when ``componentUpdatePolicy`` sets no timeout."""
DEFAULT_CONFIGURATION_VALIDATION_TIMEOUT_S: Final = 30
"""What the nucleus waits for a configuration validity report when ``configurationValidationPolicy`` sets none."""
MAX_MERGE_CHARS: Final = 10_485_760
"""CreateDeployment's limit on ``configurationUpdate.merge`` (``ComponentConfigurationString``)."""
MAX_POINTER_CHARS: Final = 256
"""CreateDeployment's limit on one ``configurationUpdate.reset`` pointer (``ComponentConfigurationPath``)."""
_MAX_MEMORY_KB: Final = 9_223_372_036_854_771_712  # the API's Memory (a long)

FailureHandlingPolicy = Literal["ROLLBACK", "DO_NOTHING"]
"""What the nucleus does when a deployment fails on a device (default ``ROLLBACK``)."""

_POSIX_USER = re.compile(r"^[^:\s]+(:[^:\s]+)?$")


class DeploymentPart(BaseModel):
    """A part of a deployment: camelCase on the wire, snake_case in Python (either accepted), unknown keys refused."""

    # populate_by_name (not 2.11's validate_by_name): pyproject allows pydantic >= 2.7
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_create_deployment(self) -> dict[str, Any]:
        """This part as the CreateDeployment request spells it (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")

    def to_job_document(self) -> dict[str, Any]:
        """This part as the job document spells it (camelCase, unset fields left out)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


def check_json_pointers(pointers: list[str] | None, max_length: int | None = MAX_POINTER_CHARS) -> list[str] | None:
    """A configuration update's ``reset`` list: each '' (everything) or a JSON pointer ('/a/b'), for pydantic validators."""
    for pointer in pointers or []:
        if pointer and not pointer.startswith("/"):
            raise ValueError(f"'{pointer}' is not a JSON pointer: it must be '' (everything) or start with '/'")
        if max_length is not None and len(pointer) > max_length:
            raise ValueError(f"'{pointer[:40]}...' is longer than {max_length} characters")
    return pointers


# --------------------------------------------------------------------------- components


class ConfigurationUpdate(DeploymentPart):
    """``reset`` (JSON pointers) is applied before ``merge`` (a JSON object).

    ``merge`` is read as an object or as a JSON string of one (the API's form) and held as the object;
    :meth:`to_create_deployment` writes it back as the text it was given (or compact JSON), so a request
    built from a spec file carries the user's own text. Two updates are equal when they mean the same.
    """

    merge: dict[str, Any] | None = None
    reset: list[str] | None = None
    _merge_text: str | None = PrivateAttr(default=None)

    @model_validator(mode="wrap")
    @classmethod
    def _keep_text(cls, data: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        update = handler(data)
        text = data.get("merge") if isinstance(data, Mapping) else None
        if isinstance(text, str) and isinstance(update, ConfigurationUpdate):
            update._merge_text = text
        return update

    @field_validator("merge", mode="before")
    @classmethod
    def _merge_object(cls, value: Any) -> Any:
        if isinstance(value, str):
            if len(value) > MAX_MERGE_CHARS:
                raise ValueError(f"is {len(value)} characters, over CreateDeployment's {MAX_MERGE_CHARS}")
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"not valid JSON: {exc.msg} at character {exc.pos}") from exc
            except RecursionError:
                raise ValueError("is JSON nested too deeply to read") from None
            if not isinstance(parsed, dict):
                raise ValueError("must be a JSON object (the keys to merge into the configuration)")
            return parsed
        if isinstance(value, Mapping):
            try:
                size = len(_compact(value))
            except (TypeError, ValueError, RecursionError) as exc:
                raise ValueError(f"is not JSON ({exc})") from None
            if size > MAX_MERGE_CHARS:
                raise ValueError(f"is {size} characters as JSON, over CreateDeployment's {MAX_MERGE_CHARS}")
            return value
        if value is not None:
            raise ValueError("must be a JSON object (the keys to merge into the configuration)")
        return value

    @field_validator("reset")
    @classmethod
    def _pointers(cls, value: list[str] | None) -> list[str] | None:
        return check_json_pointers(value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConfigurationUpdate):
            return NotImplemented
        return self.merge == other.merge and self.reset == other.reset

    def merge_text(self) -> str | None:
        """``merge`` as the API's JSON string: the text it was read from, or compact JSON of the object."""
        if self.merge is None:
            return None
        if self._merge_text is not None and json.loads(self._merge_text) == self.merge:
            return self._merge_text
        return _compact(self.merge)

    def to_create_deployment(self) -> dict[str, Any]:
        """``{"merge": "<JSON text>", "reset": [...]}`` (the API's ``ComponentConfigurationUpdate``)."""
        out: dict[str, Any] = {}
        if self.merge is not None:
            out["merge"] = self.merge_text()
        if self.reset is not None:
            out["reset"] = list(self.reset)
        return out


def _compact(value: Mapping[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class SystemResourceLimits(DeploymentPart):
    cpus: float | None = Field(default=None, gt=0, description="CPU time share, e.g. 0.5 = half a core")
    memory: int | None = Field(default=None, gt=0, le=_MAX_MEMORY_KB, description="RAM in kilobytes")


class RunWith(DeploymentPart):
    posix_user: str | None = Field(default=None, description="'user' or 'user:group'")
    windows_user: str | None = Field(default=None, min_length=1)
    system_resource_limits: SystemResourceLimits | None = None

    @field_validator("posix_user")
    @classmethod
    def _user(cls, value: str | None) -> str | None:
        if value is not None and not _POSIX_USER.match(value):
            raise ValueError(f"'{value}' is not 'user' or 'user:group'")
        return value


# --------------------------------------------------------------------------- policies


class ComponentUpdatePolicy(DeploymentPart):
    action: Literal["NOTIFY_COMPONENTS", "SKIP_NOTIFY_COMPONENTS"] = "NOTIFY_COMPONENTS"
    timeout_in_seconds: int | None = Field(default=None, ge=1, description=f"unset: {DEFAULT_COMPONENT_UPDATE_TIMEOUT_S}")

    @property
    def timeout_s(self) -> int:
        """How long components may defer the update, with the nucleus's default applied."""
        return DEFAULT_COMPONENT_UPDATE_TIMEOUT_S if self.timeout_in_seconds is None else self.timeout_in_seconds


class ConfigurationValidationPolicy(DeploymentPart):
    timeout_in_seconds: int | None = Field(default=None, ge=1, description=f"unset: {DEFAULT_CONFIGURATION_VALIDATION_TIMEOUT_S}")

    @property
    def timeout_s(self) -> int:
        """How long a component may take to validate its configuration, with the nucleus's default applied."""
        if self.timeout_in_seconds is None:
            return DEFAULT_CONFIGURATION_VALIDATION_TIMEOUT_S
        return self.timeout_in_seconds


class DeploymentPolicies(DeploymentPart):
    """The three policies: one ``deploymentPolicies`` object in the request; in the job document the same keys sit
    at its top level (:meth:`to_job_document` gives them to merge in; ``failureHandlingPolicy`` is always written)."""

    failure_handling_policy: FailureHandlingPolicy = "ROLLBACK"
    component_update_policy: ComponentUpdatePolicy | None = None
    configuration_validation_policy: ConfigurationValidationPolicy | None = None
