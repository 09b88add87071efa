"""Greengrass v2 deployments: a typed spec (CreateDeployment field by field), the exact request, and the call.

Spec files use the API's own camelCase names; attributes are snake_case. :func:`parse_rollout` (``"10/min"``)
and :func:`parse_abort` (``"10%:FAILED:min=5"``) are the CLI's shorthands. See docs/publishing.md.
"""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import semantic_version
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_serializer, field_validator, model_validator
from pydantic.alias_generators import to_camel

from edgekit.errors import DeploymentError, one_line
from edgekit.greengrass.aws import AwsSession, aws_errors, has_credentials, partition_for_region
from edgekit.parsing import MAX_FILE_BYTES, ParseError, loads_json, loads_yaml
from edgekit.wire.deployment_parts import ConfigurationUpdate, DeploymentPolicies, RunWith

__all__ = [
    "DEFAULT_ABORT_MIN_EXECUTED",
    "DEFAULT_ABORT_TYPE",
    "AbortConfig",
    "AbortCriteria",
    "ComponentDeployment",
    "DeploymentResult",
    "DeploymentSpec",
    "ExponentialRate",
    "IotJobConfiguration",
    "RateIncreaseCriteria",
    "RolloutConfig",
    "TimeoutConfig",
    "build_spec",
    "client_token",
    "deploy",
    "load_spec",
    "parse_abort",
    "parse_rollout",
    "to_request",
]

TARGET_ARN = re.compile(r"^arn:[^:]*:iot:([^:]*):([0-9]+):(thing|thinggroup)/.+$")
_SHORT_TARGET = re.compile(r"^(thing|thinggroup)/([a-zA-Z0-9:_-]{1,128})$", re.IGNORECASE)

DEFAULT_ABORT_TYPE = "ALL"
DEFAULT_ABORT_MIN_EXECUTED = 10
_ROLLOUT_BASE_CAP = 10


class _Model(BaseModel):
    # populate_by_name (not 2.11's validate_by_name): pyproject allows pydantic >= 2.7
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


# --------------------------------------------------------------------------- components


class ComponentDeployment(_Model):
    """One component of the request (``ComponentDeploymentSpecification``); the job document's is ``ComponentSpec``."""

    component_version: str = Field(min_length=1, max_length=64)
    configuration_update: ConfigurationUpdate | None = None
    run_with: RunWith | None = None

    @field_serializer("configuration_update", when_used="unless-none")
    def _request_form(self, update: ConfigurationUpdate) -> dict[str, Any]:
        return update.to_create_deployment()  # merge as the API's JSON string


# --------------------------------------------------------------------------- IoT job


class RateIncreaseCriteria(_Model):
    number_of_notified_things: int | None = Field(default=None, ge=1)
    number_of_succeeded_things: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> RateIncreaseCriteria:
        if (self.number_of_notified_things is None) == (self.number_of_succeeded_things is None):
            raise ValueError("set exactly one of numberOfNotifiedThings or numberOfSucceededThings")
        return self


class ExponentialRate(_Model):
    base_rate_per_minute: int = Field(ge=1, le=1000)
    increment_factor: float = Field(ge=1, le=5)
    rate_increase_criteria: RateIncreaseCriteria


class RolloutConfig(_Model):
    exponential_rate: ExponentialRate | None = None
    maximum_per_minute: int | None = Field(default=None, ge=1, le=1000)


class AbortCriteria(_Model):
    failure_type: Literal["FAILED", "REJECTED", "TIMED_OUT", "ALL"]
    action: Literal["CANCEL"] = "CANCEL"
    threshold_percentage: float = Field(gt=0, le=100)
    min_number_of_executed_things: int = Field(ge=1)

    @field_validator("threshold_percentage")
    @classmethod
    def _two_decimals(cls, value: float) -> float:
        if round(value, 2) != value:
            raise ValueError(f"{value} has more than two decimals (AWS IoT accepts e.g. 10.99, not 10.999)")
        return value


class AbortConfig(_Model):
    criteria_list: list[AbortCriteria] = Field(min_length=1)


class TimeoutConfig(_Model):
    in_progress_timeout_in_minutes: int = Field(ge=1, le=10080, description="1 minute to 7 days")


class IotJobConfiguration(_Model):
    job_executions_rollout_config: RolloutConfig | None = None
    abort_config: AbortConfig | None = None
    timeout_config: TimeoutConfig | None = None


# --------------------------------------------------------------------------- spec


class DeploymentSpec(_Model):
    """What CreateDeployment needs, validated. Build it with :meth:`from_dict` to get DeploymentError."""

    target_arn: str = Field(description="thing / thing group ARN, or 'thing/<name>' / 'thinggroup/<name>'")
    deployment_name: str | None = Field(default=None, min_length=1, max_length=256)
    components: dict[str, ComponentDeployment] = Field(default_factory=dict)
    deployment_policies: DeploymentPolicies = Field(default_factory=DeploymentPolicies)
    iot_job_configuration: IotJobConfiguration | None = None
    tags: dict[str, str] | None = None

    @field_validator("target_arn")
    @classmethod
    def _target(cls, value: str) -> str:
        if TARGET_ARN.match(value):
            return value
        short = _SHORT_TARGET.match(value)
        if short:
            return f"{short.group(1).lower()}/{short.group(2)}"
        raise ValueError(
            f"'{value}' is neither a thing/thing group ARN (arn:aws:iot:REGION:ACCOUNT:thinggroup/NAME) "
            "nor 'thing/<name>' / 'thinggroup/<name>'"
        )

    @field_validator("components")
    @classmethod
    def _names(cls, value: dict[str, ComponentDeployment]) -> dict[str, ComponentDeployment]:
        for name in value:
            if not 1 <= len(name) <= 128:
                raise ValueError(f"component name '{name[:40]}' must be 1-128 characters")
        return value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            if not 1 <= len(value) <= 200:
                raise ValueError("give 1 to 200 tags (or none)")
            for key, tag in value.items():
                if not 1 <= len(key) <= 128 or len(tag) > 256:
                    raise ValueError(f"tag '{key[:40]}': keys are 1-128 characters, values at most 256")
        return value

    @property
    def needs_account(self) -> bool:
        """True for the short 'thing/<name>' form, whose ARN needs the region and account."""
        return not TARGET_ARN.match(self.target_arn)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeploymentSpec:
        """Validate ``data`` (API camelCase or snake_case keys); errors become one DeploymentError."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise DeploymentError(f"invalid deployment: {_describe(exc)}") from exc

    def resolve_target(self, *, region: str | None, account: str | None, partition: str | None = None) -> str:
        """The target's full ARN; checks a full ARN's region against ``region``."""
        full = TARGET_ARN.match(self.target_arn)
        if full:
            if region and full.group(1) != region:
                raise DeploymentError(
                    f"targetArn {self.target_arn} is in {full.group(1)} but the deployment goes to {region}; "
                    "deploy with that region or fix the ARN"
                )
            return self.target_arn
        if not region or not account:
            raise DeploymentError(
                f"target '{self.target_arn}' needs the region and account to build its ARN; "
                "pass region and account, or a full ARN (arn:aws:iot:REGION:ACCOUNT:" + self.target_arn + ")"
            )
        return f"arn:{partition or partition_for_region(region)}:iot:{region}:{account}:{self.target_arn}"


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(f"[{p}]" if isinstance(p, str) and "." in p else str(p) for p in err["loc"]).replace(".[", "[") or "spec"
        message = err["msg"].removeprefix("Value error, ")
        shown = "" if err["type"] in ("missing", "value_error", "extra_forbidden") else f" (got {err['input']!r})"
        parts.append(f"{where}: {message}{shown}")
    return one_line("; ".join(parts))


def load_spec(path: str | Path) -> DeploymentSpec:
    """Read a deployment spec from a YAML or JSON file."""
    p = Path(path)
    try:
        data = loads_yaml(p.read_bytes(), max_bytes=MAX_FILE_BYTES)
    except OSError as exc:
        raise DeploymentError(f"{p}: cannot read the deployment spec: {exc.strerror or exc}") from exc
    except ParseError as exc:
        raise DeploymentError(f"{p}: the deployment spec {exc}") from None
    if not isinstance(data, dict):
        raise DeploymentError(f"{p}: a deployment spec must be a mapping at the top level")
    try:
        return DeploymentSpec.from_dict(data)
    except DeploymentError as exc:
        raise DeploymentError(f"{p}: {exc}") from exc.__cause__


# --------------------------------------------------------------------------- shorthands


def parse_rollout(text: str) -> RolloutConfig:
    """``"10/min"`` (or ``"10"``) -> a rollout capped at 10 devices per minute.

    The rate starts lower and grows: ``exponentialRate`` starts at ``min(10, rate)`` per minute and
    doubles (incrementFactor 2) each time that many more devices succeeded, up to the cap. At 10/min
    or less the start is the cap itself, so no exponentialRate is sent.
    """
    match = re.fullmatch(r"\s*(\d+)\s*(?:/\s*(?:min|minute|m))?\s*", text)
    if not match:
        raise DeploymentError(f"rollout '{text}': expected '<devices>/min', e.g. '10/min'")
    rate = int(match.group(1))
    if not 1 <= rate <= 1000:
        raise DeploymentError(f"rollout '{text}': iotJobConfiguration.jobExecutionsRolloutConfig.maximumPerMinute must be 1-1000")
    base = min(_ROLLOUT_BASE_CAP, rate)
    exponential = None
    if base < rate:
        exponential = ExponentialRate(
            base_rate_per_minute=base,
            increment_factor=2.0,
            rate_increase_criteria=RateIncreaseCriteria(number_of_succeeded_things=base),
        )
    return RolloutConfig(exponential_rate=exponential, maximum_per_minute=rate)


def parse_abort(text: str) -> AbortConfig:
    """``"10%"``, ``"10%:FAILED"``, ``"10%:FAILED:min=5"``; several criteria separated by commas.

    Defaults: failure type ALL (failed, rejected and timed-out executions all count) and at least
    10 executed devices before the percentage is judged, so one early failure doesn't cancel a fleet.
    """
    criteria = []
    for item in (part.strip() for part in text.split(",")):
        fields = [f.strip() for f in item.split(":")]
        pct = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%?", fields[0])
        if not pct:
            raise DeploymentError(f"abort '{item}': expected '<percent>%[:FAILED|REJECTED|TIMED_OUT|ALL][:min=<devices>]'")
        failure_type = DEFAULT_ABORT_TYPE
        minimum = DEFAULT_ABORT_MIN_EXECUTED
        for extra in fields[1:]:
            if extra.upper() in ("FAILED", "REJECTED", "TIMED_OUT", "ALL"):
                failure_type = extra.upper()
            elif re.fullmatch(r"min\s*=\s*\d+", extra, re.IGNORECASE):
                minimum = int(extra.split("=")[1])
            else:
                raise DeploymentError(f"abort '{item}': unknown part '{extra}' (use FAILED, REJECTED, TIMED_OUT, ALL or min=N)")
        data = {
            "failureType": failure_type,
            "action": "CANCEL",
            "thresholdPercentage": float(pct.group(1)),
            "minNumberOfExecutedThings": minimum,
        }
        try:
            criteria.append(AbortCriteria.model_validate(data))
        except ValidationError as exc:
            raise DeploymentError(f"abort '{item}': {_describe(exc)}") from exc
    return AbortConfig(criteria_list=criteria)


# --------------------------------------------------------------------------- request


def build_spec(
    target: str,
    components: Sequence[str] | Mapping[str, str] = (),
    *,
    spec: DeploymentSpec | None = None,
    name: str | None = None,
    rollout: str | None = None,
    abort_failed: str | None = None,
    failure_handling: str | None = None,
    timeout_minutes: int | None = None,
    merge: Sequence[str] = (),
    update_config: str | None = None,
    base: Mapping[str, Mapping[str, Any]] | None = None,
    remove: Sequence[str] = (),
    flag: str = "--component",
) -> DeploymentSpec:
    """The one place a deployment request is built from flags, optionally over a spec file's ``spec``.

    ``components``: ``NAME=VERSION`` strings (or a mapping); ``merge``: ``NAME=VERSION`` (a component to add, the
    Greengrass CLI's ``--merge``) or ``NAME={json}`` (a configuration merge); ``update_config``: the Greengrass CLI's
    ``{"NAME": {"MERGE": {...}, "RESET": [...]}}`` (JSON text or a file holding it); ``base``: the components already
    deployed to the target, kept unless ``remove``d (the Greengrass CLI's cumulative local deployments).
    ``rollout`` / ``abort_failed``: :func:`parse_rollout` / :func:`parse_abort` shorthands. ``flag`` names the
    option in errors (``--component``, ``--deploy``).
    """
    data = spec.model_dump(by_alias=True, exclude_none=True) if spec else {}
    data["targetArn"] = target
    comps = {n: dict(c) for n, c in (base or {}).items()} | dict(data.get("components", {}))
    pairs = list(components.items() if isinstance(components, Mapping) else (_pair(item, flag) for item in components))
    config_merges = []
    for item in merge:
        cname, _, text = item.partition("=")
        if semantic_version.validate(text.strip()):
            pairs.append((cname, text.strip()))
        else:
            config_merges.append((item, cname, text))
    for cname, version in pairs:
        comps[cname] = {**comps.get(cname, {}), "componentVersion": version}
    for item, cname, text in config_merges:
        if cname not in comps:
            raise DeploymentError(f"--merge '{item}': '{cname}' is not a component of this deployment")
        comps[cname] = {**comps[cname], "configurationUpdate": {"merge": text}}
    for cname, update in _update_config(update_config).items():
        if cname not in comps:
            raise DeploymentError(f"--update-config: '{cname}' is not a component of this deployment; add it with --merge")
        comps[cname] = {**comps[cname], "configurationUpdate": update}
    for cname in remove if base is not None else ():
        if comps.pop(cname, None) is None:
            raise DeploymentError(f"--remove {cname}: it is not deployed to {target}; nothing to remove")
    if not comps and not remove:
        raise DeploymentError(f"a deployment needs at least one {flag} NAME=VERSION (or a --spec)")
    data["components"] = comps
    if name:
        data["deploymentName"] = name
    if failure_handling:
        data.setdefault("deploymentPolicies", {})["failureHandlingPolicy"] = failure_handling
    job = dict(data.get("iotJobConfiguration", {}))
    if rollout:
        job["jobExecutionsRolloutConfig"] = parse_rollout(rollout).model_dump(by_alias=True, exclude_none=True)
    if abort_failed:
        job["abortConfig"] = parse_abort(abort_failed).model_dump(by_alias=True, exclude_none=True)
    if timeout_minutes:
        job["timeoutConfig"] = {"inProgressTimeoutInMinutes": timeout_minutes}
    if job:
        data["iotJobConfiguration"] = job
    return DeploymentSpec.from_dict(data)


def _pair(item: str, flag: str) -> tuple[str, str]:
    name, sep, version = item.partition("=")
    if not sep or not name or not version:
        raise DeploymentError(f"{flag} '{item}': expected NAME=VERSION")
    return name, version


def _update_config(text: str | None) -> dict[str, dict[str, Any]]:
    """The Greengrass CLI's ``--update-config`` (``{"NAME": {"MERGE": {...}, "RESET": ["/ptr"]}}``, keys in any
    case; JSON text or a file) as configurationUpdate objects by component."""
    if not text:
        return {}
    source = "--update-config"
    raw = text
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise DeploymentError(
                f"--update-config '{text}': neither JSON nor an existing file; pass '{{\"NAME\": {{\"MERGE\": {{...}}}}}}'"
            )
        raw, source = path.read_text(encoding="utf-8"), f"--update-config {path}"
    try:
        data = loads_json(raw)
    except ParseError as exc:
        raise DeploymentError(f"{source}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise DeploymentError(f'{source}: expected {{"NAME": {{"MERGE": {{...}}, "RESET": [...]}}}}')
    out: dict[str, dict[str, Any]] = {}
    for cname, update in data.items():
        keys = {str(k).lower(): v for k, v in update.items()}
        unknown = sorted(set(keys) - {"merge", "reset"})
        if unknown:
            raise DeploymentError(f"{source}: {cname}: unknown key(s) {unknown}; use MERGE and RESET")
        out[str(cname)] = {k: v for k, v in keys.items() if v is not None}
    return out


def client_token(request: Mapping[str, Any]) -> str:
    """A clientToken derived from the request's content (UUID-shaped, 36 characters).

    The same request gets the same token, so a retried deploy is not applied twice: Greengrass
    returns the first response for a token it has seen in the last 8 hours.
    """
    body = {k: v for k, v in request.items() if k != "clientToken"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return str(uuid.UUID(hex=hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]))


def to_request(
    spec: DeploymentSpec, *, region: str | None = None, account: str | None = None, partition: str | None = None
) -> dict[str, Any]:
    """The exact keyword arguments of ``greengrassv2.create_deployment`` for ``spec``.

    ``region``/``account`` build the ARN of a short target (and ``region`` is checked against a full
    ARN's). Defaults are written out (``failureHandlingPolicy: ROLLBACK``); ``clientToken`` is last.
    """
    body = spec.model_dump(by_alias=True, exclude_none=True, mode="json", exclude={"target_arn"})
    request: dict[str, Any] = {"targetArn": spec.resolve_target(region=region, account=account, partition=partition)}
    request.update(body)
    request["clientToken"] = client_token(request)
    return request


# --------------------------------------------------------------------------- deploy


@dataclass(frozen=True)
class DeploymentResult:
    request: dict[str, Any]
    deployment_id: str | None = None
    iot_job_id: str | None = None
    iot_job_arn: str | None = None
    dry_run: bool = False


def deploy(
    spec: DeploymentSpec | Mapping[str, Any],
    *,
    region: str,
    profile: str | None = None,
    endpoint_url: str | None = None,
    dry_run: bool = False,
    account: str | None = None,
    session: AwsSession | None = None,
) -> DeploymentResult:
    """Create the deployment (``greengrassv2.create_deployment``) and return its ids.

    ``dry_run`` returns the request without creating anything; a short target's account is then ``account``, or
    looked up with sts:GetCallerIdentity when the standard chain has credentials (the only call a dry run makes).
    Otherwise a short target's account comes from sts:GetCallerIdentity. ``session`` replaces the
    session built from ``region``/``profile``/``endpoint_url``.
    """
    if not isinstance(spec, DeploymentSpec):
        spec = DeploymentSpec.from_dict(spec)
    if dry_run:
        if spec.needs_account and not account:
            if session is None and not has_credentials(profile):
                raise DeploymentError(
                    f"target '{spec.target_arn}' needs the AWS account to build its ARN and no credentials were found to "
                    f"look it up: pass --account ID (or a full ARN: arn:aws:iot:{region}:ID:{spec.target_arn})"
                )
            aws = session or AwsSession(region=region, profile=profile, endpoint_url=endpoint_url, error=DeploymentError)
            account = aws.account_id()
        return DeploymentResult(request=to_request(spec, region=region, account=account), dry_run=True)

    aws = session or AwsSession(region=region, profile=profile, endpoint_url=endpoint_url, error=DeploymentError)
    if aws.region != region:
        raise DeploymentError(f"the AWS session is for {aws.region}, the deployment for {region}")
    if spec.needs_account and not account:
        with aws_errors("looking up the AWS account (sts:GetCallerIdentity)", DeploymentError):
            account = aws.sts().get_caller_identity()["Account"]
    request = to_request(spec, region=region, account=account, partition=aws.partition())
    with aws_errors(f"deploying to {request['targetArn']} (greengrass:CreateDeployment)", DeploymentError):
        response = aws.greengrass().create_deployment(**request)
    return DeploymentResult(
        request=request,
        deployment_id=response.get("deploymentId"),
        iot_job_id=response.get("iotJobId"),
        iot_job_arn=response.get("iotJobArn"),
    )


@dataclass(frozen=True)
class DeploymentListing:
    """One deployment as ``edgekit deployment list`` shows it (AWS or the local fleet)."""

    id: str
    target: str
    status: str
    created_at: float | None
    name: str | None = None
    counts: dict[str, int] | None = None  # executions by status (the local fleet knows them)


def list_deployments(
    *, region: str, profile: str | None = None, endpoint_url: str | None = None, session: AwsSession | None = None
) -> list[DeploymentListing]:
    """The latest revision of every deployment in ``region`` (greengrass:ListDeployments), newest first."""
    aws = session or AwsSession(region=region, profile=profile, endpoint_url=endpoint_url, error=DeploymentError)
    out: list[DeploymentListing] = []
    with aws_errors("listing deployments (greengrass:ListDeployments)", DeploymentError):
        for page in aws.greengrass().get_paginator("list_deployments").paginate(historyFilter="LATEST_ONLY"):
            for d in page.get("deployments", []):
                created = d.get("creationTimestamp")
                out.append(
                    DeploymentListing(
                        id=d.get("deploymentId", ""),
                        target=d.get("targetArn", ""),
                        status=d.get("deploymentStatus", ""),
                        created_at=created.timestamp() if created is not None else None,
                        name=d.get("deploymentName"),
                    )
                )
    return sorted(out, key=lambda d: d.created_at or 0.0, reverse=True)


def cancel_deployment(
    deployment_id: str,
    *,
    region: str,
    profile: str | None = None,
    endpoint_url: str | None = None,
    session: AwsSession | None = None,
) -> str:
    """Cancel a deployment (greengrass:CancelDeployment); returns its id."""
    aws = session or AwsSession(region=region, profile=profile, endpoint_url=endpoint_url, error=DeploymentError)
    with aws_errors(f"canceling deployment {deployment_id} (greengrass:CancelDeployment)", DeploymentError):
        aws.greengrass().cancel_deployment(deploymentId=deployment_id)
    return deployment_id
