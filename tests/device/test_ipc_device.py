"""Greengrass IPC on a device end to end: real mosquitto (mTLS, per-device ACL), the device agent in subprocess mode,
and components written only against ``awsiotsdk`` (no edgekit import), deployed as the fleet would deploy them.

The device's MQTT connection runs through a TCP relay the tests can cut, so "offline" is a real lost connection.
Deployments are the job documents the fleet service sends, applied by the device's agent (the fleet's side of
the same flow is covered by test_fleet_e2e.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from device_registry import Registry, job, recipe  # and the registry fixture (a plugin: conftest.py)
from helpers import eventually, requires

from edgekit.device.jobs_runner import DeviceMqttRunner, run_device
from edgekit.mqtt.broker import MosquittoBroker, free_port
from edgekit.mqtt.client import Backoff, MqttClient, MqttMessage, connect
from edgekit.mqtt.tls import SERVICE_IDENTITY, TlsMaterial

pytestmark = requires("mosquitto")  # skipped without it; CI=true fails instead

THING = "dev-1"
PLATFORM = {"os": "linux", "architecture": "amd64"}
AGENT = {"settle_s": 0.3, "kill_grace_s": 0.5, "download_backoff_s": 0.0, "fsync": False}
RUNNER = {"request_timeout_s": 30.0, "status_debounce_s": 0.05}  # no fleet service here: the job loop just waits
FAST = {"reconnect": Backoff(initial=0.05, maximum=0.3, rng=random.Random(0))}

# A component as someone writes it for a real Greengrass core device: awsiotsdk only.
PROBE = r"""
import json, os, threading, time
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
from awsiot.greengrasscoreipc.model import JsonMessage, PublishMessage

lock = threading.Lock()
def log(kind, **fields):
    with lock, open("events.jsonl", "a") as f:
        f.write(json.dumps({"kind": kind, **fields}) + "\n")
        f.flush()
        os.fsync(f.fileno())

ipc = GreengrassCoreIPCClientV2()
config = ipc.get_configuration().value
log("started", pid=os.getpid(), config=config)

def burst(spec):
    name, count = spec.split(":")
    for i in range(int(count)):
        ipc.publish_to_iot_core(topic_name=config["Topic"], qos="1", payload=json.dumps({"burst": name, "n": i, "pid": os.getpid()}))
        log("acked", burst=name, n=i)

def on_update(event):
    path = event.configuration_update_event.key_path
    value = ipc.get_configuration(key_path=path).value
    log("config-update", path=path, value=value)
    if path == ["Burst"]:
        burst(value["Burst"])

ipc.subscribe_to_configuration_update(key_path=[], on_stream_event=on_update)
if config.get("Forbidden"):
    try:
        ipc.publish_to_iot_core(topic_name=config["Forbidden"], qos="1", payload=b"x")
        log("forbidden-sent")
    except Exception as exc:
        log("refused", error=type(exc).__name__, message=getattr(exc, "message", ""))
if config.get("Listen"):
    def heard(event):
        log("local", topic=event.json_message.context.topic, message=event.json_message.message)
    ipc.subscribe_to_topic(topic=config["Listen"], on_stream_event=heard)
    log("listening")
if config.get("Say"):
    for i in range(400):
        ipc.publish_to_topic(topic=config["Say"], publish_message=PublishMessage(json_message=JsonMessage(message={"n": i})))
        time.sleep(0.05)
log("ready")
while True:
    time.sleep(1)
"""

PROBE_NAME = "com.example.Probe"


def probe(name: str = PROBE_NAME, **config: Any) -> dict[str, Any]:
    access = {
        "aws.greengrass.ipc.mqttproxy": {
            f"{name}:mqtt:1": {"operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["devices/{iot:thingName}/probe"]}
        },
        "aws.greengrass.ipc.pubsub": {f"{name}:pubsub:1": {"operations": ["*"], "resources": ["local/chat"]}},
    }
    return recipe(
        name,
        "1.0.0",
        {"Run": f"exec {sys.executable} -u {{artifacts:path}}/probe.py"},
        config={"Topic": f"devices/{THING}/probe", "accessControl": access, **config},
        artifacts=[{"URI": "s3://bucket/probe.py"}],
    )


class Relay:
    """A TCP relay in front of the broker that can be cut (connections dropped, new ones refused) and restored."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._pipes |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._pipes -= {writer, up_writer}

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._pipes):
            w.transport.abort()

    async def restore(self) -> None:
        await self.start()


class Device:
    """A broker (mTLS + ACL), a relay, a consumer of the device's topics, and the device itself."""

    def __init__(self, root: Path, components: Registry) -> None:
        self.root = root
        self.registry = components
        self.tls = TlsMaterial.create(root / "tls", [THING])
        self.broker = MosquittoBroker(root / "broker", tls=self.tls, acl=True)
        self.broker.start()
        self.relay = Relay(int(self.broker.url.rsplit(":", 1)[1]))
        self.received: list[tuple[str, dict[str, Any]]] = []
        self.consumer: MqttClient | None = None
        self.runner: DeviceMqttRunner | None = None

    async def start(self) -> DeviceMqttRunner:
        if self.consumer is None:
            await self.relay.start()
            # the service's identity may read every device's topics; the device's own ACL (devices/<thing>/#) is what
            # lets a message through at all, so one that arrives was published under the device's identity
            self.consumer = await connect(self.broker.service_url, SERVICE_IDENTITY, tls=self.tls.service, clean_start=True)
            await self.consumer.subscribe(f"devices/{THING}/#", 1, self._heard)
        self.runner = await run_device(
            THING,
            self.root / "device",
            PLATFORM,
            self.registry.base,
            self.relay.url,
            tls=self.tls.device(THING),
            groups=["line"],
            agent_options=AGENT,
            client_options=FAST,
            runner_options=RUNNER,
        )
        return self.runner

    def _heard(self, message: MqttMessage) -> None:
        self.received.append((message.topic, json.loads(message.payload)))

    def events(self, name: str = PROBE_NAME) -> list[dict[str, Any]]:
        path = self.root / "device" / "work" / name / "events.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def deploy(self, deployment_id: str, components: dict[str, Any]) -> Any:
        assert self.runner is not None
        return self.runner.agent.apply(job(deployment_id, components, target=f"thing/{THING}"))

    async def aclose(self) -> None:
        if self.runner is not None:
            await self.runner.stop()
        if self.consumer is not None:
            await self.consumer.disconnect()
        await self.relay.cut()

    def close(self) -> None:
        self.broker.stop()


@pytest.fixture
def device(tmp_path: Path, registry: Registry) -> Iterator[Device]:
    made = Device(tmp_path, registry)
    try:
        yield made
    finally:
        made.close()


def run(device: Device, scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 60.0) -> None:
    async def main() -> None:
        try:
            await scenario()
        finally:
            await device.aclose()

    asyncio.run(asyncio.wait_for(main(), timeout))


def kinds(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == kind]


def merge(config: dict[str, Any]) -> dict[str, Any]:
    return {"version": "1.0.0", "configurationUpdate": {"merge": json.dumps(config)}}


# --------------------------------------------------------------------------- the tests


def test_a_component_publishes_reads_its_configuration_and_hears_a_merge(device: Device) -> None:
    device.registry.publish(probe(Forbidden=f"devices/{THING}/elsewhere"), {"probe.py": PROBE.encode()})

    async def scenario() -> None:
        await device.start()
        outcome = await device.deploy("dep-1", {PROBE_NAME: "1.0.0"})
        assert outcome.result == "SUCCESSFUL", outcome
        await eventually(lambda: bool(kinds(device.events(), "ready")), what="the component is up")
        started = kinds(device.events(), "started")[0]
        assert started["config"]["Topic"] == f"devices/{THING}/probe"
        refused = kinds(device.events(), "refused")
        assert refused == [{"kind": "refused", "error": "UnauthorizedError", "message": "Not Authorized"}]

        outcome = await device.deploy("dep-2", {PROBE_NAME: merge({"Greeting": "hello", "Burst": "a:3"})})
        assert outcome.result == "SUCCESSFUL", outcome
        await eventually(lambda: len(device.received) == 3, what="3 messages at the broker")
        assert [(t, p["burst"], p["n"]) for t, p in device.received] == [(f"devices/{THING}/probe", "a", n) for n in range(3)]
        updates = {tuple(e["path"]): e["value"] for e in kinds(device.events(), "config-update")}
        assert updates[("Greeting",)] == {"Greeting": "hello"} and updates[("Burst",)] == {"Burst": "a:3"}
        assert len(kinds(device.events(), "started")) == 1  # the merge reached the running process: no restart
        assert not kinds(device.events(), "forbidden-sent")

    run(device, scenario)


def test_local_pub_sub_between_two_components(device: Device) -> None:
    listener, talker = "com.example.Listener", "com.example.Talker"
    device.registry.publish(probe(listener, Listen="local/chat"), {"probe.py": PROBE.encode()})
    device.registry.publish(probe(talker, Say="local/chat"), {"probe.py": PROBE.encode()})

    async def scenario() -> None:
        await device.start()
        outcome = await device.deploy("dep-1", {listener: "1.0.0", talker: "1.0.0"})
        assert outcome.result == "SUCCESSFUL", outcome
        await eventually(lambda: len(kinds(device.events(listener), "local")) >= 3, what="3 local messages")
        heard = kinds(device.events(listener), "local")
        assert all(e["topic"] == "local/chat" for e in heard)
        numbers = [e["message"]["n"] for e in heard]
        assert numbers == sorted(numbers) and len(set(numbers)) == len(numbers)  # in order, none twice
        assert not kinds(device.events(talker), "local")  # the talker does not listen

    run(device, scenario)


def test_offline_publishes_arrive_after_the_reconnect_in_order_once(device: Device) -> None:
    device.registry.publish(probe(), {"probe.py": PROBE.encode()})

    async def scenario() -> None:
        runner = await device.start()
        assert (await device.deploy("dep-1", {PROBE_NAME: "1.0.0"})).result == "SUCCESSFUL"
        await eventually(lambda: bool(kinds(device.events(), "ready")), what="the component is up")
        await device.relay.cut()
        await eventually(lambda: not runner.client.connected, what="the device offline")
        assert (await device.deploy("dep-2", {PROBE_NAME: merge({"Burst": "off:25"})})).result == "SUCCESSFUL"
        await eventually(lambda: len(kinds(device.events(), "acked")) == 25, what="25 publishes acknowledged")
        await asyncio.sleep(0.5)
        assert device.received == []  # nothing got out while offline
        assert runner.agent.ipc is not None and runner.agent.ipc.iot_core.pending == 25
        await device.relay.restore()
        await eventually(lambda: len(device.received) >= 25, what="the backlog delivered")
        await asyncio.sleep(0.5)
        assert [p["n"] for _, p in device.received] == list(range(25))  # in order, none lost, none twice
        assert runner.agent.ipc.iot_core.pending == 0

    run(device, scenario)


def test_an_agent_restart_loses_nothing_acknowledged(device: Device) -> None:
    device.registry.publish(probe(), {"probe.py": PROBE.encode()})

    async def scenario() -> None:
        runner = await device.start()
        assert (await device.deploy("dep-1", {PROBE_NAME: "1.0.0"})).result == "SUCCESSFUL"
        await eventually(lambda: bool(kinds(device.events(), "ready")), what="the component is up")
        await device.relay.cut()
        await eventually(lambda: not runner.client.connected, what="the device offline")
        apply = asyncio.ensure_future(device.deploy("dep-2", {PROBE_NAME: merge({"Burst": "crash:2000"})}))
        await eventually(lambda: len(kinds(device.events(), "acked")) >= 10, what="publishes acknowledged")
        await runner.agent.kill()  # a crash in the middle of the burst: no Shutdown, the component SIGKILLed
        apply.cancel()
        await asyncio.gather(apply, return_exceptions=True)
        await runner.stop()
        acked = [e["n"] for e in kinds(device.events(), "acked")]
        assert acked == list(range(len(acked))) and 10 <= len(acked) < 2000  # killed mid-burst
        crashed_pid = kinds(device.events(), "started")[-1]["pid"]

        await device.relay.restore()
        await device.start()  # a new agent on the same folder

        # (the new agent redoes the interrupted deployment: the restarted component may burst again, as a new pid)
        def before_crash() -> list[int]:
            return [p["n"] for _, p in device.received if p["pid"] == crashed_pid]

        await eventually(lambda: len(before_crash()) >= len(acked), what="every acknowledged message delivered")
        await asyncio.sleep(0.5)
        numbers = before_crash()
        assert numbers[: len(acked)] == acked  # in order, nothing acknowledged lost
        assert len(numbers) == len(set(numbers))  # none twice

    run(device, scenario, timeout=90.0)
