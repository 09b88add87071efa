"""The one MQTT client of edgekit: asyncio over paho-mqtt 2.x, many clients in one thread.

::

    client = await connect(broker.url, "dev-1", tls=material.device("dev-1"))   # MQTT 5, persistent session
    client.add_on_connect(ask_for_pending_jobs)          # runs after the first connect and every reconnect
    code = await client.publish(topics.update("dev-1", job), request, qos=1)   # waits for PUBACK: 0, 16, 135, ...

See docs/local-fleet.md (the broker, TLS and the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar, cast
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, LogLevel, MQTTErrorCode, _ConnectionState
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgekit.errors import ConfigError
from edgekit.mqtt import topics
from edgekit.mqtt.errors import BrokerError, ConnectError, MqttTimeoutError, NotConnectedError, PayloadError, TopicError
from edgekit.mqtt.payloads import MAX_PAYLOAD_BYTES, WireMessage
from edgekit.mqtt.payloads import encode as encode_payload

__all__ = [
    "NOT_AUTHORIZED",
    "NO_MATCHING_SUBSCRIBERS",
    "SUCCESS",
    "Backoff",
    "MqttClient",
    "MqttMessage",
    "TlsPaths",
    "connect",
    "is_failure",
]

log = logging.getLogger(__name__)

SUCCESS = 0
NO_MATCHING_SUBSCRIBERS = 16
"""PUBACK reason: accepted, but nobody subscribes (MQTT 5)."""
NOT_AUTHORIZED = 135
"""PUBACK / CONNACK / SUBACK reason: the broker's ACL forbids it (MQTT 5)."""

TlsPaths = tuple[str | Path, str | Path | None, str | Path | None]
"""``(ca, cert, key)``; :class:`edgekit.mqtt.tls.TlsFiles` is one. ``cert``/``key`` ``None``: server-auth only."""

OnConnect = Callable[["MqttClient", bool], Awaitable[None] | None]
"""A hook run after every successful (re)connect: ``hook(client, session_present)``."""

Handler = Callable[["MqttMessage"], Awaitable[None] | None]
"""Called with each message matching a subscription's filter (a coroutine function is run as a task)."""

_T = TypeVar("_T")
_MISC_MIN_S = 1.0
_MISC_MAX_S = 15.0
_MAX_SSL_DRAIN = 64
_READ_BYTES = 65536
_SUBSCRIBE_BATCH = 8  # AWS IoT Core: at most 8 filters per SUBSCRIBE
_PUBACK_BYTE = 0x40  # a PUBACK's fixed header (type 4, no flags)
_MAX_ROUTES = 65536  # topics whose matching handlers are remembered (a fleet service sees one or two per device)


def is_failure(reason_code: int) -> bool:
    """MQTT 5: reason codes of 0x80 (128) and above are failures."""
    return reason_code >= 0x80


@dataclass(frozen=True)
class MqttMessage:
    """A received PUBLISH."""

    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    mid: int = field(default=0, compare=False)
    connection: int = field(default=0, compare=False)  # which connection delivered it (its mid means nothing on another)


@dataclass
class Backoff:
    """Reconnect delays: ``initial * factor**n`` capped at ``maximum``, each scaled by ``1 ± jitter`` (``rng`` injectable)."""

    initial: float = 0.5
    maximum: float = 30.0
    factor: float = 2.0
    jitter: float = 0.25
    rng: random.Random = field(default_factory=random.Random)

    def delays(self) -> Iterator[float]:
        delay = self.initial
        while True:
            yield max(0.0, delay * (1 + self.jitter * (2 * self.rng.random() - 1)))
            delay = min(self.maximum, delay * self.factor)


if not (hasattr(paho.Client, "_create_socket") and hasattr(paho.Client, "_sock_close")):  # pragma: no cover
    raise ImportError(
        "edgekit.mqtt.client hands paho-mqtt its sockets through Client._create_socket: it needs paho-mqtt 2.1 or 2.2"
    )


class _ReadBuffer:
    """The socket paho is given: its reads come from what one read of the real socket took, and its writes of one
    turn of the event loop leave in one send.

    paho reads a packet a few bytes at a time (its type, each byte of its length, then the rest), each a ``recv``
    of the socket, under TLS each an ``SSLSocket.read`` and an ``SSLWantReadError`` raised and caught to learn
    there is no more: ~4 calls through Python's ssl module for a 4-byte PUBACK. Here :meth:`fill` makes one read
    of up to 64 KiB when the event loop says the socket is readable, and paho's ``recv`` calls take from that buffer
    (``BlockingIOError`` once it is empty: paho's "no more for now").

    paho writes each packet with a ``send`` of its own. While :attr:`gathering` (:meth:`MqttClient._on_writable`
    sets it around paho's ``loop_write``) a ``send`` only appends to :attr:`out`, and :meth:`flush` sends that in
    one call — 50 PUBLISHes of a spool drain were 50 sends (a system call each, and a wake-up of the broker's);
    what the socket does not take waits in :attr:`out` for room, before anything paho writes next."""

    __slots__ = ("buffer", "eof", "error", "gathering", "out", "sock", "tls")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.tls = isinstance(sock, ssl.SSLSocket)
        self.buffer = bytearray()
        self.eof = False
        self.error: OSError | None = None
        self.gathering = False
        self.out = bytearray()

    def fill(self) -> bool:
        """One read of the real socket into the buffer; False when it had nothing (an end or an error count as something)."""
        if self.error is not None:  # a failed write: paho meets it at its next recv
            return True
        try:
            data = self.sock.recv(_READ_BYTES)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError, InterruptedError):
            return False
        except OSError as exc:  # ssl.SSLError included: paho meets it at its next recv, as it would have
            self.error = exc
            return True
        if data:
            self.buffer += data
        else:
            self.eof = True
        return True

    def pending(self) -> int:
        """Decrypted bytes the TLS layer holds that epoll can't see (0 for TCP)."""
        return self.sock.pending() if self.tls else 0  # type: ignore[attr-defined]

    def recv(self, size: int) -> bytes:
        buffer = self.buffer
        if buffer:
            if size >= len(buffer):
                data = bytes(buffer)
                buffer.clear()
                return data
            data = bytes(buffer[:size])
            del buffer[:size]
            return data
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        if self.eof:
            return b""
        raise BlockingIOError

    def send(self, data: bytes | bytearray | memoryview) -> int:
        if self.gathering or self.out:  # behind what waits for room, never before it
            self.out += data
            return len(data)
        return self.sock.send(data)

    def flush(self) -> bool:
        """Send what was gathered, as much as the socket takes now; True when all of it went. A failed send is kept in
        :attr:`error` (paho's next ``recv`` raises it: a lost connection, as paho would have found it)."""
        out = self.out
        while out:
            try:
                sent = self.sock.send(out)
            except (BlockingIOError, InterruptedError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                return False
            except OSError as exc:
                self.error = self.error or exc
                out.clear()
                return True
            del out[:sent]
        return True

    def fileno(self) -> int:
        return self.sock.fileno()

    def setblocking(self, flag: bool) -> None:
        self.sock.setblocking(flag)

    def close(self) -> None:
        """Send what was gathered if the socket takes it now (paho closes the socket right after writing a DISCONNECT),
        then close."""
        self.gathering = False
        if self.out and self.error is None:
            self.flush()
        self.out.clear()
        self.sock.close()


class _Paho(paho.Client):
    """paho's client, given a socket that is already connected (and TLS-handshaken) instead of opening a blocking one."""

    _edgekit_socket: socket.socket | None = None
    _edgekit_puback: Callable[[int, int], None] | None = None

    def _create_socket(self) -> Any:
        sock, self._edgekit_socket = self._edgekit_socket, None
        if sock is None:
            raise ConnectionError("edgekit's MqttClient opens the socket itself; call MqttClient.connect()")
        return _ReadBuffer(sock)

    def _handle_pubackcomp(self, cmd: Literal["PUBACK", "PUBCOMP"]) -> MQTTErrorCode:
        """A PUBACK without properties (what brokers send: 2 bytes, or 3 with a reason code under MQTT 5) goes
        straight to :attr:`_edgekit_puback` as ``(mid, reason code)``; anything else to paho's own handling.

        paho builds a ``ReasonCode`` and two ``Properties`` objects per PUBACK and calls ``on_publish`` through two
        locks: a third of a spool drain's CPU on the agent (bench/ipc). The bookkeeping after it is paho's own
        (``_do_on_publish``): the message leaves ``_out_messages``, its info is published, a queued message takes
        its place in flight."""
        packet = self._in_packet["packet"]
        size = len(packet)
        hook = self._edgekit_puback
        if cmd != "PUBACK" or hook is None or not (size == 2 or (size == 3 and self._protocol == paho.MQTTv5)):
            return super()._handle_pubackcomp(cmd)
        mid = (packet[0] << 8) | packet[1]
        with self._out_message_mutex:
            message = self._out_messages.pop(mid, None)
            if message is None:  # not ours, or answered already
                return MQTTErrorCode.MQTT_ERR_SUCCESS
            hook(mid, packet[2] if size == 3 else 0)
            message.info._set_as_published()
            if message.qos > 0:
                self._inflight_messages -= 1
                if self._max_inflight_messages > 0:
                    return self._update_inflight()
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _edgekit_pubacks(self, data: bytearray) -> int:
        """Take the PUBACKs at the head of ``data`` (read, not yet given to paho) as :meth:`_handle_pubackcomp` does,
        all at once: returns how many bytes they were (0: none, or paho is in the middle of a packet).

        paho reads a packet with three ``recv`` calls and a dict of state, and refills its in-flight window after
        each PUBACK (a scan of its queued messages): for a spool drain's PUBACKs, which come back in runs of tens,
        the window is refilled once per run here, and the bytes are read where they lie."""
        hook = self._edgekit_puback
        if hook is None or self._in_packet["command"] != 0:
            return 0
        at, end, freed = 0, len(data), 0
        v5 = self._protocol == paho.MQTTv5
        out = self._out_messages
        with self._out_message_mutex:
            while end - at >= 4 and data[at] == _PUBACK_BYTE:
                size = data[at + 1]
                if size == 2:
                    code = 0
                elif size == 3 and v5 and end - at >= 5:
                    code = data[at + 4]
                else:  # properties, or a malformed or partial packet: paho's
                    break
                mid = (data[at + 2] << 8) | data[at + 3]
                at += 2 + size
                message = out.pop(mid, None)
                if message is None:
                    continue
                hook(mid, code)
                message.info._set_as_published()
                if message.qos > 0:
                    self._inflight_messages -= 1
                    freed += 1
            if freed and self._max_inflight_messages > 0:
                self._update_inflight()
        if at:
            with self._msgtime_mutex:
                now = paho.time_func()
                if hasattr(self, "_last_bytes_received"):  # paho 2.2 (2.1: _last_msg_in)
                    self._last_bytes_received = now
                else:  # pragma: no cover - paho 2.1
                    self._last_msg_in = now
        return at

    def _update_inflight(self) -> MQTTErrorCode:
        """paho's, which scans every message it holds for a queued one after each PUBACK: not when none is queued."""
        if len(self._out_messages) <= self._inflight_messages:
            return MQTTErrorCode.MQTT_ERR_SUCCESS
        return super()._update_inflight()

    def _easy_log(self, level: LogLevel, fmt: str, *args: Any) -> None:
        """paho formats a line for every packet sent and received (its properties printed) when ``on_log`` is set;
        :class:`MqttClient` reads only the errors, so the rest are not formatted (unless paho's logger is on)."""
        if level == paho.MQTT_LOG_ERR or self._logger is not None:
            super()._easy_log(level, fmt, *args)


def _parse_url(url: str) -> tuple[str, int, bool]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("mqtt", "tcp"):
        use_tls, default_port = False, 1883
    elif scheme in ("mqtts", "ssl", "tls"):
        use_tls, default_port = True, 8883
    else:
        raise ConfigError(f"broker URL '{url}' must start with mqtt:// or mqtts://")
    if not parts.hostname:
        raise ConfigError(f"broker URL '{url}' has no host")
    return parts.hostname, parts.port or default_port, use_tls


def _ssl_context(tls: TlsPaths) -> ssl.SSLContext:
    ca, cert, key = tls
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key) if key is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"can't load TLS files (ca={ca}, cert={cert}, key={key}): {exc}") from exc
    return context


class MqttClient:
    """An asyncio MQTT client (MQTT 5 by default) on the running event loop; see docs/local-fleet.md.

    ``will``: ``(topic, payload)`` the broker publishes (QoS 1, not retained) when the connection ends without a
    DISCONNECT (a crash, a cut network, a keepalive timeout).
    """

    def __init__(
        self,
        client_id: str,
        *,
        tls: TlsPaths | None = None,
        username: str | None = None,
        password: str | None = None,
        clean_start: bool = False,
        session_expiry: int = 3600,
        keepalive: int = 30,
        protocol: Literal[4, 5] = 5,
        reconnect: Backoff | None = None,
        auto_reconnect: bool = True,
        strict: bool = True,
        connect_timeout: float = 10.0,
        max_inflight: int = 20,
        on_connect: OnConnect | None = None,
        will: tuple[str, bytes] | None = None,
    ) -> None:
        if not client_id or len(client_id.encode()) > 128:
            raise ConfigError(f"client id '{client_id}' must be 1-128 bytes (AWS IoT Core's limit)")
        self.client_id = client_id
        self.clean_start = clean_start
        self.session_expiry = 0 if clean_start else session_expiry
        self.keepalive = keepalive
        self.protocol = protocol
        self.strict = strict
        self.connect_timeout = connect_timeout
        self.backoff = reconnect or Backoff()
        self.auto_reconnect = auto_reconnect
        self._tls = tls
        self._ssl: ssl.SSLContext | None = _ssl_context(tls) if tls is not None else None
        self._hooks: list[OnConnect] = [on_connect] if on_connect is not None else []

        self._paho = _Paho(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=None if protocol == 5 else clean_start,
            protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311,
            reconnect_on_failure=False,
            manual_ack=True,  # QoS 1 PUBACKs are ours to send: at once, or after a manual_ack handler's ack()
        )
        self._paho.suppress_exceptions = True
        self._paho.max_inflight_messages_set(max_inflight)
        if username is not None:
            self._paho.username_pw_set(username, password)
        if will is not None:
            if strict:
                topics.validate(will[0])
            self._paho.will_set(will[0], will[1], qos=1, retain=False)
        self._paho.on_connect = self._on_connect
        self._paho.on_disconnect = self._on_disconnect
        self._paho.on_message = self._on_message
        self._paho.on_publish = self._on_publish
        self._paho._edgekit_puback = self._on_puback
        self._paho.on_subscribe = self._on_subscribe
        self._paho.on_unsubscribe = self._on_unsubscribe
        self._paho.on_log = self._on_log
        # paho's documented external-loop interface: these four socket hooks tell us when to drive
        # loop_read / loop_write / loop_misc from the event loop's add_reader / add_writer (no thread, no select()).
        self._paho.on_socket_open = self._on_socket_open
        self._paho.on_socket_close = self._on_socket_close
        self._paho.on_socket_register_write = self._on_socket_register_write
        self._paho.on_socket_unregister_write = self._on_socket_unregister_write

        self._loop: asyncio.AbstractEventLoop | None = None
        self._host = ""
        self._port = 0
        self._fd: int | None = None
        self._sock: _ReadBuffer | None = None
        self._writer_on = False  # the event loop watches the socket for room (a write did not fit)
        self._write_soon = False  # a write is scheduled for this turn of the event loop
        self._misc: asyncio.TimerHandle | None = None
        self._connack: asyncio.Future[bool] | None = None
        self._closed_waiter: asyncio.Future[None] | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending_pub: dict[int, asyncio.Future[int]] = {}
        self._pending_sub: dict[int, asyncio.Future[list[int]]] = {}
        self._pending_unsub: dict[int, asyncio.Future[None]] = {}
        self._subscriptions: dict[str, int] = {}  # filter -> qos, in subscription order
        self._unconfirmed: set[str] = set()  # filters without a SUBACK yet (offline, or lost with a connection): sent on connect
        self._handlers: list[tuple[str, Handler]] = []
        self._routes: dict[str, list[tuple[str, Handler]]] = {}  # topic -> its matching handlers (reset on a change)
        self._manual: set[str] = set()  # filters whose handler acknowledges its messages itself (see subscribe)
        self._queue: asyncio.Queue[MqttMessage | None] = asyncio.Queue()
        self._last_error = ""
        self._connected = False
        self._closing = False
        self._closed = False
        self.session_present = False
        self.connects = 0  # successful connects, reconnects included

    # ------------------------------------------------------------------ public API

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def url(self) -> str:
        return f"{'mqtts' if self._ssl else 'mqtt'}://{self._host}:{self._port}"

    def add_on_connect(self, hook: OnConnect) -> None:
        """Run ``hook(client, session_present)`` after every successful (re)connect from now on."""
        self._hooks.append(hook)

    async def connect(self, url: str) -> Self:
        """Connect (TCP, TLS, CONNECT/CONNACK), then run the hooks; raise :class:`ConnectError` if refused."""
        if self._closed:
            raise NotConnectedError(f"client '{self.client_id}' was closed; make a new one")
        host, port, use_tls = _parse_url(url)
        if use_tls and self._ssl is None:
            raise ConfigError(f"'{url}' is a TLS broker: pass tls=(ca, cert, key)")
        if not use_tls and self._ssl is not None:
            raise ConfigError(f"'{url}' is a plain-TCP broker but TLS files were given: use mqtts://")
        self._loop = asyncio.get_running_loop()
        self._host, self._port = host, port
        await self._open()
        try:
            await self._after_connect(first=True)
        except BaseException:
            await self.disconnect()
            raise
        return self

    async def subscribe(
        self,
        topic_filter: str,
        qos: int = 1,
        handler: Handler | None = None,
        *,
        timeout: float = 10.0,
        manual_ack: bool = False,
    ) -> int:
        """Subscribe and return the granted QoS (from SUBACK); messages go to ``handler``, else to :meth:`messages`.

        ``manual_ack``: the broker is not acknowledged a QoS 1 message when it arrives but when ``handler`` calls
        :meth:`ack` for it (after it has stored it: acknowledged means committed). One not acknowledged is delivered
        again after a reconnect (a persistent session), so the handler must take a duplicate.

        mosquitto grants a filter its ACL forbids and then delivers nothing from it (it checks at delivery).
        Offline, the subscription is recorded and sent on the next connect (returns ``qos`` without waiting).
        A shared subscription (``$share/<group>/<filter>``, :func:`~edgekit.mqtt.topics.shared`) gets the messages
        the broker gives this client of its group.
        """
        if self.strict:
            topics.validate(topics.unshared(topic_filter), is_filter=True)
        if handler is not None:
            self._handlers.append((topic_filter, handler))
            self._routes = {}
        elif manual_ack:
            raise ConfigError("manual_ack needs a handler to acknowledge the messages")
        if manual_ack:
            self._manual.add(topic_filter)
        self._subscriptions[topic_filter] = qos
        if not self._connected:
            self._unconfirmed.add(topic_filter)
            return qos
        codes = await self._send_subscribe([(topic_filter, qos)], timeout)
        code = codes[0] if codes else 0x80
        if is_failure(code):
            raise BrokerError(f"the broker refused the subscription to '{topic_filter}' (reason code {code})")
        return code

    def handle(self, topic_filter: str, handler: Handler, *, manual_ack: bool = False) -> None:
        """Give ``handler`` the messages that match ``topic_filter`` without subscribing to it: what a persistent
        session still delivers of a subscription it holds from an earlier run, or held before an
        :meth:`unsubscribe` (the broker keeps what it queued). ``manual_ack`` as for :meth:`subscribe`."""
        self._handlers.append((topic_filter, handler))
        self._routes = {}
        if manual_ack:
            self._manual.add(topic_filter)

    async def unsubscribe(self, topic_filter: str, *, timeout: float = 10.0, keep_handlers: bool = False) -> None:
        """Drop a subscription (and its handlers, unless ``keep_handlers``: for what the session still had queued)."""
        self._subscriptions.pop(topic_filter, None)
        self._unconfirmed.discard(topic_filter)
        if not keep_handlers:
            self._manual.discard(topic_filter)
            self._handlers = [(f, h) for f, h in self._handlers if f != topic_filter]
            self._routes = {}
        if not self._connected:
            return
        rc, mid = self._paho.unsubscribe(topic_filter)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise NotConnectedError(f"can't unsubscribe from '{topic_filter}': {paho.error_string(rc)}")
        future: asyncio.Future[None] = self._new_future()
        self._pending_unsub[mid] = future
        try:
            await self._wait(future, timeout, f"UNSUBACK for '{topic_filter}'")
        finally:
            self._pending_unsub.pop(mid, None)

    async def publish(
        self,
        topic: str,
        payload: bytes | bytearray | str | WireMessage,
        qos: int = 1,
        *,
        retain: bool = False,
        timeout: float | None = 30.0,
    ) -> int:
        """Publish; for QoS 1 wait for the PUBACK and return its reason code (0 ok, 16 no subscribers, 135 not authorized).

        QoS 0 returns 0 once the message is handed to the socket, and raises :class:`NotConnectedError` when offline.
        A QoS 1 message published while offline is sent after the reconnect (the wait covers that, up to ``timeout``).
        A pydantic message from :mod:`edgekit.mqtt.payloads` is encoded to JSON.
        """
        if isinstance(payload, WireMessage):
            data = encode_payload(payload)
        elif isinstance(payload, str):
            data = payload.encode("utf-8")
        else:
            data = bytes(payload)
        self._check_publish(topic, data)
        if qos == 0 and not self._connected:
            raise NotConnectedError(
                f"client '{self.client_id}' is offline; a QoS 0 message would be lost (use QoS 1 to queue it)"
            )
        info = self._paho.publish(topic, data, qos=qos, retain=retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise BrokerError(f"client '{self.client_id}': outgoing queue is full; slow down")
        if qos == 0:
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                raise NotConnectedError(f"publish to '{topic}' failed: {paho.error_string(info.rc)}")
            return SUCCESS
        future: asyncio.Future[int] = self._new_future()
        self._pending_pub[info.mid] = future
        try:
            return await self._wait(future, timeout, f"PUBACK for '{topic}'")
        finally:
            self._pending_pub.pop(info.mid, None)

    def _check_publish(self, topic: str, data: bytes) -> None:
        """What :meth:`publish` and :meth:`publish_many` refuse before handing a message to paho."""
        if self.strict:
            topics.validate(topic)
            if len(data) > MAX_PAYLOAD_BYTES:
                raise PayloadError(
                    f"payload for '{topic}' is {len(data)} bytes, over AWS IoT Core's {MAX_PAYLOAD_BYTES}-byte limit"
                )
        if self._closed or self._closing:
            raise NotConnectedError(f"client '{self.client_id}' is closed")

    async def publish_many(
        self, messages: Sequence[tuple[str, bytes]], *, timeout: float | None = 30.0
    ) -> list[int | BaseException]:
        """QoS 1 :meth:`publish` of each of ``messages``, back to back (one connection: the broker gets them in order),
        their PUBACKs awaited together within one ``timeout``; per message its reason code, or the exception
        :meth:`publish` would have raised. No task and no timer per message: what a spool drain sends in batches."""
        results: list[int | BaseException | asyncio.Future[int]] = []
        waiting: list[tuple[int, asyncio.Future[int]]] = []
        for topic, payload in messages:
            try:
                data = bytes(payload)
                self._check_publish(topic, data)
                info = self._paho.publish(topic, data, qos=1)
                if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                    raise BrokerError(f"client '{self.client_id}': outgoing queue is full; slow down")
            except (PayloadError, TopicError, BrokerError) as exc:
                results.append(exc)
                continue
            future: asyncio.Future[int] = self._new_future()
            self._pending_pub[info.mid] = future
            waiting.append((info.mid, future))
            results.append(future)
        try:
            if waiting:
                await asyncio.wait([future for _, future in waiting], timeout=timeout)
        finally:
            for mid, future in waiting:
                if self._pending_pub.get(mid) is future:
                    del self._pending_pub[mid]
        out: list[int | BaseException] = []
        for result in results:
            if not isinstance(result, asyncio.Future):
                out.append(result)
            elif not result.done():
                result.cancel()
                out.append(MqttTimeoutError(f"client '{self.client_id}': no PUBACK within {timeout} s"))
            elif result.exception() is not None:
                out.append(cast("BaseException", result.exception()))
            else:
                out.append(result.result())
        return out

    def ack(self, message: MqttMessage) -> bool:
        """Send the PUBACK of a QoS 1 message a ``manual_ack`` handler has taken care of; False if it can't be sent.

        A message of an earlier connection is not acknowledged (its packet id now names nothing, or another
        message): the broker delivers it again on this connection.
        """
        if message.qos == 0 or message.connection != self.connects or not self._connected:
            return False
        return self._paho.ack(message.mid, message.qos) == MQTTErrorCode.MQTT_ERR_SUCCESS

    async def messages(self) -> AsyncIterator[MqttMessage]:
        """Messages no handler took, in arrival order; ends when the client is closed."""
        while True:
            message = await self._queue.get()
            if message is None:
                self._queue.put_nowait(None)  # let other iterators end too
                return
            yield message

    async def get_message(self, timeout: float | None = None) -> MqttMessage:
        """The next message no handler took; :class:`MqttTimeoutError` after ``timeout`` seconds."""
        try:
            message = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            raise MqttTimeoutError(f"client '{self.client_id}': no message within {timeout} s") from None
        if message is None:
            self._queue.put_nowait(None)
            raise NotConnectedError(f"client '{self.client_id}' is closed")
        return message

    async def disconnect(self, timeout: float = 5.0) -> None:
        """Send DISCONNECT, close the socket, stop reconnecting; pending operations fail with :class:`NotConnectedError`.

        A persistent session (``clean_start=False``) stays on the broker for ``session_expiry`` seconds.
        """
        if self._closed:
            return
        self._closing = True
        if self._reconnector is not None:
            self._reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reconnector
            self._reconnector = None
        if self._fd is not None and self._connected:
            self._closed_waiter = self._new_future()
            self._paho.disconnect()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._closed_waiter), timeout)
        self._close_socket()
        self._finish("client disconnected")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.disconnect()

    def __repr__(self) -> str:
        state = "connected" if self._connected else "closed" if self._closed else "offline"
        return f"MqttClient({self.client_id!r}, {self.url}, {state})"

    # ------------------------------------------------------------------ connecting

    async def _open(self) -> None:
        """One connection attempt: socket, TLS, CONNECT, CONNACK."""
        loop = self._require_loop()
        self._last_error = ""
        self._connected = False
        try:
            async with asyncio.timeout(self.connect_timeout):
                sock = await self._open_socket(loop)
        except TimeoutError:
            raise ConnectError(f"connecting to {self.url} timed out after {self.connect_timeout} s") from None
        self._connack = loop.create_future()
        properties = None
        if self.protocol == 5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = self.session_expiry
        self._paho._edgekit_socket = sock
        try:
            if self.protocol == 5:
                self._paho.connect_async(
                    self._host, self._port, self.keepalive, clean_start=self.clean_start, properties=properties
                )
            else:
                self._paho.connect_async(self._host, self._port, self.keepalive)
            rc = self._paho.reconnect()
        except Exception as exc:
            self._paho._edgekit_socket = None
            sock.close()
            self._close_socket()
            raise ConnectError(f"connecting to {self.url} failed: {exc}") from exc
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._close_socket()
            raise ConnectError(f"sending CONNECT to {self.url} failed: {paho.error_string(rc)}")
        try:
            self.session_present = await asyncio.wait_for(self._connack, self.connect_timeout)
        except TimeoutError:
            self._close_socket()
            raise ConnectError(f"no CONNACK from {self.url} within {self.connect_timeout} s") from None
        except BaseException:
            self._close_socket()
            raise
        finally:
            self._connack = None

    async def _open_socket(self, loop: asyncio.AbstractEventLoop) -> socket.socket:
        try:
            ipaddress.ip_address(self._host)
            family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
            address: tuple[Any, ...] = (self._host, self._port)
        except ValueError:
            infos = await loop.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
            if not infos:
                raise ConnectError(f"can't resolve '{self._host}'") from None
            family, _, _, _, address = infos[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                await loop.sock_connect(sock, address)
            except OSError as exc:
                raise ConnectError(f"can't reach the broker at {self.url}: {exc.strerror or exc}") from exc
            if self._ssl is None:
                return sock
            return await self._handshake(loop, sock)
        except BaseException:
            sock.close()
            raise

    async def _handshake(self, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> ssl.SSLSocket:
        assert self._ssl is not None
        tls_sock = self._ssl.wrap_socket(sock, server_hostname=self._host, do_handshake_on_connect=False)
        try:
            while True:
                try:
                    tls_sock.do_handshake()
                    return tls_sock
                except ssl.SSLWantReadError:
                    await self._ready(loop, tls_sock.fileno(), write=False)
                except ssl.SSLWantWriteError:
                    await self._ready(loop, tls_sock.fileno(), write=True)
        except (ssl.SSLError, ssl.CertificateError, OSError) as exc:
            tls_sock.close()
            raise ConnectError(f"TLS handshake with {self.url} failed: {exc}") from exc
        except BaseException:
            tls_sock.close()
            raise

    @staticmethod
    async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
        future: asyncio.Future[None] = loop.create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        if write:
            loop.add_writer(fd, wake)
        else:
            loop.add_reader(fd, wake)
        try:
            await future
        finally:
            if write:
                loop.remove_writer(fd)
            else:
                loop.remove_reader(fd)

    async def _after_connect(self, *, first: bool) -> None:
        """Re-subscribe what the broker does not remember, then run the hooks."""
        # a session the broker kept still has its subscriptions, except those made while offline
        again = [f for f in self._subscriptions if f in self._unconfirmed] if self.session_present else list(self._subscriptions)
        for start in range(0, len(again), _SUBSCRIBE_BATCH):
            batch = [(f, self._subscriptions[f]) for f in again[start : start + _SUBSCRIBE_BATCH]]
            codes = await self._send_subscribe(batch, 10.0)
            for (topic_filter, _), code in zip(batch, codes, strict=False):
                if is_failure(code):
                    log.warning("%s: broker refused the subscription to '%s' (reason %d)", self.client_id, topic_filter, code)
        for hook in list(self._hooks):
            try:
                result = hook(self, self.session_present)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                if first:
                    raise
                log.exception("%s: on_connect hook %r failed after a reconnect", self.client_id, hook)

    async def _send_subscribe(self, batch: Sequence[tuple[str, int]], timeout: float) -> list[int]:
        """SUBSCRIBE and wait for the SUBACK; a filter stays unconfirmed (re-sent on the next connect) until it is granted."""
        filters = [f for f, _ in batch]
        self._unconfirmed.update(filters)
        rc, mid = self._paho.subscribe(list(batch))
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise NotConnectedError(f"can't subscribe to {filters} now ({paho.error_string(rc)}); it will be sent on reconnect")
        future: asyncio.Future[list[int]] = self._new_future()
        self._pending_sub[mid] = future
        try:
            codes = await self._wait(future, timeout, f"SUBACK for {filters}")
        finally:
            self._pending_sub.pop(mid, None)
        for topic_filter, code in zip(filters, codes, strict=False):
            self._unconfirmed.discard(topic_filter)
            if is_failure(code):
                self._subscriptions.pop(topic_filter, None)
        return codes

    async def _reconnect_loop(self) -> None:
        attempt = 0
        for delay in self.backoff.delays():
            await asyncio.sleep(delay)
            if self._closing:
                return
            attempt += 1
            try:
                await self._open()
                await self._after_connect(first=False)
            except (BrokerError, OSError) as exc:
                log.debug("%s: reconnect attempt %d failed: %s", self.client_id, attempt, exc)
                continue
            log.info("%s: reconnected to %s after %d attempt(s)", self.client_id, self.url, attempt)
            return

    # ------------------------------------------------------------------ plumbing

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise NotConnectedError(f"client '{self.client_id}' was never connected; await client.connect(url) first")
        return self._loop

    def _new_future(self) -> asyncio.Future[Any]:
        return self._require_loop().create_future()

    async def _wait(self, future: asyncio.Future[_T], timeout: float | None, what: str) -> _T:
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise MqttTimeoutError(f"client '{self.client_id}': no {what} within {timeout} s") from None

    def _spawn(self, awaitable: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(awaitable)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: message handler failed", self.client_id, exc_info=task.exception())

    def _close_socket(self) -> None:
        """Close paho's socket now (its on_socket_close unregisters it from the loop)."""
        self._paho._sock_close()
        self._connected = False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None

    def _fail_pending(self, error: BaseException) -> None:
        for futures in (self._pending_pub, self._pending_sub, self._pending_unsub):
            for future in futures.values():
                if not future.done():
                    future.set_exception(error)
            futures.clear()

    def _finish(self, why: str) -> None:
        """The client is done for good: fail what waits, end the message iterators."""
        self._closed = True
        self._connected = False
        self._fail_pending(NotConnectedError(f"client '{self.client_id}': {why}"))
        for task in list(self._tasks):
            task.cancel()
        self._queue.put_nowait(None)

    # ------------------------------------------------------------------ paho socket callbacks (event loop thread)

    def _misc_interval(self) -> float:
        """How often paho's keepalive check runs: a quarter of the keepalive (1-15 s), so a PINGREQ goes out at most
        1.25 keepalives after the last packet — before the broker's 1.5 — and one timer a second per client is not
        spent finding nothing due (each packet in or out puts the next PINGREQ off anyway)."""
        return min(_MISC_MAX_S, max(_MISC_MIN_S, self.keepalive / 4)) if self.keepalive > 0 else _MISC_MAX_S

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        loop = self._require_loop()
        self._sock = sock if isinstance(sock, _ReadBuffer) else None
        self._fd = sock.fileno()
        self._writer_on = False
        loop.add_reader(self._fd, self._on_readable)
        if self._misc is None:
            self._misc = loop.call_later(self._misc_interval(), self._on_misc)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
            if self._writer_on:
                self._loop.remove_writer(self._fd)
        self._fd = None
        self._sock = None
        self._writer_on = False

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        """paho queued a packet: write it later in this turn of the event loop (with whatever else is queued by then),
        not by watching the socket for room — that costs two epoll changes and a wake-up per packet."""
        if self._fd is None or self._loop is None or self._write_soon or self._writer_on:
            return
        self._write_soon = True
        self._loop.call_soon(self._write_now)

    def _on_socket_unregister_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if self._writer_on and self._fd is not None and self._loop is not None:
            self._loop.remove_writer(self._fd)
        self._writer_on = False

    def _write_now(self) -> None:
        self._write_soon = False
        if self._fd is not None:
            self._on_writable()

    def _on_writable(self) -> None:
        sock = self._sock
        if sock is None:  # pragma: no cover - paho was given another socket
            self._paho.loop_write()
        elif sock.flush():  # what waited for room went first; now what paho has queued, gathered into one send
            # ... except a DISCONNECT: paho closes the socket right after writing it, so it must go to the socket
            # itself (kept in paho's queue while the socket is full), never into a gather close() can't finish
            # (the broker would see an abnormal close and publish the client's will)
            sock.gathering = self._paho._state is not _ConnectionState.MQTT_CS_DISCONNECTING
            try:
                self._paho.loop_write()
            finally:
                sock.gathering = False
            sock.flush()
        if sock is not None and sock is self._sock and sock.error is not None and self._loop is not None:
            self._loop.call_soon(self._on_readable)  # paho finds the failed send there and ends the connection
        # what did not fit waits for room (paho tells its register callback only once, so ask it here)
        fd, loop = self._fd, self._loop
        if fd is None or loop is None:
            return
        if self._paho.want_write() or (sock is not None and sock.out):
            if not self._writer_on:
                loop.add_writer(fd, self._on_writable)
                self._writer_on = True
        elif self._writer_on:
            loop.remove_writer(fd)
            self._writer_on = False

    def _on_readable(self) -> None:
        sock = self._sock
        if sock is None:  # pragma: no cover - paho was given another socket
            self._paho.loop_read()
            return
        reads = 0
        paho_ = self._paho
        while sock.fill():
            # paho takes at most (messages in flight, or 1) packets a call: call it until the buffer is used up; the
            # PUBACKs at the head are taken at once (_Paho._edgekit_pubacks)
            left = len(sock.buffer) + 1
            while self._sock is sock and len(sock.buffer) < left:
                taken = paho_._edgekit_pubacks(sock.buffer) if sock.buffer else 0
                if taken:
                    del sock.buffer[:taken]
                left = len(sock.buffer)
                if not (sock.buffer or sock.eof or sock.error):
                    break
                paho_.loop_read()
            if self._sock is not sock:  # the connection ended
                return
            # TLS: records already decrypted into the SSL object's buffer don't wake epoll; read them now
            if not sock.pending():
                return
            reads += 1
            if reads > _MAX_SSL_DRAIN:
                self._require_loop().call_soon(self._on_readable)
                return

    def _on_misc(self) -> None:
        self._misc = None
        if self._fd is None:
            return
        self._paho.loop_misc()  # keepalive: PINGREQ when due, drop the connection when PINGRESP is overdue
        if self._fd is not None and self._loop is not None:
            self._misc = self._loop.call_later(self._misc_interval(), self._on_misc)

    # ------------------------------------------------------------------ paho protocol callbacks (event loop thread)

    def _on_log(self, client: paho.Client, userdata: Any, level: int, text: str) -> None:
        if level == paho.MQTT_LOG_ERR:
            self._last_error = text
            log.debug("%s: %s", self.client_id, text)

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        future = self._connack
        if reason.is_failure:
            if future is not None and not future.done():
                future.set_exception(
                    ConnectError(f"{self.url} refused client '{self.client_id}': {reason} ({reason.value})", reason.value)
                )
            return
        self._connected = True
        self.connects += 1
        if future is not None and not future.done():
            future.set_result(bool(flags.session_present))

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, properties: Any) -> None:
        was_connected = self._connected
        self._connected = False
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
        future = self._connack
        if future is not None and not future.done():
            detail = self._last_error or str(reason)
            future.set_exception(ConnectError(f"{self.url} closed the connection of '{self.client_id}' before CONNACK: {detail}"))
            return
        if self._closing:
            if self._closed_waiter is not None and not self._closed_waiter.done():
                self._closed_waiter.set_result(None)
            return
        if not was_connected:
            return
        detail = self._last_error or str(reason)
        log.info("%s: connection to %s lost (%s)", self.client_id, self.url, detail)
        # SUBACK / UNSUBACK won't come on this connection; QoS 1 publishes stay queued in paho and go out on reconnect.
        lost = NotConnectedError(
            f"client '{self.client_id}': connection lost before the broker answered ({detail}); subscriptions are re-sent on reconnect"
        )
        for futures in (self._pending_sub, self._pending_unsub):
            for future_ in futures.values():
                if not future_.done():
                    future_.set_exception(lost)
            futures.clear()
        if not self.auto_reconnect:
            self._finish(f"connection lost ({detail})")
        elif self._reconnector is None or self._reconnector.done():
            self._reconnector = self._require_loop().create_task(self._reconnect_loop(), name=f"mqtt-reconnect-{self.client_id}")

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        received = MqttMessage(
            message.topic, bytes(message.payload), message.qos, bool(message.retain), message.mid, self.connects
        )
        manual = False
        routes = self._routes.get(received.topic)
        if routes is None:
            routes = self._route(received.topic)
        for topic_filter, handler in routes:
            manual = manual or topic_filter in self._manual
            try:
                result = handler(received)
            except Exception:
                log.exception("%s: handler for '%s' failed", self.client_id, topic_filter)
                continue
            if inspect.isawaitable(result):
                self._spawn(result)
        if not routes:
            self._queue.put_nowait(received)
        if not manual and received.qos > 0:
            self._paho.ack(received.mid, received.qos)  # what paho does itself without manual_ack

    def _route(self, topic: str) -> list[tuple[str, Handler]]:
        """The handlers whose filter matches ``topic`` ($share/<group>/<filter> too), remembered until a handler is
        added or removed: matching every filter against every message was a tenth of a fleet service's ingest."""
        routes = [(f, h) for f, h in self._handlers if paho.topic_matches_sub(topics.unshared(f), topic)]
        if len(self._routes) >= _MAX_ROUTES:
            self._routes = {}
        self._routes[topic] = routes
        return routes

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: ReasonCode, properties: Any) -> None:
        self._on_puback(mid, int(reason.value))

    def _on_puback(self, mid: int, reason: int) -> None:
        future = self._pending_pub.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(reason)

    def _on_subscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any) -> None:
        future = self._pending_sub.pop(mid, None)
        if future is not None and not future.done():
            future.set_result([int(r.value) for r in reasons])

    def _on_unsubscribe(self, client: paho.Client, userdata: Any, mid: int, reasons: list[ReasonCode], properties: Any) -> None:
        future = self._pending_unsub.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)


async def connect(
    url: str,
    client_id: str,
    *,
    tls: TlsPaths | None = None,
    clean_start: bool = False,
    keepalive: int = 30,
    on_connect: OnConnect | None = None,
    **options: Any,
) -> MqttClient:
    """Make an :class:`MqttClient` and connect it (a persistent session unless ``clean_start``); see its options."""
    client = MqttClient(client_id, tls=tls, clean_start=clean_start, keepalive=keepalive, on_connect=on_connect, **options)
    await client.connect(url)
    return client
