"""``PublishToIoTCore`` / ``SubscribeToIoTCore`` through the device's own MQTT connection, durably.

A publish is written to the agent's spool (:class:`edgekit.edge.store.Spool`: SQLite, ``synchronous=FULL``) **before**
the component gets its response — publishes that arrive together share one fsync
(:class:`edgekit.edge.store.group_commit.GroupCommit`), and none is answered before the fsync that covers it — and leaves the spool only once the broker acknowledged it
(:class:`edgekit.edge.store.SpoolPublisher`, QoS 1, oldest first). So what a component was told is published survives
an offline period, an agent restart and a power cut, in order; the price is at-least-once delivery. The nucleus
keeps its spool in memory (2.5 MB, lost on restart) and nucleus lite has none.

The MQTT client is attached by whoever owns the connection (:class:`edgekit.device.jobs_runner.DeviceMqttRunner`);
until then publishes only accumulate, and subscriptions fail with ``ServiceError``. One MQTT subscription per
filter is shared by every IPC subscriber of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.edge.errors import EdgeError
from edgekit.edge.store.group_commit import GroupCommit
from edgekit.edge.store.spool import Spool

if TYPE_CHECKING:
    from edgekit.edge.store.publisher import SpoolPublisher
    from edgekit.mqtt.client import MqttClient, MqttMessage

__all__ = ["IotCoreLink"]

log = logging.getLogger(__name__)

Deliver = Callable[[str, bytes, bool], None]
"""``deliver(topic, payload, retain)``."""


class IotCoreLink:
    """The agent's uplink: a spool, a sender task while a client is attached, and shared subscriptions."""

    def __init__(
        self,
        spool_path: str | Path,
        *,
        max_items: int = 100_000,
        interval_s: float = 1.0,
        durable: bool = True,
        linger_s: float = 30.0,
    ) -> None:
        self.spool_path = Path(spool_path)
        self.max_items = max_items
        self.durable = durable
        self._spool: Spool | None = None
        self._commit: GroupCommit | None = None
        self.interval_s = interval_s
        self.linger_s = linger_s
        """How long delivered messages' removal waits for the next put once the spool is drained (then it is written
        on its own): what a crash after a burst would send again stays on disk no longer than this. Longer than a
        window (a summary every 5 s would otherwise race the timer, and pay two writes a message again)."""
        self.client: MqttClient | None = None
        self._publisher: SpoolPublisher | None = None
        self._sender: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._subs: dict[str, list[Deliver]] = {}
        self.max_refusals = 3
        self.dropped = 0
        """Messages dropped because the broker refused them ``max_refusals`` times, or because they could never
        be sent (a topic or payload over IoT Core's limits): each a counted rejection, never a stalled drain."""
        self._refused_seq = -1
        self._refusals = 0

    @property
    def spool(self) -> Spool:
        """The spool, opened on first use (and again after :meth:`close`)."""
        if self._spool is None:
            self._spool = Spool(self.spool_path, max_items=self.max_items, on_full="reject", durable=self.durable)
        return self._spool

    @property
    def pending(self) -> int:
        """Messages spooled and not yet acknowledged by the broker."""
        return len(self.spool)

    @property
    def group_commit(self) -> GroupCommit:
        """The spool's writer: every put goes through its thread, and a drain's read or removal whenever the spool is
        busy or the call would write (else it runs in the loop: see ``SpoolPublisher.offload``)."""
        if self._commit is None:
            self._commit = GroupCommit(self.spool, on_commit=self._wake.set)
        return self._commit

    def publish(self, topic: str, payload: bytes) -> int:
        """Spool one message now, alone (one fsync; raises :class:`edgekit.edge.EdgeError` when it can't); returns its
        sequence number. Not while :meth:`put` calls are in flight: use :meth:`put` from the event loop."""
        seq = self.spool.put(topic, payload)
        self._wake.set()
        return seq

    async def put(self, topic: str, payload: bytes) -> int:
        """Spool one message, sharing an fsync with the puts that arrive with it; returns (its sequence number)
        once it is on disk. Raises :class:`edgekit.edge.EdgeError` when it can't be stored. A spool that is not durable
        (a simulated device's: no fsync to share) is written here, in the loop, as its drains are: no thread per device."""
        seq = self.spool.put(topic, payload) if not self.durable else await self.group_commit.put(topic, payload)
        self._wake.set()
        return seq

    def put_nowait(self, topic: str, payload: bytes) -> asyncio.Future[int]:
        """:meth:`put` without a coroutine: the future of the sequence number, set once the message is on disk (a
        spool that is not durable is written here, as :meth:`put` does: the future is done when it returns)."""
        if not self.durable:
            stored: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            stored.set_result(self.spool.put(topic, payload))
            self._wake.set()
            return stored
        return self.group_commit.put_nowait(topic, payload)  # its commit wakes the sender (on_commit)

    def put_many_nowait(self, messages: Sequence[tuple[str, bytes]]) -> asyncio.Future[list[int | EdgeError]]:
        """:meth:`put_nowait` of several messages (in this order) with one future: per message its sequence number or
        the :class:`~edgekit.edge.errors.SpoolFullError` that kept it out, set once they are on disk."""
        if not self.durable:
            stored: asyncio.Future[list[int | EdgeError]] = asyncio.get_running_loop().create_future()
            stored.set_result(self.spool.put_many(messages))
            self._wake.set()
            return stored
        return self.group_commit.put_many_nowait(messages)

    # ------------------------------------------------------------------ the connection

    def attach(self, client: MqttClient) -> None:
        """Send through ``client`` from now on (and subscribe there); starts the sender task."""
        from edgekit.edge.store.publisher import SpoolPublisher

        self.client = client
        # a durable spool's drain reads and deletes on the commit thread (never waiting in the event loop behind an
        # fsync); a simulated device's (durable=False, no fsync) in the loop: no thread hop per drain for 1,000 devices
        offload = self.group_commit.run if self.durable else None
        self._publisher = SpoolPublisher(self.spool, client, offload=offload)
        client.add_on_connect(lambda _c, _s: self._wake.set())
        if self._sender is None or self._sender.done():
            self._sender = asyncio.get_running_loop().create_task(self._send_loop(), name="ipc-uplink")
        self._wake.set()

    async def detach(self) -> None:
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        self.client = None
        self._publisher = None

    async def flush(self) -> int:
        """Send what is spooled now (while connected); returns how many the broker acknowledged."""
        if self._publisher is None:
            return 0
        return await self._publisher.drain()

    async def _send_loop(self) -> None:
        while True:
            publisher = self._publisher
            if publisher is not None and publisher.emptied and self.client is not None and self.client.connected:
                # nothing left to retry: only a put (or a reconnect) brings work; a timer only while delivered
                # messages' removal waits for that put (see Spool.ack), to write it on its own if none comes
                if not self.spool.deferred:
                    await self._wake.wait()
                elif not await self._woken(self.linger_s):
                    await self._flush_deferred()
                    continue
            else:
                await self._woken(self.interval_s)
            self._wake.clear()
            if self.client is None or not self.client.connected:
                continue
            # woken by a commit: its answers to the components were queued in this turn of the event loop; let them
            # go out first (the socket server writes at the end of the turn), the drain's MQTT work after them
            await asyncio.sleep(0)
            try:
                await self.flush()
            except Exception as exc:  # never let one drain end the sender
                log.warning("IPC uplink: %s", exc)
            if self._publisher is not None and self._publisher.rejected:  # could never be sent: removed, counted
                self.dropped += self._publisher.rejected
                self._publisher.rejected = 0
            self._drop_refused()

    async def _woken(self, timeout_s: float) -> bool:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the cancel that detach() sends
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._wake.wait()
                return True
        return False

    async def _flush_deferred(self) -> None:
        try:
            if self.durable:
                await self.group_commit.run(self.spool.flush)
            else:
                self.spool.flush()
        except Exception as exc:  # never let it end the sender: the removals stay deferred, tried again later
            log.warning("IPC uplink: %s", exc)

    def _drop_refused(self) -> None:
        """A message the broker keeps refusing (its IoT policy forbids the topic) is dropped after
        ``max_refusals`` tries, as the nucleus drops one after ``maxPublishRetry``: it must not block the rest."""
        publisher = self._publisher
        if publisher is None or not publisher.refused:
            return
        publisher.refused = ""
        head = self.spool.peek(1)
        if not head:
            return
        seq = head[0].seq
        self._refusals = self._refusals + 1 if self._refused_seq == seq else 1
        self._refused_seq = seq
        if self._refusals >= self.max_refusals:
            self.spool.ack([seq])
            self.dropped += 1
            log.warning(
                "IPC uplink: the broker refused message %d for '%s' %d times; dropped", seq, head[0].topic, self._refusals
            )

    async def close(self) -> None:
        await self.detach()
        commit, self._commit = self._commit, None
        if commit is not None:
            await commit.close()
        spool, self._spool = self._spool, None
        if spool is not None:
            spool.close()

    # ------------------------------------------------------------------ subscriptions

    async def subscribe(self, topic_filter: str, qos: int, deliver: Deliver) -> Callable[[], Any]:
        """Subscribe ``deliver`` to ``topic_filter``; returns an async-capable remover."""
        client = self.client
        if client is None:
            raise ConnectionError("the device has no MQTT connection")
        first = topic_filter not in self._subs
        self._subs.setdefault(topic_filter, []).append(deliver)
        if first:
            try:
                await client.subscribe(topic_filter, qos, self._dispatch_for(topic_filter))
            except BaseException:
                self._subs.pop(topic_filter, None)
                raise

        async def remove() -> None:
            handlers = self._subs.get(topic_filter, [])
            if deliver in handlers:
                handlers.remove(deliver)
            if not handlers and topic_filter in self._subs:
                del self._subs[topic_filter]
                if self.client is not None:
                    with contextlib.suppress(Exception):
                        await self.client.unsubscribe(topic_filter, timeout=5.0)

        return remove

    def _dispatch_for(self, topic_filter: str) -> Callable[[MqttMessage], None]:
        def dispatch(message: MqttMessage) -> None:
            for deliver in list(self._subs.get(topic_filter, [])):
                deliver(message.topic, message.payload, message.retain)

        return dispatch
