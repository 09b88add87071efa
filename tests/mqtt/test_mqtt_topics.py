"""Topic names of the Jobs API in the Greengrass namespace, and AWS IoT Core's topic rules."""

from __future__ import annotations

import pytest

from edgekit.mqtt import topics
from edgekit.mqtt.errors import TopicError


def test_job_topics_match_the_nucleus() -> None:
    assert topics.notify("dev-1") == "$aws/things/dev-1/jobs/notify-namespace-aws-gg-deployment"
    assert topics.get("dev-1", "job-7") == "$aws/things/dev-1/jobs/job-7/namespace-aws-gg-deployment/get"
    assert topics.get("dev-1") == "$aws/things/dev-1/jobs/$next/namespace-aws-gg-deployment/get"
    assert topics.update("dev-1", "job-7") == "$aws/things/dev-1/jobs/job-7/namespace-aws-gg-deployment/update"
    assert topics.accepted(topics.update("dev-1", "job-7")).endswith("/update/accepted")
    assert topics.rejected(topics.get_pending("dev-1")) == "$aws/things/dev-1/jobs/get/rejected"
    assert topics.status("dev-1") == "$aws/things/dev-1/greengrassv2/health/json"
    assert topics.device_topic("dev-1", "inference") == "devices/dev-1/inference"


def test_every_topic_of_the_api_fits_iot_core_limits() -> None:
    thing, job = "t" * 128, "j" * 64
    for request in (topics.get(thing, job), topics.update(thing, job), topics.get_pending(thing)):
        for topic in (request, topics.accepted(request), topics.rejected(request)):
            topics.validate(topic)
    for topic in (topics.notify(thing), topics.status(thing)):
        topics.validate(topic)
    # the longest has exactly the 7 slashes IoT Core allows, the reserved prefix counted
    assert topics.count_slashes(topics.accepted(topics.update(thing, job))) == 7
    for topic_filter in (topics.all_job_updates(), topics.all_job_gets(), topics.all_get_pending(), topics.all_device_status()):
        topics.validate(topic_filter, is_filter=True)


def test_slashes_are_counted_as_iot_core_does() -> None:
    assert topics.count_slashes("$aws/things/t/jobs/j/namespace-aws-gg-deployment/update/accepted") == 7
    with pytest.raises(TopicError, match="8 slashes"):
        topics.validate("$aws/things/t/a/b/c/d/e/f")
    # only Basic Ingest's $aws/rules/<rule>/ prefix is exempt
    assert topics.count_slashes("$aws/rules/my_rule/a/b/c/d/e/f/g/h") == 7
    topics.validate("$aws/rules/my_rule/a/b/c/d/e/f/g/h")


@pytest.mark.parametrize(
    ("topic", "is_filter", "message"),
    [
        ("", False, "empty"),
        ("a/+/b", False, "wildcard"),
        ("a/#", False, "wildcard"),
        ("a/b+/c", True, "whole level"),
        ("a/#/c", True, "last level"),
        ("a" * 257, False, "256"),
        ("a\0b", False, "NUL"),
    ],
)
def test_bad_topics_are_refused(topic: str, is_filter: bool, message: str) -> None:
    with pytest.raises(TopicError, match=message):
        topics.validate(topic, is_filter=is_filter)


def test_bad_names_in_topics_are_refused() -> None:
    with pytest.raises(TopicError, match="thing name"):
        topics.notify("dev/1")
    with pytest.raises(TopicError, match="job id"):
        topics.update("dev-1", "job/7")
    with pytest.raises(TopicError, match="level"):
        topics.device_topic("dev-1", "a/b")


def test_parse_reads_back_what_the_builders_make() -> None:
    assert topics.parse(topics.update("dev-1", "job-7")) == topics.ParsedTopic("dev-1", "update", "job-7", None)
    assert topics.parse(topics.accepted(topics.get("dev-1"))) == topics.ParsedTopic("dev-1", "get", "$next", "accepted")
    assert topics.parse(topics.rejected(topics.get_pending("d"))) == topics.ParsedTopic("d", "get_pending", None, "rejected")
    assert topics.parse(topics.notify("dev-1")) == topics.ParsedTopic("dev-1", "notify")
    assert topics.parse(topics.status("dev-1")) == topics.ParsedTopic("dev-1", "status")
    assert topics.parse("devices/dev-1/x") is None


def test_shared_subscriptions_name_their_group_and_match_the_plain_filter() -> None:
    assert topics.shared(None, "devices/+/#") == "devices/+/#"
    assert topics.shared("edgekit-fleet", "devices/+/#") == "$share/edgekit-fleet/devices/+/#"
    assert topics.unshared("$share/edgekit-fleet/devices/+/#") == "devices/+/#"
    assert topics.unshared("devices/+/#") == "devices/+/#" and topics.unshared("$share/g") == "$share/g"
    for bad in ("", "a/b", "a+", "#"):
        with pytest.raises(TopicError, match="shared subscription group"):
            topics.shared(bad, "devices/+/#")
