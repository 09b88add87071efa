"""The in-process transport: components simulated inside the agent's process call the same :class:`IpcHandler`.

No socket and no framing, but the same authentication (the component's ``SVCUID``), the same requests and
replies (the JSON ``awsiotsdk`` sends and receives, round-tripped through ``json`` so nothing in-process can
rely on sharing Python objects), the same policies and the same errors (:class:`~edgekit.device.ipc.errors.IpcError`
subclasses, raised)::

    ipc = InProcessIpc.connect(agent.ipc.handler, token)        # token: what SVCUID would hold
    await ipc.call("PublishToIoTCore", {"topicName": "devices/gw-1/x", "qos": "1", "payload": b64})
    stream = await ipc.subscribe("SubscribeToTopic", {"topic": "t"}, lambda model, event: ...)
    await stream.close()
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from typing import Any

from edgekit.device.ipc.errors import IpcError
from edgekit.device.ipc.handler import NS, STREAMING, Cleanup, IpcHandler

__all__ = ["InProcessIpc", "InProcessStream"]

OnEvent = Callable[[str, dict[str, Any]], None]


def _wire(value: Mapping[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(json.dumps(value))
    return result


class _Refused(IpcError):
    model = "aws#AccessDenied"


class InProcessStream:
    """A streaming operation's subscription; events go to ``on_event(model, event)`` after the reply."""

    def __init__(self, on_event: OnEvent) -> None:
        self._on_event = on_event
        self.closed = False
        self.cleanup: Cleanup | None = None
        self._queued: list[tuple[str, dict[str, Any]]] | None = []

    def send(self, model: str, payload: Mapping[str, Any]) -> None:
        if self.closed:
            return
        event = _wire(payload)
        if self._queued is not None:
            self._queued.append((model, event))
        else:
            self._on_event(model, event)

    def _activate(self) -> None:
        queued, self._queued = self._queued or [], None
        for model, event in queued:
            self._on_event(model, event)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        cleanup, self.cleanup = self.cleanup, None
        if cleanup is not None:
            result = cleanup()
            if result is not None:
                await result


class InProcessIpc:
    """One in-process component's connection to its device's IPC handler."""

    def __init__(self, handler: IpcHandler, component: str) -> None:
        self.handler = handler
        self.component = component

    @classmethod
    def connect(cls, handler: IpcHandler, auth_token: str) -> InProcessIpc:
        """Authenticate as the socket's CONNECT does; a wrong token raises (``aws#AccessDenied``)."""
        component = handler.authenticate(auth_token)
        if component is None:
            raise _Refused("Connection access denied to event stream RPC server")
        return cls(handler, component)

    @staticmethod
    def _name(operation: str) -> str:
        return operation if operation.startswith(NS) else NS + operation

    async def call(self, operation: str, request: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A request/response operation; returns the response JSON."""
        name = self._name(operation)
        if name in STREAMING:
            raise ValueError(f"{operation} streams: use subscribe()")
        reply = await self.handler.call(self.component, name, _wire(request or {}))
        return _wire(reply.payload)

    async def subscribe(self, operation: str, request: Mapping[str, Any], on_event: OnEvent) -> InProcessStream:
        """A streaming operation: its events go to ``on_event`` until :meth:`InProcessStream.close`."""
        name = self._name(operation)
        if name not in STREAMING:
            raise ValueError(f"{operation} does not stream: use call()")
        stream = InProcessStream(on_event)
        reply = await self.handler.call(self.component, name, _wire(request), stream)
        stream.cleanup = reply.cleanup
        stream._activate()
        return stream

    async def publish_to_iot_core(self, topic: str, payload: bytes, qos: str = "1") -> None:
        """``PublishToIoTCore`` with the payload base64-encoded as the SDK sends it."""
        await self.call("PublishToIoTCore", {"topicName": topic, "qos": qos, "payload": base64.b64encode(payload).decode()})
