"""Greengrass IPC at the socket: framing against awscrt's own client, the handshake, bad input, the in-process transport.

The client side is the unmodified AWS IoT Device SDK (``awsiotsdk``: ``GreengrassCoreIPCClientV2`` over awscrt),
run in a worker thread as a component would run it; the server is edgekit's, on a real Unix domain socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import stat
import struct
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, cast

import pytest

from edgekit.device.ipc import DeviceIpc, InProcessIpc, UnauthorizedError
from edgekit.device.ipc.errors import IpcServerError
from edgekit.device.ipc.eventstream import FrameDecoder, FrameTemplate, FramingError, MessageType, encode
from edgekit.device.ipc.policy import matches
from edgekit.device.ipc.socket_server import IpcServer, socket_path_for

COMPONENT = "com.example.Probe"
POLICIES = {
    "aws.greengrass.ipc.pubsub": {
        "com.example.Probe:pubsub:1": {
            "operations": ["aws.greengrass#PublishToTopic", "aws.greengrass#SubscribeToTopic"],
            "resources": ["local/*"],
        }
    },
    "aws.greengrass.ipc.mqttproxy": {
        "com.example.Probe:mqtt:1": {
            "operations": ["aws.greengrass#PublishToIoTCore"],
            "resources": ["devices/{iot:thingName}/#"],
        }
    },
}


class Host:
    """The agent's side of the handler, in memory (the agent's own is tested in test_ipc_device.py)."""

    thing = "dev-1"

    def __init__(self) -> None:
        self.configs: dict[str, dict[str, Any]] = {
            COMPONENT: {"Greeting": "hi", "Nested": {"Level": 2}, "accessControl": POLICIES},
            "com.example.Other": {"accessControl": POLICIES},
        }
        self.states: list[tuple[str, str]] = []

    def configuration(self, component: str) -> dict[str, Any] | None:
        return self.configs.get(component)

    def set_configuration(self, component: str, configuration: dict[str, Any]) -> None:
        self.configs[component] = configuration

    def report_state(self, component: str, state: str) -> None:
        self.states.append((component, state))


def run(root: Path, scenario: Callable[[DeviceIpc], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        ipc = DeviceIpc(root, Host())
        await ipc.start()
        try:
            await scenario(ipc)
        finally:
            await ipc.close()

    asyncio.run(asyncio.wait_for(main(), 60))


def sdk_client(env: dict[str, str]) -> Any:
    """``GreengrassCoreIPCClientV2()`` reading the socket and token from ``env``, as a component does."""
    from awsiot.greengrasscoreipc import connect
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    ipc = connect(ipc_socket=env["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"], authtoken=env["SVCUID"])
    return GreengrassCoreIPCClientV2(client=ipc)


def raw(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(str(path))
    return sock


def read_all(sock: socket.socket) -> bytes:
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def connect_frame(token: str) -> bytes:
    headers = {":message-type": 4, ":message-flags": 0, ":stream-id": 0, ":version": "0.1.0"}
    return encode(headers, json.dumps({"authToken": token}).encode())


# --------------------------------------------------------------------------- framing


def test_frames_from_awscrts_client_decode_and_encode_back_byte_for_byte(tmp_path: Path) -> None:
    """What awscrt sends (CONNECT, then a request) decodes, and encoding the decoded message gives the same bytes."""
    path = tmp_path / "s.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    received: list[bytes] = []

    def serve() -> None:
        conn, _ = listener.accept()
        conn.settimeout(5)
        decoder = FrameDecoder()
        buf = b""
        messages: list[Any] = []
        while not messages:
            data = conn.recv(65536)
            buf += data
            messages = decoder.feed(data)
        received.append(buf)
        ack = {":message-type": int(MessageType.CONNECT_ACK), ":message-flags": 1, ":stream-id": 0}
        conn.sendall(encode(ack))
        more = b""
        decoder2 = FrameDecoder()
        got: list[Any] = []
        while not got:
            data = conn.recv(65536)
            more += data
            got = decoder2.feed(data)
        received.append(more)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    from awsiot.greengrasscoreipc import connect
    from awsiot.greengrasscoreipc.model import GetConfigurationRequest

    client = connect(ipc_socket=str(path), authtoken="TOKEN123")
    op = client.new_get_configuration()
    op.activate(GetConfigurationRequest(key_path=["a", "b"]))
    thread.join(10)
    client.close()
    listener.close()
    (connect_msg,) = FrameDecoder().feed(received[0])
    assert connect_msg.type == MessageType.CONNECT and connect_msg.stream_id == 0
    assert connect_msg.headers[":version"] == "0.1.0"
    assert json.loads(connect_msg.payload) == {"authToken": "TOKEN123"}
    (request,) = FrameDecoder().feed(received[1])
    assert request.headers["operation"] == "aws.greengrass#GetConfiguration"
    assert request.headers["service-model-type"] == "aws.greengrass#GetConfigurationRequest"
    assert request.stream_id >= 1 and json.loads(request.payload) == {"keyPath": ["a", "b"]}
    for frame, message in ((received[0], connect_msg), (received[1], request)):
        assert encode(message.headers, message.payload) == frame


def test_the_decoder_refuses_bad_crcs_lengths_and_headers() -> None:
    good = encode({":message-type": 0, "name": "x"}, b"{}")
    assert FrameDecoder().feed(good)[0].headers["name"] == "x"
    assert FrameDecoder().feed(good[:10]) == []  # not whole yet
    bad_prelude = bytearray(good)
    bad_prelude[9] ^= 0xFF
    bad_message = bytearray(good)
    bad_message[-6] ^= 0xFF
    huge = struct.pack(">II", 1 << 30, 0)
    huge += struct.pack(">I", zlib.crc32(huge))
    short = struct.pack(">II", 8, 0)
    short += struct.pack(">I", zlib.crc32(short))
    for frame, why in ((bad_prelude, "prelude CRC"), (bad_message, "message CRC"), (huge, "limit"), (short, "impossible")):
        with pytest.raises(FramingError, match=why):
            FrameDecoder().feed(bytes(frame))
    broken_header = bytearray(encode({"n": "v"}))
    broken_header[12] = 40  # a name length running past the headers
    body = bytes(broken_header[:-4])
    fixed = body[:8] + struct.pack(">I", zlib.crc32(body[:8])) + body[12:]
    with pytest.raises(FramingError, match="malformed headers|run past"):
        FrameDecoder().feed(fixed + struct.pack(">I", zlib.crc32(fixed)))


def test_requests_that_differ_only_in_their_stream_id_decode_each_with_its_own() -> None:
    """The decoder reuses what it decoded of a header block that differs only in the stream id's value: each message
    still gets its own id, and blocks that differ elsewhere (an operation, a type, a header more) their own headers."""
    base = {":message-type": 0, ":message-flags": 0, ":stream-id": 1, "operation": "aws.greengrass#PublishToIoTCore"}
    variants: list[dict[str, Any]] = [
        {**base, ":stream-id": 7},
        {**base, ":stream-id": 8},
        {**base, ":stream-id": -5},
        {**base, ":stream-id": 9, "operation": "aws.greengrass#PublishToIoTCorx"},  # same length, another name
        {**base, ":stream-id": 10, ":message-flags": 2},
        {":stream-id": 11, **base},  # the stream id first: another place in the block
        {**base, ":stream-id": 12, "extra": True},
        {**base, ":stream-id": 13},
    ]
    decoder = FrameDecoder()
    stream = b"".join(encode(headers, b"{}") for headers in variants)
    got = [m.headers for m in decoder.feed(stream[:100])] + [m.headers for m in decoder.feed(stream[100:])]
    assert got == [{**headers, ":stream-id": headers[":stream-id"]} for headers in variants]
    assert decoder.pending == 0
    template = FrameTemplate({**base, ":content-type": "application/json"}, b"{}")
    for stream_id in (1, 2**31 - 1, -1):
        assert template.frame(stream_id) == encode({**base, ":content-type": "application/json", ":stream-id": stream_id}, b"{}")


def _frame(block: bytes, payload: bytes = b"") -> bytes:
    """A frame around a raw header block (right lengths, right CRCs): what a hostile client can send."""
    prelude = struct.pack(">II", 12 + len(block) + len(payload) + 4, len(block))
    body = prelude + struct.pack(">I", zlib.crc32(prelude)) + block + payload
    return body + struct.pack(">I", zlib.crc32(body))


def test_hostile_header_blocks_fail_as_framing_and_never_take_a_cached_shape() -> None:
    """A block cut short inside the stream id's value, after the whole block was decoded (and its shape remembered),
    is refused as framing (not a struct error that would end the connection's task); a block naming ``:stream-id``
    twice decodes the same each time (the last one wins); a flood of distinct blocks does not switch the reuse off."""
    from edgekit.device.ipc import eventstream

    headers = {":message-type": 0, "operation": "aws.greengrass#Probe", ":stream-id": 3}
    block = encode(headers)[12:-4]
    assert _frame(block) == encode(headers)
    assert FrameDecoder().feed(_frame(block))[0].stream_id == 3
    for cut in (1, 2, 3, 4):
        with pytest.raises(FramingError):
            FrameDecoder().feed(_frame(block[:-cut]))
    twice = block + encode({":stream-id": "x"})[12:-4]
    assert [FrameDecoder().feed(_frame(twice))[0].headers[":stream-id"] for _ in range(2)] == ["x", "x"]
    for i in range(600):  # junk from a client that never authenticates: another block (and place) each
        FrameDecoder().feed(encode({"n" * (1 + i % 7): i, ":stream-id": i}))
    for stream_id in (4, 5):
        assert FrameDecoder().feed(_frame(block[:-4] + struct.pack(">i", stream_id)))[0].stream_id == stream_id
    assert len(eventstream._SHAPES) <= 256 and any(
        shape[1] == {**headers, ":stream-id": 3} or shape[1] == {**headers, ":stream-id": 4}
        for shape in eventstream._SHAPES.values()
    )


def test_the_publishes_of_one_read_are_stored_together_and_each_answered(tmp_path: Path) -> None:
    """Publishes read together are checked one by one (a refused one answered with its error) and the rest stored in
    one commit, in order, each answered on its own stream."""

    async def scenario(ipc: DeviceIpc) -> None:
        env = ipc.environment(COMPONENT)

        def publish(stream_id: int, topic: str, qos: str = "1") -> bytes:
            headers = {":message-type": 0, ":message-flags": 0, ":stream-id": stream_id, "operation": NS_PUBLISH}
            body = {"topicName": topic, "qos": qos, "payload": base64.b64encode(str(stream_id).encode()).decode()}
            return encode(headers, json.dumps(body).encode())

        frames = [publish(i, f"devices/dev-1/t/{i}", qos="2" if i == 5 else "1") for i in range(1, 41)]
        frames[9] = publish(10, "devices/other/t")  # not authorized
        with raw(tmp_path / "ipc.socket") as sock:
            sock.sendall(connect_frame(env["SVCUID"]))
            sock.sendall(b"".join(frames))
            decoder = FrameDecoder()
            answers: dict[int, Any] = {}
            while len(answers) < 40:
                for message in decoder.feed(await asyncio.to_thread(sock.recv, 65536)):
                    if message.type != MessageType.CONNECT_ACK:
                        answers[message.stream_id] = message
        assert ipc.iot_core.group_commit.commits <= 3  # not one per message
        refused = {i: answers[i].headers["service-model-type"] for i in (5, 10)}
        assert refused == {5: "aws.greengrass#InvalidArgumentsError", 10: "aws.greengrass#UnauthorizedError"}
        stored = [i for i in range(1, 41) if i not in refused]
        assert all(answers[i].headers["service-model-type"] == NS_PUBLISH + "Response" for i in stored)
        assert [int(item.payload) for item in ipc.iot_core.spool.peek(100)] == stored

    run(tmp_path, scenario)


NS_PUBLISH = "aws.greengrass#PublishToIoTCore"


# --------------------------------------------------------------------------- the handshake and operations


def test_a_component_uses_the_sdk_against_the_socket(tmp_path: Path) -> None:
    async def scenario(ipc: DeviceIpc) -> None:
        env = ipc.environment(COMPONENT)
        assert env["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"] == str(tmp_path / "ipc.socket")
        assert env["AWS_REGION"] == "us-east-1" and env["SVCUID"]

        def component() -> dict[str, Any]:
            from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage, ResourceNotFoundError

            client = sdk_client(env)
            out: dict[str, Any] = {"events": []}
            out["all"] = client.get_configuration().value
            out["leaf"] = client.get_configuration(key_path=["Nested", "Level"]).value
            try:
                client.get_configuration(key_path=["Missing"])
            except ResourceNotFoundError as exc:
                out["missing"] = exc.message
            got = threading.Event()

            def on_event(e: Any) -> None:
                out["events"].append(e.json_message.message)
                got.set()

            client.subscribe_to_topic(topic="local/a", on_stream_event=on_event)
            client.publish_to_topic(topic="local/a", publish_message=PublishMessage(json_message=JsonMessage(message={"n": 1})))
            got.wait(5)
            try:
                client.publish_to_topic(topic="elsewhere", publish_message=PublishMessage(json_message=JsonMessage(message={})))
            except Exception as exc:
                out["refused"] = (type(exc).__name__, getattr(exc, "message", ""))
            client.publish_to_iot_core(topic_name="devices/dev-1/probe", qos="1", payload=b"spooled")
            client.update_state(state="ERRORED")
            client.close()
            return out

        out = await asyncio.to_thread(component)
        assert out["all"]["Greeting"] == "hi" and out["leaf"] == {"Level": 2}
        assert out["missing"] == "Key not found"
        assert out["events"] == [{"n": 1}]
        assert out["refused"][0] == "UnauthorizedError" and "is not authorized" in out["refused"][1]
        (item,) = ipc.iot_core.spool.peek(10)  # acknowledged means on disk, waiting for the broker
        assert (item.topic, item.payload) == ("devices/dev-1/probe", b"spooled")
        assert ipc.handler.host.states == [(COMPONENT, "ERRORED")]  # type: ignore[attr-defined]

    run(tmp_path, scenario)


def test_a_wrong_or_missing_token_is_refused_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edgekit.device.ipc.socket_server")

    async def scenario(ipc: DeviceIpc) -> None:
        good = ipc.environment(COMPONENT)

        def attempt(token: str) -> str:
            try:
                sdk_client({**good, "SVCUID": token}).close()
            except Exception as exc:
                return type(exc).__name__
            return "connected"

        assert await asyncio.to_thread(attempt, "NOT-A-TOKEN") == "AccessDeniedError"
        assert await asyncio.to_thread(attempt, good["SVCUID"]) == "connected"
        with raw(tmp_path / "ipc.socket") as sock:  # no authToken at all
            sock.sendall(encode({":message-type": 4, ":message-flags": 0, ":stream-id": 0}, b"{}"))
            reply = await asyncio.to_thread(read_all, sock)
        (ack,) = FrameDecoder().feed(reply)
        assert ack.type == MessageType.CONNECT_ACK and ack.flags == 0  # not accepted, then closed
        assert ipc.server is not None and ipc.server.refused == 2

    run(tmp_path, scenario)
    refusals = [r.getMessage() for r in caplog.records if "IPC connect refused" in r.getMessage()]
    assert len(refusals) == 2 and "unknown auth token" in refusals[0] and "no auth token" in refusals[1]
    assert f"peer pid {os.getpid()}" in refusals[0]


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(lambda token: b"\x00\x00\x00\x10" + os.urandom(60), id="bad-prelude-crc"),
        pytest.param(lambda token: connect_frame(token)[:-1] + bytes([connect_frame(token)[-1] ^ 0xFF]), id="bad-message-crc"),
        pytest.param(
            lambda token: encode({":message-type": 0, ":message-flags": 0, ":stream-id": 1, "operation": "x"}),
            id="no-connect-first",
        ),
    ],
)
def test_malformed_input_closes_that_connection_only(tmp_path: Path, garbage: Callable[[str], bytes]) -> None:
    async def scenario(ipc: DeviceIpc) -> None:
        env = ipc.environment(COMPONENT)
        with raw(tmp_path / "ipc.socket") as sock:
            sock.sendall(garbage(env["SVCUID"]))
            reply = await asyncio.to_thread(read_all, sock)  # returns once the server closed the connection
        for message in FrameDecoder().feed(reply):
            assert message.type == MessageType.PROTOCOL_ERROR

        def still_serving() -> Any:
            client = sdk_client(env)
            value = client.get_configuration(key_path=["Greeting"]).value
            client.close()
            return value

        assert await asyncio.to_thread(still_serving) == {"Greeting": "hi"}

    run(tmp_path, scenario)


def test_oversized_payloads_and_unknown_operations_get_the_nucleus_errors(tmp_path: Path) -> None:
    async def scenario(ipc: DeviceIpc) -> None:
        env = ipc.environment(COMPONENT)

        def component() -> list[tuple[str, str]]:
            client = sdk_client(env)
            seen = []
            calls: tuple[Callable[[], object], ...] = (
                lambda: client.publish_to_iot_core(topic_name="devices/dev-1/big", qos="1", payload=b"x" * (128 * 1024 + 1)),
                lambda: client.publish_to_iot_core(topic_name="devices/dev-1/x", qos="2", payload=b"x"),
                lambda: client.publish_to_iot_core(topic_name="devices/other/x", qos="1", payload=b"x"),
                lambda: client.get_secret_value(secret_id="s"),
                lambda: client.publish_to_iot_core(topic_name="devices/dev-1/+", qos="1", payload=b"x"),
                lambda: client.publish_to_iot_core(topic_name="devices/dev-1/+", qos="1", payload=b"x"),  # the verdict cached
                lambda: client.publish_to_iot_core(topic_name="devices/dev-1/a/b/c/d/e/f/g", qos="1", payload=b"x"),
            )
            for call in calls:
                try:
                    call()
                    seen.append(("ok", ""))
                except Exception as exc:
                    seen.append((type(exc).__name__, getattr(exc, "message", "")))
            client.close()
            return seen

        big, qos, other, secret, wildcard, again, deep = await asyncio.to_thread(component)
        assert big[0] == "ServiceError" and "exceeds the configured limit of 131072 bytes" in big[1]
        assert qos == ("InvalidArgumentsError", "Invalid QoS value: 2")
        assert other == ("UnauthorizedError", "Not Authorized")
        assert secret[0] == "ServiceError" and "not supported" in secret[1]
        assert wildcard[0] == "InvalidArgumentsError" and "wildcard" in wildcard[1] and again == wildcard
        assert deep[0] == "InvalidArgumentsError" and "8 slashes" in deep[1]
        assert len(ipc.iot_core.spool) == 0

        # a frame over the server's limit closes the connection before its bytes are read
        assert ipc.server is not None
        ipc.server.max_message_bytes = 4096
        with raw(tmp_path / "ipc.socket") as sock:
            sock.sendall(connect_frame(env["SVCUID"]))
            request = {":message-type": 0, ":message-flags": 0, ":stream-id": 1, "operation": "aws.greengrass#PublishToTopic"}
            sock.sendall(encode(request, b"{" + b" " * 8000 + b"}"))
            frames = FrameDecoder().feed(await asyncio.to_thread(read_all, sock))
        assert [m.type for m in frames] == [MessageType.CONNECT_ACK]

    run(tmp_path, scenario)


def test_a_long_device_root_gets_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    path = socket_path_for(deep)
    assert len(str(path)) < 108 and path != deep / "ipc.socket"
    assert socket_path_for(tmp_path) == tmp_path / "ipc.socket"


def test_the_socket_never_goes_to_a_predictable_or_shared_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another local user made $TMPDIR/edgekit-ipc-<uid>/ first (writable by all): the agent's socket is not put there."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    planted = tmp / f"edgekit-ipc-{os.getuid()}"
    planted.mkdir()
    planted.chmod(0o777)
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # a device root others may write to: they could swap the socket
    for root in (deep, shared):
        path = socket_path_for(root)
        assert len(str(path)) < 108 and path.parent not in (planted, shared)
        folder = os.lstat(path.parent)
        assert folder.st_uid == os.geteuid() and stat.S_IMODE(folder.st_mode) == 0o700
    assert socket_path_for(tmp_path) == tmp_path / "ipc.socket"  # the agent's own root: the socket stays in it

    async def serve_in_the_planted_folder() -> None:
        server = IpcServer(cast(Any, None), planted / "x.sock")
        with pytest.raises(IpcServerError, match="others may write"):
            await server.start()

    asyncio.run(serve_in_the_planted_folder())


def test_an_unauthenticated_connection_is_timed_out_and_held_small(tmp_path: Path) -> None:
    async def scenario(ipc: DeviceIpc) -> None:
        assert ipc.server is not None
        ipc.server.auth_timeout_s = 0.5
        with raw(tmp_path / "ipc.socket") as sock:  # connects, says nothing
            sock.settimeout(30)
            started = time.monotonic()
            assert await asyncio.to_thread(sock.recv, 100) == b""  # closed by the server, not by our timeout
            assert time.monotonic() - started < 4.5  # the 0.5 s set, not the default (5 s), on a slow machine too
        # a message announced at 10 MB before CONNECT: refused on its prelude, nothing of it buffered (the timeout
        # now far off, so that only the refusal can close it within the bound)
        ipc.server.auth_timeout_s = 60
        with raw(tmp_path / "ipc.socket") as sock:
            sock.settimeout(30)
            prelude = struct.pack(">II", 10 * 2**20, 0)
            sock.sendall(prelude + struct.pack(">I", zlib.crc32(prelude)) + b"\0" * 60_000)
            started = time.monotonic()
            try:
                left = await asyncio.to_thread(sock.recv, 65536)
            except ConnectionResetError:
                left = b""
            assert left == b"" and time.monotonic() - started < 4.5  # closed at once, not waiting for 10 MB
        assert ipc.server.timed_out == 1

    run(tmp_path, scenario)


def test_an_idle_connection_is_closed(tmp_path: Path) -> None:
    async def scenario(ipc: DeviceIpc) -> None:
        assert ipc.server is not None
        ipc.server.idle_timeout_s = 0.5
        with raw(tmp_path / "ipc.socket") as sock:
            sock.settimeout(30)
            sock.sendall(connect_frame(ipc.token(COMPONENT)))
            (ack,) = FrameDecoder().feed(await asyncio.to_thread(sock.recv, 65536))
            assert ack.type == MessageType.CONNECT_ACK and ack.flags == 1
            assert await asyncio.to_thread(sock.recv, 100) == b""  # closed once idle
        assert ipc.server.timed_out == 1

    run(tmp_path, scenario)


# --------------------------------------------------------------------------- one handler for both transports


def test_in_process_and_socket_components_share_the_handler(tmp_path: Path) -> None:
    async def scenario(ipc: DeviceIpc) -> None:
        env = ipc.environment(COMPONENT)
        other = InProcessIpc.connect(ipc.handler, ipc.token("com.example.Other"))
        heard: list[Any] = []
        stream = await other.subscribe("SubscribeToTopic", {"topic": "local/+"}, lambda model, e: heard.append((model, e)))

        def component() -> None:
            from awsiot.greengrasscoreipc.model import BinaryMessage, PublishMessage

            client = sdk_client(env)
            client.publish_to_topic(
                topic="local/x", publish_message=PublishMessage(binary_message=BinaryMessage(message=b"\x00\x01"))
            )
            client.close()

        await asyncio.to_thread(component)
        assert heard == [
            (
                "aws.greengrass#SubscriptionResponseMessage",
                {"binaryMessage": {"message": base64.b64encode(b"\x00\x01").decode(), "context": {"topic": "local/x"}}},
            )
        ]
        with pytest.raises(UnauthorizedError, match="Not Authorized"):
            await other.publish_to_iot_core("devices/dev-2/x", b"no")
        await other.publish_to_iot_core("devices/dev-1/x", b"yes")
        assert [i.payload for i in ipc.iot_core.spool.peek()] == [b"yes"]
        reply = await other.call("GetConfiguration", {"componentName": COMPONENT, "keyPath": ["Greeting"]})
        assert reply == {"componentName": COMPONENT, "value": {"Greeting": "hi"}}
        await stream.close()
        assert len(ipc.handler.bus) == 0
        with pytest.raises(Exception, match="access denied"):
            InProcessIpc.connect(ipc.handler, "WRONG")

    run(tmp_path, scenario)


def test_configuration_updates_reach_subscribers_and_respect_timestamps(tmp_path: Path) -> None:
    async def scenario(ipc: DeviceIpc) -> None:
        me = InProcessIpc.connect(ipc.handler, ipc.token(COMPONENT))
        events: list[Any] = []
        await me.subscribe("SubscribeToConfigurationUpdate", {"keyPath": ["Nested"]}, lambda m, e: events.append(e))
        await me.call("UpdateConfiguration", {"keyPath": ["Nested"], "timestamp": 100.0, "valueToMerge": {"Level": 3, "New": 1}})
        await me.call("UpdateConfiguration", {"keyPath": [], "timestamp": 101.0, "valueToMerge": {"Greeting": "yo"}})
        keys = sorted(tuple(e["configurationUpdateEvent"]["keyPath"]) for e in events)
        assert keys == [("Nested", "Level"), ("Nested", "New")]  # the Greeting change is outside the watched path
        assert (await me.call("GetConfiguration", {"keyPath": ["Nested"]}))["value"] == {"Level": 3, "New": 1}
        from edgekit.device.ipc import FailedUpdateConditionCheckError, InvalidArgumentsError

        with pytest.raises(FailedUpdateConditionCheckError):
            await me.call("UpdateConfiguration", {"keyPath": [], "timestamp": 50.0, "valueToMerge": {"Greeting": "old"}})
        with pytest.raises(InvalidArgumentsError, match="accessControl"):
            await me.call("UpdateConfiguration", {"keyPath": ["accessControl"], "timestamp": 200.0, "valueToMerge": {}})
        ipc.configuration_changed(COMPONENT, {"Nested": {"Level": 3}}, {"Nested": {"Level": 4}})
        assert events[-1]["configurationUpdateEvent"] == {"componentName": COMPONENT, "keyPath": ["Nested", "Level"]}

    run(tmp_path, scenario)


def test_component_updates_wait_for_deferrals(tmp_path: Path) -> None:
    async def scenario(ipc: DeviceIpc) -> None:
        me = InProcessIpc.connect(ipc.handler, ipc.token(COMPONENT))
        events: list[dict[str, Any]] = []

        def on_event(model: str, event: dict[str, Any]) -> None:
            events.append(event)
            pre = event.get("preUpdateEvent")
            if pre and sum(1 for e in events if "preUpdateEvent" in e) == 1:  # defer the first notice by 300 ms, then accept
                asyncio.get_running_loop().create_task(
                    me.call("DeferComponentUpdate", {"deploymentId": pre["deploymentId"], "recheckAfterMs": 300})
                )
            elif pre:
                asyncio.get_running_loop().create_task(me.call("DeferComponentUpdate", {"deploymentId": pre["deploymentId"]}))

        await me.subscribe("SubscribeToComponentUpdates", {}, on_event)
        await ipc.before_update("dep-1", timeout_s=5.0)
        ipc.after_update("dep-1")
        assert [next(iter(e)) for e in events] == ["preUpdateEvent", "preUpdateEvent", "postUpdateEvent"]
        from edgekit.device.ipc import ServiceError

        with pytest.raises(ServiceError, match="Time limit"):
            await me.call("DeferComponentUpdate", {"deploymentId": "dep-1", "recheckAfterMs": 10})

    run(tmp_path, scenario)


# --------------------------------------------------------------------------- policy matching


@pytest.mark.parametrize(
    ("pattern", "resource", "mqtt", "expected"),
    [
        ("devices/dev-1/#", "devices/dev-1", True, True),
        ("devices/dev-1/#", "devices/dev-1/a/b", True, True),
        ("devices/dev-1/#", "devices/dev-2/a", True, False),
        ("devices/+/status", "devices/x/status", True, True),
        ("devices/+/status", "devices/x/y/status", True, False),
        ("devices/+/status", "devices/+/status", True, True),
        ("a+b/c", "a+b/c", True, True),
        ("a+b/c", "axb/c", True, False),
        ("local/*", "local/a/b", False, True),
        ("local/#", "local/a", False, False),  # pubsub: MQTT wildcards are plain characters
        ("local/#", "local/#", False, True),
        ("price${?}", "price?", False, True),
        ("price${*}", "priceX", False, False),
        ("#", "anything/at/all", True, True),
    ],
)
def test_policy_resources_match_as_the_nucleus_matches(pattern: str, resource: str, mqtt: bool, expected: bool) -> None:
    assert matches(pattern, resource, mqtt=mqtt) is expected
