"""Send what the spool holds over MQTT, oldest first, and remove each message only once the broker has it."""

from __future__ import annotations

import asyncio
import logging

from edgekit.edge.errors import EdgeError
from edgekit.edge.spool import Spool
from edgekit.mqtt.client import MqttClient
from edgekit.mqtt.errors import BrokerError, PayloadError

__all__ = ["SpoolPublisher"]

log = logging.getLogger(__name__)

# PUBACK reason codes that mean "the broker has it": success, and no subscriber yet (MQTT 5)
_DELIVERED = {0, 16}


class SpoolPublisher:
    """Drains a :class:`Spool` through an :class:`MqttClient` (QoS 1), in order.

    While the client is offline nothing is sent and nothing leaves the spool; after a reconnect
    :meth:`drain` (or the :meth:`run` loop) sends the backlog oldest first. A message the broker
    refuses (e.g. not authorized) stops the drain and stays, so it can't be silently skipped.
    """

    def __init__(self, spool: Spool, client: MqttClient, *, batch: int = 50, timeout_s: float = 10.0) -> None:
        self.spool = spool
        self.client = client
        self.batch = batch
        self.timeout_s = timeout_s
        self.sent = 0
        self.refused: str = ""

    async def drain(self) -> int:
        """Send until the spool is empty or the client is offline; returns how many were delivered."""
        delivered = 0
        while self.client.connected:
            items = self.spool.peek(self.batch)
            if not items:
                break
            for item in items:
                if not self.client.connected:
                    return delivered
                try:
                    code = await self.client.publish(item.topic, item.payload, qos=1, timeout=self.timeout_s)
                except PayloadError as exc:
                    raise EdgeError(f"spooled message {item.seq} for '{item.topic}' can never be sent: {exc}") from None
                except BrokerError as exc:  # offline, timed out: it stays and goes out later
                    log.info("spool drain paused at message %d: %s", item.seq, exc)
                    return delivered
                if code not in _DELIVERED:
                    self.refused = f"broker refused message {item.seq} for '{item.topic}' (reason code {code})"
                    log.warning("%s; it stays in the spool", self.refused)
                    return delivered
                self.spool.ack([item.seq])
                delivered += 1
                self.sent += 1
        return delivered

    async def run(self, interval_s: float = 1.0) -> None:
        """Drain every ``interval_s`` until cancelled."""
        while True:
            await self.drain()
            await asyncio.sleep(interval_s)
