"""Greengrass IPC authorization policies (``accessControl``): the services and operations they may name, and their checks.

A component's ``ComponentConfiguration.DefaultConfiguration.accessControl`` (or a deployment's merge into it) is
``{<IPC service>: {<policy id>: {policyDescription, operations: [...], resources: [...]}}}``; the component that
holds the policy is its principal. The service names and operations are the nucleus's
(``AuthorizationHandler.componentToOperationsMap``). The recipe linter (:mod:`edgekit.greengrass.lint`) and the
device's IPC server (:mod:`edgekit.device.ipc.policy`) both read :data:`SERVICES` and :func:`policy_problems`, so
what the linter accepts is what the device enforces. See ``docs/ipc.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = ["ACCESS_CONTROL", "MQTT_PROXY", "PUBSUB", "SERVICES", "access_value", "policy_problems", "resource_problem"]

ACCESS_CONTROL = "accessControl"
MQTT_PROXY = "aws.greengrass.ipc.mqttproxy"
PUBSUB = "aws.greengrass.ipc.pubsub"


def _ops(*names: str) -> tuple[str, ...]:
    return (*(f"aws.greengrass#{n}" for n in names), "*")


SERVICES: Mapping[str, tuple[str, ...]] = {
    MQTT_PROXY: _ops("PublishToIoTCore", "SubscribeToIoTCore"),
    PUBSUB: _ops("PublishToTopic", "SubscribeToTopic"),
    "aws.greengrass.SecretManager": _ops("GetSecretValue"),
    "aws.greengrass.ShadowManager": _ops("GetThingShadow", "UpdateThingShadow", "DeleteThingShadow", "ListNamedShadowsForThing"),
    "aws.greengrass.ipc.lifecycle": _ops("PauseComponent", "ResumeComponent"),
    "aws.greengrass.clientdevices.Auth": _ops(
        "SubscribeToCertificateUpdates", "VerifyClientDeviceIdentity", "GetClientDeviceAuthToken", "AuthorizeClientDeviceAction"
    ),
    "aws.greengrass.Cli": _ops(
        "GetComponentDetails",
        "ListComponents",
        "RestartComponent",
        "StopComponent",
        "CreateLocalDeployment",
        "GetLocalDeploymentStatus",
        "ListLocalDeployments",
        "CreateDebugPassword",
    ),
    "aws.greengrass.ipc.componentmetric": _ops("PutComponentMetric"),
    "aws.greengrass.TokenExchangeService": ("aws.greengrass#GetCredentials", "*"),
}
"""IPC service → the operations a policy for it may name (``*`` = all of them)."""

_POLICY_KEYS = ("policyDescription", "operations", "resources")
_ESCAPE = re.compile(r"\$\{(.)\}")


def resource_problem(resource: str) -> str | None:
    """Why the nucleus refuses ``resource`` (``AuthorizationModule.validateResource``), or None."""
    if resource == "":
        return "a resource can't be empty"
    i = 0
    while i < len(resource):
        if resource.startswith("${", i):
            m = _ESCAPE.match(resource, i)
            if m is None or resource[i + 3 : i + 4] != "}":
                return f"'{resource}' has an invalid escape sequence; use ${{*}}, ${{$}} or ${{?}}"
            if m.group(1) not in "*$?":
                return f"'{resource}' escapes '{m.group(1)}', which needs no escape; use ${{*}}, ${{$}} or ${{?}}"
            i += 4
            continue
        if resource[i] == "?":
            return f"'{resource}' contains '?', which is no wildcard here; write ${{?}} for a literal '?'"
        i += 1
    return None


def _as_list(value: Any) -> list[Any] | None:
    if isinstance(value, list):
        return value
    return None


def access_value(access: Any) -> Any:
    """``accessControl`` as a mapping: the nucleus also reads it from a JSON string (the developer guide does that)."""
    if isinstance(access, str):
        try:
            return json.loads(access)
        except ValueError:
            return access
    return access


def policy_problems(access: Any) -> Iterator[tuple[str, str, str]]:
    """Each problem of an ``accessControl`` value as ``(path below accessControl, message, fix)``."""
    access = access_value(access)
    if not isinstance(access, Mapping):
        yield "", "must map IPC services to policies", "write {<service>: {<policy id>: {operations: [...], resources: [...]}}}"
        return
    seen: dict[str, str] = {}
    for service, policies in access.items():
        if isinstance(policies, Mapping):
            for policy_id in policies:
                if str(policy_id) in seen:
                    yield (
                        f"{service}.{policy_id}",
                        f"policy id '{policy_id}' is also used under {seen[str(policy_id)]}",
                        "give each policy of the component its own id",
                    )
                seen.setdefault(str(policy_id), str(service))
        known = SERVICES.get(str(service))
        if known is None:
            close = [s for s in SERVICES if s.lower() == str(service).lower()]
            hint = f"did you mean '{close[0]}'?" if close else f"use one of {', '.join(sorted(SERVICES))}"
            yield str(service), f"'{service}' is not a Greengrass IPC service", hint
            continue
        if not isinstance(policies, Mapping) or not policies:
            yield str(service), "must map policy ids to policies", "write {<policy id>: {operations: [...], resources: [...]}}"
            continue
        for policy_id, policy in policies.items():
            where = f"{service}.{policy_id}"
            if not str(policy_id).strip():
                yield where, "a policy id can't be empty", "name the policy, e.g. com.example.MyComponent:pubsub:1"
            if not isinstance(policy, Mapping):
                yield where, "a policy must be a mapping", "write {operations: [...], resources: [...]}"
                continue
            for key in policy:
                if str(key) not in _POLICY_KEYS:
                    yield f"{where}.{key}", f"unknown policy key '{key}'", f"use {', '.join(_POLICY_KEYS)}"
            operations = _as_list(policy.get("operations"))
            if not operations:
                yield f"{where}.operations", "a policy needs a non-empty list of operations", f"list some of {', '.join(known)}"
            for op in operations or []:
                if op not in known:
                    yield (
                        f"{where}.operations",
                        f"'{op}' is not an operation of {service}",
                        f"use one of {', '.join(known)}",
                    )
            resources = policy.get("resources")
            if resources is None:
                continue
            if _as_list(resources) is None:
                yield f"{where}.resources", "resources must be a list of strings", "write resources: [topic/a, topic/b/#]"
                continue
            for resource in resources:
                problem = resource_problem(resource) if isinstance(resource, str) else "a resource must be a string"
                if problem:
                    yield f"{where}.resources", problem, "fix the resource (MQTT wildcards + and #, or * for any characters)"
