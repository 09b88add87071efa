"""Send what the spool holds over MQTT, oldest first, and remove each message only once the broker has it.

See docs/edge-runtime.md (spool, write-ahead).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from edgekit.edge.store.spool import Spool
from edgekit.mqtt.client import MqttClient
from edgekit.mqtt.errors import BrokerError, PayloadError, TopicError

__all__ = ["SpoolPublisher"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# PUBACK reason codes that mean "the broker has it": success, and no subscriber yet (MQTT 5)
_DELIVERED = {0, 16}


class SpoolPublisher:
    """Drains a :class:`Spool` through an :class:`MqttClient` (QoS 1), in order.

    While the client is offline nothing is sent and nothing leaves the spool; after a reconnect
    :meth:`drain` (or the :meth:`run` loop) sends the backlog oldest first. A message the broker
    refuses (e.g. not authorized) stops the drain and stays, so it can't be silently skipped; one that
    can never be sent (a topic or payload over IoT Core's limits) is removed and counted in :attr:`rejected`.
    """

    def __init__(
        self,
        spool: Spool,
        client: MqttClient,
        *,
        batch: int = 50,
        timeout_s: float = 10.0,
        offload: Callable[[Callable[[], Any]], Awaitable[Any]] | None = None,
    ) -> None:
        self.spool = spool
        self.offload = offload
        """Where the spool calls run (``offload(call)``): the writer's thread of a
        :class:`~edgekit.edge.store.group_commit.GroupCommit`, so a drain never waits on a disk flush in the event
        loop — unless the spool is free now and the call writes nothing (:meth:`Spool.peek_nowait`,
        :meth:`Spool.ack_nowait`): then here, without two thread hops; None: in the event loop."""
        self.client = client
        self.batch = batch
        self.timeout_s = timeout_s
        self.sent = 0
        self.rejected = 0
        """Messages that can never be sent (a topic or payload IoT Core would refuse): removed and counted, so
        they can't hold up the rest."""
        self.refused: str = ""
        self.emptied = False
        """Whether the last drain ended with the spool empty (as far as it read): nothing waits for a retry."""
        self._lock = asyncio.Lock()  # one drain at a time: two would send the same unacknowledged messages

    async def drain(self) -> int:
        """Send until the spool is empty or the client is offline; returns how many were delivered. A batch of fewer
        than ``batch`` messages ends the drain without reading the spool once more: a message put meanwhile goes
        out with the next drain (an :class:`~edgekit.device.ipc.iotcore.IotCoreLink`'s put wakes its sender for one).

        A batch is published back to back (one connection keeps MQTT's order) and the PUBACKs are
        awaited together. Every message the broker took is removed, those behind a refused or unanswered
        one too (it has them: sending them again would deliver them twice); the refused or unanswered
        message stays, at the head, and the drain stops there, so nothing is skipped. After a refusal the
        next drain sends the head alone until the broker takes it: what follows a message the broker keeps
        refusing goes out once.
        """
        async with self._lock:
            return await self._drain()

    async def _drain(self) -> int:
        delivered = 0
        self.emptied = False
        while self.client.connected:
            limit = 1 if self.refused else self.batch  # a refused head is tried alone
            items = self.spool.peek_nowait(limit) if self.offload is not None else None
            if items is None:
                items = await self._spool_call(functools.partial(self.spool.peek, limit))
            if not items:
                self.emptied = True
                break
            results = await self.client.publish_many([(i.topic, i.payload) for i in items], timeout=self.timeout_s)
            done: list[int] = []
            rejected = 0
            stop = False
            failure: BaseException | None = None
            for item, result in zip(items, results, strict=True):
                if isinstance(result, (PayloadError, TopicError)):
                    log.error(
                        "spooled message %d for '%s' can never be sent (%s); removed and counted", item.seq, item.topic, result
                    )
                    rejected += 1
                    done.append(item.seq)
                    continue
                if isinstance(result, BrokerError):  # offline, timed out: it stays and goes out later
                    log.info("spool drain paused at message %d: %s", item.seq, result)
                    stop = True
                    continue
                if isinstance(result, BaseException):
                    failure = failure or result
                    continue
                if result not in _DELIVERED:
                    if not stop:
                        self.refused = f"broker refused message {item.seq} for '{item.topic}' (reason code {result})"
                        log.warning("%s; it stays in the spool", self.refused)
                    stop = True
                    continue
                done.append(item.seq)
            if not stop and failure is None:
                self.refused = ""
            if self.offload is None or not self.spool.ack_nowait(done):
                await self._spool_call(functools.partial(self.spool.ack, done))
            self.rejected += rejected
            delivered += len(done) - rejected
            self.sent += len(done) - rejected
            if failure is not None:
                raise failure
            if stop:
                break
            if len(items) < limit:  # fewer than asked: that was all (what came since woke its sender)
                self.emptied = True
                break
        return delivered

    async def _spool_call(self, call: Callable[[], T]) -> T:
        if self.offload is None:
            return call()
        return cast("T", await self.offload(call))

    async def run(self, interval_s: float = 1.0) -> None:
        """Drain every ``interval_s`` until cancelled."""
        while True:
            await self.drain()
            await asyncio.sleep(interval_s)
