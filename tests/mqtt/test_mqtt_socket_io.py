"""How MqttClient drives its socket, against a real mosquitto over mutual TLS: what one read of the socket holds is
all handed to paho (many packets, or part of a big one), writes go out in the event loop's turn without watching the
socket for room, and an idle connection's keepalive is kept with the check a quarter-keepalive apart."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import requires

from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import SUCCESS, MqttClient, _ReadBuffer, connect, is_failure
from edgekit.mqtt.tls import TlsMaterial

pytestmark = requires("mosquitto")

THINGS = ["dev-a", "dev-b"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return TlsMaterial.create(tmp_path_factory.mktemp("tls"), THINGS)


@pytest.fixture
def secure(tmp_path: Path, tls: TlsMaterial) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "secure", tls=tls, acl=True) as broker:
        yield broker


@pytest.mark.anyio
async def test_a_burst_read_at_once_reaches_every_handler_in_order(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    """Messages queued for an offline persistent session arrive back to back when it reconnects: many packets per
    TLS read (more than paho takes a call), and one message over the 64 KiB a read takes."""
    device = await connect(secure.url, "dev-a", tls=tls.device("dev-a"), clean_start=False, session_expiry=600)
    await device.subscribe("devices/dev-a/cmd/#", qos=1)
    await device.disconnect()
    big = bytes(range(256)) * 400  # 100 KiB: over one read, under IoT Core's 128 KiB
    payloads = [str(i).encode() * 20 for i in range(300)]
    payloads[150] = big
    async with await connect(secure.service_url, "svc", tls=tls.service) as svc:
        results = await svc.publish_many([(f"devices/dev-a/cmd/{i}", p) for i, p in enumerate(payloads)], timeout=10)
        assert results == [SUCCESS] * len(payloads)
    got: list[bytes] = []
    arrived = asyncio.Event()

    def handler(message: Any) -> None:
        got.append(message.payload)
        if len(got) == len(payloads):
            arrived.set()

    device = MqttClient("dev-a", tls=tls.device("dev-a"), clean_start=False, session_expiry=600)
    await device.subscribe("devices/dev-a/cmd/#", qos=1, handler=handler)
    await device.connect(secure.url)
    try:
        await asyncio.wait_for(arrived.wait(), 10)
        assert got == payloads  # every one, in order, the big one whole
        # and a live burst: the service's QoS 0 messages back to back, while the device is connected
        async with await connect(secure.service_url, "svc", tls=tls.service) as svc:
            got.clear()
            arrived.clear()
            for i in range(len(payloads)):
                await svc.publish(f"devices/dev-a/cmd/{i}", payloads[i], qos=0)
            await asyncio.wait_for(arrived.wait(), 10)
        assert got == payloads
    finally:
        await device.disconnect()


@pytest.mark.anyio
async def test_publishing_writes_in_the_loop_turn_without_watching_for_room(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    loop = asyncio.get_running_loop()
    watched: list[int] = []
    add_writer = loop.add_writer

    def counting_add_writer(fd: Any, callback: Any, *args: Any) -> None:
        watched.append(fd)
        add_writer(fd, callback, *args)

    async with await connect(secure.url, "dev-a", tls=tls.device("dev-a")) as device:
        loop.add_writer = counting_add_writer  # type: ignore[method-assign, assignment]
        try:
            for i in range(50):
                assert not is_failure(await device.publish(f"devices/dev-a/telemetry/{i}", b"x" * 200, qos=1))
            results = await device.publish_many([(f"devices/dev-a/telemetry/m{i}", b"y") for i in range(40)])
            assert len(results) == 40 and not any(isinstance(r, BaseException) or is_failure(r) for r in results)
            assert await device.publish("devices/dev-a/telemetry/q0", b"z", qos=0) == SUCCESS
        finally:
            del loop.add_writer
        assert watched == []  # a socket with room is written at once: no epoll registration per packet


@pytest.mark.anyio
async def test_the_packets_of_one_loop_turn_leave_in_one_send(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    """A drain's batch of PUBLISHes goes to the socket in one send, not one each; every PUBACK comes back."""
    async with await connect(secure.url, "dev-a", tls=tls.device("dev-a"), max_inflight=100) as device:
        assert device._sock is not None
        real = device._sock.sock
        sends: list[int] = []

        def counting_send(data: Any, *args: Any) -> int:
            sent = type(real).send(real, data, *args)
            sends.append(sent)
            return sent

        real.send = counting_send  # type: ignore[method-assign]
        results = await device.publish_many([(f"devices/dev-a/telemetry/{i}", b"p" * 100) for i in range(40)])
        assert results.count(SUCCESS) + results.count(16) == 40
        assert len(sends) == 1 and sends[0] > 40 * 100
        assert device._paho._out_messages == {} and device._paho._inflight_messages == 0


def test_a_gathered_write_that_fails_is_met_by_pahos_next_read() -> None:
    """What the socket paho is given gathers a turn's sends; a send that fails on a closed peer is kept for paho's
    next recv (which then reports the connection lost, as paho would have found it), never raised into the loop."""
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    sock = _ReadBuffer(ours)
    sock.gathering = True
    assert sock.send(b"first") == 5 and sock.send(b"second") == 6 and sock.out == b"firstsecond"
    sock.gathering = False
    assert sock.flush() and peer.recv(100) == b"firstsecond"
    peer.close()
    sock.gathering = True
    sock.send(b"x" * 300_000)  # more than a closed peer's socket takes: the send fails
    sock.gathering = False
    for _ in range(3):  # the event loop's next turns: each flush fails, nothing is raised
        assert sock.flush()
        sock.gathering = True
        sock.send(b"y")
        sock.gathering = False
    assert sock.error is not None and sock.fill()
    with pytest.raises(OSError):
        while True:
            sock.recv(65536)
    sock.close()


@pytest.mark.anyio
async def test_a_large_write_that_does_not_fit_waits_for_room_and_arrives(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    """Many big messages at once fill the socket: the rest waits for room (the loop watches the socket then) and
    every message arrives, in order."""
    async with (
        await connect(secure.service_url, "svc", tls=tls.service) as svc,
        await connect(secure.url, "dev-b", tls=tls.device("dev-b")) as device,
    ):
        await device.subscribe("devices/dev-b/cmd/#", qos=1)
        payloads = [bytes([i]) * 120_000 for i in range(40)]  # ~4.8 MB queued in one go
        results = await svc.publish_many([(f"devices/dev-b/cmd/{i}", p) for i, p in enumerate(payloads)], timeout=30)
        assert results == [SUCCESS] * len(payloads)
        got = [(await device.get_message(timeout=10)).payload for _ in payloads]
        assert got == payloads
        assert not svc._writer_on  # nothing left to write: the socket is no longer watched for room


def test_an_idle_connection_is_kept_alive_by_the_coarser_check(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    """keepalive 8 s: paho's check runs every 2 s (a quarter), so the PINGREQ goes out 8-10 s after the last packet,
    before mosquitto's 12 s (1.5 keepalives) — the connection survives 13 s of silence without a reconnect."""

    async def main() -> tuple[bool, int, float]:
        client = await connect(secure.url, "dev-a", tls=tls.device("dev-a"), keepalive=8, auto_reconnect=False)
        interval = client._misc_interval()
        await asyncio.sleep(13)
        state = client.connected, client.connects
        await client.disconnect()
        return state[0], state[1], interval

    connected, connects, interval = asyncio.run(main())
    assert interval == 2.0
    assert connected and connects == 1


def _packets(stream: bytes) -> list[int]:
    """The packet types (the fixed header's high nibble) of an MQTT byte stream; raises if it ends mid-packet."""
    kinds, i = [], 0
    while i < len(stream):
        kind, i = stream[i] >> 4, i + 1
        length, shift = 0, 0
        while True:
            byte, i = stream[i], i + 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if i + length > len(stream):
            raise ValueError(f"the stream ends inside a packet of type {kind}")
        kinds.append(kind)
        i += length
    return kinds


@pytest.mark.anyio
async def test_a_clean_disconnect_behind_a_full_socket_still_ends_with_disconnect() -> None:
    """Messages queued while the socket is full, then disconnect(): once the peer reads again every queued packet
    arrives whole and the last one is DISCONNECT (cut short, the broker would see an abnormal close and publish the
    client's will)."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    received = bytearray()
    read_on = asyncio.Event()

    async def peer() -> None:
        conn, _ = await asyncio.to_thread(listener.accept)
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        first = await asyncio.to_thread(conn.recv, 65536)
        assert first[0] >> 4 == 1  # CONNECT
        conn.sendall(b"\x20\x03\x00\x00\x00")  # CONNACK, MQTT 5, no properties
        await read_on.wait()
        while chunk := await asyncio.to_thread(conn.recv, 1 << 20):
            received.extend(chunk)
        conn.close()

    task = asyncio.create_task(peer())
    client = await connect(f"mqtt://127.0.0.1:{port}", "dev-a")
    client._sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)  # type: ignore[union-attr]
    for i in range(60):  # ~3.6 MB of QoS 0: the first turns fill the socket, the rest waits in paho's queue
        await client.publish(f"devices/dev-a/telemetry/{i}", bytes([i]) * 60_000, qos=0)
        await asyncio.sleep(0)
    closing = asyncio.create_task(client.disconnect(timeout=20))
    await asyncio.sleep(0.3)
    read_on.set()
    await closing
    await asyncio.wait_for(task, 20)
    listener.close()
    kinds = _packets(bytes(received))
    assert kinds[-1] == 14 and kinds.count(3) == 60  # every PUBLISH whole, then DISCONNECT
