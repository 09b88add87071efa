"""Who is connected, for a fleet without a simulation: real device agents say so on MQTT.

mosquitto publishes no per-client connect / disconnect events (AWS IoT Core's broker does:
``$aws/events/presence/...``), so each agent of ``edgekit agent`` publishes a
:class:`~edgekit.mqtt.payloads.DevicePresence` on :func:`edgekit.mqtt.topics.presence` after every (re)connect and
before a clean stop, and leaves the same message with ``connected: false`` as its will, which the broker sends when
the connection dies (a crash, a cut cable, a keepalive timeout). :class:`PresenceTracker` listens on the fleet
service's connection and keeps thing → connected, the fleet view's ``connected``; it writes it to the fleet folder's
``presence.json`` (a moment after each change) so that ``edgekit fleet status`` in another process shows it too.

A device that never connected since the server started is unknown (``None`` in the view), not offline: after a
restart of the fleet every agent reconnects and says so again. See docs/local-fleet.md (real devices).
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Final

from edgekit.atomic import write_bytes
from edgekit.mqtt import topics
from edgekit.mqtt.client import MqttClient, MqttMessage
from edgekit.mqtt.errors import PayloadError
from edgekit.mqtt.payloads import DevicePresence, decode

__all__ = ["PresenceTracker", "read_presence"]

log = logging.getLogger(__name__)

_WRITE_AFTER_S: Final = 0.3


class PresenceTracker:
    """Thing → connected, from the agents' presence messages on ``client`` (the fleet service's connection);
    written to ``file`` (JSON) a moment after each change when given. Call :meth:`start` before the client connects."""

    def __init__(self, client: MqttClient, file: Path | None = None) -> None:
        self.client = client
        self.file = file
        self.connected: dict[str, bool] = {}
        self.changes = 0
        self._write: asyncio.TimerHandle | None = None

    def __call__(self) -> dict[str, bool]:
        """The fleet view's presence (read by the page's server thread: a copy of a dict)."""
        return dict(self.connected)

    async def start(self) -> None:
        await self.client.subscribe(topics.all_presence(), 1, self._on_message)

    def stop(self) -> None:
        """Write what is known now and forget the file (the fleet stopped: nobody is known to be connected)."""
        if self._write is not None:
            self._write.cancel()
            self._write = None
        if self.file is not None:
            self.file.unlink(missing_ok=True)

    def _on_message(self, message: MqttMessage) -> None:
        parts = message.topic.split("/")
        thing = parts[2] if len(parts) > 2 else ""
        try:
            presence = decode(DevicePresence, message.payload)
        except PayloadError as exc:
            log.debug("presence: unreadable message on %s: %s", message.topic, exc)
            return
        if presence.thing_name != thing:  # the ACL lets a device publish under its own name only; be sure anyway
            return
        if self.connected.get(thing) is not presence.connected:
            self.connected[thing] = presence.connected
            self.changes += 1
            log.info("device %s %s", thing, "connected" if presence.connected else "disconnected")
            self._schedule()

    def _schedule(self) -> None:
        if self.file is None or self._write is not None:
            return
        self._write = asyncio.get_running_loop().call_later(_WRITE_AFTER_S, self._flush)

    def _flush(self) -> None:
        self._write = None
        if self.file is None:
            return
        try:
            write_bytes(self.file, json.dumps(self.connected, sort_keys=True).encode())
        except OSError as exc:
            log.warning("presence: can't write %s: %s", self.file, exc)


def read_presence(file: Path) -> dict[str, bool] | None:
    """What :class:`PresenceTracker` wrote to ``file`` (None when there is no such file or it is unreadable)."""
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    return {str(k): v for k, v in data.items() if isinstance(v, bool)}
