"""The fleet service on MQTT: the AWS IoT Jobs API (Greengrass namespace) answered from a :class:`FleetService`.

::

    bridge = FleetMqttBridge(service, await connect(broker.url, "edgekit-fleet-service", tls=material.service))
    await bridge.start()

See docs/local-fleet.md (deployments as jobs: the MQTT bridge).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import zlib
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, Literal, ParamSpec, TypeVar

from edgekit.errors import ConfigError
from edgekit.fleet.errors import JobRejected, StateUnavailableError
from edgekit.fleet.jobs import TERMINAL_STATUSES
from edgekit.fleet.service import ExecutionEvent, FleetService, Notification
from edgekit.mqtt import topics
from edgekit.mqtt.client import MqttClient, MqttMessage
from edgekit.mqtt.errors import BrokerError, PayloadError
from edgekit.mqtt.payloads import (
    MAX_PAYLOAD_BYTES,
    DescribeJobExecutionRequest,
    DescribeJobExecutionResponse,
    DeviceStatus,
    GetPendingJobExecutionsRequest,
    GetPendingJobExecutionsResponse,
    JobExecutionsChanged,
    JobExecutionState,
    JobExecutionStatus,
    JobExecutionSummary,
    JobsRejected,
    RejectedCode,
    UpdateJobExecutionRequest,
    UpdateJobExecutionResponse,
    WireMessage,
    decode,
)
from edgekit.parsing import ParseError, loads_json

__all__ = ["BridgeStats", "FleetMqttBridge", "parse_member"]

log = logging.getLogger(__name__)

_PENDING: Final = ("QUEUED", "IN_PROGRESS")
_NOTIFY_ON: Final = frozenset({"notified", "canceled", "timed_out"})


class _Refused(Exception):
    """A request refused before it reached the service (payload, topic)."""

    def __init__(self, code: RejectedCode, message: str) -> None:
        super().__init__(message)
        self.code: RejectedCode = code
        self.message = message


@dataclass(frozen=True)
class _Request:
    topic: str
    thing: str
    kind: Literal["get", "update", "get_pending"]
    job_id: str | None
    payload: bytes


@dataclass
class BridgeStats:
    """Counters of a running bridge (for logs, benchmarks and tests)."""

    requests: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    largest_batch: int = 0
    notifications: int = 0
    statuses: int = 0
    dropped_statuses: int = 0
    publish_failures: int = 0
    unanswered: int = 0  # requests left without a reply while the database was away (the devices ask again)


def _client_token(payload: bytes) -> str | None:
    """The ``clientToken`` of a request, if it can be read at all (echoed even in the refusal of a bad request)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        data = loads_json(payload, duplicate_keys=True)
    except ValueError:  # ParseError, or anything else the payload makes a parser raise: no token
        return None
    token = data.get("clientToken") if isinstance(data, dict) else None
    return token if isinstance(token, str) and 1 <= len(token) <= 64 else None


def parse_member(text: str, flag: str = "--member") -> tuple[int, int]:
    """``I/N`` (0-based: this is process I of N answering the Jobs requests) as ``(I, N)``; one line when it is not."""
    index, _, count = text.partition("/")
    try:
        member = (int(index), int(count))
    except ValueError:
        raise ConfigError(
            f"{flag} {text!r}: give I/N, such as 0/2 (this process answers the Jobs requests of things I of N)"
        ) from None
    if not 0 <= member[0] < member[1]:
        raise ConfigError(f"{flag} {text!r}: I must be 0 to N - 1 (0-based), and N at least 1")
    return member


_M = TypeVar("_M", bound=WireMessage)
_P = ParamSpec("_P")
_R = TypeVar("_R")


def _decode_request(model: type[_M], payload: bytes) -> _M:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise _Refused(
            "InvalidRequest", f"the request is {len(payload)} bytes, over AWS IoT Core's {MAX_PAYLOAD_BYTES}-byte limit"
        )
    try:
        loads_json(payload)
    except ParseError as exc:
        raise _Refused("InvalidJson", f"the request {exc}") from None
    try:
        # Jobs requests from a real Greengrass nucleus carry no schemaVersion: accept them as the current one.
        return decode(model, payload, require_version=False)
    except PayloadError as exc:
        raise _Refused("InvalidRequest", str(exc)) from exc


class FleetMqttBridge:
    """Serves the IoT Jobs MQTT API of a :class:`FleetService` over ``client``; see docs/local-fleet.md (the MQTT bridge).

    ``tick_s``: how often the rollout and the timeouts are checked (keep it at most a few seconds; the rollout
    keeps its full rate up to 10 s). ``max_batch``: requests handled per SQLite transaction.
    ``max_queued_per_thing``: requests of one thing waiting at once before ``RequestThrottled``.
    ``publish_timeout_s``: how long one reply or notification may wait for its PUBACK.
    ``member``: (index, count): this is one of ``count`` fleet service processes on one PostgreSQL state, and it
    answers the requests of the things whose name hashes (CRC-32) to ``index`` — each thing's requests in order, by
    one process. Not a shared subscription: mosquitto 2.0 gives a ``$share/...`` subscription no message of a topic
    that starts with ``$`` (the Jobs topics do), so every process gets every request and leaves the others' alone.

    Give ``client`` to the control plane only (the presence tracker may share it): the fleet service's telemetry
    ingest has a connection of its own (:data:`~edgekit.fleet.telemetry.TELEMETRY_CLIENT_ID`), since mosquitto
    queues a client's messages in one queue and sends it at most ``max_inflight_messages`` (100) unacknowledged — a
    request on a connection that also carries the telemetry waits behind its whole backlog.

    The fleet state is read and written in one thread of the bridge's own, never on the event loop: a database that
    is slow or away (a PostgreSQL connection attempt waits up to 5 s) holds up the requests, the ticks and the
    notifications — in the order they came, one at a time — while the loop goes on serving MQTT (keepalives too).
    """

    FILTERS: Final = (topics.all_job_gets(), topics.all_job_updates(), topics.all_get_pending(), topics.all_device_status())
    """What the bridge subscribes ``client`` to: the Jobs requests and the device status reports of every thing."""

    def __init__(
        self,
        service: FleetService,
        client: MqttClient,
        *,
        tick_s: float = 1.0,
        max_batch: int = 256,
        max_queued_per_thing: int = 16,
        publish_timeout_s: float = 30.0,
        member: tuple[int, int] | None = None,
    ) -> None:
        if tick_s <= 0:
            raise ValueError(f"tick_s must be positive, got {tick_s}")
        if max_batch < 1 or max_queued_per_thing < 1:
            raise ValueError("max_batch and max_queued_per_thing must be at least 1")
        self.service = service
        self.client = client
        self.tick_s = tick_s
        self.max_batch = max_batch
        self.max_queued_per_thing = max_queued_per_thing
        self.publish_timeout_s = publish_timeout_s
        if member is not None and not 0 <= member[0] < member[1]:
            raise ValueError(f"member must be (index, count) with 0 <= index < count, got {member}")
        self.member = member
        self.stats = BridgeStats()
        self._status: dict[str, DeviceStatus] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._queued: Counter[str] = Counter()
        self._dirty: set[str] = set()
        self._flush_handle: asyncio.Handle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._db: ThreadPoolExecutor | None = None  # the one thread the state is used in (FIFO: order kept)
        self._worker: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._filters: list[str] = []
        self._running = False
        self._listening = False

    # ------------------------------------------------------------------ public API

    @property
    def running(self) -> bool:
        return self._running

    @property
    def last_status(self) -> Mapping[str, DeviceStatus]:
        """The latest :class:`DeviceStatus` each thing reported (a read-only view, live)."""
        return MappingProxyType(self._status)

    async def start(self) -> None:
        """Subscribe to the Jobs requests and device status of every thing, then start handling and ticking."""
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._db = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fleet-mqtt-state")
        self._running = True
        if not self._listening:  # FleetService has no way to unsubscribe: one listener per bridge, idle once stopped
            self.service.subscribe(self._on_event)
            self._listening = True
        self._worker = self._loop.create_task(self._work(), name="fleet-mqtt-requests")
        try:
            for topic_filter in self.FILTERS:
                handler = self._on_status if topic_filter == topics.all_device_status() else self._on_request
                await self.client.subscribe(topic_filter, 1, handler)
                self._filters.append(topic_filter)
        except BaseException:
            await self.stop()
            raise
        try:
            queued = await self._in_db(self.service.state.executions, statuses=("QUEUED",))
        except BaseException:
            await self.stop()
            raise
        released = {e.thing for e in queued if e.notified_at is not None}
        self._mark_dirty(*released)
        self._ticker = self._loop.create_task(self._tick_loop(), name="fleet-mqtt-tick")
        log.info(
            "fleet MQTT bridge started (client %s, tick %g s); %d thing(s) notified again",
            self.client.client_id,
            self.tick_s,
            len(released),
        )

    async def stop(self, *, grace_s: float = 2.0, unsubscribe: bool = False) -> None:
        """Stop ticking and handling (the batch in hand is finished) and let replies in flight go out for ``grace_s``.

        The subscriptions stay unless ``unsubscribe``: with a persistent session the broker goes on queueing the
        devices' requests for the service until it is back (start the next bridge on a client that is not
        connected yet, so its handlers are in place when the queue is delivered); disconnect the client to stop
        receiving them. A stopped bridge ignores what its handlers still get.
        """
        if not self._running:
            return
        self._running = False
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        if self._worker is not None:
            self._queue.put_nowait(None)
            try:
                await asyncio.wait_for(self._worker, grace_s)
            except TimeoutError:
                log.warning("fleet MQTT bridge: request handling did not stop within %g s", grace_s)
            self._worker = None
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._dirty.clear()
        while not self._queue.empty():  # requests that came after the stop: the device asks again
            self._queue.get_nowait()
        self._queued.clear()
        if unsubscribe:
            for topic_filter in self._filters:
                with contextlib.suppress(BrokerError, TimeoutError):
                    await self.client.unsubscribe(topic_filter, timeout=grace_s)
        self._filters.clear()
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=grace_s)
            for task in late:
                task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        if self._db is not None and self._loop is not None:
            # what the state thread runs now (a cancelled tick's transaction) finishes first: the state is idle after
            # stop, for whoever closes it; past grace_s (a connection attempt waiting) it finishes on its own
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._loop.run_in_executor(self._db, lambda: None), grace_s)
            self._db.shutdown(wait=False, cancel_futures=True)
            self._db = None
        log.info("fleet MQTT bridge stopped")

    def tick(self) -> list[Notification]:
        """One tick: release what the rollout allows (one transaction), expire timed-out executions, notify.

        The tick task does this every ``tick_s`` (the state in the bridge's thread); a test on the event loop may call
        it directly (the state in the caller's thread). Returns the released executions.
        """
        released = self._release()
        self._mark_dirty(*(n.thing for n in released))
        self._flush_notifications()
        return released

    def _release(self) -> list[Notification]:
        with self.service.state.transaction():
            released = self.service.notify_due()
        self.service.expire()
        return released

    async def _in_db(self, fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
        """``fn(*args, **kwargs)`` in the bridge's state thread, after everything handed to it before."""
        if self._db is None or self._loop is None:
            raise RuntimeError("the fleet MQTT bridge is not running")
        return await self._loop.run_in_executor(self._db, functools.partial(fn, *args, **kwargs))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ receiving

    def _on_request(self, message: MqttMessage) -> None:
        """A Jobs request arrived (event loop): queue it for the next batch, or refuse it now."""
        if not self._running:
            return
        parsed = topics.parse(message.topic)
        if parsed is None or parsed.reply is not None or parsed.kind not in ("get", "update", "get_pending"):
            log.debug("fleet MQTT bridge: ignoring %s", message.topic)
            return
        if self.member is not None and zlib.crc32(parsed.thing.encode()) % self.member[1] != self.member[0]:
            return  # another fleet service process's thing
        self.stats.requests += 1
        if self._queued[parsed.thing] >= self.max_queued_per_thing:
            self._reject(
                message.topic, "RequestThrottled", f"{parsed.thing} has too many requests waiting; retry later", message.payload
            )
            return
        self._queued[parsed.thing] += 1
        self._queue.put_nowait(_Request(message.topic, parsed.thing, parsed.kind, parsed.job_id, message.payload))

    def _on_status(self, message: MqttMessage) -> None:
        if not self._running:
            return
        parsed = topics.parse(message.topic)
        if parsed is None or parsed.kind != "status":
            return
        try:
            status = decode(DeviceStatus, message.payload)
        except PayloadError as exc:
            self.stats.dropped_statuses += 1
            log.warning("fleet MQTT bridge: dropped a status report of %s: %s", parsed.thing, exc)
            return
        if status.thing_name != parsed.thing:
            self.stats.dropped_statuses += 1
            log.warning("fleet MQTT bridge: status on %s names thing '%s'; dropped", message.topic, status.thing_name)
            return
        previous = self._status.get(parsed.thing)
        if previous is not None and (previous.timestamp, previous.sequence_number) > (status.timestamp, status.sequence_number):
            return  # an older report arriving late
        self._status[parsed.thing] = status
        self.stats.statuses += 1

    def _on_event(self, event: ExecutionEvent) -> None:
        """A committed execution change (any thread): notify the thing if its pending list changed."""
        loop = self._loop
        if not self._running or loop is None or loop.is_closed():
            return
        if not (event.kind in _NOTIFY_ON or (event.kind == "updated" and event.status in TERMINAL_STATUSES)):
            return
        try:
            here = asyncio.get_running_loop() is loop
        except RuntimeError:
            here = False
        if here:
            self._on_pending_changed(event)  # at once: the flush that follows this batch or tick includes it
        else:
            loop.call_soon_threadsafe(self._on_pending_changed, event)

    def _on_pending_changed(self, event: ExecutionEvent) -> None:
        if event.kind == "canceled" and self._running:
            self._spawn(self._on_canceled(event))
            return
        self._mark_dirty(event.thing)

    async def _on_canceled(self, event: ExecutionEvent) -> None:
        try:
            record = await self._in_db(self.service.state.get_execution, event.job_id, event.thing)
        except StateUnavailableError:
            record = None  # can't tell: a notification too many is harmless, one too few is not
        except RuntimeError:  # stopped meanwhile
            return
        if record is not None and record.notified_at is None:
            return  # the device never saw it: its pending list did not change
        self._mark_dirty(event.thing)

    # ------------------------------------------------------------------ handling

    async def _work(self) -> None:
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            done = False
            while len(batch) < self.max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    done = True
                    break
                batch.append(item)
            for request in batch:
                self._queued[request.thing] -= 1
                if self._queued[request.thing] <= 0:
                    del self._queued[request.thing]
            try:
                replies = await self._in_db(self._handle_batch, batch)
            except StateUnavailableError:  # the database is away (said once per outage): no reply, the devices ask again
                self.stats.unanswered += len(batch)
                replies = []
            except Exception:  # never let one batch end the loop
                log.exception("fleet MQTT bridge: a batch of %d request(s) failed", len(batch))
                replies = []
            for topic, reply in replies:
                self._send(topic, reply)
            self._flush_notifications()
            if done:
                return
            await asyncio.sleep(0)  # let the loop read more messages between batches

    def _handle_batch(self, batch: list[_Request]) -> list[tuple[str, WireMessage]]:
        self.stats.batches += 1
        self.stats.largest_batch = max(self.stats.largest_batch, len(batch))
        try:
            with self.service.state.transaction():
                return [self._handle(request) for request in batch]
        except StateUnavailableError:
            raise  # not a request's fault: one by one would fail the same
        except Exception:
            log.exception("fleet MQTT bridge: a request failed; handling the batch of %d again one by one", len(batch))
        replies: list[tuple[str, WireMessage]] = []
        for request in batch:
            try:
                with self.service.state.transaction():
                    replies.append(self._handle(request))
            except Exception as exc:
                log.exception("fleet MQTT bridge: %s failed", request.topic)
                try:  # a bad request costs only its own answer, never the rest of the batch
                    replies.append(
                        self._rejection(request.topic, "InternalError", f"{type(exc).__name__}: {exc}", request.payload)
                    )
                except Exception:
                    log.exception("fleet MQTT bridge: can't build the refusal for %s", request.topic)
        return replies

    def _handle(self, request: _Request) -> tuple[str, WireMessage]:
        """The reply (topic and message) to one request; raises only on an unexpected failure."""
        try:
            if request.kind == "get":
                return self._describe(request)
            if request.kind == "update":
                return self._update(request)
            return self._pending(request)
        except _Refused as exc:
            log.info("fleet MQTT bridge: refused %s from %s: %s %s", request.kind, request.thing, exc.code, exc.message)
            return self._rejection(request.topic, exc.code, exc.message, request.payload)
        except JobRejected as exc:
            log.debug("fleet MQTT bridge: %s of %s rejected: %s", request.kind, request.thing, exc)
            return self._rejection(request.topic, exc.code, exc.reason, request.payload, exc.execution_state)

    def _now(self) -> int:
        return int(self.service.clock.now())

    def _describe(self, request: _Request) -> tuple[str, WireMessage]:
        body = _decode_request(DescribeJobExecutionRequest, request.payload)
        execution = self.service.describe(
            request.thing, request.job_id or topics.NEXT_JOB, include_document=body.include_job_document
        )
        self.stats.accepted += 1
        reply = DescribeJobExecutionResponse(execution=execution, timestamp=self._now(), client_token=body.client_token)
        return topics.accepted(request.topic), reply

    def _update(self, request: _Request) -> tuple[str, WireMessage]:
        if request.job_id is None or request.job_id == topics.NEXT_JOB:
            raise _Refused("InvalidTopic", "UpdateJobExecution needs a job id; '$next' is for DescribeJobExecution only")
        body = _decode_request(UpdateJobExecutionRequest, request.payload)
        result = self.service.update_execution(
            request.thing, request.job_id, body.status, body.status_details, expected_version=body.expected_version
        )
        self.stats.accepted += 1
        reply = UpdateJobExecutionResponse(
            execution_state=result.state if body.include_job_execution_state else None,
            job_document=self.service.job_document(request.job_id) if body.include_job_document else None,
            timestamp=self._now(),
            client_token=body.client_token,
        )
        return topics.accepted(request.topic), reply

    def _pending(self, request: _Request) -> tuple[str, WireMessage]:
        body = _decode_request(GetPendingJobExecutionsRequest, request.payload)
        pending = self.service.pending_jobs(request.thing)
        self.stats.accepted += 1
        reply = GetPendingJobExecutionsResponse(
            in_progress_jobs=pending.in_progress,
            queued_jobs=pending.queued,
            timestamp=self._now(),
            client_token=body.client_token,
        )
        return topics.accepted(request.topic), reply

    def _rejection(
        self, topic: str, code: RejectedCode, message: str, payload: bytes, state: JobExecutionState | None = None
    ) -> tuple[str, WireMessage]:
        self.stats.rejected[code] += 1
        reply = JobsRejected(
            code=code, message=message[:1024], timestamp=self._now(), client_token=_client_token(payload), execution_state=state
        )
        return topics.rejected(topic), reply

    def _reject(self, topic: str, code: RejectedCode, message: str, payload: bytes) -> None:
        self._send(*self._rejection(topic, code, message, payload))

    # ------------------------------------------------------------------ sending

    def _send(self, topic: str, message: WireMessage) -> None:
        self._spawn(self._publish(topic, message))

    async def _publish(self, topic: str, message: WireMessage) -> None:
        try:
            await self.client.publish(topic, message, qos=1, timeout=self.publish_timeout_s)
        except Exception as exc:  # broker gone, refused topic, oversized reply: log it, never end the loop
            self.stats.publish_failures += 1
            log.warning("fleet MQTT bridge: could not publish to %s: %s", topic, exc)

    def _mark_dirty(self, *things: str) -> None:
        if not things or not self._running or self._loop is None:
            return
        self._dirty.update(things)
        if self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush_notifications)

    def _flush_notifications(self) -> None:
        """Send each thing whose pending list changed its list (one message per thing, however many changes): read
        in the state thread after what was handed to it before, then sent from the loop."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        things, self._dirty = self._dirty, set()
        if self._running and things:
            self._spawn(self._notify(sorted(things)))

    async def _notify(self, things: list[str]) -> None:
        try:
            messages, away = await self._in_db(self._notifications, things)
        except RuntimeError:  # stopped meanwhile
            return
        if not self._running:
            return
        self._dirty.update(away)  # the database is away: notified by a flush once it is back (the next tick's)
        for topic, message in messages:
            self.stats.notifications += 1
            self._send(topic, message)

    def _notifications(self, things: Iterable[str]) -> tuple[list[tuple[str, JobExecutionsChanged]], list[str]]:
        """(state thread) Each thing's notification, and the things whose list can't be read while the database is away."""
        now = self._now()
        out: list[tuple[str, JobExecutionsChanged]] = []
        away: list[str] = []
        for thing in things:
            try:
                out.append((topics.notify(thing), JobExecutionsChanged(jobs=self._pending_summaries(thing), timestamp=now)))
            except StateUnavailableError:
                away.append(thing)
            except Exception:
                log.exception("fleet MQTT bridge: can't build the notification of %s", thing)
        return out, away

    def _pending_summaries(self, thing: str) -> dict[JobExecutionStatus, list[JobExecutionSummary]]:
        """The thing's released QUEUED and IN_PROGRESS executions, as a notification lists them (read only: no last_seen)."""
        jobs: dict[JobExecutionStatus, list[JobExecutionSummary]] = {}
        for record in self.service.state.executions(thing=thing, statuses=_PENDING):
            if record.status == "QUEUED" and record.notified_at is None:
                continue
            status: JobExecutionStatus = "IN_PROGRESS" if record.status == "IN_PROGRESS" else "QUEUED"
            jobs.setdefault(status, []).append(
                JobExecutionSummary(
                    job_id=record.deployment_id,
                    execution_number=record.execution_number,
                    version_number=record.version_number,
                    queued_at=int(record.queued_at),
                    started_at=int(record.started_at) if record.started_at is not None else None,
                    last_updated_at=int(record.updated_at),
                )
            )
        return jobs

    async def _tick_loop(self) -> None:
        while True:
            try:
                released = await self._in_db(self._release)
                self._mark_dirty(*(n.thing for n in released))
                self._flush_notifications()
            except StateUnavailableError:
                pass  # the database is away (said once per outage): the next tick tries again
            except Exception:
                log.exception("fleet MQTT bridge: tick failed")
            await asyncio.sleep(self.tick_s)
