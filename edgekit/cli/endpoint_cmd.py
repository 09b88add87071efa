"""edgekit endpoint deploy | invoke | delete. See docs/cloud.md."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import typer
from rich.text import Text

from edgekit import api
from edgekit.cli.options import EndpointUrl, Profile, Region
from edgekit.cli.output import MODE, array_text, console, emit, json_output, progress_line

__all__ = ["delete", "deploy", "invoke", "register"]


@json_output
def deploy(
    artifact: Path = typer.Argument(..., help="an artifact folder (its .tar.gz is uploaded as model.tar.gz)"),
    name: str | None = typer.Option(None, "--name", help="endpoint name (default: the artifact's name, made valid)"),
    mode: str = typer.Option("real-time", "--mode", help="real-time, serverless, async or batch"),
    role: str = typer.Option("", "--role", help="IAM role ARN SageMaker assumes"),
    image: str = typer.Option("", "--image", help="ECR URI of the edgekit serve image (docker/serve.Dockerfile)"),
    bucket: str = typer.Option("", "--bucket", help="S3 bucket for model.tar.gz, in the endpoint's region"),
    prefix: str = typer.Option("edgekit", "--prefix", help="S3 key prefix"),
    multi_model: bool = typer.Option(False, "--multi-model", help="a multi-model endpoint (ModelDataUrl is a prefix)"),
    instance_type: str = typer.Option("ml.c5.large", "--instance-type", help="real-time / async / batch: the instance type"),
    instance_count: int | None = typer.Option(
        None, "--instance-count", help="real-time / async / batch: how many instances (default 1, or --min-instances)"
    ),
    min_instances: int | None = typer.Option(None, "--min-instances", help="real-time / async: scale down to (async: 0 ok)"),
    max_instances: int | None = typer.Option(None, "--max-instances", help="real-time / async: scale up to (turns scaling on)"),
    target_invocations: float | None = typer.Option(
        None, "--target-invocations", help="real-time: invocations per instance per minute to hold"
    ),
    target_backlog: float | None = typer.Option(None, "--target-backlog", help="async: queued requests per instance [5]"),
    memory: int = typer.Option(2048, "--memory", help="serverless memory, MB (1024-6144 by 1024)"),
    max_concurrency: int = typer.Option(5, "--max-concurrency", help="serverless"),
    provisioned_concurrency: int | None = typer.Option(None, "--provisioned-concurrency", help="serverless"),
    async_output: str = typer.Option("", "--async-output", help="async: s3:// where results go"),
    sns_success: str | None = typer.Option(None, "--sns-success", help="async: SNS topic ARN on success"),
    sns_error: str | None = typer.Option(None, "--sns-error", help="async: SNS topic ARN on error"),
    sns_include_response: bool = typer.Option(False, "--sns-include-response", help="async: the answer in the SNS message"),
    batch_input: str = typer.Option("", "--batch-input", help="batch: s3:// prefix of the inputs"),
    batch_output: str = typer.Option("", "--batch-output", help="batch: s3:// prefix for the outputs"),
    content_type: str = typer.Option(
        "", "--content-type", help="batch: the inputs' type (default text/csv for a tabular model, else application/jsonlines)"
    ),
    max_payload_mb: int = typer.Option(6, "--max-payload-mb", help="batch: MaxPayloadInMB, the most one request carries"),
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
    no_wait: bool = typer.Option(False, "--no-wait", help="return once created, without waiting for InService"),
    timeout: float = typer.Option(1800, "--timeout", help="seconds to wait for InService / Completed"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print each request (checked against the API model), call nothing"),
) -> None:
    """Upload the artifact and create a SageMaker model + endpoint (or a batch transform job); a failure deletes what it made."""
    with progress_line(f"deploying {artifact.resolve().name}") as say:
        result = api.deploy_endpoint(
            artifact, name=name, mode=mode, role_arn=role, image=image, bucket=bucket, prefix=prefix,
            multi_model=multi_model, instance_type=instance_type, instance_count=instance_count, memory_mb=memory,
            max_concurrency=max_concurrency, provisioned_concurrency=provisioned_concurrency, async_output=async_output,
            sns_success=sns_success, sns_error=sns_error, sns_include_response=sns_include_response,
            min_instances=min_instances, max_instances=max_instances, target_invocations=target_invocations,
            target_backlog=target_backlog, batch_input=batch_input, batch_output=batch_output,
            content_type=content_type, max_payload_mb=max_payload_mb, region=region, profile=profile,
            endpoint_url=endpoint_url, dry_run=dry_run, wait=not no_wait, timeout=timeout, progress=say,
        )  # fmt: skip
    requests = [dataclasses.asdict(c) for c in result.calls]
    facts = {"name": result.name, "mode": result.mode, "status": result.status, "modelDataUrl": result.model_data_url,
             "arn": result.arn, "requests": requests}  # fmt: skip
    shown = [json.dumps(request, indent=1) for request in requests] if dry_run else []
    named = "" if name else f" (named from the artifact {artifact.resolve().name}; --name to choose)"
    emit(facts, *shown, f"{result.name} ({result.mode}): {result.status} {result.arn}".rstrip() + named)


@json_output
def invoke(
    name: str = typer.Argument(..., help="the endpoint name"),
    input: list[str] = typer.Option([], "--input", "-i", help="file.npy, NAME=file.npy, or an .npz of all inputs"),
    target_model: str | None = typer.Option(None, "--target-model", help="multi-model endpoint: which model"),
    async_input: str | None = typer.Option(None, "--async-input", help="async endpoint: s3:// of the request body"),
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """InvokeEndpoint (or InvokeEndpointAsync with --async-input) and print the outputs (with --json: by name)."""
    if async_input is not None:
        where = api.invoke_endpoint_async(name, async_input, region=region, profile=profile, endpoint_url=endpoint_url)
        emit({"outputLocation": where}, f"the result will be written to {where}")
        return
    outputs = api.invoke_endpoint(
        name, input_files=input, target_model=target_model, region=region, profile=profile, endpoint_url=endpoint_url
    )
    if MODE.json:  # one line: the outputs by name, as nested lists
        console.print(json.dumps({k: v.tolist() for k, v in outputs.items()}), soft_wrap=True, markup=False)
        return
    for key, value in outputs.items():
        console.print(Text.assemble((key, "bold"), f" {value.dtype}{list(value.shape)}"))
        console.print(array_text(value))


def delete(
    name: str = typer.Argument(..., help="the endpoint name"),
    keep_config: bool = typer.Option(False, "--keep-config", help="keep its endpoint config"),
    keep_models: bool = typer.Option(False, "--keep-models", help="keep the models it serves"),
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="print what would be deleted"),
) -> None:
    """Delete an endpoint, its endpoint config and its models."""
    calls = api.delete_endpoint(
        name, keep_config=keep_config, keep_models=keep_models, region=region, profile=profile,
        endpoint_url=endpoint_url, dry_run=dry_run,
    )  # fmt: skip
    for call in calls:
        verb = "would call" if dry_run else "called"
        console.print(f"{verb} {call.operation} {next(iter(call.params.values()))}", soft_wrap=True, markup=False)


def register(app: typer.Typer) -> None:
    endpoint = typer.Typer(help="SageMaker endpoints for compiled artifacts: deploy, invoke, delete.", no_args_is_help=True)
    endpoint.command("deploy")(deploy)
    endpoint.command("invoke")(invoke)
    endpoint.command("delete")(delete)
    app.add_typer(endpoint, name="endpoint")
