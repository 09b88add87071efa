"""Greengrass IPC through edgekit's device agent, beside a direct MQTT publish (printed by bench/edge).

A component process (``awsiotsdk``'s ``GreengrassCoreIPCClientV2``, nothing of edgekit) publishes N messages with
``PublishToIoTCore``, one after the other; each call returns once the agent has the message on disk (the IPC
uplink spool, ``synchronous=FULL``), and the agent sends the spool to a real mosquitto over its own MQTT
connection. Measured in one run: the component's acknowledged publishes per second, the rate at which they reach
a subscriber at the broker, the same N publishes made directly over MQTT (QoS 1, each waiting for its PUBACK),
and the round trip of ``GetConfiguration``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from edgekit.device.ipc import DeviceIpc
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import connect

COMPONENT = "bench.Publisher"
TOPIC = "devices/dev-1/bench"

_CLIENT = r"""
import json, sys, time
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
n, rounds = int(sys.argv[1]), int(sys.argv[2])
ipc = GreengrassCoreIPCClientV2()
payload = json.dumps({"windowStart": 0, "count": 100, "classes": {"1": 60, "2": 40}}).encode()
t0 = time.perf_counter()
for i in range(n):
    ipc.publish_to_iot_core(topic_name="devices/dev-1/bench", qos="1", payload=payload)
publish_s = time.perf_counter() - t0
trips = []
for i in range(rounds):
    t = time.perf_counter()
    ipc.get_configuration(key_path=["Greeting"])
    trips.append(time.perf_counter() - t)
ipc.close()
print(json.dumps({"publish_s": publish_s, "trips": trips}))
"""


class _Host:
    thing = "dev-1"

    def __init__(self) -> None:
        policy = {"operations": ["aws.greengrass#PublishToIoTCore"], "resources": [TOPIC]}
        self.config = {"Greeting": "hi", "accessControl": {"aws.greengrass.ipc.mqttproxy": {"bench:1": policy}}}

    def configuration(self, component: str) -> dict[str, Any] | None:
        return self.config if component == COMPONENT else None

    def set_configuration(self, component: str, configuration: dict[str, Any]) -> None:
        self.config = configuration

    def report_state(self, component: str, state: str) -> None:
        pass


async def _run(work: Path, n: int, rounds: int) -> dict[str, float]:
    broker = MosquittoBroker(work / "broker")
    broker.start()
    try:
        received: list[float] = []
        consumer = await connect(broker.url, "bench-consumer", clean_start=True)
        await consumer.subscribe("devices/dev-1/#", 1, lambda m: received.append(time.perf_counter()))
        device = await connect(broker.url, "dev-1", clean_start=True)
        ipc = DeviceIpc(work / "device", _Host())
        await ipc.start()
        ipc.attach(device)
        try:
            t0 = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-c", _CLIENT, str(n), str(rounds), env=ipc.environment(COMPONENT), stdout=asyncio.subprocess.PIPE
            )
            out, _ = await proc.communicate()
            result = json.loads(out)
            while len(received) < n:
                await asyncio.sleep(0.01)
            delivered_s = received[n - 1] - t0
        finally:
            await ipc.close()
        # the same publishes straight over MQTT from one client, each waiting for its PUBACK
        payload = json.dumps({"windowStart": 0, "count": 100, "classes": {"1": 60, "2": 40}}).encode()
        received.clear()
        t0 = time.perf_counter()
        for _ in range(n):
            await device.publish(TOPIC, payload, qos=1)
        direct_s = time.perf_counter() - t0
        await device.disconnect()
        await consumer.disconnect()
    finally:
        broker.stop()
    trips = sorted(result["trips"])
    return {
        "ipc_acked_per_s": n / result["publish_s"],
        "ipc_delivered_per_s": n / delivered_s,
        "direct_per_s": n / direct_s,
        "get_config_median_us": statistics.median(trips) * 1e6,
        "get_config_p90_us": trips[int(len(trips) * 0.9)] * 1e6,
    }


def bench_ipc(work: Path, n: int, rounds: int = 500) -> dict[str, float]:
    return asyncio.run(_run(work, n, rounds))
