"""Store and forward: a durable, ordered, bounded spool of outgoing messages, and the publisher that drains it.

Both sides of a device's uplink use it: the device agent (``edgekit.device.ipc.iotcore``: every IPC
``PublishToIoTCore`` is spooled before it is answered, then sent over the agent's MQTT connection) and an inference
loop outside Greengrass (``edgekit.edge.uplink.SpoolUplink``). It imports nothing of the edge runtime but its
errors, so the agent loads neither the loop nor numpy; :class:`SpoolPublisher` (and with it paho-mqtt) is imported
only when used. See docs/edge-runtime.md (spool, write-ahead).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit.edge.store.spool import Spool, SpoolItem

if TYPE_CHECKING:
    from edgekit.edge.store.publisher import SpoolPublisher

__all__ = ["Spool", "SpoolItem", "SpoolPublisher"]


def __getattr__(name: str) -> Any:
    if name == "SpoolPublisher":
        from edgekit.edge.store.publisher import SpoolPublisher

        return SpoolPublisher
    raise AttributeError(f"module 'edgekit.edge.store' has no attribute {name!r}")
