"""The window summary (edgekit.wire.summary): what the edge builds is what the fleet reads, and nothing hostile gets in.

A Hypothesis round trip over every shape a summary can take; the named attacks a hostile device can send (1e400,
2**70, strings where counts belong, lists where maps belong, deep nesting) each refused on its own; and the fleet's
ingest storing the good summaries of a batch that holds a bad one.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edgekit.fleet.state import FleetState
from edgekit.fleet.telemetry import TelemetryIngest
from edgekit.fleet.view import fleet_view
from edgekit.mqtt.client import MqttMessage
from edgekit.wire.summary import (
    MAX_COUNT,
    MAX_TOTAL,
    WINDOW_SUMMARY_TYPE,
    AnsweredBy,
    Confidence,
    FallbackReport,
    LocalHealth,
    Percentiles,
    SummaryError,
    UplinkCounts,
    WindowSummary,
    _keys,
    _no_key_twice,
    _read_checked,
    encode_summary,
    read_summary,
)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

counts = st.integers(0, MAX_COUNT)
totals = st.integers(0, MAX_TOTAL)
millis = st.floats(0.0, 1e9, allow_nan=False, allow_infinity=False)
probabilities = st.floats(0.0, 1.0, allow_nan=False, allow_infinity=False)
times = st.floats(0.0, 1e11, allow_nan=False, allow_infinity=False)
names = st.text(max_size=40)
percentiles = st.builds(
    Percentiles,
    p50=st.none() | millis,
    p90=st.none() | millis,
    p99=st.none() | millis,
    max=st.none() | millis,
)


@st.composite
def summaries(draw: st.DrawFn) -> WindowSummary:
    local, cloud, none = (draw(st.integers(0, MAX_COUNT // 3)) for _ in range(3))
    if local + cloud + none == 0:
        local = 1
    start = draw(times)
    return WindowSummary(
        thing=draw(st.from_regex(r"[a-zA-Z0-9:_-]{0,20}", fullmatch=True)),
        component=draw(names),
        model=draw(names),
        run=draw(st.from_regex(r"[a-zA-Z0-9_-]{1,20}", fullmatch=True)),
        window=draw(st.integers(1, MAX_TOTAL)),
        window_start=start,
        window_end=draw(st.floats(start, 1e11, allow_nan=False)),
        count=local + cloud + none,
        classes=draw(st.dictionaries(st.integers(0, 10**9).map(str), counts, max_size=5)),
        answered_by=AnsweredBy(local=local, cloud=cloud, none=none),
        latency_ms=draw(percentiles),
        local=LocalHealth(errors=draw(counts), healthy=draw(st.booleans())),
        uplink=UplinkCounts(sent=draw(totals), pending=draw(totals), failures=draw(totals), unanswered_messages=draw(totals)),
        confidence=draw(st.none() | st.builds(Confidence, mean=probabilities, min=probabilities, max=probabilities)),
        fallback=draw(
            st.none()
            | st.builds(
                FallbackReport,
                errors=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_]{0,31}", fullmatch=True), counts, max_size=4),
                breaker=st.sampled_from(["closed", "open", "half-open"]),
                latency_ms=percentiles,
            )
        ),
    )


@FUZZ
@given(summaries())
def test_a_summary_reads_back_as_itself(summary: WindowSummary) -> None:
    wire = encode_summary(summary)
    back = read_summary(wire.encode())
    assert back == summary
    assert encode_summary(back) == wire  # and encodes to the same bytes
    assert _no_key_twice(wire.encode(), _keys(back))  # read in one pass (not sent the checked way)
    body = json.loads(wire)
    assert body["type"] == WINDOW_SUMMARY_TYPE and body["schemaVersion"] == 1 and "answeredBy" in body


GOOD: dict[str, Any] = json.loads(
    encode_summary(
        WindowSummary(
            thing="pi-01",
            component="com.example.Inference",
            model="mlp",
            run="a1b2c3",
            window=1,
            window_start=1000.0,
            window_end=1010.0,
            count=3,
            classes={"0": 1, "2": 1},
            answered_by=AnsweredBy(local=1, cloud=1, none=1),
            latency_ms=Percentiles(p50=1.0, p90=2.0, max=3.0),
            fallback=FallbackReport(errors={"http": 1}, breaker="closed"),
        )
    )
)


def _with(path: str, value: Any) -> bytes:
    body = json.loads(json.dumps(GOOD))
    *parents, last = path.split(".")
    node = body
    for key in parents:
        node = node[key]
    node[last] = value
    return json.dumps(body).encode()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (_with("windowStart", 1.0).replace(b"1.0", b"1e400", 1), "too large for a 64-bit float"),
        (_with("count", 2**70), "less than or equal"),
        (_with("answeredBy.local", 2**70), "less than or equal"),
        (_with("count", "3"), "valid integer"),
        (_with("answeredBy.cloud", "1"), "valid integer"),
        (_with("count", 3.0), "valid integer"),
        (_with("count", True), "valid integer"),
        (_with("count", -1), "greater than or equal"),
        (_with("classes", [1, 2]), "valid dictionary"),
        (_with("answeredBy", [1, 1, 1]), "valid dictionary"),
        (_with("classes", {"x": 1}), "pattern"),
        (_with("fallback.errors", {"http": {"deep": 1}}), "valid integer"),
        (_with("latencyMs.p50", float("nan")).replace(b"NaN", b"1e400"), "too large for a 64-bit float"),
        (_with("count", 4), "adds up to 3, not count 4"),
        (_with("windowEnd", 1.0), "before windowStart"),
        (_with("extra", 1), "extra"),
        (_with("schemaVersion", 2), "schemaVersion 2"),
        (_with("classes", {"0": json.loads("[" * 80 + "]" * 80)}), "nested deeper"),
        (b'{"type": "' + WINDOW_SUMMARY_TYPE.encode() + b'", "type": "x"}', "twice"),
        (b"{" + b" " * (129 * 1024) + b"}", "over the"),
    ],
)
def test_a_hostile_summary_is_refused_with_one_line(payload: bytes, message: str) -> None:
    with pytest.raises(SummaryError, match=message) as info:
        read_summary(payload)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("payload", [b"\x93NUMPY", b"[1, 2]", b'{"type": "something.else"}', b"{}", b'"text"'])
def test_other_device_data_is_not_a_summary(payload: bytes) -> None:
    assert read_summary(payload) is None


@FUZZ
@given(st.binary(max_size=300) | st.text(max_size=300).map(lambda t: t.encode()))
@example(_with("count", 1e400))
def test_any_bytes_read_as_a_summary_nothing_or_one_summary_error(data: bytes) -> None:
    try:
        read_summary(data)
    except SummaryError as exc:
        assert "\n" not in str(exc)


def _outcome(read: Any, payload: bytes) -> tuple[str, Any]:
    try:
        return "read", read(payload)
    except SummaryError as exc:
        return "refused", str(exc)


def _twice(wire: str, nth: int, value: str) -> str:
    """``wire`` with a second copy of its ``nth`` key (any depth), given ``value``, just before the first."""
    keys = list(re.finditer(r'"[^"\\]*":', wire))
    at = keys[nth % len(keys)]
    return wire[: at.start()] + at.group(0) + value + "," + wire[at.start() :]


MUTATIONS: dict[str, Callable[[str, int], str]] = {
    "as sent": lambda wire, n: wire,
    "a key twice": lambda wire, n: _twice(wire, n, ["0", "1", '"x"', "{}", "1.5", "null"][n % 6]),
    "schemaVersion true": lambda wire, n: wire.replace('"schemaVersion":1', '"schemaVersion":true'),
    "a long number": lambda wire, n: re.sub(r'("windowStart":[0-9]+\.[0-9]+)', lambda m: m.group(1) + "0" * (1000 + n % 3), wire),
    "spaces around colons": lambda wire, n: wire.replace('":', '" :  '),
    "a BOM": lambda wire, n: "\ufeff" + wire,
    "an escaped key": lambda wire, n: wire.replace('"count":', '"\\u0063ount":'),
    "an escaped key twice": lambda wire, n: wire.replace('"count":', '"count":1,"\\u0063ount":', 1),
    "colons in the thing": lambda wire, n: (
        wire.replace('"run":', '"thing":"arn:aws:iot:x:1:thing/a","run":', 1) if '"thing"' not in wire else wire
    ),
}


@FUZZ
@given(summaries(), st.sampled_from(sorted(MUTATIONS)), st.integers(0, 200))
@example(WindowSummary.model_validate_json(json.dumps(GOOD)), "a key twice", 3)  # a second 'type' at the top
@example(WindowSummary.model_validate_json(json.dumps({**GOOD, "windowStart": 5e-324})), "a long number", 0)  # no point
def test_the_one_pass_read_answers_as_the_checked_read(summary: WindowSummary, mutation: str, n: int) -> None:
    """read_summary's one pass (pydantic's JSON parser) keeps a summary only where the checked read (every bound of
    edgekit.parsing) keeps the same one; anything else is refused with the checked read's own line."""
    wire = encode_summary(summary)
    payload = MUTATIONS[mutation](wire, n).encode()
    got = _outcome(read_summary, payload)
    assert got == _outcome(_read_checked, payload)
    # a mutation that found nothing to change (a windowStart written as 5e-324 has no digits after a point) is no test
    if mutation in ("a key twice", "an escaped key twice", "schemaVersion true", "a long number") and payload != wire.encode():
        assert got[0] == "refused"


_MINIMAL = (
    '{"schemaVersion":1,"type":"edgekit.inference.window","run":"r","window":1,"windowStart":1.0,"windowEnd":2.0,'
    '"count":1,"answeredBy":{"local":1},"local":{"healthy":true}}'
)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"count":1', '"count":01'),
        ('"count":1', '"count":+1'),
        ('"windowStart":1.0', '"windowStart":.5'),
        ('"windowStart":1.0', '"windowStart":1.'),
        ('"windowStart":1.0', '"windowStart":1E0'),
        ('"windowStart":1.0', '"windowStart":5e-324'),
        ('"windowStart":1.0', '"windowStart":1e308'),
        ("}}", "},}"),
        ('"count":1', '/*x*/"count":1'),
        ('"run":"r"', '"run":"r","component":"\\x41"'),
        ('"run":"r"', '"run":"r","component":"\\u0000\x7f"'),
        (",", ",\t\n\r "),
        (",", ",\u00a0"),
        ('"healthy":true', '"healthy":null'),
        ('"healthy":true', '"healthy":"yes"'),
        ('"schemaVersion":1', '"schemaVersion":1e0'),
        ('"window":1', '"window":1.0'),
        ("}}", "}}" + _MINIMAL),
    ],
)
def test_the_one_pass_read_and_the_checked_read_agree_on_json_lexical_corners(old: str, new: str) -> None:
    payload = _MINIMAL.replace(old, new).encode()
    assert _outcome(read_summary, payload) == _outcome(_read_checked, payload)


def test_a_key_twice_is_refused_at_any_depth() -> None:
    wire = json.dumps(GOOD, separators=(",", ":"))
    for n in range(len(re.findall(r'"[^"\\]*":', wire))):
        with pytest.raises(SummaryError, match="twice"):
            read_summary(_twice(wire, n, "1").encode())


def test_the_ingest_refuses_a_bad_summary_alone(tmp_path: Path) -> None:
    state = FleetState(tmp_path / "fleet.db")
    state.upsert_thing("pi-01", "rasp4b", {"os": "linux", "architecture": "aarch64"}, 0.0)
    acked: list[MqttMessage] = []
    broker = type("Broker", (), {"ack": lambda self, m: acked.append(m)})()
    ingest = TelemetryIngest(state, cast(Any, broker))
    second = json.loads(json.dumps(GOOD)) | {"window": 2}
    for payload in (json.dumps(GOOD).encode(), _with("count", 2**70), _with("classes", [1]), json.dumps(second).encode()):
        ingest._on_message(MqttMessage(topic="devices/pi-01/inference", payload=payload, qos=1, retain=False))
    assert acked == []  # nothing acknowledged before it is committed
    assert ingest.flush() == 2
    assert len(acked) == 4  # each acknowledged after the commit, the refused ones too
    assert ingest.stats.malformed == 2 and ingest.stats.windows == 2
    (device,) = [d.telemetry for d in fleet_view(state).devices if d.thing == "pi-01"]
    assert device.windows == 2 and device.readings == 6 and device.fallback_errors == {"http": 2}
    state.close()
