"""SageMaker endpoints for compiled artifacts, with boto3: real-time, serverless, asynchronous, batch; invoke; delete.

The cloud is wrapped narrowly (the conventions of :mod:`edgekit.greengrass.aws`: its session, retries,
``endpoint_url`` and one-line errors, here as :class:`~edgekit.errors.EndpointError`):

* :class:`SageMakerApi`   CreateModel / CreateEndpointConfig / CreateEndpoint / CreateTransformJob, the
                           Describe* calls to wait on, and the Delete* calls
* :func:`deploy_endpoint` uploads the artifact's ``.tar.gz`` as ``model.tar.gz``, creates the model, then an
                           endpoint (config + endpoint, waiting for ``InService`` with progress) or a
                           transform job (batch). A failure deletes what this run created (endpoint,
                           config, model, the uploaded object) and says so in the one error line
* :func:`invoke_endpoint` / :func:`invoke_endpoint_async` — ``sagemaker-runtime`` InvokeEndpoint(Async)
* :func:`delete_endpoint` — the endpoint, its config and its models

``dry_run`` returns every request, checked against botocore's model of the API, without calling AWS.
boto3 is imported when used. See docs/cloud.md.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgekit.errors import EdgekitError, EndpointError
from edgekit.greengrass.aws import AwsSession, aws_error_code, aws_errors
from edgekit.manifest import TensorSpec

__all__ = [
    "ApiCall",
    "DeployEvent",
    "DeployResult",
    "EndpointSpec",
    "SageMakerApi",
    "batch_content_type",
    "delete_endpoint",
    "deploy_endpoint",
    "endpoint_name",
    "invoke_endpoint",
    "invoke_endpoint_async",
]

log = logging.getLogger(__name__)

Mode = Literal["real-time", "serverless", "async", "batch"]
MODES: tuple[str, ...] = ("real-time", "serverless", "async", "batch")
_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
_ROLE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/\S+$")
_S3 = re.compile(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$")
_GRAVITON = re.compile(r"^ml\.[a-z]+\d+g[a-z]*\.")  # ml.c7g.large, ml.m6gd.xlarge: arm64 instances
_SERVERLESS_MEMORY = (1024, 2048, 3072, 4096, 5120, 6144)


@dataclass(frozen=True)
class EndpointSpec:
    """What to deploy. ``mode`` picks which of the option groups applies."""

    name: str
    mode: Mode = "real-time"
    role_arn: str = ""
    image: str = ""
    bucket: str = ""
    prefix: str = "edgekit"
    multi_model: bool = False  # a multi-model endpoint: ModelDataUrl is the S3 prefix of many model.tar.gz
    environment: Mapping[str, str] = field(default_factory=dict)
    # real-time, async and batch
    instance_type: str = "ml.c5.large"
    instance_count: int = 1
    # serverless
    memory_mb: int = 2048
    max_concurrency: int = 5
    provisioned_concurrency: int | None = None
    # async
    async_output: str = ""
    sns_success: str | None = None
    sns_error: str | None = None
    sns_include_response: bool = False  # the inference's answer in the SNS messages too (IncludeInferenceResponseIn)
    max_concurrent_invocations: int | None = None
    # real-time and async: Application Auto Scaling (edgekit.cloud.endpoint_scaling); async alone may go to 0
    min_instances: int | None = None
    max_instances: int | None = None
    target_invocations: float | None = None  # real-time: invocations per instance per minute
    target_backlog: float | None = None  # async: queued requests per instance
    # batch
    batch_input: str = ""
    batch_output: str = ""
    content_type: str = ""  # "": what the model takes (batch_content_type)
    max_payload_mb: int = 6  # one request of a transform job (SageMaker's default; edgekit serve's --max-body-mb)


@dataclass(frozen=True)
class ApiCall:
    """One AWS request, as a dry run prints it."""

    service: str
    operation: str
    params: dict[str, Any]


@dataclass(frozen=True)
class DeployEvent:
    stage: Literal["upload", "create", "status", "rollback"]
    detail: str


@dataclass
class DeployResult:
    name: str
    mode: str
    status: str  # InService, Completed (batch), or "planned" (dry run)
    model_data_url: str
    calls: list[ApiCall]
    arn: str = ""
    dry_run: bool = False


# --------------------------------------------------------------------------- checks and requests

NAME_RULE = "1-63 letters, digits and hyphens, starting and ending with a letter or digit (^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62})"


def endpoint_name(text: str) -> str:
    """A valid SageMaker endpoint name made from ``text`` (an artifact's folder name such as ``sensor-x86_64``):
    each run of other characters becomes one hyphen, at most 63 characters, no hyphen at either end."""
    name = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")[:63].rstrip("-")
    return name or "edgekit-model"


def _check(spec: EndpointSpec, artifact_arch: str) -> None:
    def bad(message: str) -> EndpointError:
        return EndpointError(f"endpoint '{spec.name}': {message}")

    if not _NAME.match(spec.name) or len(spec.name) > 63:
        raise bad(f"not a valid endpoint name: SageMaker names are {NAME_RULE}; '{endpoint_name(spec.name)}' would do")
    if spec.mode not in MODES:
        raise bad(f"--mode must be one of {', '.join(MODES)}, not '{spec.mode}'")
    if not spec.role_arn:
        raise bad(
            "--role is required: the ARN of an IAM role SageMaker assumes (with AmazonSageMakerFullAccess or S3 + ECR read)"
        )
    if not _ROLE.match(spec.role_arn):
        raise bad(f"--role '{spec.role_arn}' is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)")
    if not spec.image:
        raise bad("--image is required: the ECR URI of the edgekit serve container (docker/serve.Dockerfile)")
    if not spec.bucket:
        raise bad("--bucket is required: the S3 bucket model.tar.gz is uploaded to (in the endpoint's region)")
    if spec.mode == "serverless":
        if spec.memory_mb not in _SERVERLESS_MEMORY:
            raise bad(
                f"--memory must be one of {', '.join(map(str, _SERVERLESS_MEMORY))} MB for serverless, not {spec.memory_mb}"
            )
        if not 1 <= spec.max_concurrency <= 200:
            raise bad(f"--max-concurrency must be 1-200, not {spec.max_concurrency}")
        pc = spec.provisioned_concurrency
        if pc is not None and not 1 <= pc <= spec.max_concurrency:
            raise bad(f"--provisioned-concurrency must be 1 to --max-concurrency ({spec.max_concurrency}), not {pc}")
        if artifact_arch == "aarch64":
            raise bad("serverless endpoints run on x86_64 only; this artifact is built for aarch64: compile for x86_64")
    else:
        if not spec.instance_type.startswith("ml."):
            raise bad(f"--instance-type must be a SageMaker instance type like ml.c5.large, not '{spec.instance_type}'")
        if spec.instance_count < 1:
            raise bad("--instance-count must be at least 1")
        graviton = bool(_GRAVITON.match(spec.instance_type))
        if graviton != (artifact_arch == "aarch64"):
            want = "a Graviton (…g) instance type" if artifact_arch == "aarch64" else "an x86_64 instance type"
            raise bad(f"the artifact is built for {artifact_arch} and {spec.instance_type} is not: choose {want}, or recompile")
    if spec.mode != "async" and (spec.sns_success or spec.sns_error):
        raise bad("--sns-success/--sns-error apply to async endpoints (--mode async) only")
    if spec.sns_include_response and not (spec.sns_success or spec.sns_error):
        raise bad("--sns-include-response needs --sns-success and/or --sns-error (the topics the answer goes to)")
    if spec.mode == "async" and not _S3.match(spec.async_output):
        raise bad("--async-output s3://bucket/prefix is required for an asynchronous endpoint (where results are written)")
    if spec.mode == "batch":
        for option, value in (("--batch-input", spec.batch_input), ("--batch-output", spec.batch_output)):
            if not _S3.match(value):
                raise bad(f"{option} s3://bucket/prefix is required for a batch transform job")
        if not 1 <= spec.max_payload_mb <= 100:
            raise bad(f"--max-payload-mb must be 1-100 (SageMaker's MaxPayloadInMB), not {spec.max_payload_mb}")


def _container(spec: EndpointSpec, model_data_url: str) -> dict[str, Any]:
    env = {"SAGEMAKER_MULTI_MODEL": "true"} if spec.multi_model else {}
    env.update(spec.environment)
    container: dict[str, Any] = {
        "Image": spec.image,
        "ModelDataUrl": model_data_url,
        "Mode": "MultiModel" if spec.multi_model else "SingleModel",
    }
    if env:
        container["Environment"] = env
    return container


def _variant(spec: EndpointSpec, model_name: str) -> dict[str, Any]:
    variant: dict[str, Any] = {"VariantName": "AllTraffic", "ModelName": model_name}
    if spec.mode == "serverless":
        serverless: dict[str, Any] = {"MemorySizeInMB": spec.memory_mb, "MaxConcurrency": spec.max_concurrency}
        if spec.provisioned_concurrency is not None:
            serverless["ProvisionedConcurrency"] = spec.provisioned_concurrency
        variant["ServerlessConfig"] = serverless
    else:
        variant.update(InstanceType=spec.instance_type, InitialInstanceCount=spec.instance_count)
    return variant


def _endpoint_config(spec: EndpointSpec, config_name: str, model_name: str) -> dict[str, Any]:
    params: dict[str, Any] = {"EndpointConfigName": config_name, "ProductionVariants": [_variant(spec, model_name)]}
    if spec.mode == "async":
        output: dict[str, Any] = {"S3OutputPath": spec.async_output}
        notify: dict[str, Any] = {k: v for k, v in (("SuccessTopic", spec.sns_success), ("ErrorTopic", spec.sns_error)) if v}
        if notify and spec.sns_include_response:
            topics = {"SuccessTopic": "SUCCESS_NOTIFICATION_TOPIC", "ErrorTopic": "ERROR_NOTIFICATION_TOPIC"}
            notify["IncludeInferenceResponseIn"] = [topics[k] for k in notify]
        if notify:
            output["NotificationConfig"] = notify
        config: dict[str, Any] = {"OutputConfig": output}
        if spec.max_concurrent_invocations:
            config["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": spec.max_concurrent_invocations}
        params["AsyncInferenceConfig"] = config
    return params


_LINE_TYPES = ("text/csv", "application/jsonlines")  # split into records by line; edgekit serve takes many per request


def batch_content_type(inputs: Sequence[TensorSpec]) -> str:
    """What a transform job sends a model by default: ``text/csv`` for one input whose records are a row of numbers
    (a tabular model, as SageMaker's scikit-learn and XGBoost containers), ``application/jsonlines`` otherwise (a
    record per line, a nested list or an object of inputs by name)."""
    if len(inputs) == 1 and len(inputs[0].shape) == 2 and np.dtype(inputs[0].dtype).kind in "fiu":
        return "text/csv"
    return "application/jsonlines"


def _transform_job(spec: EndpointSpec, job_name: str, model_name: str, content_type: str) -> dict[str, Any]:
    """CreateTransformJob: a line-based type is split by line and sent many records per request (MultiRecord, up to
    MaxPayloadInMB) and the answers joined by line; any other type one file per request."""
    lines = content_type.split(";", 1)[0].strip().lower() in _LINE_TYPES
    return {
        "TransformJobName": job_name,
        "ModelName": model_name,
        "BatchStrategy": "MultiRecord" if lines else "SingleRecord",
        "MaxPayloadInMB": spec.max_payload_mb,
        "Environment": {"EDGEKIT_MAX_BODY_MB": str(spec.max_payload_mb)},  # the server takes what SageMaker sends
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": spec.batch_input}},
            "ContentType": content_type,
            "SplitType": "Line" if lines else "None",
        },
        "TransformOutput": {
            "S3OutputPath": spec.batch_output,
            "Accept": content_type,
            "AssembleWith": "Line" if lines else "None",
        },
        "TransformResources": {"InstanceType": spec.instance_type, "InstanceCount": spec.instance_count},
    }


def validate_calls(calls: list[ApiCall]) -> None:
    """Check every request against botocore's model of the API (what a dry run can promise)."""
    import botocore.session
    from botocore.exceptions import ParamValidationError
    from botocore.validate import validate_parameters

    session = botocore.session.get_session()
    for call in calls:
        if call.service == "s3":
            continue  # the upload: a file, not a modelled parameter set
        shape = session.get_service_model(call.service).operation_model(call.operation).input_shape
        try:
            if shape is not None:
                validate_parameters(call.params, shape)
        except ParamValidationError as exc:
            raise EndpointError(f"{call.operation}: the request would be refused: {' '.join(str(exc).split())}") from exc


# --------------------------------------------------------------------------- the service


class SageMakerApi:
    """The SageMaker control-plane calls edgekit makes (and its scaling's: ``service`` names another client's),
    each failure one EndpointError line."""

    def __init__(self, client: Any, service: str = "sagemaker") -> None:
        self.client = client
        self.service = service

    def call(self, operation: str, action: str, **params: Any) -> Any:
        method = re.sub(r"(?<!^)(?=[A-Z])", "_", operation).lower()
        with aws_errors(f"{action} ({self.service}:{operation})", EndpointError):
            return getattr(self.client, method)(**params)

    def wait(
        self,
        describe: str,
        key: str,
        name: str,
        status_key: str,
        done: tuple[str, ...],
        failed: tuple[str, ...],
        *,
        timeout: float,
        poll: float,
        progress: Callable[[DeployEvent], None],
    ) -> dict[str, Any]:
        """Poll ``describe`` until ``status_key`` is in ``done`` (returned) or ``failed`` (EndpointError with the reason)."""
        started = time.monotonic()
        last = ""
        while True:
            reply: dict[str, Any] = self.call(describe, f"reading the status of {name}", **{key: name})
            status = str(reply.get(status_key, ""))
            if status != last:
                progress(DeployEvent("status", f"{name}: {status} after {time.monotonic() - started:.0f} s"))
                last = status
            if status in done:
                return reply
            if status in failed:
                reason = " ".join(str(reply.get("FailureReason") or "no reason given").split())
                raise EndpointError(f"{name} ended {status}: {reason}")
            if time.monotonic() - started >= timeout:
                raise _StillCreating(
                    f"{name} is still {status} after {timeout:g} s; nothing was deleted: it may yet finish "
                    f"(check with 'aws sagemaker {describe.replace('Describe', 'describe-').lower()}')"
                )
            time.sleep(poll)


class _StillCreating(EndpointError):
    """Waited long enough; the resource may still come up, so nothing is rolled back."""


def _session(region: str | None, profile: str | None, endpoint_url: str | None) -> AwsSession:
    return AwsSession(region=region, profile=profile, endpoint_url=endpoint_url, error=EndpointError)


def _archive(artifact: Path) -> tuple[Path, str, list[TensorSpec]]:
    """The artifact's .tar.gz (what compile wrote beside it; SageMaker's model.tar.gz), its architecture, its inputs."""
    from edgekit.cloud.servable import artifact_dir
    from edgekit.compiler.artifact import make_archive
    from edgekit.manifest import read_manifest

    try:
        directory, _ = artifact_dir(artifact)
        manifest = read_manifest(directory)
    except EdgekitError as exc:
        raise EndpointError(f"cannot deploy '{artifact}': {exc}") from exc
    archive = directory.with_name(directory.name + ".tar.gz")
    if not archive.is_file():
        archive = make_archive(directory)
    arch = str(manifest.profile.greengrass.get("architecture", ""))
    return archive, {"amd64": "x86_64"}.get(arch, arch), list(manifest.inputs)


def deploy_endpoint(
    artifact: str | Path,
    spec: EndpointSpec,
    *,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    dry_run: bool = False,
    wait: bool = True,
    timeout: float = 1800.0,
    poll: float = 15.0,
    progress: Callable[[DeployEvent], None] | None = None,
    session: AwsSession | None = None,
    stamp: str | None = None,
) -> DeployResult:
    """Deploy ``artifact`` as ``spec`` says; see the module docstring. ``stamp`` names the model/config versions."""
    from edgekit.cloud.endpoint_scaling import apply_scaling, check_scaling, scaling_calls

    emit = progress or (lambda _event: None)
    archive, arch, inputs = _archive(Path(artifact))
    _check(spec, arch)
    check_scaling(spec, wait=wait)
    stamp = stamp or datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    model_name = f"{spec.name[: 63 - len(stamp) - 1]}-{stamp}"
    key = f"{spec.prefix.strip('/')}/{spec.name}/{stamp}/model.tar.gz"
    model_data_url = f"s3://{spec.bucket}/{key}"
    if spec.multi_model:
        model_data_url = f"s3://{spec.bucket}/{spec.prefix.strip('/')}/{spec.name}/"
        key = f"{spec.prefix.strip('/')}/{spec.name}/{archive.name}"
    calls = [
        ApiCall("s3", "PutObject", {"Bucket": spec.bucket, "Key": key, "Body": str(archive)}),
        ApiCall(
            "sagemaker",
            "CreateModel",
            {"ModelName": model_name, "ExecutionRoleArn": spec.role_arn, "PrimaryContainer": _container(spec, model_data_url)},
        ),
    ]
    if spec.mode == "batch":
        calls.append(
            ApiCall(
                "sagemaker",
                "CreateTransformJob",
                _transform_job(spec, model_name, model_name, spec.content_type or batch_content_type(inputs)),
            )
        )
    else:
        calls.append(ApiCall("sagemaker", "CreateEndpointConfig", _endpoint_config(spec, model_name, model_name)))
        calls.append(ApiCall("sagemaker", "CreateEndpoint", {"EndpointName": spec.name, "EndpointConfigName": model_name}))
    scaling = scaling_calls(spec)
    calls += scaling
    validate_calls(calls)
    if dry_run:
        return DeployResult(spec.name, spec.mode, "planned", model_data_url, calls, dry_run=True)

    from edgekit.greengrass.aws import S3Artifacts

    aws = session or _session(region, profile, endpoint_url)
    s3 = S3Artifacts(aws.s3())
    api = SageMakerApi(aws.client("sagemaker"))
    created: list[tuple[str, str]] = []  # (what, name) in creation order, for the rollback
    try:
        emit(DeployEvent("upload", f"{archive.name} -> {model_data_url}"))
        try:
            upload = s3.upload(archive, spec.bucket, key)
        except EdgekitError as exc:
            raise EndpointError(f"uploading model.tar.gz: {exc}") from exc
        if upload.created:
            created.append(("object", key))
        for call in calls[1 : len(calls) - len(scaling)]:
            emit(DeployEvent("create", f"{call.operation} {next(iter(call.params.values()))}"))
            reply = api.call(call.operation, f"creating {spec.name}", **call.params)
            created.append((call.operation, str(next(iter(call.params.values())))))
        arn = str(reply.get("EndpointArn") or reply.get("TransformJobArn") or "")
        if not wait:
            return DeployResult(spec.name, spec.mode, "Creating", model_data_url, calls, arn=arn)
        if spec.mode == "batch":
            done = api.wait(
                "DescribeTransformJob", "TransformJobName", model_name, "TransformJobStatus", ("Completed",),
                ("Failed", "Stopped"), timeout=timeout, poll=poll, progress=emit,
            )  # fmt: skip
            return DeployResult(spec.name, spec.mode, str(done["TransformJobStatus"]), model_data_url, calls, arn=arn)
        api.wait(
            "DescribeEndpoint", "EndpointName", spec.name, "EndpointStatus", ("InService",), ("Failed",),
            timeout=timeout, poll=poll, progress=emit,
        )  # fmt: skip
        apply_scaling(scaling, aws.client, emit)
        return DeployResult(spec.name, spec.mode, "InService", model_data_url, calls, arn=arn)
    except _StillCreating as exc:
        if not scaling:
            raise
        note = "its scaling was not set up (delete it and deploy again, or register it with application-autoscaling)"
        raise _StillCreating(f"{exc}; {note}") from exc
    except EndpointError as exc:
        undone = _rollback(api, s3, spec.bucket, created, emit)
        raise EndpointError(f"{exc}; {undone}" if undone else str(exc)) from exc


def _rollback(
    api: SageMakerApi, s3: Any, bucket: str, created: list[tuple[str, str]], emit: Callable[[DeployEvent], None]
) -> str:
    """Delete what this deploy created, newest first; best effort. Returns what was done, for the error line."""
    deletes = {
        "CreateEndpoint": ("DeleteEndpoint", "EndpointName"),
        "CreateEndpointConfig": ("DeleteEndpointConfig", "EndpointConfigName"),
        "CreateModel": ("DeleteModel", "ModelName"),
    }
    done: list[str] = []
    left: list[str] = []
    for what, name in reversed(created):
        try:
            if what == "object":
                s3.delete(bucket, [name])
                done.append(f"s3://{bucket}/{name}")
            elif what in deletes:
                operation, key = deletes[what]
                api.call(operation, f"rolling back {name}", **{key: name})
                done.append(f"{what.removeprefix('Create')} {name}")
            else:
                continue  # a transform job can't be deleted; it ended by itself
            emit(DeployEvent("rollback", done[-1]))
        except EdgekitError as exc:
            log.warning("rollback of %s %s failed: %s", what, name, exc)
            left.append(f"{what.removeprefix('Create')} {name} ({exc})")
    text = f"rolled back: deleted {', '.join(done)}" if done else ""
    if left:
        text += ("; " if text else "") + f"could not delete {', '.join(left)}"
    return text


# --------------------------------------------------------------------------- invoke, delete


def _encode(inputs: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **inputs)  # type: ignore[arg-type]
    return buf.getvalue()


def decode_reply(body: bytes, content_type: str) -> dict[str, np.ndarray]:
    """Outputs by name from an answer of edgekit serve (npz, npy or JSON ``{"outputs": {...}}``)."""
    import json

    media = content_type.split(";", 1)[0].strip().lower()
    try:
        if media == "application/x-npz":
            with np.load(io.BytesIO(body), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        if media == "application/x-npy":
            return {"output0": np.load(io.BytesIO(body), allow_pickle=False)}
        doc = json.loads(body)
        outputs = doc["outputs"] if isinstance(doc, dict) and "outputs" in doc else doc
        if isinstance(outputs, dict):
            return {str(k): np.asarray(v) for k, v in outputs.items()}
        return {"output0": np.asarray(outputs)}
    except (ValueError, OSError, KeyError, TypeError) as exc:
        raise EndpointError(f"the endpoint answered {media or 'no content type'} that edgekit can't read ({exc})") from exc


def invoke_endpoint(
    name: str,
    inputs: Mapping[str, np.ndarray] | np.ndarray,
    *,
    target_model: str | None = None,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    session: AwsSession | None = None,
) -> dict[str, np.ndarray]:
    """InvokeEndpoint with the inputs as ``.npz`` by name (one bare array: ``.npy``), asking for ``.npz``; the outputs by name."""
    aws = session or _session(region, profile, endpoint_url)
    if isinstance(inputs, np.ndarray):
        buf = io.BytesIO()
        np.save(buf, inputs, allow_pickle=False)
        body, content_type = buf.getvalue(), "application/x-npy"
    else:
        body, content_type = _encode(inputs), "application/x-npz"
    params: dict[str, Any] = {"EndpointName": name, "Body": body, "ContentType": content_type, "Accept": "application/x-npz"}
    if target_model:
        params["TargetModel"] = target_model
    with aws_errors(f"invoking endpoint {name} (sagemaker:InvokeEndpoint)", EndpointError):
        reply = aws.client("sagemaker-runtime").invoke_endpoint(**params)
        body = reply["Body"].read()
    return decode_reply(body, str(reply.get("ContentType", "")))


def invoke_endpoint_async(
    name: str,
    input_location: str,
    *,
    content_type: str = "application/x-npz",
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    session: AwsSession | None = None,
) -> str:
    """InvokeEndpointAsync on an input already in S3; returns where the result will be written."""
    if not _S3.match(input_location):
        raise EndpointError(f"--async-input must be an s3:// location of the request body, not '{input_location}'")
    aws = session or _session(region, profile, endpoint_url)
    with aws_errors(f"invoking endpoint {name} asynchronously (sagemaker:InvokeEndpointAsync)", EndpointError):
        reply = aws.client("sagemaker-runtime").invoke_endpoint_async(
            EndpointName=name, InputLocation=input_location, ContentType=content_type
        )
    return str(reply["OutputLocation"])


def delete_endpoint(
    name: str,
    *,
    keep_config: bool = False,
    keep_models: bool = False,
    region: str | None = None,
    profile: str | None = None,
    endpoint_url: str | None = None,
    dry_run: bool = False,
    session: AwsSession | None = None,
) -> list[ApiCall]:
    """Delete an endpoint, then (unless kept) its endpoint config and the models it serves, and the CloudWatch alarm
    that woke it from zero if deploy made one (Application Auto Scaling drops the endpoint's scalable target and
    policies by itself). Returns the calls made."""
    aws = session or _session(region, profile, endpoint_url)
    api = SageMakerApi(aws.client("sagemaker"))
    try:
        endpoint = api.call("DescribeEndpoint", f"looking up endpoint {name}", EndpointName=name)
    except EndpointError as exc:
        if aws_error_code(exc.__cause__ or exc) == "ValidationException":
            raise EndpointError(
                f"there is no endpoint '{name}' in {aws.region}; 'aws sagemaker list-endpoints' lists them"
            ) from exc
        raise
    config = str(endpoint["EndpointConfigName"])
    calls = [ApiCall("sagemaker", "DeleteEndpoint", {"EndpointName": name})]
    if not keep_config:
        calls.append(ApiCall("sagemaker", "DeleteEndpointConfig", {"EndpointConfigName": config}))
    described = api.call("DescribeEndpointConfig", f"looking up {config}", EndpointConfigName=config)
    if not keep_models:
        for variant in described.get("ProductionVariants", []):
            calls.append(ApiCall("sagemaker", "DeleteModel", {"ModelName": variant["ModelName"]}))
    if "AsyncInferenceConfig" in described:
        from edgekit.cloud.endpoint_scaling import alarm_name

        watch = SageMakerApi(aws.client("cloudwatch"), "cloudwatch")
        alarms = watch.call("DescribeAlarms", f"looking up the alarms of {name}", AlarmNames=[alarm_name(name)])
        if alarms.get("MetricAlarms"):
            calls.append(ApiCall("cloudwatch", "DeleteAlarms", {"AlarmNames": [alarm_name(name)]}))
    if not dry_run:
        for call in calls:
            client = api if call.service == "sagemaker" else SageMakerApi(aws.client(call.service), call.service)
            client.call(call.operation, f"deleting {next(iter(call.params.values()))}", **call.params)
    return calls
