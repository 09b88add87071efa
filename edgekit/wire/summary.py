"""What an inference component sends: one window summary per window, and its unanswered readings.

:class:`WindowSummary` is built by the edge (``edgekit.edge.windows.summarize``, when a window closes) and read back
by the fleet's telemetry ingest (:func:`read_summary`), so both sides share one shape: its ``type``
(:data:`WINDOW_SUMMARY_TYPE`) and ``schemaVersion`` are defined here and nowhere else. Every count is a
non-negative int (JSON ints only: no strings, floats or booleans) bounded by :data:`MAX_COUNT` (per window) or
:data:`MAX_TOTAL` (per run), every number finite, every map and string bounded; a payload that claims to be a
summary and is not one is refused on its own (:class:`SummaryError`), so a reader can count it and go on.

:class:`UnansweredHeader` and :class:`ReadingErrors` are the JSON parts of an unanswered-readings ``.npz``
(``__window__`` and ``__errors__``). See docs/edge-runtime.md (a window summary).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator
from pydantic.alias_generators import to_camel

from edgekit.errors import one_line
from edgekit.parsing import MAX_NUMBER_DIGITS, ParseError, loads_json

__all__ = [
    "MAX_COUNT",
    "MAX_SUMMARY_BYTES",
    "MAX_TOTAL",
    "SUMMARY_SCHEMA_VERSION",
    "UNANSWERED_TYPE",
    "WINDOW_SUMMARY_TYPE",
    "AnsweredBy",
    "Confidence",
    "FallbackReport",
    "LocalHealth",
    "Percentiles",
    "ReadingErrors",
    "SummaryError",
    "UnansweredHeader",
    "UplinkCounts",
    "WindowSummary",
    "encode_summary",
    "read_summary",
]

SUMMARY_SCHEMA_VERSION: Final = 1
WINDOW_SUMMARY_TYPE: Final = "edgekit.inference.window"
"""The ``type`` of a window summary (what the fleet service ingests)."""
UNANSWERED_TYPE: Final = "edgekit.inference.unanswered"
"""The ``type`` of an unanswered-readings message's header (``__window__`` in its ``.npz``)."""
MAX_SUMMARY_BYTES: Final = 128 * 1024
"""AWS IoT Core's payload limit: a bigger summary could never have been sent."""
MAX_COUNT: Final = 2**32 - 1
"""Most of anything counted in one window (readings, classes, answers, errors)."""
MAX_TOTAL: Final = 2**53 - 1
"""Most of anything counted over a run (windows, messages): the largest integer a JSON reader keeps exact."""
MAX_CLASSES: Final = 100_000
MAX_ERROR_KINDS: Final = 64
MAX_MS: Final = 1e9  # 11 days
MAX_TIME: Final = 1e11  # seconds since the epoch: the year 5138

Count = Annotated[int, Field(strict=True, ge=0, le=MAX_COUNT)]
Total = Annotated[int, Field(strict=True, ge=0, le=MAX_TOTAL)]
Millis = Annotated[float, Field(strict=True, ge=0.0, le=MAX_MS, allow_inf_nan=False)]
Probability = Annotated[float, Field(strict=True, ge=0.0, le=1.0, allow_inf_nan=False)]
Timestamp = Annotated[float, Field(strict=True, ge=0.0, le=MAX_TIME, allow_inf_nan=False)]
ClassLabel = Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]{0,9})$")]
ErrorKind = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,31}$")]
ThingName = Annotated[str, StringConstraints(max_length=128, pattern=r"^[a-zA-Z0-9:_-]*$")]
RunId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")]
Text = Annotated[str, StringConstraints(max_length=256)]
ErrorText = Annotated[str, StringConstraints(max_length=2048)]


class SummaryError(ParseError):
    """A payload that says it is a window summary but does not match :class:`WindowSummary` (one line)."""


class _Part(BaseModel):
    """camelCase on the wire, snake_case in Python, unknown keys refused (the house style of ``mqtt.payloads``)."""

    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid")


class AnsweredBy(_Part):
    """Who answered the window's readings: the local model, the cloud fallback, or nobody."""

    local: Count = 0
    cloud: Count = 0
    none: Count = 0


class Percentiles(_Part):
    """Latency percentiles in milliseconds (a window's: p50/p90/max; its cloud answers': p50/p99/max; ``{}``: none)."""

    p50: Millis | None = None
    p90: Millis | None = None
    p99: Millis | None = None
    max: Millis | None = None


class Confidence(_Part):
    """The top-class probability over the window's answered readings."""

    mean: Probability
    min: Probability
    max: Probability


class LocalHealth(_Part):
    errors: Count = 0
    healthy: bool = True


class UplinkCounts(_Part):
    """The component's uplink so far in this run: messages handed over, waiting in the component, refusals."""

    sent: Total = 0
    pending: Total = 0
    failures: Total = 0
    unanswered_messages: Total = 0


class FallbackReport(_Part):
    """The cloud fallback in this window: its failures by kind, its breaker now, its answers' latency."""

    errors: dict[ErrorKind, Count] = Field(default_factory=dict, max_length=MAX_ERROR_KINDS)
    breaker: Literal["closed", "open", "half-open"] = "closed"
    latency_ms: Percentiles = Field(default_factory=Percentiles)


class WindowSummary(_Part):
    """One closed window of one inference loop; (``thing``, ``component``, ``run``, ``window``) names it."""

    schema_version: Literal[1] = SUMMARY_SCHEMA_VERSION
    type: Literal["edgekit.inference.window"] = WINDOW_SUMMARY_TYPE
    thing: ThingName = ""
    component: Text = ""
    model: Text = ""
    run: RunId
    window: Annotated[int, Field(strict=True, ge=1, le=MAX_TOTAL)]
    window_start: Timestamp
    window_end: Timestamp
    count: Annotated[int, Field(strict=True, ge=1, le=MAX_COUNT)]
    classes: dict[ClassLabel, Count] = Field(default_factory=dict, max_length=MAX_CLASSES)
    answered_by: AnsweredBy
    latency_ms: Percentiles = Field(default_factory=Percentiles)
    local: LocalHealth = Field(default_factory=LocalHealth)
    uplink: UplinkCounts = Field(default_factory=UplinkCounts)
    confidence: Confidence | None = None
    fallback: FallbackReport | None = None

    @field_validator("schema_version", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: Any) -> Any:
        if isinstance(value, bool):  # Literal[1] takes True (True == 1); a JSON true is not a version
            raise ValueError(f"schemaVersion {value!r} is not a version; this edgekit reads {SUMMARY_SCHEMA_VERSION}")
        return value

    @model_validator(mode="after")
    def _adds_up(self) -> WindowSummary:
        if self.window_end < self.window_start:
            raise ValueError(f"windowEnd {self.window_end} is before windowStart {self.window_start}")
        answered = self.answered_by.local + self.answered_by.cloud + self.answered_by.none
        if answered != self.count:
            raise ValueError(f"answeredBy adds up to {answered}, not count {self.count}")
        return self


class ReadingErrors(_Part):
    """Why one reading went unanswered: the local model's error and the cloud fallback's ('' when not asked)."""

    local: ErrorText = ""
    fallback: ErrorText = ""


class UnansweredHeader(_Part):
    """Which window an unanswered-readings message belongs to (``__window__`` of its ``.npz``)."""

    schema_version: Literal[1] = SUMMARY_SCHEMA_VERSION
    type: Literal["edgekit.inference.unanswered"] = UNANSWERED_TYPE
    thing: ThingName = ""
    component: Text = ""
    run: RunId
    window: Annotated[int, Field(strict=True, ge=0, le=MAX_TOTAL)]


def encode_summary(summary: WindowSummary) -> str:
    """Compact camelCase JSON of ``summary`` (fields that are ``None`` left out)."""
    return summary.model_dump_json(by_alias=True, exclude_none=True)


_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"(\s*:)?')
"""A JSON string token, and the colon after it when it is a key (matched left to right from the start of a valid
JSON text, every match starts at a string's opening quote: no quote stands outside a string)."""
_LONG_NUMBER: Final = re.compile(rb"[-+.eE0-9]{%d}" % (MAX_NUMBER_DIGITS + 1))


def _keys(summary: WindowSummary) -> int:
    """The keys a validated summary was given (its fields set, its maps' keys, its parts'); a part left out here
    only sends its summaries the slow way (the count falls short of the text's), never lets a key twice in."""
    n = len(summary.model_fields_set) + len(summary.classes)
    for part in (summary.answered_by, summary.latency_ms, summary.local, summary.uplink, summary.confidence):
        if part is not None:
            n += len(part.model_fields_set)
    fallback = summary.fallback
    if fallback is not None:
        n += len(fallback.model_fields_set) + len(fallback.errors) + len(fallback.latency_ms.model_fields_set)
    return n


def _no_key_twice(raw: bytes, keys: int) -> bool:
    """Whether the JSON text ``raw``, which validated to a summary of ``keys`` keys, holds no more keys than that.
    Every key is followed by a colon outside any string, so as many colons as keys settles it at once; colons in
    strings (a thing named ``arn:...``) need the keys counted token by token."""
    return raw.count(b":") == keys or sum(1 for colon in _STRING.findall(raw) if colon) == keys


def read_summary(payload: bytes | str) -> WindowSummary | None:
    """The window summary in ``payload``; ``None`` when it is JSON but not a summary (other device data, not JSON).

    A payload that says it is a summary (its ``type``, or that type string anywhere in a payload that is not JSON
    within the bounds: nested too deep, not UTF-8, a key twice) and does not match :class:`WindowSummary` raises
    :class:`SummaryError` (one line), as does any payload over :data:`MAX_SUMMARY_BYTES` (IoT Core sends none).

    A summary is read in one pass by pydantic's JSON parser (``model_validate_json``), kept only when the bounds that
    parser does not check hold too: no key twice (the keys in the text are the keys it kept) and no number of over
    :data:`~edgekit.parsing.MAX_NUMBER_DIGITS` characters. Anything else (not a summary, a refused one, a BOM) goes
    through :func:`edgekit.parsing.loads_json` and the model, as before: the same answer and the same one-line
    refusal, at ~4x the CPU (docs/scale.md, the fleet service's ingest)."""
    size = len(payload)
    if size > MAX_SUMMARY_BYTES:
        raise SummaryError(f"a {size}-byte payload is over the {MAX_SUMMARY_BYTES}-byte limit of a window summary")
    try:
        summary = WindowSummary.model_validate_json(payload)
    except ValidationError:
        return _read_checked(payload)
    raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogatepass")
    if not _no_key_twice(raw, _keys(summary)) or (size > MAX_NUMBER_DIGITS and _LONG_NUMBER.search(raw)):
        return _read_checked(payload)  # a key twice, or a number too long: refused there, with its line
    return summary


def _read_checked(payload: bytes | str) -> WindowSummary | None:
    """:func:`read_summary` through :func:`~edgekit.parsing.loads_json` (every bound checked, one line each)."""
    try:
        data: Any = loads_json(payload)
    except ParseError as exc:
        raw = payload if isinstance(payload, bytes) else payload.encode("utf-8", "replace")
        if WINDOW_SUMMARY_TYPE.encode() in raw:  # says it is a summary, but can't be read within the bounds
            raise SummaryError(one_line(f"window summary {exc}")) from None
        return None  # not JSON (a reading, a blob): not a summary
    if not isinstance(data, dict) or data.get("type") != WINDOW_SUMMARY_TYPE:
        return None
    version = data.get("schemaVersion")
    if version != SUMMARY_SCHEMA_VERSION or isinstance(version, bool):
        raise SummaryError(
            f"window summary has schemaVersion {one_line(repr(version))[:40]}; this edgekit reads {SUMMARY_SCHEMA_VERSION}"
        )
    try:
        return WindowSummary.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors()[:3]:
            where = ".".join(str(part) for part in error["loc"]) or "(summary)"
            problems.append(f"field '{where}': {error['msg']}")
        more = f" (and {exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
        raise SummaryError(one_line("window summary does not match its schema: " + "; ".join(problems) + more)) from None
