"""Typed payloads of every MQTT message edgekit sends, and the one codec that reads them off the wire.

See docs/local-fleet.md (Jobs over MQTT: topics and messages).
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Final, Literal, TypeVar

import semantic_version
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator
from pydantic.alias_generators import to_camel

from edgekit.mqtt.errors import PayloadError
from edgekit.parsing import ParseError, loads_json
from edgekit.wire.deployment_parts import (
    ComponentUpdatePolicy,
    ConfigurationUpdate,
    ConfigurationValidationPolicy,
    FailureHandlingPolicy,
    RunWith,
)

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "SCHEMA_VERSION",
    "ComponentSpec",
    "ComponentState",
    "DeploymentInfo",
    "DeploymentResultCode",
    "DescribeJobExecutionRequest",
    "DescribeJobExecutionResponse",
    "DevicePresence",
    "DeviceStatus",
    "GetPendingJobExecutionsRequest",
    "GetPendingJobExecutionsResponse",
    "JobDocument",
    "JobExecution",
    "JobExecutionState",
    "JobExecutionStatus",
    "JobExecutionSummary",
    "JobExecutionsChanged",
    "JobsRejected",
    "LifecycleState",
    "RejectedCode",
    "StatusDetails",
    "Timeouts",
    "UpdateJobExecutionRequest",
    "UpdateJobExecutionResponse",
    "WireMessage",
    "decode",
    "encode",
]

SCHEMA_VERSION: Final = 1
MAX_PAYLOAD_BYTES: Final = 128 * 1024
"""AWS IoT Core's payload limit (128 KB)."""

JobExecutionStatus = Literal["QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "REJECTED", "REMOVED", "CANCELED"]
"""A job execution's status, as the Jobs service reports it."""

LifecycleState = Literal["NEW", "INSTALLED", "STARTING", "RUNNING", "STOPPING", "FINISHED", "ERRORED", "BROKEN"]
"""A Greengrass component's lifecycle state on the device."""

DeploymentResultCode = Literal[
    "SUCCESSFUL",
    "FAILED_NO_STATE_CHANGE",
    "FAILED_ROLLBACK_NOT_REQUESTED",
    "FAILED_ROLLBACK_COMPLETE",
    "FAILED_UNABLE_TO_ROLLBACK",
    "REJECTED",
]
"""The nucleus's detailed deployment result."""

RejectedCode = Literal[
    "InvalidTopic",
    "InvalidJson",
    "InvalidRequest",
    "InvalidStateTransition",
    "ResourceNotFound",
    "VersionMismatch",
    "InternalError",
    "RequestThrottled",
    "TerminalStateReached",
]
"""``code`` of a Jobs ``.../rejected`` reply."""


def _no_control_chars(value: str) -> str:
    # AWS: DetailsValue matches [^\p{C}]+ (no control, format, private-use or unassigned characters).
    for ch in value:
        if unicodedata.category(ch).startswith("C"):
            raise ValueError(f"contains the control character {ch!r}; AWS IoT Jobs refuses \\p{{C}} characters in statusDetails")
    return value


DetailsKey = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9:_-]+$")]
DetailsValue = Annotated[str, StringConstraints(min_length=1, max_length=1024), AfterValidator(_no_control_chars)]
StatusDetails = dict[DetailsKey, DetailsValue]
"""Job execution ``statusDetails``: keys 1-128 of ``[a-zA-Z0-9:_-]``, values 1-1024 characters (AWS IoT Jobs' limits)."""

ClientToken = Annotated[str, StringConstraints(min_length=1, max_length=64)]
JobId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^([a-zA-Z0-9_-]+|\$next)$")]
ThingName = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9:_-]+$")]


class _Part(BaseModel):
    """A piece of a message: camelCase on the wire, snake_case in Python, unknown keys refused."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid")


class WireMessage(_Part):
    """A top-level MQTT message; ``schemaVersion`` tells readers which shape it has."""

    schema_version: Literal[1] = SCHEMA_VERSION


# --------------------------------------------------------------------------- the job document


class ComponentSpec(_Part):
    """One component of a deployment: the exact version to run and how to change its configuration.

    The job document's form of the request's ``ComponentDeployment`` (``version``, not ``componentVersion``, and
    ``merge`` as an object); both hold the same :mod:`edgekit.wire.deployment_parts` parts.
    """

    version: str
    configuration_update: ConfigurationUpdate | None = None
    run_with: RunWith | None = None

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        try:
            semantic_version.Version(value)
        except ValueError as exc:
            raise ValueError(f"'{value}' is not a semantic version (MAJOR.MINOR.PATCH)") from exc
        return value


class Timeouts(_Part):
    """Time limits of one job execution (IoT Jobs ``timeoutConfig`` and step timeout)."""

    in_progress_timeout_in_minutes: int | None = Field(default=None, ge=1, le=10080)
    step_timeout_in_minutes: int | None = Field(default=None, ge=1, le=10080)


class JobDocument(WireMessage):
    """What a device must run: the Greengrass deployment a job carries (one per thing group / thing target).

    ``target`` is ``thing/NAME``, ``thinggroup/NAME`` or a full ARN; ``components`` is the complete set the
    target must run (a component absent from it is removed), each pinned to one version.
    """

    deployment_id: str = Field(min_length=1, max_length=128)
    target: str = Field(min_length=1, max_length=2048)
    configuration_arn: str | None = None
    creation_timestamp: int | None = Field(default=None, ge=0, description="milliseconds since the epoch")
    components: dict[Annotated[str, StringConstraints(min_length=1, max_length=128)], ComponentSpec]
    failure_handling_policy: FailureHandlingPolicy = "ROLLBACK"
    component_update_policy: ComponentUpdatePolicy = Field(default_factory=ComponentUpdatePolicy)
    configuration_validation_policy: ConfigurationValidationPolicy = Field(default_factory=ConfigurationValidationPolicy)
    timeouts: Timeouts = Field(default_factory=Timeouts)


# --------------------------------------------------------------------------- the Jobs API


class JobExecutionSummary(_Part):
    job_id: JobId
    execution_number: int | None = None
    version_number: int | None = None
    queued_at: int | None = None
    started_at: int | None = None
    last_updated_at: int | None = None


class JobExecutionState(_Part):
    status: JobExecutionStatus
    status_details: StatusDetails | None = None
    version_number: int | None = None


class JobExecution(_Part):
    job_id: JobId
    thing_name: ThingName
    status: JobExecutionStatus
    job_document: JobDocument | None = None
    status_details: StatusDetails | None = None
    queued_at: int | None = None
    started_at: int | None = None
    last_updated_at: int | None = None
    version_number: int | None = None
    execution_number: int | None = None


class JobExecutionsChanged(WireMessage):
    """``notify-namespace-aws-gg-deployment``: the device's pending executions changed (``{}`` jobs = none left)."""

    jobs: dict[JobExecutionStatus, list[JobExecutionSummary]] = Field(default_factory=dict)
    timestamp: int


class GetPendingJobExecutionsRequest(WireMessage):
    client_token: ClientToken | None = None


class GetPendingJobExecutionsResponse(WireMessage):
    in_progress_jobs: list[JobExecutionSummary] = Field(default_factory=list)
    queued_jobs: list[JobExecutionSummary] = Field(default_factory=list)
    timestamp: int
    client_token: ClientToken | None = None


class DescribeJobExecutionRequest(WireMessage):
    execution_number: int | None = None
    include_job_document: bool = True
    client_token: ClientToken | None = None


class DescribeJobExecutionResponse(WireMessage):
    execution: JobExecution | None = None
    timestamp: int
    client_token: ClientToken | None = None


class UpdateJobExecutionRequest(WireMessage):
    """A device's progress report; ``expected_version`` makes it a compare-and-set on the execution."""

    status: Literal["IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"]
    status_details: StatusDetails | None = None
    expected_version: int | None = Field(default=None, ge=0)
    execution_number: int | None = None
    include_job_execution_state: bool = False
    include_job_document: bool = False
    step_timeout_in_minutes: int | None = Field(default=None, ge=-1, le=10080)
    client_token: ClientToken | None = None


class UpdateJobExecutionResponse(WireMessage):
    execution_state: JobExecutionState | None = None
    job_document: JobDocument | None = None
    timestamp: int
    client_token: ClientToken | None = None


class JobsRejected(WireMessage):
    """Any ``.../rejected`` reply of the Jobs API."""

    code: RejectedCode
    message: str = ""
    timestamp: int
    client_token: ClientToken | None = None
    execution_state: JobExecutionState | None = None


# --------------------------------------------------------------------------- device status


class ComponentState(_Part):
    name: str = Field(min_length=1, max_length=128)
    version: str
    state: LifecycleState
    status_codes: list[str] = Field(default_factory=list)
    status_reason: str | None = None


class DeploymentInfo(_Part):
    """The device's view of its latest deployment."""

    deployment_id: str
    job_id: JobId | None = None
    status: JobExecutionStatus
    detailed_status: DeploymentResultCode | None = None
    error_codes: list[str] = Field(default_factory=list, description="e.g. ARTIFACT_CHECKSUM_MISMATCH, COMPONENT_BROKEN")
    failure_cause: str | None = None


class DeviceStatus(WireMessage):
    """What a device reports on ``status(thing)``: each component's lifecycle state and the last deployment's result."""

    thing_name: ThingName
    sequence_number: int = Field(ge=0)
    timestamp: int = Field(ge=0, description="milliseconds since the epoch")
    trigger: Literal[
        "NUCLEUS_LAUNCH", "RECONNECT", "CADENCE", "COMPONENT_STATUS_CHANGE", "THING_GROUP_DEPLOYMENT", "THING_DEPLOYMENT"
    ] = "CADENCE"
    overall_status: Literal["HEALTHY", "UNHEALTHY"]
    components: list[ComponentState] = Field(default_factory=list)
    deployment: DeploymentInfo | None = None


class DevicePresence(WireMessage):
    """What a device agent publishes on ``presence(thing)``: ``connected`` after each (re)connect, and as its will
    (``connected: false``, sent by the broker when the connection dies) and before a clean disconnect."""

    thing_name: ThingName
    connected: bool


# --------------------------------------------------------------------------- the codec

M = TypeVar("M", bound=WireMessage)


def encode(message: WireMessage, *, max_bytes: int = MAX_PAYLOAD_BYTES) -> bytes:
    """Compact camelCase JSON of ``message`` (``None`` fields left out), refused when over ``max_bytes``."""
    data = message.model_dump_json(by_alias=True, exclude_none=True).encode("utf-8")
    if len(data) > max_bytes:
        raise PayloadError(
            f"{type(message).__name__} encodes to {len(data)} bytes, over the {max_bytes}-byte limit of AWS IoT Core; "
            "send less (or a reference to the data) in one message"
        )
    return data


def decode(
    model_cls: type[M],
    payload: bytes | bytearray | memoryview | str,
    *,
    max_bytes: int = MAX_PAYLOAD_BYTES,
    require_version: bool = True,
) -> M:
    """Read ``payload`` as a ``model_cls`` message, or raise :class:`PayloadError` saying what is wrong and where.

    ``require_version=False`` accepts a message without ``schemaVersion`` (read as the current one): the IoT
    Jobs requests a real Greengrass nucleus sends carry none. A wrong ``schemaVersion`` is refused either way.
    """
    name = model_cls.__name__
    raw = payload.encode("utf-8") if isinstance(payload, str) else bytes(payload)
    if len(raw) > max_bytes:
        raise PayloadError(
            f"{name} payload is {len(raw)} bytes, over the {max_bytes}-byte limit (AWS IoT Core's 128 KB); refused unread"
        )
    try:
        data = loads_json(raw)  # UTF-8 only (json.loads(bytes) would guess UTF-16/32), bounded depth, no duplicate keys
    except ParseError as exc:
        raise PayloadError(f"{name} payload {exc}") from None
    if not isinstance(data, dict):
        raise PayloadError(f"{name} payload must be a JSON object, got {type(data).__name__}")
    if "schemaVersion" not in data:
        if require_version:
            raise PayloadError(f"{name} payload has no 'schemaVersion'; expected schemaVersion {SCHEMA_VERSION}")
        data["schemaVersion"] = SCHEMA_VERSION
    version = data["schemaVersion"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise PayloadError(
            f"{name} payload has schemaVersion {version!r}, but this edgekit reads schemaVersion {SCHEMA_VERSION}; "
            "upgrade the side that reads it (or downgrade the sender)"
        )
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:5]:
            where = ".".join(str(part) for part in error["loc"]) or "(payload)"
            problems.append(f"field '{where}': {error['msg']}")
        more = f" (and {exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
        raise PayloadError(f"{name} payload does not match its schema: " + "; ".join(problems) + more) from exc
