"""Deployments: spec validation, the exact CreateDeployment request, and the call through Stubber.

Stubber validates each request against the greengrassv2 API model, so a request it accepts is
one AWS would parse. STS (for short 'thinggroup/<name>' targets) runs on the moto server.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import aws_server
import pytest
from aws_server import ACCOUNT, REGION, MotoServer
from botocore.stub import Stubber

from edgekit.errors import DeploymentError
from edgekit.greengrass.aws import AwsSession
from edgekit.greengrass.deployment import (
    AbortConfig,
    DeploymentSpec,
    RolloutConfig,
    client_token,
    deploy,
    load_spec,
    parse_abort,
    parse_rollout,
    to_request,
)

# the shared fixtures of tests/aws_server.py: moto_server (session) and aws_env (per test)
moto_server = aws_server.moto_server
aws_env = aws_server.aws_env

GROUP_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:thinggroup/line-3"
JOB_ARN = f"arn:aws:iot:{REGION}:{ACCOUNT}:job/abc-123"
CREATED = {"deploymentId": "d-123", "iotJobId": "abc-123", "iotJobArn": JOB_ARN}


def full_spec_dict(target: str = GROUP_ARN) -> dict[str, Any]:
    """Every field, in the API's camelCase, with policies, a rollout, abort criteria and runWith."""
    return {
        "targetArn": target,
        "deploymentName": "detector 1.2.0 to line 3",
        "components": {
            "com.example.Detector": {
                "componentVersion": "1.2.0",
                "configurationUpdate": {
                    "merge": {"threshold": "0.6", "labels": ["cat", "dog"]},
                    "reset": ["/oldKey", "/nested/k"],
                },
                "runWith": {"posixUser": "ggc_user:ggc_group", "systemResourceLimits": {"cpus": 0.5, "memory": 262144}},
            },
            "aws.greengrass.Nucleus": {"componentVersion": "2.14.0"},
        },
        "deploymentPolicies": {
            "failureHandlingPolicy": "ROLLBACK",
            "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": 120},
            "configurationValidationPolicy": {"timeoutInSeconds": 30},
        },
        "iotJobConfiguration": {
            "jobExecutionsRolloutConfig": {
                "exponentialRate": {
                    "baseRatePerMinute": 5,
                    "incrementFactor": 1.5,
                    "rateIncreaseCriteria": {"numberOfSucceededThings": 5},
                },
                "maximumPerMinute": 50,
            },
            "abortConfig": {
                "criteriaList": [
                    {"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 10.5, "minNumberOfExecutedThings": 5}
                ]
            },
            "timeoutConfig": {"inProgressTimeoutInMinutes": 60},
        },
        "tags": {"team": "vision"},
    }


EXPECTED_BODY: dict[str, Any] = {
    "targetArn": GROUP_ARN,
    "deploymentName": "detector 1.2.0 to line 3",
    "components": {
        "com.example.Detector": {
            "componentVersion": "1.2.0",
            "configurationUpdate": {"merge": '{"threshold":"0.6","labels":["cat","dog"]}', "reset": ["/oldKey", "/nested/k"]},
            "runWith": {"posixUser": "ggc_user:ggc_group", "systemResourceLimits": {"cpus": 0.5, "memory": 262144}},
        },
        "aws.greengrass.Nucleus": {"componentVersion": "2.14.0"},
    },
    "deploymentPolicies": {
        "failureHandlingPolicy": "ROLLBACK",
        "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS", "timeoutInSeconds": 120},
        "configurationValidationPolicy": {"timeoutInSeconds": 30},
    },
    "iotJobConfiguration": {
        "jobExecutionsRolloutConfig": {
            "exponentialRate": {
                "baseRatePerMinute": 5,
                "incrementFactor": 1.5,
                "rateIncreaseCriteria": {"numberOfSucceededThings": 5},
            },
            "maximumPerMinute": 50,
        },
        "abortConfig": {
            "criteriaList": [
                {"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 10.5, "minNumberOfExecutedThings": 5}
            ]
        },
        "timeoutConfig": {"inProgressTimeoutInMinutes": 60},
    },
    "tags": {"team": "vision"},
}


@pytest.fixture
def aws(aws_env: MotoServer) -> AwsSession:
    return AwsSession(region=REGION, endpoint_url=aws_env.url)


@pytest.fixture
def gg_stub(aws: AwsSession) -> Any:
    with Stubber(aws.greengrass()) as stub:
        yield stub
        stub.assert_no_pending_responses()


# --------------------------------------------------------------------------- the request


def test_full_request_is_exact_and_accepted_by_the_api_model(aws: AwsSession, gg_stub: Stubber) -> None:
    spec = DeploymentSpec.from_dict(full_spec_dict())
    request = to_request(spec, region=REGION)
    assert {k: v for k, v in request.items() if k != "clientToken"} == EXPECTED_BODY
    assert list(request) == [*EXPECTED_BODY, "clientToken"]
    gg_stub.add_response("create_deployment", CREATED, expected_params=request)

    result = deploy(spec, region=REGION, session=aws)

    assert (result.deployment_id, result.iot_job_id, result.iot_job_arn, result.dry_run) == ("d-123", "abc-123", JOB_ARN, False)
    assert result.request == request


def test_minimal_spec_writes_the_rollback_default(aws: AwsSession, gg_stub: Stubber) -> None:
    spec = DeploymentSpec(target_arn=GROUP_ARN, components={"com.example.A": {"component_version": "1.0.0"}})
    request = to_request(spec)
    assert request["deploymentPolicies"] == {"failureHandlingPolicy": "ROLLBACK"}
    assert "iotJobConfiguration" not in request and "tags" not in request
    gg_stub.add_response("create_deployment", CREATED, expected_params=request)
    deploy(spec, region=REGION, session=aws)


def test_client_token_is_deterministic_and_content_derived() -> None:
    first = to_request(DeploymentSpec.from_dict(full_spec_dict()))
    again = to_request(DeploymentSpec.from_dict(full_spec_dict()))
    assert first["clientToken"] == again["clientToken"] == client_token(first)
    assert re.fullmatch(r"[a-zA-Z0-9-]{1,64}", first["clientToken"])  # the API's pattern
    changed = full_spec_dict()
    changed["components"]["com.example.Detector"]["componentVersion"] = "1.2.1"
    assert to_request(DeploymentSpec.from_dict(changed))["clientToken"] != first["clientToken"]


def test_dry_run_returns_the_same_request_without_calling(aws: AwsSession, gg_stub: Stubber) -> None:
    spec = DeploymentSpec.from_dict(full_spec_dict())
    # nothing is queued on the Stubber: any call would fail the test
    result = deploy(spec, region=REGION, dry_run=True)
    assert result.dry_run and result.deployment_id is None
    assert result.request == to_request(spec, region=REGION)


def test_short_target_uses_the_account_from_sts(aws: AwsSession, gg_stub: Stubber, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = DeploymentSpec.from_dict(full_spec_dict(target="thinggroup/line-3"))
    assert spec.needs_account
    expected = to_request(spec, region=REGION, account=ACCOUNT)
    assert expected["targetArn"] == GROUP_ARN
    gg_stub.add_response("create_deployment", CREATED, expected_params=expected)
    assert deploy(spec, region=REGION, session=aws).request["targetArn"] == GROUP_ARN  # account: sts on moto

    # a dry run looks the account up too (sts only, nothing created) ...
    assert deploy(spec, region=REGION, dry_run=True, session=aws).request == expected
    # ... and without credentials names the flag that gives it
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(DeploymentError, match=r"pass --account ID"):
        deploy(spec, region=REGION, dry_run=True)
    assert deploy(spec, region=REGION, dry_run=True, account=ACCOUNT).request == expected
    thing = DeploymentSpec.from_dict({"targetArn": "thing/camera-7"})
    assert (
        to_request(thing, region="cn-north-1", account=ACCOUNT)["targetArn"]
        == f"arn:aws-cn:iot:cn-north-1:{ACCOUNT}:thing/camera-7"
    )


def test_target_in_another_region_is_refused() -> None:
    spec = DeploymentSpec.from_dict(full_spec_dict())
    with pytest.raises(DeploymentError, match="is in us-west-2 but the deployment goes to eu-west-1"):
        to_request(spec, region="eu-west-1")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        (("iotJobConfiguration", "jobExecutionsRolloutConfig", "maximumPerMinute"), 5000, "maximumPerMinute"),
        (("iotJobConfiguration", "jobExecutionsRolloutConfig", "exponentialRate", "incrementFactor"), 6, "incrementFactor"),
        (("iotJobConfiguration", "jobExecutionsRolloutConfig", "exponentialRate", "baseRatePerMinute"), 0, "baseRatePerMinute"),
        (("iotJobConfiguration", "abortConfig", "criteriaList", 0, "thresholdPercentage"), 101, "thresholdPercentage"),
        (("iotJobConfiguration", "abortConfig", "criteriaList", 0, "failureType"), "BROKEN", "failureType"),
        (("iotJobConfiguration", "abortConfig", "criteriaList", 0, "minNumberOfExecutedThings"), 0, "minNumberOfExecutedThings"),
        (("iotJobConfiguration", "timeoutConfig", "inProgressTimeoutInMinutes"), 10081, "inProgressTimeoutInMinutes"),
        (("deploymentPolicies", "failureHandlingPolicy"), "RETRY", "failureHandlingPolicy"),
        (("deploymentPolicies", "componentUpdatePolicy", "action"), "NOTIFY", "componentUpdatePolicy.action"),
        (("components", "com.example.Detector", "configurationUpdate", "merge"), "{not json", "merge"),
        (("components", "com.example.Detector", "configurationUpdate", "merge"), "[1, 2]", "merge"),
        (("components", "com.example.Detector", "configurationUpdate", "reset"), ["noSlash"], "reset"),
        (("components", "com.example.Detector", "runWith", "systemResourceLimits", "memory"), -1, "memory"),
        (("components", "com.example.Detector", "runWith", "posixUser"), "a:b:c", "posixUser"),
        (("targetArn",), "arn:aws:iot:us-west-2:123:bucket/x", "targetArn"),
    ],
)
def test_bad_values_name_the_field(path: tuple[Any, ...], value: Any, field: str) -> None:
    data = full_spec_dict()
    node: Any = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises(DeploymentError, match=re.escape(field)) as exc:
        DeploymentSpec.from_dict(data)
    assert str(exc.value).startswith("invalid deployment: ") and "\n" not in str(exc.value)


def test_rate_increase_needs_exactly_one_criterion() -> None:
    data = full_spec_dict()
    rate = data["iotJobConfiguration"]["jobExecutionsRolloutConfig"]["exponentialRate"]
    rate["rateIncreaseCriteria"] = {"numberOfSucceededThings": 5, "numberOfNotifiedThings": 5}
    with pytest.raises(DeploymentError, match="rateIncreaseCriteria: set exactly one of"):
        DeploymentSpec.from_dict(data)


def test_unknown_keys_are_refused() -> None:
    data = full_spec_dict()
    data["deploymentPolicies"]["failureHandling"] = "ROLLBACK"
    with pytest.raises(DeploymentError, match="deploymentPolicies.failureHandling: Extra inputs are not permitted"):
        DeploymentSpec.from_dict(data)


def test_snake_case_and_yaml_file(tmp_path: Path) -> None:
    spec = DeploymentSpec.from_dict(
        {
            "target_arn": GROUP_ARN,
            "components": {"com.example.A": {"component_version": "1.0.0", "configuration_update": {"reset": [""]}}},
        }
    )
    assert to_request(spec)["components"] == {
        "com.example.A": {"componentVersion": "1.0.0", "configurationUpdate": {"reset": [""]}}
    }
    path = tmp_path / "deploy.yaml"
    path.write_text(
        "targetArn: thinggroup/line-3\ncomponents:\n  com.example.A:\n    componentVersion: 1.0.0\n"
        "iotJobConfiguration:\n  jobExecutionsRolloutConfig: {maximumPerMinute: 0}\n"
    )
    with pytest.raises(DeploymentError, match=r"deploy\.yaml: invalid deployment: .*maximumPerMinute: Input should be greater"):
        load_spec(path)
    path.write_text(json.dumps(full_spec_dict()))
    assert to_request(load_spec(path)) == to_request(DeploymentSpec.from_dict(full_spec_dict()))


# --------------------------------------------------------------------------- shorthands


def test_parse_rollout() -> None:
    assert parse_rollout("100/min").model_dump(by_alias=True, exclude_none=True) == {
        "exponentialRate": {
            "baseRatePerMinute": 10,
            "incrementFactor": 2.0,
            "rateIncreaseCriteria": {"numberOfSucceededThings": 10},
        },
        "maximumPerMinute": 100,
    }
    assert parse_rollout("10/min") == RolloutConfig(maximum_per_minute=10)
    assert parse_rollout(" 3 ").model_dump(by_alias=True, exclude_none=True) == {"maximumPerMinute": 3}
    for bad in ("0/min", "1001/min", "fast", "10/hour"):
        with pytest.raises(DeploymentError, match="rollout"):
            parse_rollout(bad)


def test_parse_abort() -> None:
    assert parse_abort("10%").model_dump(by_alias=True) == {
        "criteriaList": [{"failureType": "ALL", "action": "CANCEL", "thresholdPercentage": 10.0, "minNumberOfExecutedThings": 10}]
    }
    both = parse_abort("10%:FAILED:min=5, 25.5%:timed_out")
    assert [(c.failure_type, c.threshold_percentage, c.min_number_of_executed_things) for c in both.criteria_list] == [
        ("FAILED", 10.0, 5),
        ("TIMED_OUT", 25.5, 10),
    ]
    for bad in ("ten%", "10%:SOMETIMES", "0%", "150%", "10%:min=0", "10.555%"):
        with pytest.raises(DeploymentError, match="abort"):
            parse_abort(bad)


def test_shorthands_plug_into_the_request(aws: AwsSession, gg_stub: Stubber) -> None:
    rollout, abort = parse_rollout("50/min"), parse_abort("5%:min=20")
    assert isinstance(abort, AbortConfig)
    spec = DeploymentSpec.from_dict(
        {
            "targetArn": GROUP_ARN,
            "components": {"com.example.A": {"componentVersion": "1.0.0"}},
            "iotJobConfiguration": {"jobExecutionsRolloutConfig": rollout, "abortConfig": abort},
        }
    )
    request = to_request(spec)
    gg_stub.add_response("create_deployment", CREATED, expected_params=request)  # validated against the API model
    deploy(spec, region=REGION, session=aws)


# --------------------------------------------------------------------------- errors from AWS


@pytest.mark.parametrize("code", ["ExpiredTokenException", "ExpiredToken", "RequestExpired"])
def test_expired_credentials_is_one_line(aws: AwsSession, gg_stub: Stubber, code: str) -> None:
    gg_stub.add_client_error("create_deployment", code, "The security token included in the request is expired", 403)
    with pytest.raises(DeploymentError, match=r"CreateDeployment\): credentials expired; refresh them") as exc:
        deploy(DeploymentSpec.from_dict(full_spec_dict()), region=REGION, session=aws)
    assert "\n" not in str(exc.value)


def test_refused_deployment_carries_the_service_message(aws: AwsSession, gg_stub: Stubber) -> None:
    gg_stub.add_client_error("create_deployment", "ResourceNotFoundException", "Thing group line-3 does not exist", 404)
    with pytest.raises(DeploymentError, match="ResourceNotFoundException \\(Thing group line-3 does not exist\\)"):
        deploy(full_spec_dict(), region=REGION, session=aws)


def test_no_credentials_is_one_line(aws_env: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DeploymentError, match="no AWS credentials found; set AWS_PROFILE") as exc:
        deploy(DeploymentSpec.from_dict(full_spec_dict()), region=REGION, endpoint_url=aws_env.url)
    assert "\n" not in str(exc.value)
