"""Greengrass IPC through edgekit's device agent, beside a direct MQTT publish (printed by bench/edge).

A component process (``awsiotsdk``'s ``GreengrassCoreIPCClientV2``, nothing of edgekit) publishes N messages with
``PublishToIoTCore``, K at a time (``publish_to_iot_core_async``, a window of K in flight; K=1: one after the
other); each call returns once the agent has the message on disk (the IPC uplink spool, ``synchronous=FULL``,
publishes that arrive together sharing one fsync: group commit), and the agent sends the spool to a real mosquitto
over its own MQTT connection. Measured in one run, for each K: the component's acknowledged publishes per second,
the rate at which they reach a subscriber at the broker (every one of the N, each once, is checked), the fsyncs
the spool made, and the same N publishes made directly over MQTT from one client with the same K in flight (QoS
1, each waiting for its PUBACK); and the round trip of ``GetConfiguration``. IPC and direct runs alternate, a few
times over, and the medians are reported (the machine's load moves between runs).
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
from edgekit.mqtt.client import MqttClient, connect

COMPONENT = "bench.Publisher"
TOPIC = "devices/dev-1/bench"

_CLIENT = r"""
import collections, json, sys, time
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
n, rounds, k = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
ipc = GreengrassCoreIPCClientV2()
body = {"windowStart": 0, "count": 100, "classes": {"1": 60, "2": 40}}
payloads = [json.dumps({**body, "n": i}).encode() for i in range(n)]
window = collections.deque()
t0 = time.perf_counter()
for i in range(n):
    if len(window) >= k:
        window.popleft().result()
    window.append(ipc.publish_to_iot_core_async(topic_name="devices/dev-1/bench", qos="1", payload=payloads[i]))
for future in window:
    future.result()
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


async def _direct(client: MqttClient, n: int, k: int) -> float:
    """Seconds for ``n`` QoS 1 publishes from ``client``, ``k`` awaiting their PUBACK at a time."""
    payload = json.dumps({"windowStart": 0, "count": 100, "classes": {"1": 60, "2": 40}, "d": 0}).encode()
    gate = asyncio.Semaphore(k)

    async def one() -> None:
        async with gate:
            await client.publish(TOPIC, payload, qos=1)

    t0 = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - t0


async def _ipc(work: Path, device: MqttClient, n: int, rounds: int, k: int, received: list[tuple[float, int]]) -> dict[str, Any]:
    ipc = DeviceIpc(work / f"device-k{k}", _Host())
    await ipc.start()
    ipc.attach(device)
    received.clear()
    try:
        t0 = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLIENT,
            str(n),
            str(rounds),
            str(k),
            env=ipc.environment(COMPONENT),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        result: dict[str, Any] = json.loads(out)
        deadline = time.monotonic() + 60
        while len({number for _, number in received}) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        first: dict[int, float] = {}
        for at, number in received:
            first.setdefault(number, at)
        if sorted(first) != list(range(n)):
            raise SystemExit(f"bench/ipc: K={k}: the broker got {len(first)} of the {n} acknowledged messages")
        result["delivered_s"] = max(first.values()) - t0
        result["duplicates"] = len(received) - n
        result["fsyncs"] = ipc.iot_core.group_commit.commits
    finally:
        await ipc.close()
    return result


async def _run(work: Path, n: int, rounds: int, in_flight: tuple[int, ...], repeats: int) -> dict[int, dict[str, float]]:
    broker = MosquittoBroker(work / "broker")
    broker.start()
    rows: dict[int, dict[str, float]] = {}
    try:
        received: list[tuple[float, int]] = []

        def got(message: Any) -> None:
            body = json.loads(message.payload)
            if "n" in body and message.topic == TOPIC:
                received.append((time.perf_counter(), int(body["n"])))

        consumer = await connect(broker.url, "bench-consumer", clean_start=True)
        await consumer.subscribe("devices/dev-1/#", 1, got)
        device = await connect(broker.url, "dev-1", clean_start=True)
        samples: dict[int, list[dict[str, float]]] = {k: [] for k in in_flight}
        for repeat in range(repeats):  # IPC and direct interleaved, so a change in the machine's load hits both
            for k in in_flight:
                result = await _ipc(work / f"r{repeat}", device, n, rounds, k, received)
                received.clear()
                direct_s = await _direct(device, n, k)
                trips = sorted(result["trips"])
                samples[k].append(
                    {
                        "ipc_acked_per_s": n / result["publish_s"],
                        "ipc_delivered_per_s": n / result["delivered_s"],
                        "direct_per_s": n / direct_s,
                        "ratio": n / result["publish_s"] / (n / direct_s),
                        "messages_per_fsync": n / max(1, result["fsyncs"]),
                        "duplicates": result["duplicates"],
                        "get_config_median_us": statistics.median(trips) * 1e6,
                        "get_config_p90_us": trips[int(len(trips) * 0.9)] * 1e6,
                    }
                )
        for k, runs in samples.items():
            rows[k] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            rows[k]["ratio_min"] = min(run["ratio"] for run in runs)
            rows[k]["ratio_max"] = max(run["ratio"] for run in runs)
            rows[k]["duplicates"] = sum(run["duplicates"] for run in runs)
        await device.disconnect()
        await consumer.disconnect()
    finally:
        broker.stop()
    return rows


def bench_ipc(
    work: Path, n: int, rounds: int = 500, in_flight: tuple[int, ...] = (1, 16, 64), repeats: int = 3
) -> dict[int, dict[str, float]]:
    """Per K publishes in flight, medians of ``repeats`` interleaved runs: acknowledged and delivered IPC publishes/s,
    direct MQTT QoS 1 publishes/s, their ratio (``ratio``: the median of each run's; ``ratio_min``, ``ratio_max``),
    messages per fsync of the agent's spool, and duplicates at the broker (all runs)."""
    return asyncio.run(_run(work, n, rounds, in_flight, repeats))
