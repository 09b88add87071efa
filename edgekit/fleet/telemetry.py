"""What devices send: the fleet service ingests the inference components' window summaries and shows them per device.

:class:`TelemetryIngest` subscribes to ``devices/+/#`` and stores every window summary (an
:class:`edgekit.wire.summary.WindowSummary`, each validated on its own: one that doesn't match is counted as
malformed and the rest of its batch goes on) in the fleet's SQLite state, de-duplicated by (thing, component, window): a
redelivered summary (at-least-once uplink) counts once, its deliveries are counted. :func:`telemetry_view` reads
them back per device and per thing group; :func:`accounted` checks a loop's :class:`~edgekit.edge.loop.Checkpoint`
against what arrived. See docs/local-fleet.md (telemetry).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from edgekit.fleet.state import FleetState
from edgekit.mqtt.client import Message, MqttClient
from edgekit.wire.summary import SummaryError, WindowSummary, read_summary

__all__ = ["DeviceTelemetry", "GroupTelemetry", "TelemetryIngest", "TelemetryView", "accounted", "telemetry_view"]

log = logging.getLogger(__name__)

TELEMETRY_FILTER: Final = "devices/+/#"


@dataclass
class IngestStats:
    messages: int = 0
    windows: int = 0
    duplicates: int = 0
    malformed: int = 0
    unanswered: int = 0


def _window_row(thing: str, summary: WindowSummary, now: float) -> tuple[Any, ...]:
    fallback = summary.fallback
    return (
        thing,
        summary.component,
        f"{summary.run}/{summary.window}",
        summary.run,
        summary.window,
        summary.window_start,
        summary.window_end,
        summary.count,
        summary.answered_by.local,
        summary.answered_by.cloud,
        summary.answered_by.none,
        json.dumps(fallback.errors if fallback is not None else {}, sort_keys=True),
        fallback.breaker if fallback is not None else None,
        json.dumps(fallback.latency_ms.model_dump(exclude_none=True) if fallback is not None else {}, sort_keys=True),
        summary.uplink.pending,
        summary.uplink.sent,
        now,
    )


class _Clock(Protocol):
    def now(self) -> float: ...


class TelemetryIngest:
    """Subscribes ``client`` to the devices' telemetry and writes it to ``state`` in batches (every ``flush_s``)."""

    def __init__(self, state: FleetState, client: MqttClient, *, flush_s: float = 0.2, clock: _Clock | None = None) -> None:
        self.state = state
        self.client = client
        self.flush_s = flush_s
        self.stats = IngestStats()
        self._clock = clock
        self._pending: list[tuple[str, str, bytes]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else time.time()

    async def start(self) -> None:
        await self.client.subscribe(TELEMETRY_FILTER, 1, self._on_message)
        self._task = asyncio.get_running_loop().create_task(self._flush_loop(), name="fleet-telemetry")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.flush()

    def _on_message(self, message: Message) -> None:
        parts = message.topic.split("/")
        if len(parts) < 3:
            return
        self._pending.append((parts[1], message.topic, bytes(message.payload)))
        self.stats.messages += 1

    async def _flush_loop(self) -> None:
        while True:
            await asyncio.sleep(self.flush_s)
            try:
                batch, self._pending = self._pending, []  # taken on the loop: nothing appended meanwhile is missed
                await asyncio.to_thread(self._write, batch)  # a commit waiting on the disk must not hold up the loop
            except Exception:  # never let one bad batch end the ingest
                log.exception("fleet telemetry: a batch failed")

    def flush(self) -> int:
        """Write what arrived since the last flush in one transaction; returns how many new windows it stored."""
        batch, self._pending = self._pending, []
        return self._write(batch)

    def _write(self, batch: list[tuple[str, str, bytes]]) -> int:
        if not batch:
            return 0
        now = self._now()
        rows: list[tuple[Any, ...]] = []
        per_thing: dict[str, Counter[str]] = {}
        for thing, topic, payload in batch:
            counts = per_thing.setdefault(thing, Counter())
            counts["messages"] += 1
            if topic.endswith("/unanswered"):
                counts["unanswered"] += 1
                self.stats.unanswered += 1
                continue
            try:
                summary = read_summary(payload)
            except SummaryError as exc:  # this one is refused; the rest of the batch goes on
                log.debug("fleet telemetry: %s sent a malformed window summary on %s: %s", thing, topic, exc)
                counts["malformed"] += 1
                self.stats.malformed += 1
                continue
            if summary is None:
                continue  # other device data: counted as a message only
            rows.append(_window_row(thing, summary, now))
        new = 0
        with self.state.transaction() as db:
            for row in rows:
                cur = db.execute(
                    "INSERT INTO telemetry_windows(thing, component, window, run, seq, window_start, window_end, readings,"
                    " local, cloud, none, fallback_errors, breaker, fallback_ms, pending, uplink_sent, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT(thing, component, window) DO UPDATE SET deliveries = deliveries + 1 RETURNING deliveries",
                    row,
                )
                if cur.fetchone()[0] == 1:
                    new += 1
                else:
                    self.stats.duplicates += 1
            for thing, counts in per_thing.items():
                db.execute(
                    "INSERT INTO telemetry_things(thing, messages, unanswered_messages, malformed, last_seen) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT(thing) DO UPDATE SET messages = messages + excluded.messages,"
                    " unanswered_messages = unanswered_messages + excluded.unanswered_messages,"
                    " malformed = malformed + excluded.malformed, last_seen = excluded.last_seen",
                    (thing, counts["messages"], counts["unanswered"], counts["malformed"], now),
                )
        self.stats.windows += new
        return new


# --------------------------------------------------------------------------- reading it back


@dataclass
class DeviceTelemetry:
    """What one device's inference components reported (their window summaries, de-duplicated)."""

    thing: str
    groups: list[str]
    windows: int = 0
    readings: int = 0
    local: int = 0
    cloud: int = 0
    none: int = 0
    fallback_errors: dict[str, int] = field(default_factory=dict)
    breaker: str | None = None
    pending: int = 0
    uplink_messages: int = 0
    duplicates: int = 0
    last_seen: float | None = None


@dataclass
class GroupTelemetry:
    group: str
    devices: int = 0
    reporting: int = 0
    windows: int = 0
    readings: int = 0
    local: int = 0
    cloud: int = 0
    none: int = 0
    fallback_errors: dict[str, int] = field(default_factory=dict)
    breakers: dict[str, int] = field(default_factory=dict)
    pending: int = 0
    uplink_messages: int = 0
    duplicates: int = 0
    last_seen: float | None = None


@dataclass
class TelemetryView:
    devices: list[DeviceTelemetry]
    groups: list[GroupTelemetry]


def telemetry_view(state: FleetState) -> TelemetryView:
    """Per device and per thing group: readings, answers, fallback errors, breaker, pending, uplink, last seen."""
    devices: dict[str, DeviceTelemetry] = {}
    with state.read() as db:
        members: dict[str, list[str]] = {}
        for group, thing in db.execute("SELECT group_name, thing FROM group_members ORDER BY group_name"):
            members.setdefault(thing, []).append(group)
        for (thing,) in db.execute("SELECT name FROM things ORDER BY name"):
            devices[thing] = DeviceTelemetry(thing, members.get(thing, []))
        for row in db.execute(
            "SELECT thing, count(*), sum(readings), sum(local), sum(cloud), sum(none), sum(deliveries) - count(*)"
            " FROM telemetry_windows GROUP BY thing"
        ):
            d = devices.setdefault(row[0], DeviceTelemetry(row[0], members.get(row[0], [])))
            d.windows, d.readings, d.local, d.cloud, d.none, d.duplicates = (int(v or 0) for v in row[1:])
        errors: dict[str, Counter[str]] = {}
        for thing, text in db.execute("SELECT thing, fallback_errors FROM telemetry_windows WHERE fallback_errors != '{}'"):
            errors.setdefault(thing, Counter()).update(json.loads(text))
        for thing, counts in errors.items():
            devices[thing].fallback_errors = dict(sorted(counts.items()))
        for thing, breaker, pending in db.execute(
            "SELECT w.thing, w.breaker, w.pending FROM telemetry_windows w JOIN"
            " (SELECT thing, component, max(window_end) AS latest FROM telemetry_windows GROUP BY thing, component) l"
            " ON w.thing = l.thing AND w.component = l.component AND w.window_end = l.latest"
        ):
            d = devices[thing]
            d.breaker = breaker if d.breaker in (None, "closed") else d.breaker
            d.pending += int(pending or 0)
        for thing, messages, last_seen in db.execute("SELECT thing, messages, last_seen FROM telemetry_things"):
            d = devices.setdefault(thing, DeviceTelemetry(thing, members.get(thing, [])))
            d.uplink_messages, d.last_seen = int(messages), last_seen
    groups: dict[str, GroupTelemetry] = {}
    for d in devices.values():
        for name in d.groups:
            g = groups.setdefault(name, GroupTelemetry(name))
            g.devices += 1
            g.reporting += 1 if d.windows else 0
            g.windows += d.windows
            g.readings += d.readings
            g.local += d.local
            g.cloud += d.cloud
            g.none += d.none
            g.pending += d.pending
            g.uplink_messages += d.uplink_messages
            g.duplicates += d.duplicates
            for kind, n in d.fallback_errors.items():
                g.fallback_errors[kind] = g.fallback_errors.get(kind, 0) + n
            if d.breaker:
                g.breakers[d.breaker] = g.breakers.get(d.breaker, 0) + 1
            if d.last_seen is not None:
                g.last_seen = max(g.last_seen or 0.0, d.last_seen)
    return TelemetryView(sorted(devices.values(), key=lambda d: d.thing), sorted(groups.values(), key=lambda g: g.group))


class _Point(Protocol):
    thing: str
    component: str
    run: str
    window: int


@dataclass(frozen=True)
class Accounted:
    """What arrived of the windows a set of checkpoints covers."""

    readings: int
    windows: int
    expected_windows: int
    duplicates: int

    @property
    def missing_windows(self) -> int:
        return self.expected_windows - self.windows


def accounted(state: FleetState, points: Iterable[_Point]) -> Accounted:
    """Sum the stored windows 1..``window`` of each checkpoint's run (what a loop said it produced up to then)."""
    readings = windows = expected = duplicates = 0
    with state.read() as db:
        for p in points:
            expected += p.window
            row = db.execute(
                "SELECT count(*), coalesce(sum(readings), 0), coalesce(sum(deliveries), 0) FROM telemetry_windows"
                " WHERE thing = ? AND component = ? AND run = ? AND seq <= ?",
                (p.thing, p.component, p.run, p.window),
            ).fetchone()
            windows += int(row[0])
            readings += int(row[1])
            duplicates += int(row[2]) - int(row[0])
    return Accounted(readings, windows, expected, duplicates)
