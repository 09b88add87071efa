"""Endpoints that scale: Application Auto Scaling (and CloudWatch, for async from zero) requests, each checked by
botocore's Stubber against AWS's own API model with the exact parameters; SNS topics; valid default names."""

from __future__ import annotations

import json
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY, Stubber
from helpers import small_ort_artifact
from sagemaker_stubs import IMAGE, KEY, MODEL, ROLE, STAMP, endpoint_spec, endpoint_up

import edgekit
from edgekit.cli import main
from edgekit.cloud.endpoint_scaling import WAKE_ARN
from edgekit.cloud.sagemaker import delete_endpoint, deploy_endpoint, endpoint_name
from edgekit.errors import EXIT_CODES, EndpointError
from edgekit.greengrass.aws import AwsSession

TARGET = {
    "ServiceNamespace": "sagemaker",
    "ResourceId": "endpoint/sensor/variant/AllTraffic",
    "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
}
WAKE_POLICY_ARN = (
    "arn:aws:autoscaling:us-east-1:123456789012:scalingPolicy:0a1b2c3d-0000-1111-2222-333344445555:"
    "resource/sagemaker/endpoint/sensor/variant/AllTraffic:policyName/edgekit-has-backlog-without-capacity"
)
Stubs = tuple[AwsSession, Stubber, Stubber, Stubber, Stubber]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return small_ort_artifact(tmp_path_factory.mktemp("scaling"), "sensor")


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Stubs]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    session = AwsSession(region="us-east-1", error=EndpointError)
    with (
        Stubber(session.client("sagemaker")) as sm,
        Stubber(session.s3()) as s3,
        Stubber(session.client("application-autoscaling")) as aas,
        Stubber(session.client("cloudwatch")) as cw,
    ):
        yield session, sm, s3, aas, cw
        for stub in (sm, s3, aas, cw):
            stub.assert_no_pending_responses()


def _policy_reply(name: str) -> dict[str, Any]:
    return {"PolicyARN": WAKE_POLICY_ARN.replace("edgekit-has-backlog-without-capacity", name)}


def test_real_time_registers_a_target_and_tracks_invocations_per_instance(artifact: Path, aws: Stubs) -> None:
    session, sm, s3, aas, _ = aws
    endpoint_up(sm, s3, {"InstanceType": "ml.c5.large", "InitialInstanceCount": 2})
    aas.add_response("register_scalable_target", {}, {**TARGET, "MinCapacity": 2, "MaxCapacity": 6})
    policy = {
        "PolicyName": "edgekit-invocations-per-instance",
        **TARGET,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 120.0,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        },
    }
    aas.add_response("put_scaling_policy", _policy_reply("edgekit-invocations-per-instance"), policy)
    spec = endpoint_spec(instance_count=2, min_instances=2, max_instances=6, target_invocations=120)
    result = deploy_endpoint(artifact, spec, session=session, stamp=STAMP, poll=0)
    assert result.status == "InService"
    assert [c.operation for c in result.calls][-2:] == ["RegisterScalableTarget", "PutScalingPolicy"]


def test_async_scales_to_zero_with_the_wake_up_alarm_and_sns_topics(artifact: Path, aws: Stubs) -> None:
    session, sm, s3, aas, cw = aws
    notify = {
        "SuccessTopic": "arn:aws:sns:us-east-1:123456789012:ok",
        "ErrorTopic": "arn:aws:sns:us-east-1:123456789012:err",
        "IncludeInferenceResponseIn": ["SUCCESS_NOTIFICATION_TOPIC", "ERROR_NOTIFICATION_TOPIC"],
    }
    async_config = {"OutputConfig": {"S3OutputPath": "s3://models/async-out/", "NotificationConfig": notify}}
    endpoint_up(sm, s3, {"InstanceType": "ml.c5.large", "InitialInstanceCount": 1}, AsyncInferenceConfig=async_config)
    aas.add_response("register_scalable_target", {}, {**TARGET, "MinCapacity": 0, "MaxCapacity": 3})
    dims = [{"Name": "EndpointName", "Value": "sensor"}]
    backlog = {
        "PolicyName": "edgekit-backlog-per-instance",
        **TARGET,
        "PolicyType": "TargetTrackingScaling",
        "TargetTrackingScalingPolicyConfiguration": {
            "TargetValue": 2.0,
            "CustomizedMetricSpecification": {
                "MetricName": "ApproximateBacklogSizePerInstance",
                "Namespace": "AWS/SageMaker",
                "Dimensions": dims,
                "Statistic": "Average",
            },
            "ScaleInCooldown": 600,
            "ScaleOutCooldown": 300,
        },
    }
    aas.add_response("put_scaling_policy", _policy_reply("edgekit-backlog-per-instance"), backlog)
    wake = {
        "PolicyName": "edgekit-has-backlog-without-capacity",
        **TARGET,
        "PolicyType": "StepScaling",
        "StepScalingPolicyConfiguration": {
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Average",
            "Cooldown": 300,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        },
    }
    aas.add_response("put_scaling_policy", {"PolicyARN": WAKE_POLICY_ARN}, wake)
    alarm = {
        "AlarmName": "sensor-has-backlog-without-capacity",
        "AlarmDescription": ANY,
        "MetricName": "HasBacklogWithoutCapacity",
        "Namespace": "AWS/SageMaker",
        "Statistic": "Average",
        "EvaluationPeriods": 2,
        "DatapointsToAlarm": 2,
        "Threshold": 1.0,
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "TreatMissingData": "missing",
        "Dimensions": dims,
        "Period": 60,
        "AlarmActions": [WAKE_POLICY_ARN],  # the ARN PutScalingPolicy answered, not the dry run's stand-in
    }
    cw.add_response("put_metric_alarm", {}, alarm)
    spec = endpoint_spec(
        mode="async",
        async_output="s3://models/async-out/",
        sns_success=notify["SuccessTopic"],
        sns_error=notify["ErrorTopic"],
        sns_include_response=True,
        min_instances=0,
        max_instances=3,
        target_backlog=2,
    )
    result = deploy_endpoint(artifact, spec, session=session, stamp=STAMP, poll=0)
    assert result.status == "InService"
    assert result.calls[-1].params["AlarmActions"] == [WAKE_ARN]  # what --dry-run shows


def test_a_refused_policy_deregisters_the_target_and_rolls_back_the_endpoint(artifact: Path, aws: Stubs) -> None:
    session, sm, s3, aas, _ = aws
    endpoint_up(sm, s3, {"InstanceType": "ml.c5.large", "InitialInstanceCount": 1})
    aas.add_response("register_scalable_target", {}, {**TARGET, "MinCapacity": 1, "MaxCapacity": 4})
    aas.add_client_error(
        "put_scaling_policy", "LimitExceededException", "Maximum number of scaling policies reached", http_status_code=400
    )
    aas.add_response("deregister_scalable_target", {}, TARGET)
    sm.add_response("delete_endpoint", {}, {"EndpointName": "sensor"})
    sm.add_response("delete_endpoint_config", {}, {"EndpointConfigName": MODEL})
    sm.add_response("delete_model", {}, {"ModelName": MODEL})
    s3.add_response("delete_object", {}, {"Bucket": "models", "Key": KEY})
    with pytest.raises(EndpointError) as info:
        spec = endpoint_spec(max_instances=4, target_invocations=50)
        deploy_endpoint(artifact, spec, session=session, stamp=STAMP, poll=0)
    message = str(info.value)
    assert "application-autoscaling:PutScalingPolicy" in message and "LimitExceededException" in message
    assert "DeregisterScalableTarget endpoint/sensor/variant/AllTraffic" in message
    assert f"rolled back: deleted Endpoint sensor, EndpointConfig {MODEL}, Model {MODEL}" in message
    assert "\n" not in message


def test_a_wait_that_times_out_deletes_nothing_and_says_scaling_was_not_set_up(artifact: Path, aws: Stubs) -> None:
    session, sm, s3, _, _ = aws  # no application-autoscaling response queued: a request would fail the test
    endpoint_up(sm, s3, {"InstanceType": "ml.c5.large", "InitialInstanceCount": 1}, status="Creating")
    with pytest.raises(EndpointError, match="nothing was deleted.*its scaling was not set up"):
        deploy_endpoint(artifact, endpoint_spec(max_instances=3, target_invocations=60), session=session, stamp=STAMP, timeout=0)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--max-instances", "2", "--min-instances", "3", "--target-invocations", "9"],
            "--min-instances 3 is above --max-instances 2",
        ),
        (["--max-instances", "2", "--min-instances", "0", "--target-invocations", "9"], "only async endpoints scale to zero"),
        (["--max-instances", "2"], "--target-invocations is required to scale a real-time endpoint"),
        (["--min-instances", "1", "--target-invocations", "9"], "--max-instances is required"),
        (["--mode", "serverless", "--max-instances", "2"], "keep capacity warm with --provisioned-concurrency"),
        (
            ["--mode", "batch", "--max-instances", "2", "--batch-input", "s3://data/in/", "--batch-output", "s3://data/out/"],
            "apply to a batch transform job",
        ),
        (
            ["--mode", "async", "--async-output", "s3://models/o/", "--max-instances", "2", "--target-invocations", "9"],
            "--target-backlog",
        ),
        (["--max-instances", "2", "--target-invocations", "9", "--no-wait"], "--no-wait can't be combined with scaling"),
        (["--max-instances", "2", "--target-invocations", "9", "--instance-count", "3"], "--instance-count 3 is above"),
        (["--sns-success", "arn:aws:sns:us-east-1:123456789012:ok"], "apply to async endpoints"),
        (["--name", "sensor_v2"], "not a valid endpoint name: SageMaker names are 1-63 letters"),
    ],
)
def test_invalid_combinations_are_one_line_and_exit_26(
    artifact: Path, flags: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["endpoint", "deploy", str(artifact), "--role", ROLE, "--image", IMAGE, "--bucket", "models"]
    assert main([*args, "--region", "us-east-1", *flags]) == EXIT_CODES[EndpointError] == 26
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1, err


def test_default_names_are_valid_and_said(artifact: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rule = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")
    for raw in ("sensor-x86_64", "__mobilenet.v2__", "a" * 80 + "_b", "___"):
        made = endpoint_name(raw)
        assert rule.match(made) and len(made) <= 63, made
    assert endpoint_name("sensor-x86_64") == "sensor-x86-64"

    odd = tmp_path / "wine_pipeline-x86_64"
    shutil.copytree(artifact, odd)
    args = ["endpoint", "deploy", str(odd), "--role", ROLE, "--image", IMAGE, "--bucket", "models", "--region", "us-east-1"]
    assert main([*args, "--dry-run", "--max-instances", "3", "--target-invocations", "60"]) == 0
    said = capsys.readouterr().out
    assert "wine-pipeline-x86-64 (real-time): planned" in said and "named from the artifact wine_pipeline-x86_64" in said
    assert main([*args, "--dry-run", "--json", "--min-instances", "2", "--max-instances", "3", "--target-invocations", "60"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["name"] == "wine-pipeline-x86-64"
    requests = {r["operation"]: r["params"] for r in facts["requests"]}
    assert requests["CreateEndpoint"]["EndpointName"] == "wine-pipeline-x86-64"
    assert rule.match(requests["CreateModel"]["ModelName"])
    assert requests["RegisterScalableTarget"]["ResourceId"] == "endpoint/wine-pipeline-x86-64/variant/AllTraffic"
    # no --instance-count: as many as --min-instances asks for
    assert requests["CreateEndpointConfig"]["ProductionVariants"][0]["InitialInstanceCount"] == 2


def test_delete_removes_the_wake_up_alarm_of_an_async_endpoint(aws: Stubs) -> None:
    session, sm, _, _, cw = aws
    sm.add_response(
        "describe_endpoint",
        {
            "EndpointName": "sensor",
            "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/sensor",
            "EndpointConfigName": MODEL,
            "EndpointStatus": "InService",
            "CreationTime": "2026-01-01T00:00:00Z",
            "LastModifiedTime": "2026-01-01T00:00:00Z",
        },
        {"EndpointName": "sensor"},
    )
    config = {
        "EndpointConfigName": MODEL,
        "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/{MODEL}",
        "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": MODEL}],
        "AsyncInferenceConfig": {"OutputConfig": {"S3OutputPath": "s3://models/async-out/"}},
        "CreationTime": "2026-01-01T00:00:00Z",
    }
    sm.add_response("describe_endpoint_config", config, {"EndpointConfigName": MODEL})
    alarm = {"AlarmName": "sensor-has-backlog-without-capacity", "MetricName": "HasBacklogWithoutCapacity"}
    names = {"AlarmNames": ["sensor-has-backlog-without-capacity"]}
    cw.add_response("describe_alarms", {"MetricAlarms": [alarm]}, names)
    sm.add_response("delete_endpoint", {}, {"EndpointName": "sensor"})
    cw.add_response("delete_alarms", {}, names)
    calls = delete_endpoint("sensor", keep_config=True, keep_models=True, session=session)
    assert [(c.service, c.operation) for c in calls] == [("sagemaker", "DeleteEndpoint"), ("cloudwatch", "DeleteAlarms")]


def test_the_advised_async_command_scales_to_zero_as_written(artifact: Path, capsys: pytest.CaptureFixture[str]) -> None:
    command = edgekit.advise(artifact, payload_mb=500).command
    for placeholder, value in (("<role-arn>", ROLE), ("<ecr-uri>", IMAGE), ("<bucket>", "models"), ("<results>", "models/out/")):
        command = command.replace(placeholder, value)
    args = shlex.split(command)
    assert args[:3] == ["edgekit", "endpoint", "deploy"] and "--min-instances" in args
    assert main([*args[1:], "--region", "us-east-1", "--dry-run", "--json"]) == 0
    requests = {r["operation"]: r["params"] for r in json.loads(capsys.readouterr().out)["requests"]}
    assert requests["RegisterScalableTarget"]["MinCapacity"] == 0
    assert requests["PutMetricAlarm"]["MetricName"] == "HasBacklogWithoutCapacity"
