"""What the SageMaker endpoint tests share: the names a deploy uses and the Stubber
responses of one endpoint coming up (upload, CreateModel, CreateEndpointConfig, CreateEndpoint, DescribeEndpoint),
each with the exact parameters AWS's API model is checked against."""

from __future__ import annotations

from typing import Any

from botocore.stub import ANY, Stubber

from edgekit.cloud.sagemaker import EndpointSpec

ROLE = "arn:aws:iam::123456789012:role/sagemaker-exec"
IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/edgekit-serve:0.1.0"
STAMP = "20260101-000000"
MODEL = f"sensor-{STAMP}"
KEY = f"edgekit/sensor/{STAMP}/model.tar.gz"


def endpoint_spec(**kw: Any) -> EndpointSpec:
    return EndpointSpec(**{"name": "sensor", "role_arn": ROLE, "image": IMAGE, "bucket": "models", **kw})


def upload(s3: Stubber, key: str = KEY) -> None:
    s3.add_client_error("head_object", "404", http_status_code=404, expected_params={"Bucket": "models", "Key": key})
    s3.add_response(
        "put_object", {"ETag": '"x"'}, {"Bucket": "models", "Key": key, "Body": ANY, "Metadata": ANY, "ChecksumAlgorithm": ANY}
    )


def create_model(sm: Stubber, **container: Any) -> None:
    primary = {"Image": IMAGE, "ModelDataUrl": f"s3://models/{KEY}", "Mode": "SingleModel", **container}
    sm.add_response(
        "create_model",
        {"ModelArn": f"arn:aws:sagemaker:us-east-1:123456789012:model/{MODEL}"},
        {"ModelName": MODEL, "ExecutionRoleArn": ROLE, "PrimaryContainer": primary},
    )


def create_endpoint(sm: Stubber, variant: dict[str, Any], **config: Any) -> None:
    sm.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:123456789012:endpoint-config/{MODEL}"},
        {
            "EndpointConfigName": MODEL,
            "ProductionVariants": [{"VariantName": "AllTraffic", "ModelName": MODEL, **variant}],
            **config,
        },
    )
    sm.add_response(
        "create_endpoint",
        {"EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/sensor"},
        {"EndpointName": "sensor", "EndpointConfigName": MODEL},
    )


def describe(sm: Stubber, status: str, reason: str | None = None) -> None:
    reply: dict[str, Any] = {
        "EndpointName": "sensor",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:123456789012:endpoint/sensor",
        "EndpointStatus": status,
        "CreationTime": "2026-01-01T00:00:00Z",
        "LastModifiedTime": "2026-01-01T00:00:00Z",
    }
    if reason:
        reply["FailureReason"] = reason
    sm.add_response("describe_endpoint", reply, {"EndpointName": "sensor"})


def endpoint_up(sm: Stubber, s3: Stubber, variant: dict[str, Any], status: str = "InService", **config: Any) -> None:
    """Upload, CreateModel, CreateEndpointConfig, CreateEndpoint and one DescribeEndpoint of ``status``."""
    upload(s3)
    create_model(sm)
    create_endpoint(sm, variant, **config)
    describe(sm, status)
