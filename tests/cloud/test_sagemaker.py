"""SageMaker endpoints with boto3: every call through botocore's Stubber (checked against AWS's API model), and
InvokeEndpoint over real HTTP against a local edgekit serve (what the runtime client reaches with --endpoint-url)."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from helpers import small_ort_artifact
from sagemaker_stubs import (
    IMAGE,
    KEY,
    MODEL,
    ROLE,
    STAMP,
    create_endpoint,
    create_model,
    describe,
    endpoint_spec,
    upload,
)

import edgekit
from edgekit.cli import main
from edgekit.cloud.model_server import ModelServer, ServeOptions
from edgekit.cloud.sagemaker import (
    DeployEvent,
    delete_endpoint,
    deploy_endpoint,
    invoke_endpoint,
    invoke_endpoint_async,
)
from edgekit.edge.errors import EdgeError, FallbackError, FallbackUnavailable
from edgekit.edge.fallback import CircuitBreaker, CloudFallback, SageMakerFallback, make_fallback
from edgekit.errors import EXIT_CODES, EndpointError
from edgekit.greengrass.aws import AwsSession


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_ort_artifact(tmp_path_factory.mktemp("sagemaker"), "sensor")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[AwsSession, Stubber, Stubber]]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    session = AwsSession(region="us-east-1", error=EndpointError)
    with Stubber(session.client("sagemaker")) as sm, Stubber(session.s3()) as s3:
        yield session, sm, s3
        sm.assert_no_pending_responses()
        s3.assert_no_pending_responses()


def test_real_time_deploy_waits_for_in_service_with_progress(artifact: Path, aws: tuple[AwsSession, Stubber, Stubber]) -> None:
    session, sm, s3 = aws
    upload(s3)
    create_model(sm)
    create_endpoint(sm, {"InstanceType": "ml.c5.xlarge", "InitialInstanceCount": 2})
    describe(sm, "Creating")
    describe(sm, "InService")
    events: list[DeployEvent] = []
    spec = endpoint_spec(instance_type="ml.c5.xlarge", instance_count=2)
    result = deploy_endpoint(artifact, spec, session=session, stamp=STAMP, poll=0, progress=events.append)
    assert (result.status, result.model_data_url) == ("InService", f"s3://models/{KEY}")
    assert result.arn.endswith(":endpoint/sensor")
    statuses = [e.detail.split(":")[1].split()[0] for e in events if e.stage == "status"]
    assert statuses == ["Creating", "InService"]
    assert [e.stage for e in events][:4] == ["upload", "create", "create", "create"]


def test_serverless_and_async_endpoint_configs(artifact: Path, aws: tuple[AwsSession, Stubber, Stubber]) -> None:
    session, sm, s3 = aws
    upload(s3)
    create_model(sm)
    create_endpoint(sm, {"ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 10, "ProvisionedConcurrency": 2}})
    spec = endpoint_spec(mode="serverless", memory_mb=2048, max_concurrency=10, provisioned_concurrency=2)
    assert deploy_endpoint(artifact, spec, session=session, stamp=STAMP, wait=False).status == "Creating"

    upload(s3)
    create_model(sm)
    async_config = {
        "OutputConfig": {
            "S3OutputPath": "s3://models/async-out/",
            "NotificationConfig": {
                "SuccessTopic": "arn:aws:sns:us-east-1:123456789012:ok",
                "ErrorTopic": "arn:aws:sns:us-east-1:123456789012:err",
            },
        },
        "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4},
    }
    create_endpoint(sm, {"InstanceType": "ml.c5.large", "InitialInstanceCount": 1}, AsyncInferenceConfig=async_config)
    spec = endpoint_spec(
        mode="async",
        async_output="s3://models/async-out/",
        sns_success="arn:aws:sns:us-east-1:123456789012:ok",
        sns_error="arn:aws:sns:us-east-1:123456789012:err",
        max_concurrent_invocations=4,
    )
    assert deploy_endpoint(artifact, spec, session=session, stamp=STAMP, wait=False).status == "Creating"


@pytest.mark.parametrize(
    ("content_type", "payload_mb", "sent", "lines"),
    [
        ("", 6, "text/csv", True),  # a tabular model ([1, 8] float32): CSV, as SageMaker's scikit-learn container
        ("application/jsonlines", 20, "application/jsonlines", True),
        ("application/x-npy", 6, "application/x-npy", False),  # not line-based: one file per request
    ],
)
def test_batch_is_a_transform_job(
    artifact: Path,
    aws: tuple[AwsSession, Stubber, Stubber],
    content_type: str,
    payload_mb: int,
    sent: str,
    lines: bool,
) -> None:
    session, sm, s3 = aws
    upload(s3)
    create_model(sm)
    job = {
        "TransformJobName": MODEL,
        "ModelName": MODEL,
        "BatchStrategy": "MultiRecord" if lines else "SingleRecord",
        "MaxPayloadInMB": payload_mb,
        "Environment": {"EDGEKIT_MAX_BODY_MB": str(payload_mb)},
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://data/in/"}},
            "ContentType": sent,
            "SplitType": "Line" if lines else "None",
        },
        "TransformOutput": {"S3OutputPath": "s3://data/out/", "Accept": sent, "AssembleWith": "Line" if lines else "None"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
    }
    sm.add_response(
        "create_transform_job", {"TransformJobArn": f"arn:aws:sagemaker:us-east-1:123456789012:transform-job/{MODEL}"}, job
    )
    for status in ("InProgress", "Completed"):
        reply = {
            **job,
            "TransformJobArn": "arn:aws:sagemaker:us-east-1:123456789012:thing/x",
            "TransformJobStatus": status,
            "CreationTime": "2026-01-01T00:00:00Z",
        }
        sm.add_response("describe_transform_job", reply, {"TransformJobName": MODEL})
    spec = endpoint_spec(
        mode="batch",
        instance_type="ml.m5.large",
        batch_input="s3://data/in/",
        batch_output="s3://data/out/",
        content_type=content_type,
        max_payload_mb=payload_mb,
    )
    assert deploy_endpoint(artifact, spec, session=session, stamp=STAMP, poll=0).status == "Completed"


def test_a_failed_endpoint_deletes_what_the_deploy_created(artifact: Path, aws: tuple[AwsSession, Stubber, Stubber]) -> None:
    session, sm, s3 = aws
    upload(s3)
    create_model(sm)
    create_endpoint(sm, {"InstanceType": "ml.c5.large", "InitialInstanceCount": 1})
    describe(sm, "Failed", "The primary container for production variant AllTraffic did not pass the ping health check.")
    sm.add_response("delete_endpoint", {}, {"EndpointName": "sensor"})
    sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": MODEL})
    sm.add_response("delete_model", {}, {"ModelName": MODEL})
    s3.add_response("delete_object", {}, {"Bucket": "models", "Key": KEY})
    with pytest.raises(EndpointError) as info:
        deploy_endpoint(artifact, endpoint_spec(), session=session, stamp=STAMP, poll=0)
    message = str(info.value)
    assert (
        "sensor ended Failed: The primary container for production variant AllTraffic did not pass the ping health check."
        in message
    )
    assert f"rolled back: deleted Endpoint sensor, EndpointConfig {MODEL}, Model {MODEL}, s3://models/{KEY}" in message
    assert "\n" not in message


def test_a_quota_error_rolls_back_the_model(artifact: Path, aws: tuple[AwsSession, Stubber, Stubber]) -> None:
    session, sm, s3 = aws
    upload(s3)
    create_model(sm)
    sm.add_client_error(
        "create_endpoint_config",
        "ResourceLimitExceeded",
        "The account-level service limit 'ml.p4d.24xlarge for endpoint usage' is 0 Instances",
        http_status_code=400,
    )
    sm.add_response("delete_model", {}, {"ModelName": MODEL})
    s3.add_response("delete_object", {}, {"Bucket": "models", "Key": KEY})
    with pytest.raises(
        EndpointError, match=r"ResourceLimitExceeded \(The account-level service limit .*\); rolled back: deleted Model"
    ):
        deploy_endpoint(artifact, endpoint_spec(instance_type="ml.p4d.24xlarge"), session=session, stamp=STAMP)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role_arn": ""}, "--role is required"),
        ({"role_arn": "sagemaker-exec"}, "is not an IAM role ARN"),
        ({"image": ""}, "--image is required"),
        ({"mode": "serverless", "memory_mb": 1500}, "--memory must be one of 1024, 2048"),
        ({"mode": "serverless", "provisioned_concurrency": 9}, "--provisioned-concurrency must be 1 to --max-concurrency"),
        ({"instance_type": "ml.c7g.large"}, "built for x86_64 and ml.c7g.large is not"),
        ({"mode": "async"}, "--async-output s3://bucket/prefix is required"),
        ({"mode": "batch", "batch_input": "s3://data/in/"}, "--batch-output s3://bucket/prefix is required"),
        (
            {"mode": "batch", "batch_input": "s3://data/in/", "batch_output": "s3://data/out/", "max_payload_mb": 200},
            "--max-payload-mb must be 1-100",
        ),
        ({"name": "bad_name"}, "not a valid endpoint name: SageMaker names are 1-63 letters"),
    ],
)
def test_bad_options_fail_before_any_call(
    artifact: Path, aws: tuple[AwsSession, Stubber, Stubber], change: dict[str, Any], message: str
) -> None:
    session, _, _ = aws  # nothing queued: any AWS call would fail the test
    with pytest.raises(EndpointError, match=message):
        deploy_endpoint(artifact, endpoint_spec(**change), session=session, stamp=STAMP)


def test_dry_run_prints_requests_checked_against_the_api_model(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["endpoint", "deploy", str(artifact), "--name", "sensor", "--mode", "serverless", "--memory", "3072"]
    args += ["--role", ROLE, "--image", IMAGE, "--bucket", "models", "--region", "eu-west-1", "--dry-run", "--json"]
    assert main(args) == 0
    requests = json.loads(capsys.readouterr().out)["requests"]
    assert [r["operation"] for r in requests] == ["PutObject", "CreateModel", "CreateEndpointConfig", "CreateEndpoint"]
    variant = requests[2]["params"]["ProductionVariants"][0]
    assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 5}

    assert main([*args[:-2], "--instance-count", "0", "--mode", "real-time", "--dry-run"]) == EXIT_CODES[EndpointError] == 26


def test_delete_removes_endpoint_config_and_models(aws: tuple[AwsSession, Stubber, Stubber]) -> None:
    session, sm, _ = aws
    reply = {
        "EndpointName": "sensor",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:thing/x",
        "EndpointConfigName": MODEL,
        "EndpointStatus": "InService",
        "CreationTime": "2026-01-01T00:00:00Z",
        "LastModifiedTime": "2026-01-01T00:00:00Z",
    }
    sm.add_response("describe_endpoint", reply, {"EndpointName": "sensor"})
    config = {
        "EndpointConfigName": MODEL,
        "EndpointConfigArn": "arn:aws:sagemaker:us-east-1:123456789012:thing/x",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": MODEL}],
        "CreationTime": "2026-01-01T00:00:00Z",
    }
    sm.add_response("describe_endpoint_config", config, {"EndpointConfigName": MODEL})
    sm.add_response("delete_endpoint", {}, {"EndpointName": "sensor"})
    sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": MODEL})
    sm.add_response("delete_model", {}, {"ModelName": MODEL})
    calls = delete_endpoint("sensor", session=session)
    assert [c.operation for c in calls] == ["DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"]

    sm.add_client_error(
        "describe_endpoint", "ValidationException", "Could not find endpoint", expected_params={"EndpointName": "gone"}
    )
    with pytest.raises(EndpointError, match="there is no endpoint 'gone' in us-east-1"):
        delete_endpoint("gone", session=session)


def test_invoke_and_invoke_async_with_stubber(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    session = AwsSession(region="us-east-1", error=EndpointError)
    buf = io.BytesIO()
    np.savez(buf, probs=np.array([[0.25, 0.75]], dtype=np.float32))
    body = StreamingBody(io.BytesIO(buf.getvalue()), len(buf.getvalue()))
    with Stubber(session.client("sagemaker-runtime")) as rt:
        expected = {
            "EndpointName": "sensor",
            "Body": ANY,
            "ContentType": "application/x-npz",
            "Accept": "application/x-npz",
            "TargetModel": "a.tar.gz",
        }
        rt.add_response("invoke_endpoint", {"Body": body, "ContentType": "application/x-npz"}, expected)
        rt.add_response(
            "invoke_endpoint_async",
            {"OutputLocation": "s3://models/async-out/1.out", "InferenceId": "1"},
            {"EndpointName": "sensor", "InputLocation": "s3://models/in/1.npz", "ContentType": "application/x-npz"},
        )
        out = invoke_endpoint("sensor", {"x": np.zeros((1, 8), np.float32)}, target_model="a.tar.gz", session=session)
        np.testing.assert_array_equal(out["probs"], [[0.25, 0.75]])
        assert invoke_endpoint_async("sensor", "s3://models/in/1.npz", session=session) == "s3://models/async-out/1.out"
        rt.assert_no_pending_responses()


def test_invoke_reaches_a_local_edgekit_serve_like_sagemaker_runtime(
    artifact: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    x = np.linspace(0, 1, 8, dtype=np.float32).reshape(1, 8)
    want = edgekit.load(artifact).predict({"x": x})[0]
    with ModelServer([artifact], options=ServeOptions(port=0)) as server:
        out = invoke_endpoint("sensor", {"x": x}, target_model="sensor", region="us-east-1", endpoint_url=server.url)
        np.testing.assert_allclose(out["probs"], want, rtol=1e-6)
        np.save(tmp_path / "x.npy", x)
        args = ["endpoint", "invoke", "anything", "--input", str(tmp_path / "x.npy"), "--region", "us-east-1"]
        assert main([*args, "--endpoint-url", server.url, "--json"]) == 0
        np.testing.assert_allclose(json.loads(capsys.readouterr().out)["probs"], want, rtol=1e-6)


def test_device_fallback_speaks_sagemaker_with_the_same_breaker(artifact: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # what Greengrass gives a component
    x = np.linspace(0, 1, 8, dtype=np.float32).reshape(1, 8)
    want = edgekit.load(artifact).predict({"x": x})[0]
    with ModelServer([artifact], options=ServeOptions(port=0)) as server:
        monkeypatch.setenv("EDGEKIT_AWS_ENDPOINT_URL", server.url)
        fallback = make_fallback(
            "sagemaker://sensor-endpoint", "ignored", breaker=CircuitBreaker(failure_threshold=2, reset_after_s=60)
        )
        assert isinstance(fallback, SageMakerFallback) and fallback.target_model is None
        (probs,) = fallback.infer({"x": x})
        np.testing.assert_allclose(probs, want, rtol=1e-6)
        multi = make_fallback("sagemaker://sensor-endpoint/sensor", "ignored")  # a multi-model endpoint's TargetModel
        np.testing.assert_allclose(multi.infer({"x": x})[0], want, rtol=1e-6)
        with pytest.raises(FallbackError, match="400"):
            fallback.infer({"x": np.zeros((1, 3), np.float32)})  # the server's one-line refusal comes back
        served = server.metrics.counts[("sensor", "invocations", 200)]
        assert served == 2
    with pytest.raises(FallbackError, match="cannot reach"):  # the server is gone: the 2nd failure in a row (after the 400)
        fallback.infer({"x": x})
    assert fallback.breaker.state == "open"
    with pytest.raises(FallbackUnavailable):
        fallback.infer({"x": x})
    assert isinstance(make_fallback("http://127.0.0.1:1", "m"), CloudFallback)
    with pytest.raises(EdgeError, match="sagemaker://<endpoint-name>"):
        make_fallback("sagemaker://", "m")
