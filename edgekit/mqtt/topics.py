"""Topic names of the AWS IoT Jobs MQTT API in the Greengrass namespace, edgekit's device topics, IoT Core's topic rules.

See docs/local-fleet.md (Jobs over MQTT: topics and messages).
"""

from __future__ import annotations

import re
from typing import Literal, NamedTuple

from edgekit.errors import ConfigError
from edgekit.mqtt.errors import TopicError
from edgekit.mqtt.names import JOB_ID, check_thing_name

__all__ = [
    "JOB_ID",
    "MAX_SLASHES",
    "MAX_TOPIC_BYTES",
    "NAMESPACE",
    "NEXT_JOB",
    "ParsedTopic",
    "accepted",
    "all_device_status",
    "all_get_pending",
    "all_job_gets",
    "all_job_updates",
    "all_presence",
    "count_slashes",
    "device_topic",
    "get",
    "get_pending",
    "notify",
    "parse",
    "presence",
    "rejected",
    "shared",
    "status",
    "unshared",
    "update",
    "validate",
]

NAMESPACE = "aws-gg-deployment"
NEXT_JOB = "$next"
MAX_SLASHES = 7
MAX_TOPIC_BYTES = 256

_BASIC_INGEST = re.compile(r"^\$aws/rules/[^/]+/")
_NS = f"namespace-{NAMESPACE}"


def _job(job_id: str) -> str:
    if job_id != NEXT_JOB and not JOB_ID.match(job_id):
        raise TopicError(f"'{job_id}' is not a valid job id: 1-64 characters from a-z A-Z 0-9 _ - (or '$next')")
    return job_id


def _thing(thing: str) -> str:
    try:
        return check_thing_name(thing)
    except ConfigError as exc:
        raise TopicError(str(exc)) from exc


# --------------------------------------------------------------------------- the Jobs API


def notify(thing: str) -> str:
    """JobExecutionsChanged notifications for ``thing`` (the device subscribes)."""
    return f"$aws/things/{_thing(thing)}/jobs/notify-{_NS}"


def get(thing: str, job_id: str = NEXT_JOB) -> str:
    """DescribeJobExecution request topic; replies on :func:`accepted` / :func:`rejected` of it."""
    return f"$aws/things/{_thing(thing)}/jobs/{_job(job_id)}/{_NS}/get"


def update(thing: str, job_id: str) -> str:
    """UpdateJobExecution request topic; replies on :func:`accepted` / :func:`rejected` of it."""
    return f"$aws/things/{_thing(thing)}/jobs/{_job(job_id)}/{_NS}/update"


def get_pending(thing: str) -> str:
    """GetPendingJobExecutions request topic (``$aws/things/{thing}/jobs/get``)."""
    return f"$aws/things/{_thing(thing)}/jobs/get"


def accepted(request_topic: str) -> str:
    """The topic the service answers a successful request on."""
    return f"{request_topic}/accepted"


def rejected(request_topic: str) -> str:
    """The topic the service answers a refused request on."""
    return f"{request_topic}/rejected"


def status(thing: str) -> str:
    """Where a device reports its :class:`~edgekit.mqtt.payloads.DeviceStatus` (the fleet status service's topic)."""
    return f"$aws/things/{_thing(thing)}/greengrassv2/health/json"


def presence(thing: str) -> str:
    """Where a device agent of a local fleet says it is connected or gone (its will): a
    :class:`~edgekit.mqtt.payloads.DevicePresence`. AWS IoT Core's broker publishes such events itself
    (``$aws/events/presence/...``); mosquitto does not, so the agent does, under its own ``$aws/things/THING/``."""
    return f"$aws/things/{_thing(thing)}/edgekit/presence"


def device_topic(thing: str, *parts: str) -> str:
    """A device-defined topic ``devices/{thing}/{parts...}`` (telemetry, results), validated."""
    for part in parts:
        if not part or any(c in part for c in "/+#\0"):
            raise TopicError(f"topic level '{part}' must be non-empty and free of '/', '+', '#'")
    return validate("/".join(["devices", _thing(thing), *parts]))


# --------------------------------------------------------------------------- filters for the service side


def all_job_updates() -> str:
    """Filter for every device's UpdateJobExecution requests."""
    return f"$aws/things/+/jobs/+/{_NS}/update"


def all_job_gets() -> str:
    """Filter for every device's DescribeJobExecution requests."""
    return f"$aws/things/+/jobs/+/{_NS}/get"


def all_get_pending() -> str:
    """Filter for every device's GetPendingJobExecutions requests."""
    return "$aws/things/+/jobs/get"


def all_presence() -> str:
    """Filter for every device's :func:`presence`."""
    return "$aws/things/+/edgekit/presence"


def all_device_status() -> str:
    """Filter for every device's status reports."""
    return "$aws/things/+/greengrassv2/health/json"


def shared(group: str | None, topic_filter: str) -> str:
    """``topic_filter`` as a shared subscription of ``group`` (``$share/<group>/<filter>``, MQTT 5: the broker gives
    each message to one subscriber of the group); ``topic_filter`` itself when ``group`` is ``None``."""
    if group is None:
        return topic_filter
    if not group or any(c in group for c in "/+#") or not group.isprintable():
        raise TopicError(f"shared subscription group {group!r}: a non-empty name without '/', '+' or '#'")
    return f"$share/{group}/{topic_filter}"


def unshared(topic_filter: str) -> str:
    """The filter a shared subscription (``$share/<group>/<filter>``) matches topics with; any other filter as it is."""
    if topic_filter.startswith("$share/"):
        parts = topic_filter.split("/", 2)
        return parts[2] if len(parts) == 3 else topic_filter
    return topic_filter


# --------------------------------------------------------------------------- parsing


class ParsedTopic(NamedTuple):
    """What a topic of this module means: whose, which operation, which job, which reply."""

    thing: str
    kind: Literal["notify", "get", "update", "get_pending", "status"]
    job_id: str | None = None
    reply: Literal["accepted", "rejected"] | None = None


_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(rf"^\$aws/things/([^/]+)/jobs/notify-{_NS}$"), "notify"),
    (re.compile(rf"^\$aws/things/([^/]+)/jobs/([^/]+)/{_NS}/(get|update)(?:/(accepted|rejected))?$"), "job"),
    (re.compile(r"^\$aws/things/([^/]+)/jobs/get(?:/(accepted|rejected))?$"), "get_pending"),
    (re.compile(r"^\$aws/things/([^/]+)/greengrassv2/health/json$"), "status"),
]


def parse(topic: str) -> ParsedTopic | None:
    """Split a Jobs / status topic into its parts (``None`` for any other topic)."""
    for pattern, kind in _PATTERNS:
        match = pattern.match(topic)
        if not match:
            continue
        if kind == "job":
            thing, job_id, op, reply = match.groups()
            return ParsedTopic(thing, "get" if op == "get" else "update", job_id, _reply(reply))
        if kind == "get_pending":
            return ParsedTopic(match.group(1), "get_pending", None, _reply(match.group(2)))
        return ParsedTopic(match.group(1), "notify" if kind == "notify" else "status")
    return None


def _reply(value: str | None) -> Literal["accepted", "rejected"] | None:
    if value == "accepted":
        return "accepted"
    if value == "rejected":
        return "rejected"
    return None


# --------------------------------------------------------------------------- validation


def count_slashes(topic: str) -> int:
    """Slashes as AWS IoT Core counts them: all of them, except the 3 of a Basic Ingest ``$aws/rules/{rule}/`` prefix."""
    match = _BASIC_INGEST.match(topic)
    if match:
        return topic.count("/") - 3
    return topic.count("/")


def validate(topic: str, *, is_filter: bool = False) -> str:
    """Return ``topic`` if AWS IoT Core would accept it as a topic name (or, with ``is_filter``, a filter).

    Checks: non-empty, no NUL, at most 256 UTF-8 bytes, at most 7 slashes (:func:`count_slashes`),
    no wildcards in a topic name, and ``+`` / ``#`` only as whole levels (``#`` last) in a filter.
    """
    if not topic:
        raise TopicError("a topic can't be empty")
    if "\0" in topic:
        raise TopicError(f"topic {topic!r} contains a NUL character")
    size = len(topic.encode("utf-8"))
    if size > MAX_TOPIC_BYTES:
        raise TopicError(f"topic '{topic[:60]}...' is {size} bytes; AWS IoT Core allows at most {MAX_TOPIC_BYTES}")
    slashes = count_slashes(topic)
    if slashes > MAX_SLASHES:
        raise TopicError(
            f"topic '{topic}' has {slashes} slashes; AWS IoT Core allows at most {MAX_SLASHES} "
            "(the $aws/things/<thing>/ prefix counts too): shorten the hierarchy"
        )
    levels = topic.split("/")
    if not is_filter:
        if "+" in topic or "#" in topic:
            raise TopicError(f"topic '{topic}' contains a wildcard ('+' or '#'); only subscriptions may use them")
        return topic
    for i, level in enumerate(levels):
        if ("+" in level and level != "+") or ("#" in level and level != "#"):
            raise TopicError(f"filter '{topic}': a wildcard must be a whole level, found '{level}'")
        if level == "#" and i != len(levels) - 1:
            raise TopicError(f"filter '{topic}': '#' must be the last level")
    return topic
