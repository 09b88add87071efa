"""How an inference loop talks to its device: publish to IoT Core, read and follow its configuration, report its state.

:class:`GreengrassUplink` is Greengrass IPC through ``awsiotsdk`` (a component under the nucleus or edgekit's
agent); :class:`SpoolUplink` writes to a local :class:`~edgekit.edge.store.Spool` (standalone use, benchmarks). The
simulator's in-process devices use the agent's IPC handler directly (``edgekit.sim.inference``).
See docs/edge-runtime.md (the uplink).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from edgekit.edge.errors import EdgeError
from edgekit.edge.store.spool import Spool

__all__ = ["GreengrassUplink", "SpoolUplink", "Uplink"]

OnMessage = Callable[[bytes], None]


class Uplink(Protocol):
    async def publish(self, topic: str, payload: bytes) -> None:
        """Hand one message over for IoT Core; raises when it was not taken (then the loop keeps it)."""

    async def configuration(self) -> dict[str, Any]:
        """The component's configuration now (``{}`` when there is none)."""

    async def follow_configuration(self, changed: Callable[[], None]) -> None:
        """Call ``changed()`` (on the event loop) after each change of the configuration."""

    async def subscribe(self, topic: str, on_message: OnMessage) -> None:
        """Messages on ``topic`` (IoT Core) go to ``on_message`` (on the event loop)."""

    async def report(self, state: str) -> None:
        """``RUNNING`` or ``ERRORED``."""

    async def close(self) -> None: ...


class GreengrassUplink:
    """Greengrass IPC through awsiotsdk's ``GreengrassCoreIPCClientV2`` (reads ``SVCUID`` and the socket from the
    environment). Its calls block, so they run in a worker thread; its callbacks come back on the event loop."""

    def __init__(self) -> None:
        from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

        self.ipc = GreengrassCoreIPCClientV2()
        self._loop = asyncio.get_running_loop()

    async def publish(self, topic: str, payload: bytes) -> None:
        try:
            await asyncio.wrap_future(self.ipc.publish_to_iot_core_async(topic_name=topic, qos="1", payload=payload))
        except Exception as exc:  # the SDK's errors: ServiceError, UnauthorizedError, a closed connection
            raise EdgeError(f"PublishToIoTCore {topic}: {type(exc).__name__} {getattr(exc, 'message', exc)}") from None

    async def configuration(self) -> dict[str, Any]:
        reply = await asyncio.to_thread(self.ipc.get_configuration)
        return dict(reply.value or {})

    async def follow_configuration(self, changed: Callable[[], None]) -> None:
        loop = self._loop
        await asyncio.to_thread(
            self.ipc.subscribe_to_configuration_update, key_path=[], on_stream_event=lambda _e: loop.call_soon_threadsafe(changed)
        )

    async def subscribe(self, topic: str, on_message: OnMessage) -> None:
        loop = self._loop

        def event(e: Any) -> None:
            loop.call_soon_threadsafe(on_message, bytes(e.message.payload))

        await asyncio.to_thread(self.ipc.subscribe_to_iot_core, topic_name=topic, qos="1", on_stream_event=event)

    async def report(self, state: str) -> None:
        await asyncio.to_thread(self.ipc.update_state, state=state)

    async def close(self) -> None:
        await asyncio.to_thread(self.ipc.close)


class SpoolUplink:
    """Messages go into a local :class:`Spool` (send it with :class:`~edgekit.edge.store.SpoolPublisher`); no configuration."""

    def __init__(self, spool: Spool | str | Path) -> None:
        self.spool = spool if isinstance(spool, Spool) else Spool(spool)

    async def publish(self, topic: str, payload: bytes) -> None:
        self.spool.put(topic, payload)

    async def configuration(self) -> dict[str, Any]:
        return {}

    async def follow_configuration(self, changed: Callable[[], None]) -> None:
        return None

    async def subscribe(self, topic: str, on_message: OnMessage) -> None:
        raise EdgeError(f"a spool uplink can't subscribe to '{topic}': use Greengrass IPC for an mqtt: input source")

    async def report(self, state: str) -> None:
        return None

    async def close(self) -> None:
        self.spool.close()
