"""The asyncio MQTT client against a real mosquitto on a free port: plain TCP, mTLS + ACL, restarts, many clients."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from helpers import eventually, requires

from edgekit.errors import ConfigError
from edgekit.mqtt import topics
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import NO_MATCHING_SUBSCRIBERS, NOT_AUTHORIZED, SUCCESS, Backoff, MqttClient, MqttMessage, connect
from edgekit.mqtt.errors import ConnectError, MqttTimeoutError, NotConnectedError, PayloadError, TopicError
from edgekit.mqtt.payloads import UpdateJobExecutionRequest, decode
from edgekit.mqtt.tls import TlsMaterial

pytestmark = requires("mosquitto")  # skipped without it; CI=true fails instead

FAST = Backoff(initial=0.05, maximum=0.2, rng=random.Random(0))
THINGS = ["dev-a", "dev-b"]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsMaterial:
    return TlsMaterial.create(tmp_path_factory.mktemp("tls"), THINGS)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "plain") as broker:
        yield broker


@pytest.fixture
def secure(tmp_path: Path, tls: TlsMaterial) -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tmp_path / "secure", tls=tls, acl=True) as broker:
        yield broker


async def _nothing_arrives(client: MqttClient, wait: float = 0.3) -> None:
    with pytest.raises(MqttTimeoutError):
        await client.get_message(timeout=wait)


# --------------------------------------------------------------------------- plain TCP


@pytest.mark.anyio
async def test_round_trip_and_puback(plain: MosquittoBroker) -> None:
    async with await connect(plain.url, "sub") as sub, await connect(plain.url, "pub") as pub:
        assert await sub.subscribe("devices/dev-1/#", qos=1) == 1
        assert await pub.publish("devices/dev-1/cmd", b"hello", qos=1) == SUCCESS
        message = await sub.get_message(timeout=5)
        assert message == MqttMessage("devices/dev-1/cmd", b"hello", 1, False)
        # QoS 1 with nobody listening: PUBACK still comes, reason 16
        assert await pub.publish("devices/nobody/x", "text", qos=1) == NO_MATCHING_SUBSCRIBERS
        assert await pub.publish("devices/dev-1/cmd", b"fire-and-forget", qos=0) == SUCCESS
        assert (await sub.get_message(timeout=5)).payload == b"fire-and-forget"
        # a typed payload is encoded for you
        await pub.publish("devices/dev-1/cmd", UpdateJobExecutionRequest(status="IN_PROGRESS"))
        assert decode(UpdateJobExecutionRequest, (await sub.get_message(timeout=5)).payload).status == "IN_PROGRESS"
    assert not sub.connected


@pytest.mark.anyio
async def test_handlers_messages_iterator_and_unsubscribe(plain: MosquittoBroker) -> None:
    seen: list[str] = []
    done = asyncio.Event()

    async def on_status(message: MqttMessage) -> None:
        seen.append(message.topic)
        done.set()

    async with await connect(plain.url, "svc") as svc, await connect(plain.url, "dev") as dev:
        await svc.subscribe(topics.all_device_status(), handler=on_status)
        await svc.subscribe("devices/+/telemetry")
        await dev.publish(topics.status("dev-1"), b"{}")
        await dev.publish("devices/dev-1/telemetry", b"t")
        await asyncio.wait_for(done.wait(), 5)
        assert seen == [topics.status("dev-1")]
        async for message in svc.messages():  # only what no handler took
            assert message.topic == "devices/dev-1/telemetry"
            break
        await svc.unsubscribe("devices/+/telemetry")
        await dev.publish("devices/dev-1/telemetry", b"t")
        await _nothing_arrives(svc)


@pytest.mark.anyio
async def test_handlers_added_and_removed_after_a_topic_was_seen(plain: MosquittoBroker) -> None:
    """The handlers matching a topic are remembered: one subscribed or dropped later still changes where it goes."""
    first: list[bytes] = []
    second: list[bytes] = []
    where = "devices/+/telemetry"  # one filter throughout (overlapping ones would each get their own copy)
    async with await connect(plain.url, "svc") as svc, await connect(plain.url, "dev") as dev:
        await svc.subscribe(where)  # no handler: to the iterator
        await dev.publish("devices/dev-1/telemetry", b"1")
        assert (await svc.get_message(timeout=5)).payload == b"1"
        await svc.subscribe(where, handler=lambda m: first.append(m.payload))
        await dev.publish("devices/dev-1/telemetry", b"2")  # the topic seen before: now to the handler only
        await eventually(lambda: first == [b"2"])
        await svc.subscribe(where, handler=lambda m: second.append(m.payload))
        await dev.publish("devices/dev-1/telemetry", b"3")
        await eventually(lambda: first == [b"2", b"3"] and second == [b"3"])
        await _nothing_arrives(svc)
        await svc.unsubscribe(where)
        await svc.subscribe(where)
        await dev.publish("devices/dev-1/telemetry", b"4")
        assert (await svc.get_message(timeout=5)).payload == b"4"
        assert first == [b"2", b"3"] and second == [b"3"]


@pytest.mark.anyio
async def test_only_paho_errors_are_formatted(plain: MosquittoBroker) -> None:
    """paho writes a line per packet when asked to: the client asks for its errors only (they name a failure)."""
    levels: list[int] = []
    async with await connect(plain.url, "pub") as pub:
        pub._paho.on_log = lambda _c, _u, level, _text: levels.append(level)
        assert await pub.publish("devices/dev-1/x", b"x", qos=1) in (SUCCESS, NO_MATCHING_SUBSCRIBERS)
        assert levels == []
        pub._paho._easy_log(paho.MQTT_LOG_ERR, "failed: %s", "why")
        assert levels == [paho.MQTT_LOG_ERR]


@pytest.mark.anyio
async def test_strict_mode_holds_topics_and_payloads_to_iot_core_limits(plain: MosquittoBroker) -> None:
    async with await connect(plain.url, "dev") as dev:
        with pytest.raises(TopicError, match="8 slashes"):
            await dev.publish("a/b/c/d/e/f/g/h/i", b"x")
        with pytest.raises(TopicError, match="wildcard"):
            await dev.publish("a/+", b"x")
        with pytest.raises(PayloadError, match="131072"):
            await dev.publish("devices/dev/x", b"x" * (128 * 1024 + 1))


@pytest.mark.anyio
async def test_connection_errors_are_clear(plain: MosquittoBroker, tmp_path: Path) -> None:
    with pytest.raises(ConnectError, match="can't reach the broker"):
        await connect(f"mqtt://127.0.0.1:{plain.port + 1 if plain.port < 65535 else 1}", "x", connect_timeout=2)
    with pytest.raises(ConfigError, match="mqtt:// or mqtts://"):
        await connect("http://127.0.0.1:1", "x")
    with pytest.raises(ConfigError, match="TLS broker"):
        await connect("mqtts://127.0.0.1:1", "x")
    client = MqttClient("x")
    with pytest.raises(NotConnectedError):
        await client.publish("devices/x/y", b"")


# --------------------------------------------------------------------------- mTLS and the per-device ACL


@pytest.mark.anyio
async def test_device_connects_with_its_certificate(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    assert secure.url.startswith("mqtts://127.0.0.1:")
    async with (
        await connect(secure.url, "dev-a", tls=tls.device("dev-a")) as dev,
        await connect(secure.service_url, "svc", tls=tls.service) as svc,
    ):
        await dev.subscribe(topics.notify("dev-a"))
        assert await svc.publish(topics.notify("dev-a"), b"job!") == SUCCESS
        assert (await dev.get_message(timeout=5)).payload == b"job!"
        await svc.subscribe(topics.all_job_updates())
        assert await dev.publish(topics.update("dev-a", "job-1"), b"IN_PROGRESS") == SUCCESS
        assert (await svc.get_message(timeout=5)).topic == topics.update("dev-a", "job-1")


@pytest.mark.anyio
async def test_device_a_cannot_read_device_b_topics(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    async with (
        await connect(secure.url, "dev-a", tls=tls.device("dev-a")) as a,
        await connect(secure.url, "dev-b", tls=tls.device("dev-b")) as b,
        await connect(secure.service_url, "svc", tls=tls.service) as svc,
    ):
        # mosquitto grants the SUBSCRIBE (it checks the ACL at delivery) ...
        await a.subscribe(topics.notify("dev-b"))
        await a.subscribe("$aws/things/+/jobs/#")
        await b.subscribe(topics.notify("dev-b"))
        assert await svc.publish(topics.notify("dev-b"), b"for b only") == SUCCESS
        assert (await b.get_message(timeout=5)).payload == b"for b only"  # it was delivered ...
        await _nothing_arrives(a)  # ... but not to A


@pytest.mark.anyio
async def test_device_a_cannot_publish_to_device_b_topics(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    async with (
        await connect(secure.url, "dev-a", tls=tls.device("dev-a")) as a,
        await connect(secure.url, "dev-b", tls=tls.device("dev-b")) as b,
        await connect(secure.service_url, "svc", tls=tls.service) as svc,
    ):
        await svc.subscribe(topics.all_job_updates())
        await b.subscribe(topics.update("dev-b", "job-1"))
        assert await a.publish(topics.update("dev-b", "job-1"), b"forged SUCCEEDED") == NOT_AUTHORIZED
        assert await a.publish("devices/dev-b/telemetry", b"forged") == NOT_AUTHORIZED
        await _nothing_arrives(svc)
        await _nothing_arrives(b, 0.05)
        # B's own report goes through, so the silence above was the ACL at work
        assert await b.publish(topics.update("dev-b", "job-1"), b"real") == SUCCESS
        assert (await svc.get_message(timeout=5)).payload == b"real"


@pytest.mark.anyio
async def test_device_without_certificate_is_refused(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    with pytest.raises(ConnectError, match="certificate required|closed the connection"):
        await connect(secure.url, "dev-a", tls=(tls.ca_cert, None, None))


def test_certificate_from_another_ca_is_refused(secure: MosquittoBroker, tls: TlsMaterial, tmp_path: Path) -> None:
    rogue = TlsMaterial.create(tmp_path / "rogue", ["dev-a"])

    async def run() -> None:
        forged = (tls.ca_cert, rogue.device("dev-a").cert, rogue.device("dev-a").key)
        with pytest.raises(ConnectError, match="unknown ca|closed the connection"):
            await connect(secure.url, "dev-a", tls=forged)
        # and a device that trusts only the rogue CA refuses the broker
        with pytest.raises(ConnectError, match="TLS handshake .* failed: .*certificate verify failed"):
            await connect(secure.url, "dev-a", tls=rogue.device("dev-a"))

    asyncio.run(run())


@pytest.mark.anyio
async def test_plain_tcp_to_a_tls_broker_fails_cleanly(secure: MosquittoBroker) -> None:
    with pytest.raises(ConnectError):
        await connect(secure.url.replace("mqtts://", "mqtt://"), "dev-a", connect_timeout=2)


# --------------------------------------------------------------------------- sessions, restarts, reconnects


@pytest.mark.anyio
async def test_restart_keeps_a_persistent_session_and_its_queued_message(plain: MosquittoBroker) -> None:
    device = await connect(plain.url, "dev-1", clean_start=False, session_expiry=3600, auto_reconnect=False)
    await device.subscribe("devices/dev-1/cmd", qos=1)
    await device.disconnect()  # offline; the broker keeps the session
    async with await connect(plain.url, "svc", clean_start=True) as svc:
        assert await svc.publish("devices/dev-1/cmd", b"queued while offline", qos=1) == SUCCESS

    plain.restart()  # persistence: the session and its queue survive

    async with await connect(plain.url, "dev-1", clean_start=False) as device:
        assert device.session_present
        message = await device.get_message(timeout=5)
        assert (message.payload, message.qos) == (b"queued while offline", 1)


@pytest.mark.anyio
async def test_clean_start_session_is_not_kept(plain: MosquittoBroker) -> None:
    device = await connect(plain.url, "dev-1", clean_start=True)
    await device.subscribe("devices/dev-1/cmd", qos=1)
    await device.disconnect()
    async with await connect(plain.url, "svc") as svc:
        assert await svc.publish("devices/dev-1/cmd", b"lost", qos=1) == NO_MATCHING_SUBSCRIBERS


@pytest.mark.parametrize("clean_start", [False, True], ids=["persistent", "clean"])
def test_reconnects_after_a_broker_restart(plain: MosquittoBroker, clean_start: bool) -> None:
    """Backoff, re-subscribe when the session is gone, hooks again, and a QoS 1 publish made while offline goes out."""

    async def run() -> None:
        hook_calls: list[bool] = []

        async def ask_for_pending_jobs(client: MqttClient, session_present: bool) -> None:
            hook_calls.append(session_present)
            await client.publish(topics.get_pending("dev-1"), b"{}", qos=1)

        device = MqttClient("dev-1", clean_start=clean_start, reconnect=FAST, on_connect=ask_for_pending_jobs)
        async with await device.connect(plain.url), await connect(plain.url, "svc", clean_start=True, reconnect=FAST) as svc:
            await device.subscribe("devices/dev-1/cmd", qos=1)
            assert hook_calls == [False]

            plain.stop()
            await eventually(lambda: not device.connected, 10, "the device offline")
            offline_publish = asyncio.create_task(device.publish("devices/dev-1/report", b"made offline", qos=1))
            assert await device.subscribe("devices/dev-1/extra", qos=1) == 1  # recorded, sent once back online
            plain.start()

            async def reconnected() -> None:
                while not (device.connected and svc.connected and len(hook_calls) == 2):
                    await asyncio.sleep(0.02)

            await asyncio.wait_for(reconnected(), 10)
            assert hook_calls == [False, not clean_start]
            assert await asyncio.wait_for(offline_publish, 10) in (SUCCESS, NO_MATCHING_SUBSCRIBERS)
            assert await svc.publish("devices/dev-1/cmd", b"after restart", qos=1) == SUCCESS
            assert (await device.get_message(timeout=5)).payload == b"after restart"
            assert await svc.publish("devices/dev-1/extra", b"subscribed offline", qos=1) == SUCCESS
            assert (await device.get_message(timeout=5)).payload == b"subscribed offline"
            assert device.connects == 2

    asyncio.run(run())


def test_keepalive_notices_a_frozen_broker_and_reconnects_after(plain: MosquittoBroker) -> None:
    """A broker that stops answering (SIGSTOP: sockets stay open) is dropped after ~2 keepalives, then reconnected."""

    async def run() -> None:
        device = MqttClient("dev-1", clean_start=False, keepalive=1, connect_timeout=0.5, reconnect=FAST)
        async with await device.connect(plain.url):
            await device.subscribe("devices/dev-1/cmd", qos=1)
            plain.freeze()
            try:
                start = time.perf_counter()
                while device.connected:
                    assert time.perf_counter() - start < 10, "keepalive did not notice the frozen broker"  # ~2 s
                    await asyncio.sleep(0.05)
            finally:
                plain.thaw()
            while not device.connected:
                assert time.perf_counter() - start < 10, "no reconnect after the broker came back"
                await asyncio.sleep(0.05)
            assert device.session_present
            async with await connect(plain.url, "svc", clean_start=True) as svc:
                await svc.publish("devices/dev-1/cmd", b"back", qos=1)
            assert (await device.get_message(timeout=5)).payload == b"back"

    asyncio.run(run())


def test_a_failing_first_hook_fails_connect_and_closes(plain: MosquittoBroker) -> None:
    def broken(client: MqttClient, session_present: bool) -> None:
        raise RuntimeError("agent bug")

    async def run() -> None:
        client = MqttClient("dev-1", on_connect=broken)
        with pytest.raises(RuntimeError, match="agent bug"):
            await client.connect(plain.url)
        assert not client.connected

    asyncio.run(run())


@pytest.mark.anyio
async def test_disconnect_ends_iterators_and_fails_waiters(plain: MosquittoBroker) -> None:
    device = await connect(plain.url, "dev-1", clean_start=True)
    await device.subscribe("devices/dev-1/cmd")

    async def drain() -> list[MqttMessage]:
        return [m async for m in device.messages()]

    reader = asyncio.create_task(drain())
    await asyncio.sleep(0.05)
    await device.disconnect()
    assert await asyncio.wait_for(reader, 5) == []
    with pytest.raises(NotConnectedError):
        await device.publish("devices/dev-1/x", b"", qos=1)
    with pytest.raises(NotConnectedError):
        await device.connect(plain.url)


def test_backoff_is_exponential_capped_and_seeded() -> None:
    delays = Backoff(initial=1, maximum=8, factor=2, jitter=0, rng=random.Random(1)).delays()
    assert [next(delays) for _ in range(6)] == [1, 2, 4, 8, 8, 8]
    jittered = Backoff(initial=1, maximum=8, jitter=0.25, rng=random.Random(1)).delays()
    first = [next(jittered) for _ in range(4)]
    again = Backoff(initial=1, maximum=8, jitter=0.25, rng=random.Random(1)).delays()
    assert first == [next(again) for _ in range(4)]
    assert all(0.75 * d <= j <= 1.25 * d for j, d in zip(first, [1, 2, 4, 8], strict=True))


# --------------------------------------------------------------------------- many clients, one thread


async def _fleet(url: str, count: int, tls: TlsMaterial | None, svc_tls: bool, svc_url: str | None = None) -> tuple[float, float]:
    threads_before = threading.active_count()
    names = [f"dev-{i:04d}" for i in range(count)]
    start = time.perf_counter()
    devices = await asyncio.gather(
        *(connect(url, name, tls=tls.device(name) if tls else None, clean_start=True, keepalive=60) for name in names)
    )
    connect_s = time.perf_counter() - start
    try:
        assert threading.active_count() == threads_before  # no thread per client
        await asyncio.gather(*(d.subscribe(topics.notify(d.client_id), qos=1) for d in devices))
        async with await connect(svc_url or url, "svc", tls=tls.service if tls and svc_tls else None, clean_start=True) as svc:
            start = time.perf_counter()
            codes = await asyncio.gather(*(svc.publish(topics.notify(name), name.encode(), qos=1) for name in names))
            got = await asyncio.gather(*(d.get_message(timeout=10) for d in devices))
            fan_out_s = time.perf_counter() - start
        assert set(codes) == {SUCCESS}
        assert [m.payload.decode() for m in got] == names
        assert threading.active_count() == threads_before
    finally:
        await asyncio.gather(*(d.disconnect() for d in devices))
    return connect_s, fan_out_s


def test_200_clients_in_one_thread(plain: MosquittoBroker) -> None:
    start = time.perf_counter()
    connect_s, fan_out_s = asyncio.run(_fleet(plain.url, 200, None, False))
    total = time.perf_counter() - start
    print(f"\n200 clients (plain TCP): connect {connect_s:.3f} s, 200 QoS 1 messages fanned out in {fan_out_s:.3f} s")
    assert total < 60  # a hang, not a speed (bench/ measures speed): ~1 s here


@pytest.mark.slow
def test_1000_mtls_clients_in_one_thread(tmp_path: Path) -> None:
    material = TlsMaterial.create(tmp_path / "tls", [f"dev-{i:04d}" for i in range(1000)])
    with MosquittoBroker(tmp_path / "broker", tls=material, acl=True) as broker:
        start = time.perf_counter()
        connect_s, fan_out_s = asyncio.run(_fleet(broker.url, 1000, material, True, broker.service_url))
        total = time.perf_counter() - start
    print(
        f"\n1000 mTLS clients: connect {connect_s:.3f} s, 1000 QoS 1 messages fanned out in {fan_out_s:.3f} s, total {total:.1f} s"
    )
    assert total < 60


@pytest.mark.anyio
async def test_a_device_cannot_take_over_another_devices_client_id(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    victim = await connect(secure.url, "dev-a", tls=tls.device("dev-a"), clean_start=False, session_expiry=3600)
    await victim.subscribe("devices/dev-a/cmd", qos=1)
    # dev-b's certificate, dev-a's client id, a clean start that would wipe dev-a's session
    impostor = await connect(secure.url, "dev-a", tls=tls.device("dev-b"), clean_start=True, auto_reconnect=False)
    async with await connect(secure.service_url, "svc", tls=tls.service) as svc:
        assert victim.connected  # not kicked off ...
        assert await svc.publish("devices/dev-a/cmd", b"still yours", qos=1) == SUCCESS
        assert (await victim.get_message(timeout=5)).payload == b"still yours"  # ... session and subscription intact
        await _nothing_arrives(impostor)  # the impostor got its own identity's session, not dev-a's
        assert await svc.publish("devices/dev-b/cmd", b"x", qos=1) == NO_MATCHING_SUBSCRIBERS
    await impostor.disconnect()
    await victim.disconnect()
    log = (secure.folder / "mosquitto.log").read_text()
    assert "as dev-b (p5, c1, k30, u'dev-b')" in log  # mosquitto renamed it after its certificate


@pytest.mark.anyio
async def test_no_device_reaches_the_service_listener(secure: MosquittoBroker, tls: TlsMaterial) -> None:
    async with await connect(secure.url, "dev-a", tls=tls.device("dev-a")) as victim:
        with pytest.raises(ConnectError):
            await connect(secure.service_url, "dev-a", tls=tls.device("dev-b"), auto_reconnect=False)
        await asyncio.sleep(0.2)
        assert victim.connected
