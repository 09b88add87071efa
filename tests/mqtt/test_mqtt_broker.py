"""Broker lifecycles: mosquitto and the embedded fallback as real child processes, on free ports."""

from __future__ import annotations

import asyncio
import shutil
import socket
from pathlib import Path

import pytest
from helpers import requires

from edgekit.errors import ConfigError, ToolchainError
from edgekit.mqtt.broker import Broker, EmbeddedBroker, ExternalBroker, MosquittoBroker, start_broker
from edgekit.mqtt.client import MqttClient
from edgekit.mqtt.errors import BrokerError
from edgekit.mqtt.tls import SERVICE_IDENTITY, TlsMaterial

# skipped without them; CI=true fails instead
needs_mosquitto = requires("mosquitto")
needs_amqtt = requires("amqtt")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def test_missing_mosquitto_is_a_toolchain_error(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path / "broker", binary=tmp_path / "no" / "mosquitto")
    with pytest.raises(ToolchainError, match=r"mosquitto not found; apt-get install -y mosquitto"):
        broker.start()
    assert not broker.running


def test_start_broker_refuses_to_fall_back_when_tls_is_needed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # mosquitto is installed here, and find_mosquitto also looks in /usr/sbin whatever PATH says: its absence can only
    # be staged, by a `which` that finds nothing (test_missing_mosquitto_is_a_toolchain_error: a real missing binary)
    monkeypatch.setattr(shutil, "which", lambda *args, **kwargs: None)
    with pytest.raises(ToolchainError, match="apt-get install -y mosquitto"):
        start_broker(tmp_path / "b", "mosquitto", acl=True)
    with pytest.raises(ConfigError, match="no mTLS identities and no ACLs"):
        start_broker(tmp_path / "b", "embedded", acl=True)
    with pytest.raises(ConfigError, match="unknown broker"):
        start_broker(tmp_path / "b", "rabbit")


def test_external_broker_is_not_managed() -> None:
    broker = start_broker("unused", "external:mqtt://broker.example:1883")
    assert isinstance(broker, ExternalBroker)
    assert isinstance(broker, Broker)
    assert broker.url == "mqtt://broker.example:1883"
    with pytest.raises(BrokerError, match="can't restart the external broker"):
        broker.restart()


@needs_mosquitto
def test_generated_config_for_mtls_and_acl(tmp_path: Path) -> None:
    tls = TlsMaterial.create(tmp_path / "tls", ["dev-1"])
    broker = MosquittoBroker(tmp_path / "broker", port=18830, tls=tls, acl=True)
    config = broker.render_config()
    for line in [
        "listener 18830 127.0.0.1",
        "allow_anonymous false",
        "require_certificate true",
        "use_identity_as_username true",
        "persistence true",
        f"cafile {tls.ca_cert.resolve()}",
        f"acl_file {broker.acl_path.resolve()}",
        "max_queued_messages 10000",
    ]:
        assert line in config.splitlines()
    acl = broker.render_acl().splitlines()
    assert "pattern readwrite $aws/things/%u/#" in acl
    assert "pattern readwrite devices/%u/#" in acl
    assert "user edgekit-fleet-service" in acl


@needs_mosquitto
def test_mosquitto_starts_restarts_on_the_same_port_and_stops(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker") as broker:
        port, pid = broker.port, broker.pid
        assert port > 0 and broker.url == f"mqtt://127.0.0.1:{port}"
        assert _accepts(port)
        broker.restart()
        assert broker.port == port and broker.pid != pid
        assert _accepts(port)
    assert not broker.running
    assert not _accepts(port)
    assert (tmp_path / "broker" / "mosquitto.db").is_file()  # saved on SIGTERM


@needs_mosquitto
@pytest.mark.anyio
async def test_a_new_mosquitto_on_the_folder_delivers_what_it_queued_for_the_fleet_service(tmp_path: Path) -> None:
    # each `edgekit fleet serve` makes its own broker object on the fleet's folder: on a new service port mosquitto
    # resumed the service's session but dropped what devices sent meanwhile (its ACLs can't be tied to the session)
    tls = TlsMaterial.create(tmp_path / "tls", ["dev-1"])
    topic, got = "$aws/things/dev-1/edgekit/presence", asyncio.Queue[bytes]()
    first = MosquittoBroker(tmp_path / "broker", tls=tls, acl=True)
    with first:
        service = MqttClient(SERVICE_IDENTITY, tls=tls.service)
        await service.subscribe(topic, 1, lambda m: got.put_nowait(m.payload))
        await service.connect(first.service_url)
        await service.disconnect()
    assert (tmp_path / "broker" / "service.port").read_text().strip() == str(first.service_port)
    second = MosquittoBroker(tmp_path / "broker", tls=tls, acl=True, port=first.port)
    with second:
        assert second.service_port == first.service_port
        device = MqttClient("dev-1", tls=tls.device("dev-1"))
        await device.connect(second.url)
        await device.publish(topic, b"sent while the service was away", qos=1)  # PUBACKed: queued for the service
        await device.disconnect()
        service = MqttClient(SERVICE_IDENTITY, tls=tls.service)
        await service.subscribe(topic, 1, lambda m: got.put_nowait(m.payload))
        await service.connect(second.service_url)
        assert service.session_present
        assert await asyncio.wait_for(got.get(), 10) == b"sent while the service was away"
        await service.disconnect()
    assert "Failed to associate" not in second.log_path.read_text()


@needs_mosquitto
def test_a_taken_service_port_is_replaced_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tls = TlsMaterial.create(tmp_path / "tls", [])
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "broker").mkdir()
        (tmp_path / "broker" / "service.port").write_text(f"{port}\n")
        with MosquittoBroker(tmp_path / "broker", tls=tls, acl=True) as broker:
            assert broker.service_port not in (0, port) and _accepts(broker.service_port)
        assert (tmp_path / "broker" / "service.port").read_text().strip() == str(broker.service_port)
    assert f"listener port {port}" in caplog.text and "is taken now" in caplog.text
    (tmp_path / "broker" / "service.port").write_text("not a port")  # unreadable: a new one, no warning
    caplog.clear()
    with MosquittoBroker(tmp_path / "broker", tls=tls, acl=True) as broker:
        assert _accepts(broker.service_port)
    assert "is taken now" not in caplog.text


@needs_mosquitto
def test_mosquitto_that_fails_to_start_shows_its_log(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        broker = MosquittoBroker(tmp_path / "broker", port=taken.getsockname()[1])
        try:
            with pytest.raises(BrokerError, match=r"(?s)mosquitto exited with code \d+ while starting.*Address already in use"):
                broker.start()
        finally:
            broker.stop()


@needs_mosquitto
def test_start_broker_reports_mosquitto(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "b", "mosquitto")
    try:
        assert broker.kind == "mosquitto" and broker.features.mqtt5 and broker.features.offline_queue
    finally:
        broker.stop()


@needs_amqtt
def test_embedded_broker_round_trip(tmp_path: Path) -> None:
    async def round_trip(url: str) -> bytes:
        async with MqttClient("sub", protocol=4, clean_start=True) as sub, MqttClient("pub", protocol=4, clean_start=True) as pub:
            await sub.connect(url)
            await pub.connect(url)
            await sub.subscribe("devices/dev-1/cmd", qos=1)
            assert await pub.publish("devices/dev-1/cmd", b"hello", qos=1) == 0
            return (await sub.get_message(timeout=5)).payload

    with start_broker(tmp_path / "b", "embedded") as broker:
        assert isinstance(broker, EmbeddedBroker)
        assert not broker.features.mqtt5 and not broker.features.acl
        assert asyncio.run(round_trip(broker.url)) == b"hello"
