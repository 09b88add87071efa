"""edgekit endpoint deploy | invoke | delete"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import typer

from edgekit.cli.output import console, progress_line
from edgekit.errors import EndpointError


def _inputs(items: list[str]) -> dict[str, np.ndarray] | np.ndarray:
    feeds: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, file = item.partition("=")
        path = Path(file if sep else item)
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    feeds.update({k: data[k] for k in data.files})
                continue
            array: np.ndarray = np.asarray(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise EndpointError(f"--input {item}: cannot read '{path}' as .npy/.npz ({exc})") from exc
        if not sep:
            if len(items) != 1:
                raise EndpointError(f"--input {item}: with several inputs, name each: NAME=file.npy")
            return array
        feeds[name] = array
    if not feeds:
        raise EndpointError("give --input file.npy (the model's only input), NAME=file.npy per input, or an .npz")
    return feeds


def register(app: typer.Typer) -> None:
    endpoint = typer.Typer(help="SageMaker endpoints for compiled artifacts: deploy, invoke, delete.", no_args_is_help=True)
    app.add_typer(endpoint, name="endpoint")

    @endpoint.command("deploy")
    def deploy_(
        artifact: Path = typer.Argument(..., help="an artifact folder (its .tar.gz is uploaded as model.tar.gz)"),
        name: str | None = typer.Option(None, "--name", help="endpoint name (default: the artifact's name)"),
        mode: str = typer.Option("real-time", "--mode", help="real-time, serverless, async or batch"),
        role: str = typer.Option("", "--role", help="IAM role ARN SageMaker assumes"),
        image: str = typer.Option("", "--image", help="ECR URI of the edgekit serve image (docker/serve.Dockerfile)"),
        bucket: str = typer.Option("", "--bucket", help="S3 bucket for model.tar.gz, in the endpoint's region"),
        prefix: str = typer.Option("edgekit", "--prefix", help="S3 key prefix"),
        multi_model: bool = typer.Option(False, "--multi-model", help="a multi-model endpoint (ModelDataUrl is a prefix)"),
        instance_type: str = typer.Option("ml.c5.large", "--instance-type", help="real-time / async / batch: the instance type"),
        instance_count: int = typer.Option(1, "--instance-count", help="real-time / async / batch: how many instances"),
        memory: int = typer.Option(2048, "--memory", help="serverless memory, MB (1024-6144 by 1024)"),
        max_concurrency: int = typer.Option(5, "--max-concurrency", help="serverless"),
        provisioned_concurrency: int | None = typer.Option(None, "--provisioned-concurrency", help="serverless"),
        async_output: str = typer.Option("", "--async-output", help="async: s3:// where results go"),
        sns_success: str | None = typer.Option(None, "--sns-success", help="async: SNS topic ARN on success"),
        sns_error: str | None = typer.Option(None, "--sns-error", help="async: SNS topic ARN on error"),
        batch_input: str = typer.Option("", "--batch-input", help="batch: s3:// prefix of the inputs"),
        batch_output: str = typer.Option("", "--batch-output", help="batch: s3:// prefix for the outputs"),
        content_type: str = typer.Option("application/json", "--content-type", help="batch: the inputs' content type"),
        region: str | None = typer.Option(None, "--region", help="AWS region (default: AWS_REGION / the profile's)"),
        profile: str | None = typer.Option(None, "--profile", help="AWS profile (default: AWS_PROFILE / the standard chain)"),
        endpoint_url: str | None = typer.Option(None, "--endpoint-url", help="another SageMaker / S3 endpoint"),
        no_wait: bool = typer.Option(False, "--no-wait", help="return once created, without waiting for InService"),
        timeout: float = typer.Option(1800, "--timeout", help="seconds to wait for InService / Completed"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print each request (checked against the API model), call nothing"),
        as_json: bool = typer.Option(False, "--json", help="print the result as JSON"),
    ) -> None:
        """Upload the artifact and create a SageMaker model + endpoint (or a batch transform job); a failure deletes what it made."""
        from edgekit.cloud.sagemaker import MODES, DeployEvent, EndpointSpec, deploy_endpoint

        if mode not in MODES:
            raise EndpointError(f"--mode must be one of {', '.join(MODES)}, not '{mode}'")
        spec = EndpointSpec(
            name=name or artifact.resolve().name,
            mode=mode,  # type: ignore[arg-type]
            role_arn=role,
            image=image,
            bucket=bucket,
            prefix=prefix,
            multi_model=multi_model,
            instance_type=instance_type,
            instance_count=instance_count,
            memory_mb=memory,
            max_concurrency=max_concurrency,
            provisioned_concurrency=provisioned_concurrency,
            async_output=async_output,
            sns_success=sns_success,
            sns_error=sns_error,
            batch_input=batch_input,
            batch_output=batch_output,
            content_type=content_type,
        )
        with progress_line(f"deploying {spec.name}") as say:

            def show(event: DeployEvent) -> None:
                say(f"{event.stage}: {event.detail}")

            result = deploy_endpoint(
                artifact, spec, region=region, profile=profile, endpoint_url=endpoint_url, dry_run=dry_run,
                wait=not no_wait, timeout=timeout, progress=show,
            )  # fmt: skip
        requests = [dataclasses.asdict(c) for c in result.calls]
        if as_json:
            doc = {"name": result.name, "mode": result.mode, "status": result.status, "modelDataUrl": result.model_data_url}
            console.print(json.dumps({**doc, "arn": result.arn, "requests": requests}, indent=1), soft_wrap=True)
            return
        if dry_run:
            for request in requests:
                console.print(json.dumps(request, indent=1), soft_wrap=True)
        console.print(f"{result.name} ({result.mode}): {result.status} {result.arn}".rstrip(), soft_wrap=True)

    @endpoint.command("invoke")
    def invoke_(
        name: str = typer.Argument(..., help="the endpoint name"),
        input: list[str] = typer.Option([], "--input", "-i", help="file.npy, NAME=file.npy, or an .npz of all inputs"),
        target_model: str | None = typer.Option(None, "--target-model", help="multi-model endpoint: which model"),
        async_input: str | None = typer.Option(None, "--async-input", help="async endpoint: s3:// of the request body"),
        region: str | None = typer.Option(None, "--region", help="AWS region (default: AWS_REGION / the profile's)"),
        profile: str | None = typer.Option(None, "--profile", help="AWS profile (default: AWS_PROFILE / the standard chain)"),
        endpoint_url: str | None = typer.Option(None, "--endpoint-url", help="e.g. a local 'edgekit serve'"),
        as_json: bool = typer.Option(False, "--json", help="outputs as JSON lists by name"),
    ) -> None:
        """InvokeEndpoint (or InvokeEndpointAsync with --async-input) and print the outputs."""
        from edgekit.cloud.sagemaker import invoke_endpoint, invoke_endpoint_async

        if async_input is not None:
            where = invoke_endpoint_async(name, async_input, region=region, profile=profile, endpoint_url=endpoint_url)
            console.print(json.dumps({"outputLocation": where}) if as_json else f"the result will be written to {where}")
            return
        outputs = invoke_endpoint(
            name, _inputs(input), target_model=target_model, region=region, profile=profile, endpoint_url=endpoint_url
        )
        if as_json:
            console.print(json.dumps({k: v.tolist() for k, v in outputs.items()}), soft_wrap=True)
            return
        for key, value in outputs.items():
            console.print(f"[bold]{key}[/] {value.dtype}{list(value.shape)}")
            console.print(np.array2string(value, threshold=40, precision=5))

    @endpoint.command("delete")
    def delete_(
        name: str = typer.Argument(..., help="the endpoint name"),
        keep_config: bool = typer.Option(False, "--keep-config", help="keep its endpoint config"),
        keep_models: bool = typer.Option(False, "--keep-models", help="keep the models it serves"),
        region: str | None = typer.Option(None, "--region", help="AWS region (default: AWS_REGION / the profile's)"),
        profile: str | None = typer.Option(None, "--profile", help="AWS profile (default: AWS_PROFILE / the standard chain)"),
        endpoint_url: str | None = typer.Option(None, "--endpoint-url", help="a local AWS endpoint, e.g. a moto server or edgekit serve"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print what would be deleted"),
    ) -> None:
        """Delete an endpoint, its endpoint config and its models."""
        from edgekit.cloud.sagemaker import delete_endpoint

        calls = delete_endpoint(
            name, keep_config=keep_config, keep_models=keep_models, region=region, profile=profile,
            endpoint_url=endpoint_url, dry_run=dry_run,
        )  # fmt: skip
        for call in calls:
            verb = "would call" if dry_run else "called"
            console.print(f"{verb} {call.operation} {next(iter(call.params.values()))}", soft_wrap=True)
