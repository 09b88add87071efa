"""Application Auto Scaling for SageMaker endpoints: what ``endpoint deploy --min/--max-instances`` asks for.

* real-time: a scalable target on ``endpoint/<name>/variant/AllTraffic``
  (``sagemaker:variant:DesiredInstanceCount``) and a target-tracking policy on the predefined
  ``SageMakerVariantInvocationsPerInstance`` metric (``--target-invocations``, per instance per minute)
* async: the same target (``--min-instances 0`` allowed) tracking ``ApproximateBacklogSizePerInstance``
  (``--target-backlog``), and for a minimum of 0 the AWS docs' wake-up: a step-scaling policy (+1 instance)
  fired by a CloudWatch alarm on ``HasBacklogWithoutCapacity`` (requests queued, no instance to take them)

The requests are built here (so a dry run prints them, checked against botocore's model); they are sent once
the endpoint is ``InService`` (a variant that is still ``Creating`` can't be registered). See docs/cloud.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgekit.errors import EdgekitError, EndpointError

if TYPE_CHECKING:
    from edgekit.cloud.sagemaker import ApiCall, DeployEvent, EndpointSpec

__all__ = ["alarm_name", "apply_scaling", "check_scaling", "scales", "scaling_calls"]

VARIANT = "AllTraffic"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
DEFAULT_BACKLOG = 5.0  # the AWS docs' async example: 5 queued requests per instance
INVOCATIONS_POLICY = "edgekit-invocations-per-instance"
BACKLOG_POLICY = "edgekit-backlog-per-instance"
WAKE_POLICY = "edgekit-has-backlog-without-capacity"
WAKE_ARN = f"<PolicyARN of {WAKE_POLICY}>"  # a dry run's stand-in: the real one comes back from PutScalingPolicy


def scales(spec: EndpointSpec) -> bool:
    """Whether any scaling option is set."""
    options = (spec.min_instances, spec.max_instances, spec.target_invocations, spec.target_backlog)
    return any(v is not None for v in options)


def alarm_name(endpoint: str) -> str:
    """The CloudWatch alarm that wakes an async endpoint from zero (alarm names are per account and region)."""
    return f"{endpoint}-has-backlog-without-capacity"


def check_scaling(spec: EndpointSpec, *, wait: bool) -> None:
    """One EndpointError line for a scaling option that can't work; nothing when no scaling option is set."""
    if not scales(spec):
        return

    def bad(message: str) -> EndpointError:
        return EndpointError(f"endpoint '{spec.name}': {message}")

    if spec.mode == "batch":
        raise bad(
            "--min-instances/--max-instances/--target-* don't apply to a batch transform job: size it with --instance-count"
        )
    if spec.mode == "serverless":
        raise bad(
            "--min-instances/--max-instances/--target-* don't apply to serverless endpoints (they scale by themselves up "
            "to --max-concurrency): keep capacity warm with --provisioned-concurrency"
        )
    if spec.max_instances is None:
        raise bad("--max-instances is required to scale an endpoint (with --min-instances and the target)")
    low = 1 if spec.min_instances is None else spec.min_instances
    if spec.max_instances < 1:
        raise bad(f"--max-instances must be at least 1, not {spec.max_instances}")
    if low < 0:
        raise bad(f"--min-instances must be 0 or more, not {low}")
    if low > spec.max_instances:
        raise bad(f"--min-instances {low} is above --max-instances {spec.max_instances}")
    if spec.instance_count > spec.max_instances:
        raise bad(f"--instance-count {spec.instance_count} is above --max-instances {spec.max_instances}")
    if spec.mode == "real-time":
        if low == 0:
            raise bad("--min-instances 0: only async endpoints scale to zero (a real-time one needs an instance to answer)")
        if spec.target_backlog is not None:
            raise bad("--target-backlog is for async endpoints; a real-time one scales on --target-invocations")
        if spec.target_invocations is None:
            raise bad(
                "--target-invocations is required to scale a real-time endpoint: the invocations per instance per "
                "minute to hold (SageMakerVariantInvocationsPerInstance)"
            )
        if spec.target_invocations <= 0:
            raise bad(f"--target-invocations must be above 0, not {spec.target_invocations:g}")
    else:  # async
        if spec.target_invocations is not None:
            raise bad(
                "--target-invocations is for real-time endpoints; an async one scales on --target-backlog (queued per instance)"
            )
        if spec.target_backlog is not None and spec.target_backlog <= 0:
            raise bad(f"--target-backlog must be above 0, not {spec.target_backlog:g}")
    if not wait:
        raise bad("--no-wait can't be combined with scaling: the scalable target is registered once the endpoint is InService")


def scaling_calls(spec: EndpointSpec) -> list[ApiCall]:
    """The Application Auto Scaling (and, for async from zero, CloudWatch) requests; [] when not scaling."""
    from edgekit.cloud.sagemaker import ApiCall

    if not scales(spec) or spec.max_instances is None:
        return []
    low = 1 if spec.min_instances is None else spec.min_instances
    target = {
        "ServiceNamespace": "sagemaker",
        "ResourceId": f"endpoint/{spec.name}/variant/{VARIANT}",
        "ScalableDimension": DIMENSION,
    }
    calls = [
        ApiCall(
            "application-autoscaling", "RegisterScalableTarget", {**target, "MinCapacity": low, "MaxCapacity": spec.max_instances}
        )
    ]
    if spec.mode == "real-time":
        tracking: dict[str, Any] = {
            "TargetValue": float(spec.target_invocations or 0),
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
        }
        policy = {"PolicyName": INVOCATIONS_POLICY, **target, "PolicyType": "TargetTrackingScaling"}
        calls.append(
            ApiCall(
                "application-autoscaling", "PutScalingPolicy", {**policy, "TargetTrackingScalingPolicyConfiguration": tracking}
            )
        )
        return calls
    endpoint_dimension = [{"Name": "EndpointName", "Value": spec.name}]
    tracking = {
        "TargetValue": float(spec.target_backlog if spec.target_backlog is not None else DEFAULT_BACKLOG),
        "CustomizedMetricSpecification": {
            "MetricName": "ApproximateBacklogSizePerInstance",
            "Namespace": "AWS/SageMaker",
            "Dimensions": endpoint_dimension,
            "Statistic": "Average",
        },
        "ScaleInCooldown": 600,
        "ScaleOutCooldown": 300,
    }
    policy = {"PolicyName": BACKLOG_POLICY, **target, "PolicyType": "TargetTrackingScaling"}
    calls.append(
        ApiCall("application-autoscaling", "PutScalingPolicy", {**policy, "TargetTrackingScalingPolicyConfiguration": tracking})
    )
    if low == 0:
        step = {
            "AdjustmentType": "ChangeInCapacity",
            "MetricAggregationType": "Average",
            "Cooldown": 300,
            "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}],
        }
        wake = {"PolicyName": WAKE_POLICY, **target, "PolicyType": "StepScaling", "StepScalingPolicyConfiguration": step}
        calls.append(ApiCall("application-autoscaling", "PutScalingPolicy", wake))
        alarm = {
            "AlarmName": alarm_name(spec.name),
            "AlarmDescription": f"wakes SageMaker endpoint {spec.name} from zero instances (edgekit)",
            "MetricName": "HasBacklogWithoutCapacity",
            "Namespace": "AWS/SageMaker",
            "Statistic": "Average",
            "EvaluationPeriods": 2,
            "DatapointsToAlarm": 2,
            "Threshold": 1.0,
            "ComparisonOperator": "GreaterThanOrEqualToThreshold",
            "TreatMissingData": "missing",
            "Dimensions": endpoint_dimension,
            "Period": 60,
            "AlarmActions": [WAKE_ARN],
        }
        calls.append(ApiCall("cloudwatch", "PutMetricAlarm", alarm))
    return calls


def apply_scaling(calls: list[ApiCall], client: Callable[[str], Any], emit: Callable[[DeployEvent], None]) -> None:
    """Send ``calls`` (from :func:`scaling_calls`) in order; the alarm gets the wake-up policy's real ARN.

    A refused request undoes what this step made (the scalable target, which takes its policies with it, and the
    alarm) and raises one EndpointError line saying so; the caller then rolls back the endpoint."""
    from edgekit.cloud.sagemaker import DeployEvent, SageMakerApi

    made: list[tuple[str, dict[str, Any]]] = []
    policy_arn = ""
    try:
        for call in calls:
            params = dict(call.params)
            if call.operation == "PutMetricAlarm":
                params["AlarmActions"] = [policy_arn if a == WAKE_ARN else a for a in params["AlarmActions"]]
            what = params.get("PolicyName") or params.get("AlarmName") or params["ResourceId"]
            emit(DeployEvent("create", f"{call.operation} {what}"))
            reply = SageMakerApi(client(call.service), call.service).call(call.operation, f"scaling {what}", **params)
            if call.operation == "RegisterScalableTarget":
                made.append(
                    ("application-autoscaling", {k: params[k] for k in ("ServiceNamespace", "ResourceId", "ScalableDimension")})
                )
            elif call.operation == "PutMetricAlarm":
                made.append(("cloudwatch", {"AlarmNames": [params["AlarmName"]]}))
            elif params.get("PolicyName") == WAKE_POLICY:
                policy_arn = str(reply["PolicyARN"])
    except EndpointError as exc:
        undone: list[str] = []
        for service, params in reversed(made):
            operation = "DeregisterScalableTarget" if service == "application-autoscaling" else "DeleteAlarms"
            try:
                SageMakerApi(client(service), service).call(operation, "rolling back the scaling", **params)
                undone.append(f"{operation} {params.get('ResourceId') or params['AlarmNames'][0]}")
                emit(DeployEvent("rollback", undone[-1]))
            except EdgekitError as cause:
                undone.append(f"could not {operation} ({cause})")
        raise EndpointError(f"{exc}; {', '.join(undone)}" if undone else str(exc)) from exc
