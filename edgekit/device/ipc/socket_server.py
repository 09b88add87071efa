"""The IPC socket server: eventstream RPC on a Unix domain socket, as the nucleus serves it to ``awsiotsdk``.

Per connection (``ggipcd``'s ``client_ready`` and the Java ``RpcServer`` behave alike):

1. The first message must be ``CONNECT`` on stream 0 (``:version`` ``0.1.0`` when given) with the JSON payload
   ``{"authToken": "<SVCUID>"}``. A known token gets ``CONNECT_ACK`` with ``CONNECTION_ACCEPTED``; anything else
   gets a ``CONNECT_ACK`` without it (the SDK raises ``AccessDeniedError``), a log line naming the peer's pid, and
   the connection is closed.
2. Each operation is a new stream (ids increasing): an ``APPLICATION_MESSAGE`` with the ``operation`` header
   and the request as JSON. The response carries ``service-model-type`` ``aws.greengrass#<Op>Response`` and
   ``TERMINATE_STREAM`` unless the operation streams; a streaming operation's events follow on the same stream
   until either side sends ``TERMINATE_STREAM``. Errors are ``APPLICATION_ERROR`` + ``TERMINATE_STREAM`` with the
   error's model (``aws.greengrass#UnauthorizedError``, ...).
3. ``PING`` gets ``PING_RESPONSE``.

A malformed frame (bad CRC, impossible length, broken header), a message over ``max_message_bytes``, a
protocol violation (no ``CONNECT`` first, a stream id going backwards, no ``operation``) closes that
connection, after a ``PROTOCOL_ERROR`` when the framing is still sound; the server and the other connections
go on. Operations run as tasks, so a slow one never blocks the connection's other streams; ``PublishToIoTCore``, the
hot path, runs without one (checked as it arrives, answered from the callback of the spool commit that holds the
message, never before its fsync). What a turn of the event loop answers goes out in one socket write.

The socket is ``<device root>/ipc.socket`` when the device root is the agent's own (owned by its user, writable by
nobody else); when that path is over the 107 bytes ``sun_path`` holds, or the root is not private, the socket goes
into a folder made for it with a random name and mode 0700 under the temporary folder (``mkdtemp``: never a
predictable shared path another user could make first and swap the socket in). :meth:`IpcServer.start` checks the
socket's folder again (a directory, not a link, owned by the agent's user, writable by nobody else) and refuses
anything else (:attr:`IpcServer.path` says where it is).

Limits per connection: ``CONNECT`` must arrive within ``auth_timeout_s`` (5 s) of the connection, in a message of at
most ``auth_max_bytes`` (64 KiB): before authentication a connection holds no more than that. After it, messages up
to ``max_message_bytes``; a connection with no stream open that sends nothing for ``idle_timeout_s`` (1 h; a ``PING``
counts) is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import socket
import stat
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgekit.device.ipc.errors import InvalidArgumentsError, IpcError, IpcServerError, ServiceError
from edgekit.device.ipc.eventstream import (
    CONNECTION_ACCEPTED,
    MAX_MESSAGE_BYTES,
    TERMINATE_STREAM,
    EventStreamMessage,
    FrameDecoder,
    FrameTemplate,
    FramingError,
    MessageType,
    encode,
)
from edgekit.device.ipc.handler import NS, STREAMING, Cleanup, IpcHandler, publish_failed
from edgekit.edge.errors import EdgeError

__all__ = ["IpcServer", "private_folder", "socket_path_for"]

log = logging.getLogger(__name__)

_SUN_PATH_MAX = 107
JSON = "application/json"
_PUBLISH_TO_IOT_CORE = NS + "PublishToIoTCore"
_PUBLISH_RESPONSE = NS + "PublishToIoTCoreResponse"
_PUBLISHED = FrameTemplate(
    {
        ":message-type": int(MessageType.APPLICATION_MESSAGE),
        ":message-flags": TERMINATE_STREAM,
        ":stream-id": 0,
        ":content-type": JSON,
        "service-model-type": _PUBLISH_RESPONSE,
    },
    b"{}",
)
"""The answer to a PublishToIoTCore stored (what :meth:`_Connection.send_app` writes for it, encoded once)."""


AUTH_TIMEOUT_S = 5.0
AUTH_MAX_BYTES = 64 * 1024
IDLE_TIMEOUT_S = 3600.0


def private_folder(folder: Path) -> str | None:
    """Why ``folder`` can't hold the agent's socket (None: it can): it must be a directory, not a link, owned by the
    agent's user and writable by no one else (who could otherwise swap the socket)."""
    try:
        st = os.lstat(folder)
    except OSError as exc:
        return f"can't stat it: {exc.strerror or exc}"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if st.st_uid != os.geteuid():
        return f"it belongs to uid {st.st_uid}, not the agent's {os.geteuid()}"
    if st.st_mode & 0o022:
        return f"others may write to it (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def socket_path_for(root: str | Path, name: str = "ipc.socket") -> Path:
    """``root/name`` when it fits a socket and ``root`` is private (:func:`private_folder`), else ``name`` in a new
    folder of mode 0700 with a random name under the temporary folder (made here)."""
    path = Path(root).absolute() / name
    if len(os.fsencode(str(path))) <= _SUN_PATH_MAX:
        with contextlib.suppress(OSError):
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if private_folder(path.parent) is None:
            return path
    folder = Path(tempfile.mkdtemp(prefix="edgekit-ipc-"))  # mode 0700, a name no one can guess and make first
    return folder / name


def _peer_pid(writer: asyncio.StreamWriter) -> int | None:
    sock = writer.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return int(struct.unpack("3i", creds)[0])
    except (OSError, AttributeError):
        return None


class _Stream:
    """One operation's stream: events wait until the response is out."""

    def __init__(self, conn: _Connection, stream_id: int) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.active = False
        self.closed = False
        self.cleanup: Cleanup | None = None
        self._queued: list[tuple[str, Mapping[str, Any]]] = []

    def send(self, model: str, payload: Mapping[str, Any]) -> None:
        if self.closed:
            return
        if not self.active:
            self._queued.append((model, payload))
            return
        self.conn.send_app(self.stream_id, model, payload, 0)

    def activate(self) -> None:
        self.active = True
        queued, self._queued = self._queued, []
        for model, payload in queued:
            self.send(model, payload)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        cleanup, self.cleanup = self.cleanup, None
        if cleanup is not None:
            try:
                result = cleanup()
                if result is not None:
                    await result
            except Exception:
                log.exception("closing an IPC stream failed")


class _Connection:
    def __init__(self, server: IpcServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.component: str | None = None
        self.last_stream = 0
        self.streams: dict[int, _Stream] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.get_running_loop()
        self._out: list[bytes] = []
        self._publishes: list[tuple[int, str, bytes]] = []  # (stream id, topic, payload) checked, not yet spooled

    # ------------------------------------------------------------------ writing

    def write(self, headers: dict[str, Any], payload: bytes = b"") -> None:
        """Queue one message; what is queued goes out in one socket write at the end of this turn of the event loop
        (the answers a group commit releases together leave in one send, not one each)."""
        self.write_frame(encode(headers, payload))

    def write_frame(self, frame: bytes) -> None:
        """:meth:`write` of a message already encoded."""
        if self.writer.is_closing():
            return
        if not self._out:
            self._loop.call_soon(self.flush)
        self._out.append(frame)

    def flush(self) -> None:
        out, self._out = self._out, []
        if out and not self.writer.is_closing():
            self.writer.write(b"".join(out))

    def send_app(self, stream_id: int, model: str, payload: Mapping[str, Any], flags: int, error: bool = False) -> None:
        kind = MessageType.APPLICATION_ERROR if error else MessageType.APPLICATION_MESSAGE
        headers = {
            ":message-type": int(kind),
            ":message-flags": flags,
            ":stream-id": stream_id,
            ":content-type": JSON,
            "service-model-type": model,
        }
        self.write(headers, json.dumps(payload, separators=(",", ":")).encode() if payload else b"{}")

    def protocol_error(self, why: str) -> None:
        log.warning("IPC connection of %s: protocol error: %s; closing it", self.component or "an unauthenticated client", why)
        self.write(
            {":message-type": int(MessageType.PROTOCOL_ERROR), ":message-flags": 0, ":stream-id": 0, ":content-type": JSON},
            json.dumps({"message": why}).encode(),
        )

    # ------------------------------------------------------------------ reading

    def _read_timeout(self, loop: asyncio.AbstractEventLoop, auth_deadline: float) -> float | None:
        if self.component is None:
            return max(0.0, auth_deadline - loop.time())
        return None if self.streams else self.server.idle_timeout_s

    async def serve(self) -> None:
        server = self.server
        decoder = FrameDecoder(min(server.auth_max_bytes, server.max_message_bytes))  # before CONNECT: little
        loop = asyncio.get_running_loop()
        auth_deadline = loop.time() + server.auth_timeout_s
        try:
            while True:
                try:
                    async with asyncio.timeout(self._read_timeout(loop, auth_deadline)):
                        data = await self.reader.read(65536)
                except TimeoutError:
                    why = "no CONNECT in time" if self.component is None else "idle"
                    log.warning("IPC connection of %s closed: %s", self.component or "an unauthenticated client", why)
                    server.timed_out += 1
                    return
                if not data:
                    return
                for message in decoder.iter_feed(data):
                    if not self.handle(message):
                        self.spool_publishes()
                        await self.linger()
                        return
                    decoder.max_message = server.max_message_bytes  # authenticated: the full limit
                self.spool_publishes()
                self.flush()
                await self.writer.drain()
        except FramingError as exc:
            log.warning("IPC connection of %s: %s; closing it", self.component or "an unauthenticated client", exc)
            self.spool_publishes()  # those before the bad frame were whole: stored and answered as usual
            await self.linger()
        except (ConnectionError, OSError):
            return

    async def linger(self, timeout_s: float = 1.0) -> None:
        """Let the client read the last answer and hang up first (closing at once can reset what it has not read)."""
        self.flush()
        with contextlib.suppress(Exception):
            await self.writer.drain()
            async with asyncio.timeout(timeout_s):
                while await self.reader.read(65536):
                    pass

    def handle(self, message: EventStreamMessage) -> bool:
        """Act on one message; False closes the connection."""
        kind = message.type
        if self.component is None:
            return self.connect(message)
        if kind == MessageType.PING:
            self.write({":message-type": int(MessageType.PING_RESPONSE), ":message-flags": 0, ":stream-id": 0})
            return True
        if kind == MessageType.PING_RESPONSE:
            return True
        if kind not in (MessageType.APPLICATION_MESSAGE, MessageType.APPLICATION_ERROR) or message.stream_id <= 0:
            self.protocol_error(f"unexpected message type {kind} on stream {message.stream_id}")
            return False
        stream_id = message.stream_id
        stream = self.streams.get(stream_id)
        if stream is not None:
            if message.flags & TERMINATE_STREAM:
                del self.streams[stream_id]
                self.spawn(stream.close())
            return True  # no operation here takes stream input
        if stream_id <= self.last_stream:
            if message.flags & TERMINATE_STREAM:
                return True  # a stream the server already ended
            self.protocol_error(f"stream id {stream_id} is not greater than {self.last_stream}")
            return False
        self.last_stream = stream_id
        if message.flags & TERMINATE_STREAM:
            return True  # a request withdrawn before it was made: nothing to do (as the Java server)
        operation = message.headers.get("operation")
        if not isinstance(operation, str) or not operation:
            self.protocol_error(f"stream {stream_id} starts without an operation header")
            return False
        if operation == _PUBLISH_TO_IOT_CORE and self.server.handler.iot_core is not None:
            self.publish(stream_id, message.payload)
            return True
        stream = _Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.spawn(self.run(stream, operation, message.payload))
        return True

    def connect(self, message: EventStreamMessage) -> bool:
        pid = _peer_pid(self.writer)
        if message.type != MessageType.CONNECT or message.stream_id != 0:
            self.protocol_error("the first message must be CONNECT on stream 0")
            return False
        version = message.headers.get(":version")
        token: object = None
        try:
            body = json.loads(message.payload or b"{}")
            token = body.get("authToken") if isinstance(body, dict) else None
        except ValueError:
            pass
        component = self.server.handler.authenticate(token) if version in (None, "0.1.0") else None
        if component is None:
            why = "an unknown auth token" if token else "no auth token"
            if version not in (None, "0.1.0"):
                why = f"protocol version {version!r} (0.1.0 expected)"
            log.warning("IPC connect refused (peer pid %s): %s", pid, why)
            self.server.refused += 1
            self.write({":message-type": int(MessageType.CONNECT_ACK), ":message-flags": 0, ":stream-id": 0})
            return False
        self.component = component
        log.debug("IPC: %s connected (pid %s)", component, pid)
        self.write({":message-type": int(MessageType.CONNECT_ACK), ":message-flags": CONNECTION_ACCEPTED, ":stream-id": 0})
        return True

    # ------------------------------------------------------------------ operations

    def publish(self, stream_id: int, payload: bytes) -> None:
        """PublishToIoTCore, the hot path, without a task: checked now (refused now), spooled with the other publishes
        of the same read (:meth:`spool_publishes`), answered from the callback of the commit that holds them (so never
        before its fsync)."""
        assert self.component is not None
        try:
            try:
                request = json.loads(payload or b"{}")
            except ValueError:
                raise InvalidArgumentsError(f"the {_PUBLISH_TO_IOT_CORE} request is not JSON") from None
            topic, message = self.server.handler.publish_checked(self.component, request)
        except IpcError as exc:
            self.send_app(stream_id, exc.model, exc.payload(), TERMINATE_STREAM, error=True)
            return
        self._publishes.append((stream_id, topic, message))

    def spool_publishes(self) -> None:
        """Spool the publishes checked since the last call, together: one future and one answer for them all (what a
        read brings: with 64 in flight, tens of requests), not one each."""
        batch, self._publishes = self._publishes, []
        iot_core = self.server.handler.iot_core
        if not batch or iot_core is None:
            return
        try:
            stored = iot_core.put_many_nowait([(topic, message) for _, topic, message in batch])
        except EdgeError as exc:
            for stream_id, topic, _ in batch:
                error = publish_failed(topic, exc)
                self.send_app(stream_id, error.model, error.payload(), TERMINATE_STREAM, error=True)
            return
        stored.add_done_callback(functools.partial(self._published, batch))

    def _published(self, batch: list[tuple[int, str, bytes]], stored: asyncio.Future[list[int | EdgeError]]) -> None:
        if stored.cancelled():
            return
        failure = stored.exception()
        results: list[int | BaseException] = [failure] * len(batch) if failure is not None else list(stored.result())
        for (stream_id, topic, _), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                error = publish_failed(topic, result)
                self.send_app(stream_id, error.model, error.payload(), TERMINATE_STREAM, error=True)
            else:
                self.write_frame(_PUBLISHED.frame(stream_id))

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, stream: _Stream, operation: str, payload: bytes) -> None:
        assert self.component is not None
        streaming = operation in STREAMING
        try:
            try:
                request = json.loads(payload or b"{}")
            except ValueError:
                raise InvalidArgumentsError(f"the {operation} request is not JSON") from None
            reply = await self.server.handler.call(self.component, operation, request, stream if streaming else None)
        except IpcError as exc:
            self.streams.pop(stream.stream_id, None)
            stream.closed = True
            self.send_app(stream.stream_id, exc.model, exc.payload(), TERMINATE_STREAM, error=True)
            return
        except Exception as exc:
            log.exception("IPC %s from %s failed", operation, self.component)
            self.streams.pop(stream.stream_id, None)
            stream.closed = True
            error = ServiceError(f"{operation} failed in the agent: {type(exc).__name__}")
            self.send_app(stream.stream_id, error.model, error.payload(), TERMINATE_STREAM, error=True)
            return
        if stream.closed or self.writer.is_closing():  # the client hung up meanwhile
            stream.cleanup = reply.cleanup
            stream.closed = False
            await stream.close()
            return
        if streaming:
            stream.cleanup = reply.cleanup
            self.send_app(stream.stream_id, reply.model, reply.payload, 0)
            stream.activate()
        else:
            self.streams.pop(stream.stream_id, None)
            stream.closed = True
            self.send_app(stream.stream_id, reply.model, reply.payload, TERMINATE_STREAM)

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for stream in list(self.streams.values()):
            await stream.close()
        self.streams.clear()
        self.flush()
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class IpcServer:
    """One device's IPC socket (see the module docstring)."""

    def __init__(
        self,
        handler: IpcHandler,
        path: str | Path,
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        auth_timeout_s: float = AUTH_TIMEOUT_S,
        auth_max_bytes: int = AUTH_MAX_BYTES,
        idle_timeout_s: float | None = IDLE_TIMEOUT_S,
    ) -> None:
        self.handler = handler
        self.path = Path(path)
        self.max_message_bytes = max_message_bytes
        self.auth_timeout_s = auth_timeout_s
        self.auth_max_bytes = auth_max_bytes
        self.idle_timeout_s = idle_timeout_s
        self.refused = 0
        """Connections refused at CONNECT (wrong or missing token)."""
        self.timed_out = 0
        """Connections closed for sending no CONNECT in time, or for being idle."""
        self._server: asyncio.AbstractServer | None = None
        self._connections: set[_Connection] = set()

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        if self._server is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            unsafe = private_folder(self.path.parent)
            if unsafe is not None:
                raise IpcServerError(
                    f"won't serve IPC in {self.path.parent}: {unsafe}; the socket's folder must be the agent's alone"
                )
            if self.path.is_socket() or self.path.is_symlink():
                self.path.unlink()
            sock.bind(str(self.path))
            self.path.chmod(0o600)
            sock.listen(128)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(self._serve, sock=sock, limit=2**16)
        except OSError as exc:
            sock.close()
            raise IpcServerError(
                f"can't serve IPC on {self.path}: {exc}; check that the folder is writable and the path is free"
            ) from None
        except BaseException:  # cancelled while starting: no socket left open
            sock.close()
            raise

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Connection(self, reader, writer)
        self._connections.add(conn)
        try:
            await conn.serve()
        finally:
            self._connections.discard(conn)
            await conn.close()

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for conn in list(self._connections):
            await conn.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        with contextlib.suppress(OSError):
            self.path.unlink()
        if self.path.parent.name.startswith("edgekit-ipc-"):  # the folder socket_path_for made for it
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()
