"""The IPC operations of one device: the one handler behind the socket server and the in-process transport.

:meth:`IpcHandler.call` takes the calling component (already authenticated), the operation's name
(``aws.greengrass#PublishToIoTCore``) and its request (the JSON the SDK sends), and returns a :class:`Reply`
or raises an :class:`~edgekit.device.ipc.errors.IpcError`. A streaming operation gets an :class:`EventSink`
to push its events into; the reply's ``cleanup`` ends the subscription when the stream closes.

Operations: ``PublishToIoTCore`` / ``SubscribeToIoTCore`` (:mod:`~edgekit.device.ipc.iotcore`),
``PublishToTopic`` / ``SubscribeToTopic`` (:mod:`~edgekit.device.ipc.pubsub`), and, in
:mod:`~edgekit.device.ipc.component_ops`, ``GetConfiguration``, ``UpdateConfiguration``,
``SubscribeToConfigurationUpdate``, ``UpdateState``, ``SubscribeToComponentUpdates`` and
``DeferComponentUpdate``. Anything else gets ``ServiceError`` (as the nucleus answers an operation it has no
handler for). Authorization: :mod:`~edgekit.device.ipc.policy`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from edgekit.device.ipc.errors import InvalidArgumentsError, ServiceError, UnauthorizedError
from edgekit.device.ipc.iotcore import IotCoreLink
from edgekit.device.ipc.policy import Policy, authorized, parse_policies
from edgekit.device.ipc.pubsub import LocalBus, has_wildcard
from edgekit.edge.errors import EdgeError
from edgekit.greengrass.access import MQTT_PROXY, PUBSUB

__all__ = [
    "MAX_IOT_CORE_PAYLOAD",
    "NS",
    "STREAMING",
    "ComponentHost",
    "EventSink",
    "IpcHandler",
    "Reply",
    "operation",
    "publish_failed",
]

log = logging.getLogger(__name__)

MAX_IOT_CORE_PAYLOAD = 128 * 1024
"""The nucleus's default ``maxMessageSizeInBytes`` for PublishToIoTCore (AWS IoT Core's limit)."""
NS = "aws.greengrass#"


class EventSink(Protocol):
    """Where a streaming operation's events go (a socket stream, or an in-process callback)."""

    def send(self, model: str, payload: Mapping[str, Any]) -> None: ...


class ComponentHost(Protocol):
    """What the handler needs of the agent: configurations, their persistence, reported states."""

    thing: str

    def configuration(self, component: str) -> dict[str, Any] | None:
        """The live configuration of ``component`` (``None``: no such component)."""

    def set_configuration(self, component: str, configuration: dict[str, Any]) -> None:
        """Replace (and persist) ``component``'s configuration (UpdateConfiguration)."""

    def report_state(self, component: str, state: str) -> None:
        """``UpdateState``: RUNNING or ERRORED reported by the component itself."""


Cleanup = Callable[[], Awaitable[None] | None]


@dataclass
class Reply:
    model: str
    payload: dict[str, Any]
    cleanup: Cleanup | None = None


Operation = Callable[["IpcHandler", str, dict[str, Any], "EventSink | None"], Awaitable[Reply]]
_OPERATIONS: dict[str, Operation] = {}
STREAMING: set[str] = set()


def operation(name: str, *, streaming: bool = False) -> Callable[[Operation], Operation]:
    def register(func: Operation) -> Operation:
        _OPERATIONS[NS + name] = func
        if streaming:
            STREAMING.add(NS + name)
        return func

    return register


class IpcHandler:
    """One device's IPC: auth tokens, policies, local pub/sub, the IoT Core link, configuration and update events."""

    def __init__(self, host: ComponentHost, iot_core: IotCoreLink | None = None) -> None:
        self.host = host
        self.iot_core = iot_core
        self.bus = LocalBus()
        self._tokens: dict[str, str] = {}
        self._policies: dict[str, tuple[object, list[Policy]]] = {}
        self._allowed: dict[tuple[str, str, str, str], list[Policy]] = {}
        """Calls found allowed, each with the policies that allowed it: valid while those are the component's."""
        from edgekit.device.ipc.component_ops import ComponentEvents

        self.events = ComponentEvents(self)

    # ------------------------------------------------------------------ authentication

    def issue_token(self, component: str) -> str:
        """A new auth token (``SVCUID``) for ``component``; the previous one stops working."""
        self.revoke(component)
        token = secrets.token_hex(16).upper()
        self._tokens[token] = component
        return token

    def revoke(self, component: str) -> None:
        for token in [t for t, c in self._tokens.items() if c == component]:
            del self._tokens[token]

    def authenticate(self, token: object) -> str | None:
        """The component ``token`` belongs to, or None."""
        return self._tokens.get(token) if isinstance(token, str) else None

    # ------------------------------------------------------------------ authorization

    def policies(self, component: str) -> list[Policy]:
        config = self.host.configuration(component)
        cached = self._policies.get(component)
        if cached is not None and cached[0] is config:
            return cached[1]
        found = parse_policies(config, self.host.thing, component)
        self._policies[component] = (config, found)
        return found

    def authorize(self, component: str, service: str, operation: str, resource: str, message: str | None = None) -> None:
        policies = self.policies(component)
        key = (component, service, operation, resource)
        if self._allowed.get(key) is policies:  # a component publishes to the same few topics, again and again
            return
        if authorized(policies, service, operation, resource) is not None:
            if len(self._allowed) >= 4096:
                self._allowed.clear()
            self._allowed[key] = policies
            return
        detail = f"Principal {component} is not authorized to perform {service}:{operation} on resource {resource}"
        log.info("IPC refused: %s", detail)
        raise UnauthorizedError(message or detail)

    # ------------------------------------------------------------------ dispatch

    async def call(self, component: str, operation: str, request: Mapping[str, Any], sink: EventSink | None = None) -> Reply:
        """Run one operation for ``component``; raises :class:`IpcError` for the component to get."""
        func = _OPERATIONS.get(operation)
        if func is None:
            log.warning("%s called %s, which this agent does not implement", component, operation)
            raise ServiceError(f"{operation} is not supported by this edgekit agent")
        if not isinstance(request, Mapping):
            raise InvalidArgumentsError("the request must be a JSON object")
        return await func(self, component, dict(request), sink)

    def known(self, operation: str) -> bool:
        return operation in _OPERATIONS

    def publish_nowait(self, component: str, request: Mapping[str, Any]) -> tuple[str, asyncio.Future[int]]:
        """PublishToIoTCore without a coroutine: the checks now (an IpcError raised), then the topic and the future of
        the message's sequence number, set once the commit holding it is on disk (an
        :class:`~edgekit.edge.errors.EdgeError` when it could not be stored: see :func:`publish_failed`)."""
        topic, payload = self.publish_checked(component, request)
        assert self.iot_core is not None
        try:
            return topic, self.iot_core.put_nowait(topic, payload)
        except EdgeError as exc:
            raise publish_failed(topic, exc) from None

    def publish_checked(self, component: str, request: object) -> tuple[str, bytes]:
        """PublishToIoTCore's checks (an IpcError raised): the topic and payload to spool. The socket server checks
        each publish as it arrives and spools those of one read together
        (:meth:`~edgekit.device.ipc.iotcore.IotCoreLink.put_many_nowait`)."""
        if not isinstance(request, Mapping):
            raise InvalidArgumentsError("the request must be a JSON object")
        return _publish_request(self, component, request)

    async def spool_put(self, topic: str, payload: bytes) -> int:
        """Spool one IoT Core message; returns once it is on disk (group commit: publishes that arrive together share
        one fsync, on the spool's own thread, in the order of arrival)."""
        assert self.iot_core is not None
        return await self.iot_core.put(topic, payload)


# ---------------------------------------------------------------------- request helpers


def text(request: Mapping[str, Any], key: str, what: str | None = None) -> str:
    value = request.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidArgumentsError(f"{what or key} is required")
    return value


def b64(request: Mapping[str, Any], key: str) -> bytes | None:
    value = request.get(key)
    if value is None:
        return None
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgumentsError(f"{key} is not base64") from None


def qos_of(request: Mapping[str, Any]) -> int:
    qos = request.get("qos")
    if qos is None:
        raise InvalidArgumentsError("QoS is required")
    if str(qos) not in ("0", "1"):
        raise InvalidArgumentsError(f"Invalid QoS value: {qos}")
    return int(str(qos))


# ---------------------------------------------------------------------- IoT Core (aws.greengrass.ipc.mqttproxy)


def _iot_topic(topic: str, *, is_filter: bool) -> None:
    problem = _topic_problem(topic, is_filter)
    if problem is not None:
        raise InvalidArgumentsError(problem)


@functools.lru_cache(maxsize=1024)
def _topic_problem(topic: str, is_filter: bool) -> str | None:
    from edgekit.mqtt import topics
    from edgekit.mqtt.errors import PayloadError, TopicError

    try:
        topics.validate(topic, is_filter=is_filter)
    except (PayloadError, TopicError) as exc:
        return str(exc)
    return None


def _publish_request(h: IpcHandler, component: str, request: Mapping[str, Any]) -> tuple[str, bytes]:
    """PublishToIoTCore's checks, as the nucleus makes them: the topic and payload to spool, or an IpcError."""
    topic = text(request, "topicName", "Topic")
    h.authorize(component, MQTT_PROXY, NS + "PublishToIoTCore", topic, "Not Authorized")
    payload = b64(request, "payload")
    if payload is None:
        raise InvalidArgumentsError("Payload is required")
    qos_of(request)
    if len(payload) > MAX_IOT_CORE_PAYLOAD:
        raise ServiceError(
            f"Publish to topic {topic} failed: The publishing message size {len(payload)} bytes exceeds the "
            f"configured limit of {MAX_IOT_CORE_PAYLOAD} bytes"
        )
    _iot_topic(topic, is_filter=False)
    if request.get("retain"):
        raise InvalidArgumentsError("retain is not supported: edgekit's uplink spools and sends with QoS 1, retain off")
    if h.iot_core is None:
        raise ServiceError(f"Publish to topic {topic} failed: this device has no IoT Core connection")
    return topic, payload


def publish_failed(topic: str, error: BaseException) -> ServiceError:
    """What the component gets when its message could not be stored."""
    if isinstance(error, EdgeError):
        return ServiceError(f"Publish to topic {topic} failed: {error}")
    log.error("PublishToIoTCore to %s failed in the agent", topic, exc_info=error)
    return ServiceError(f"aws.greengrass#PublishToIoTCore failed in the agent: {type(error).__name__}")


@operation("PublishToIoTCore")
async def _publish_to_iot_core(h: IpcHandler, component: str, request: dict[str, Any], sink: EventSink | None) -> Reply:
    topic, payload = _publish_request(h, component, request)
    try:
        await h.spool_put(topic, payload)
    except EdgeError as exc:
        raise publish_failed(topic, exc) from None
    return Reply(NS + "PublishToIoTCoreResponse", {})


@operation("SubscribeToIoTCore", streaming=True)
async def _subscribe_to_iot_core(h: IpcHandler, component: str, request: dict[str, Any], sink: EventSink | None) -> Reply:
    topic = text(request, "topicName", "Topic")
    h.authorize(component, MQTT_PROXY, NS + "SubscribeToIoTCore", topic, "Not Authorized")
    qos = qos_of(request)
    _iot_topic(topic, is_filter=True)
    if h.iot_core is None or sink is None:
        raise ServiceError(f"Subscribe to topic {topic} failed: this device has no IoT Core connection")
    target = sink

    def deliver(name: str, payload: bytes, retain: bool) -> None:
        message = {"topicName": name, "payload": base64.b64encode(payload).decode(), "retain": retain, "payloadFormat": "BYTES"}
        target.send(NS + "IoTCoreMessage", {"message": message})

    try:
        remove = await h.iot_core.subscribe(topic, qos, deliver)
    except Exception as exc:
        raise ServiceError(f"Subscribe to topic {topic} failed with error {exc}") from None
    return Reply(NS + "SubscribeToIoTCoreResponse", {}, remove)


# ---------------------------------------------------------------------- local pub/sub (aws.greengrass.ipc.pubsub)


@operation("PublishToTopic")
async def _publish_to_topic(h: IpcHandler, component: str, request: dict[str, Any], sink: EventSink | None) -> Reply:
    topic = request.get("topic")
    if not isinstance(topic, str) or not topic:
        raise InvalidArgumentsError("Publish topic must not be null")
    if has_wildcard(topic) or "*" in topic:
        raise InvalidArgumentsError("Publish topic must not contain a wildcard.")
    h.authorize(component, PUBSUB, NS + "PublishToTopic", topic)
    body = request.get("publishMessage")
    if not isinstance(body, Mapping):
        raise InvalidArgumentsError("publishMessage is required")
    context = {"topic": topic}
    json_message, binary = body.get("jsonMessage"), body.get("binaryMessage")
    if isinstance(json_message, Mapping) and json_message.get("message") is not None:
        event = {"jsonMessage": {"message": json_message["message"], "context": context}}
    elif isinstance(binary, Mapping) and binary.get("message") is not None:
        b64(binary, "message")
        event = {"binaryMessage": {"message": binary["message"], "context": context}}
    else:
        raise InvalidArgumentsError("publishMessage needs a jsonMessage or a binaryMessage with a message")
    h.bus.publish(component, topic, event)
    return Reply(NS + "PublishToTopicResponse", {})


@operation("SubscribeToTopic", streaming=True)
async def _subscribe_to_topic(h: IpcHandler, component: str, request: dict[str, Any], sink: EventSink | None) -> Reply:
    topic = request.get("topic")
    if not isinstance(topic, str) or not topic:
        raise InvalidArgumentsError("Subscribe topic must not be empty")
    h.authorize(component, PUBSUB, NS + "SubscribeToTopic", topic)
    mode = request.get("receiveMode")
    if mode is not None and mode not in ("RECEIVE_ALL_MESSAGES", "RECEIVE_MESSAGES_FROM_OTHERS"):
        raise InvalidArgumentsError(f"Invalid receiveMode: {mode}")
    if sink is None:
        raise ServiceError("SubscribeToTopic needs a stream")
    target = sink
    remove = h.bus.subscribe(component, topic, mode, lambda event: target.send(NS + "SubscriptionResponseMessage", event))
    return Reply(NS + "SubscribeToTopicResponse", {"topicName": topic}, remove)


def _import_component_ops() -> None:
    from edgekit.device.ipc import component_ops  # noqa: F401  (registers its operations)


_import_component_ops()
