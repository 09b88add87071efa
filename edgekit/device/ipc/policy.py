"""Authorization of IPC calls against the components' ``accessControl`` policies, as the nucleus decides it.

A component may call ``<operation>`` of ``<service>`` on ``<resource>`` when one of **its own** policies for
that service lists the operation (or ``*``) and a resource that matches (``AuthorizationHandler.isAuthorized``).
Matching follows the nucleus's ``WildcardTrie``:

* every service: ``*`` matches any characters (``/`` included); ``${*}``, ``${$}`` and ``${?}`` are a literal
  ``*``, ``$`` and ``?``;
* ``aws.greengrass.ipc.mqttproxy`` (``MQTT_STYLE``): also ``+`` (a whole level) matches one level and a trailing
  ``/#`` (or ``#`` alone) any number of levels, the parent included (``a/#`` matches ``a``); a ``+`` or ``#``
  used any other way is a plain character. A subscription's filter is matched as a string, so a policy for
  ``a/#`` lets a component subscribe to ``a/#`` and ``a/b/+``;
* ``aws.greengrass.ipc.pubsub``: ``+`` and ``#`` are plain characters (``STANDARD``).

Resources may use ``{iot:thingName}`` (replaced with the device's thing name, as nucleus lite does). A policy
the linter would refuse (unknown operation, bad resource) is skipped here with a log line, as the nucleus does.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from edgekit.greengrass.access import ACCESS_CONTROL, MQTT_PROXY, SERVICES, access_value, resource_problem

__all__ = ["Policy", "authorized", "matches", "parse_policies"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Policy:
    service: str
    policy_id: str
    operations: frozenset[str]
    resources: tuple[str, ...]

    def allows(self, operation: str, resource: str | None) -> bool:
        if operation not in self.operations and "*" not in self.operations:
            return False
        if resource is None:
            return True
        return any(matches(p, resource, mqtt=self.service == MQTT_PROXY) for p in self.resources)


def parse_policies(configuration: Mapping[str, Any] | None, thing: str, component: str = "") -> list[Policy]:
    """The usable policies of one component's configuration (problems are logged and the policy skipped)."""
    access = access_value((configuration or {}).get(ACCESS_CONTROL))
    if not isinstance(access, Mapping):
        return []
    found: list[Policy] = []
    for service, policies in access.items():
        known = SERVICES.get(str(service))
        if known is None or not isinstance(policies, Mapping):
            log.warning("%s: accessControl.%s: not an IPC service with policies; ignored", component, service)
            continue
        for policy_id, body in policies.items():
            if not isinstance(body, Mapping):
                continue
            operations = body.get("operations")
            resources = body.get("resources") or []
            if not isinstance(operations, list) or not operations or any(op not in known for op in operations):
                log.warning(
                    "%s: accessControl.%s.%s: missing or unknown operations; policy ignored", component, service, policy_id
                )
                continue
            if not isinstance(resources, list) or any(not isinstance(r, str) or resource_problem(r) for r in resources):
                log.warning("%s: accessControl.%s.%s: invalid resources; policy ignored", component, service, policy_id)
                continue
            expanded = tuple(r.replace("{iot:thingName}", thing) for r in resources)
            found.append(Policy(str(service), str(policy_id), frozenset(operations), expanded))
    return found


def authorized(policies: Iterable[Policy], service: str, operation: str, resource: str | None) -> Policy | None:
    """The first policy that allows the call, or None."""
    return next((p for p in policies if p.service == service and p.allows(operation, resource)), None)


@lru_cache(maxsize=4096)
def _compile(pattern: str, mqtt: bool) -> re.Pattern[str]:
    out: list[str] = []
    i, n = 0, len(pattern)
    levels = pattern.split("/")
    if mqtt and pattern == "#":
        return re.compile(r".*", re.DOTALL)
    tail = ""
    if mqtt and len(levels) > 1 and levels[-1] == "#":
        pattern, n = pattern[:-2], n - 2
        tail = r"(?:/.*)?"
    while i < n:
        if pattern.startswith("${", i) and i + 3 < n and pattern[i + 3] == "}":
            out.append(re.escape(pattern[i + 2]))
            i += 4
            continue
        c = pattern[i]
        if c == "*":
            out.append(".*")
        elif mqtt and c == "+" and (i == 0 or pattern[i - 1] == "/") and (i + 1 == n or pattern[i + 1] == "/"):
            out.append("[^/]*")
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + tail, re.DOTALL)


def matches(pattern: str, resource: str, *, mqtt: bool) -> bool:
    """Whether a policy resource ``pattern`` allows ``resource`` (see the module docstring)."""
    return _compile(pattern, mqtt).fullmatch(resource) is not None
