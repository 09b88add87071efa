"""What devices send: the fleet service ingests the inference components' window summaries and shows them per device.

:class:`TelemetryIngest` subscribes to ``devices/+/#`` and stores every window summary (an
:class:`edgekit.wire.summary.WindowSummary`, each validated on its own: one that doesn't match is counted as
malformed and the rest of its batch goes on) in the fleet's SQLite state, de-duplicated by (thing, component, window): a
redelivered summary (at-least-once uplink) counts once, its deliveries are counted (the tables and their queries
are :class:`~edgekit.fleet.state.FleetState`'s). Acknowledged means committed: a batch's messages are acknowledged
to the broker (their PUBACKs sent) only after its transaction committed; a message of a batch the service did not
live to commit is delivered again by the broker (the service's persistent session) and stored once; a batch the
database can't take now (PostgreSQL away: :class:`~edgekit.fleet.errors.StateUnavailableError`) is kept,
unacknowledged, and written once it is back — the broker sends no more than its in-flight window meanwhile. :func:`edgekit.fleet.view.fleet_view` shows them per device and per
thing group; :func:`accounted` checks a loop's :class:`~edgekit.edge.loop.Checkpoint`
against what arrived. See docs/local-fleet.md (telemetry).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from edgekit.fleet.errors import StateUnavailableError
from edgekit.fleet.state import FleetState
from edgekit.mqtt import topics
from edgekit.mqtt.client import MqttClient, MqttMessage
from edgekit.mqtt.tls import SERVICE_IDENTITY
from edgekit.wire.summary import SummaryError, WindowSummary, read_summary

__all__ = ["SHARE_GROUP", "TELEMETRY_CLIENT_ID", "Accounted", "TelemetryIngest", "accounted"]

log = logging.getLogger(__name__)

TELEMETRY_FILTER: Final = "devices/+/#"
SHARE_GROUP: Final = "edgekit-fleet"
"""The shared-subscription group the telemetry ingests of one fleet's service processes join (on PostgreSQL)."""
TELEMETRY_CLIENT_ID: Final = f"{SERVICE_IDENTITY}-telemetry"
"""The fleet service's MQTT client id for the devices' telemetry; its Jobs bridge and presence tracker keep
``edgekit-fleet-service`` (a connection each: a Jobs request never waits behind the telemetry backlog)."""
FLUSH_AT: Final = 64  # messages waiting: commit them now, before the broker's in-flight window (100) fills


@dataclass
class IngestStats:
    messages: int = 0
    windows: int = 0
    duplicates: int = 0
    malformed: int = 0
    unanswered: int = 0
    retries: int = 0  # batches written again after a failure (the database away): kept unacknowledged meanwhile


def _window_row(thing: str, summary: WindowSummary, now: float) -> tuple[Any, ...]:
    fallback = summary.fallback
    if fallback is None:  # most summaries (no cloud fallback): nothing to write out as JSON
        errors, breaker, fallback_ms = "{}", None, "{}"
    else:
        errors = json.dumps(fallback.errors, sort_keys=True)
        breaker = fallback.breaker
        fallback_ms = json.dumps(fallback.latency_ms.model_dump(exclude_none=True), sort_keys=True)
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
        errors,
        breaker,
        fallback_ms,
        summary.uplink.pending,
        summary.uplink.sent,
        now,
    )


class _Clock(Protocol):
    def now(self) -> float: ...


class TelemetryIngest:
    """Subscribes ``client`` to the devices' telemetry and writes it to ``state`` in batches (every ``flush_s``).

    ``share``: subscribe as a member of this shared-subscription group (``$share/<share>/devices/+/#``): several
    fleet service processes on one PostgreSQL state each get part of the summaries (see docs/local-fleet.md)."""

    def __init__(
        self,
        state: FleetState,
        client: MqttClient,
        *,
        flush_s: float = 0.2,
        clock: _Clock | None = None,
        share: str | None = None,
    ) -> None:
        self.state = state
        self.share = share
        self.client = client
        self.flush_s = flush_s
        self.stats = IngestStats()
        self._clock = clock
        self._pending: list[tuple[MqttClient, MqttMessage]] = []  # with the client that acknowledges it
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def _now(self) -> float:
        return self._clock.now() if self._clock is not None else time.time()

    @property
    def topic_filter(self) -> str:
        """What the ingest subscribes to (``$share/<share>/devices/+/#`` in a shared group)."""
        return topics.shared(self.share, TELEMETRY_FILTER)

    async def start(self) -> None:
        await self.client.subscribe(self.topic_filter, 1, self._on_message, manual_ack=True)
        self._task = asyncio.get_running_loop().create_task(self._flush_loop(), name="fleet-telemetry")

    def take_over(self, other: MqttClient) -> None:
        """Store what ``other`` still gets on the telemetry topics, acknowledged on ``other``, without subscribing it:
        the queue of ``other``'s persistent session from a run where it had the subscription (the fleet service's
        one connection before its telemetry got one of its own). Call before ``other`` connects; then unsubscribe
        it with :meth:`unsubscribe_old` once connected, so that the broker queues it no more."""
        other.handle(TELEMETRY_FILTER, functools.partial(self._take, other), manual_ack=True)

    async def unsubscribe_old(self, other: MqttClient) -> None:
        """Unsubscribe ``other`` (connected, taken over) from the telemetry filters its session may hold, shared or
        not; what the broker had already queued for it still comes, and is stored (:meth:`take_over`)."""
        for topic_filter in dict.fromkeys((TELEMETRY_FILTER, topics.shared(SHARE_GROUP, TELEMETRY_FILTER), self.topic_filter)):
            await other.unsubscribe(topic_filter, keep_handlers=True)

    async def leave(self) -> None:
        """Unsubscribe (a member of a shared group leaving it: the broker queues it no share while it is gone); what
        already arrived is still stored and acknowledged by :meth:`stop`."""
        await self.client.unsubscribe(self.topic_filter)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self.flush()

    def _on_message(self, message: MqttMessage) -> None:
        self._take(self.client, message)

    def _take(self, client: MqttClient, message: MqttMessage) -> None:
        """Hold ``message`` (to be acknowledged on ``client``, the connection it came on) for the next batch."""
        if len(message.topic.split("/")) < 3:
            client.ack(message)
            return
        self._pending.append((client, message))
        self.stats.messages += 1
        if len(self._pending) >= FLUSH_AT:
            self._wake.set()  # the broker sends no more than its in-flight window until these are acknowledged

    async def _flush_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_s)
            self._wake.clear()
            batch, self._pending = self._pending, []  # taken on the loop: nothing appended meanwhile is missed
            try:
                await asyncio.to_thread(self._write, batch)  # a commit waiting on the disk must not hold up the loop
            except StateUnavailableError:  # the database is away (said once per outage): kept, unacknowledged
                self._pending = batch + self._pending
                self.stats.retries += 1
                await asyncio.sleep(self.flush_s)  # the broker sends no more than its in-flight window meanwhile
                continue
            except Exception:  # never let one bad batch end the ingest; it is tried again, unacknowledged meanwhile
                log.exception("fleet telemetry: a batch failed; trying it again")
                self._pending = batch + self._pending
                self.stats.retries += 1
                await asyncio.sleep(self.flush_s)
                continue
            self._ack(batch)

    @staticmethod
    def _ack(batch: list[tuple[MqttClient, MqttMessage]]) -> None:
        for client, message in batch:
            client.ack(message)

    def flush(self) -> int:
        """Write what arrived since the last flush in one transaction, then acknowledge it; returns the new windows."""
        batch, self._pending = self._pending, []
        new = self._write(batch)
        self._ack(batch)
        return new

    def _write(self, batch: list[tuple[MqttClient, MqttMessage]]) -> int:
        if not batch:
            return 0
        now = self._now()
        rows: list[tuple[Any, ...]] = []
        per_thing: dict[str, Counter[str]] = {}
        for _client, message in batch:
            topic, payload = message.topic, message.payload
            thing = topic.split("/")[1]
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
        new, duplicates = self.state.record_telemetry(rows, per_thing, now)
        self.stats.duplicates += duplicates
        self.stats.windows += new
        return new


# --------------------------------------------------------------------------- accounting for it


class _Point(Protocol):  # read-only members: a frozen dataclass (edgekit.edge.loop.Checkpoint) is one
    @property
    def thing(self) -> str: ...
    @property
    def component(self) -> str: ...
    @property
    def run(self) -> str: ...
    @property
    def window(self) -> int: ...


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
    for p in points:
        expected += p.window
        got = state.window_totals(p.thing, p.component, p.run, p.window)
        windows += got.windows
        readings += got.readings
        duplicates += got.deliveries - got.windows
    return Accounted(readings, windows, expected, duplicates)
