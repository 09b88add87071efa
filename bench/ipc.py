"""Greengrass IPC through edgekit's device agent, beside a direct MQTT publish (printed by bench/edge, or alone).

    python -m bench.ipc [--messages N] [--in-flight K ...] [--repeats R] [--no-drain] [--json]

A component process (``awsiotsdk``'s ``GreengrassCoreIPCClientV2``, nothing of edgekit) publishes N messages with
``PublishToIoTCore``, K at a time (``publish_to_iot_core_async``, a window of K in flight; K=1: one after the
other); each call returns once the agent has the message on disk (the IPC uplink spool, ``synchronous=FULL``,
publishes that arrive together sharing one fsync: group commit), and the agent sends the spool to a real mosquitto
over its own MQTT connection. The same N publishes go directly over MQTT from one client with the same K in flight
(QoS 1, each waiting for its PUBACK). The agent (in the IPC run) and the direct publisher (in the direct run) are
this process; the subscriber that checks every acknowledged message reaches the broker, each once, is a process of
its own (as the cloud would be: it takes no CPU from the agent's interpreter).

Measured in one run, R rounds; in each round every K gets one IPC run and one direct run, back to back, in
alternating order (IPC first in even rounds, direct first in odd ones), the load average noted beside each pair.
Per K: the medians of the acknowledged IPC publishes per second, the direct publishes per second and their ratio;
the ratio of the quietest round (lowest load average); the rate at which IPC messages reached the subscriber; the
fsyncs of the spool; the CPU per message of the agent (this process, and its event loop's thread alone, from the
first publish until every message reached the subscriber: IPC, spool and the MQTT drain), of the component (the
SDK's side) and of the direct publisher; and the round trip of ``GetConfiguration``.

``--ceiling`` adds a third run per K and round: the same component against a zero-cost agent — a minimal eventstream
server in this process that accepts the connection and answers each publish at once (no authorization, no spool,
no fsync, no MQTT) — whose rate against the same round's direct run is the most any agent could reach here, with
the SDK's cost and the machine's cores as they are.

``--spool-only`` measures the uplink spool alone, as a device's uplink uses it one message at a time: put, read,
remove what was delivered — CPU and write transactions per message, durable (the agent's: an fsync per put) and not
(a simulated device's), medians of ``--repeats`` interleaved rounds.

To compare two versions of the agent with the same harness, run this file with the other checkout's ``edgekit``
first on the path (``PYTHONPATH=/other/checkout python bench/ipc.py``): it uses only ``DeviceIpc``, the broker and
the MQTT client.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import edgekit
from edgekit.device.ipc import SOCKET_ENV, DeviceIpc
from edgekit.device.ipc.eventstream import CONNECTION_ACCEPTED, TERMINATE_STREAM, FrameDecoder, MessageType, encode
from edgekit.edge.store.spool import Spool
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import MqttClient, connect

COMPONENT = "bench.Publisher"
TOPIC = "devices/dev-1/bench"

_CLIENT = r"""
import collections, json, sys, time
from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2
n, rounds, k, run = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
ipc = GreengrassCoreIPCClientV2()
body = {"windowStart": 0, "count": 100, "classes": {"1": 60, "2": 40}}
payloads = [json.dumps({**body, "r": run, "n": i}).encode() for i in range(n)]
window = collections.deque()
started = time.monotonic()
cpu = time.process_time()
t0 = time.perf_counter()
for i in range(n):
    if len(window) >= k:
        window.popleft().result()
    window.append(ipc.publish_to_iot_core_async(topic_name="devices/dev-1/bench", qos="1", payload=payloads[i]))
for future in window:
    future.result()
publish_s = time.perf_counter() - t0
cpu = time.process_time() - cpu
trips = []
for i in range(rounds):
    t = time.perf_counter()
    ipc.get_configuration(key_path=["Greeting"])
    trips.append(time.perf_counter() - t)
ipc.close()
print(json.dumps({"started": started, "publish_s": publish_s, "cpu_s": cpu, "trips": trips}))
"""

# The subscriber, a process of its own: notes (monotonic time, number) of each message of run R; answers
# "count R" with how many distinct numbers of run R it has, "dump R" with them as JSON; exits at the end of stdin.
_CONSUMER = r"""
import asyncio, collections, json, sys, time
from edgekit.mqtt.client import connect

async def main(url):
    runs = collections.defaultdict(list)
    def got(message):
        body = json.loads(message.payload)
        if "r" in body:
            runs[body["r"]].append((time.monotonic(), body["n"]))
    consumer = await connect(url, "bench-consumer", clean_start=True)
    await consumer.subscribe("devices/dev-1/#", 1, got)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print("ready", flush=True)
    while line := (await reader.readline()).split():
        what, run = line[0], int(line[1])
        if what == b"count":
            print(len({n for _, n in runs[run]}), flush=True)
        else:
            print(json.dumps(runs.pop(run, [])), flush=True)
    await consumer.disconnect()

asyncio.run(main(sys.argv[1]))
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


class _Consumer:
    """The subscriber process (see ``_CONSUMER``)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str) -> _Consumer:
        env = {**os.environ, "PYTHONPATH": str(Path(edgekit.__file__).resolve().parents[1])}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CONSUMER,
            url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=2**28,  # a dump is one line of JSON
        )
        consumer = cls(proc)
        if await consumer._line() != "ready":
            raise SystemExit("bench/ipc: the subscriber process did not start")
        return consumer

    async def _line(self) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), 60)).decode().strip()

    async def ask(self, what: str, run: int) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{what} {run}\n".encode())
        return json.loads(await self._line())

    async def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


class _Acker:
    """The zero-cost agent (``--ceiling``): accepts any ``CONNECT`` and answers every operation at once with an empty
    ``PublishToIoTCoreResponse`` — nothing checked, stored or sent on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> _Acker:
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        decoder = FrameDecoder()
        accepted = encode({":message-type": int(MessageType.CONNECT_ACK), ":message-flags": CONNECTION_ACCEPTED, ":stream-id": 0})
        try:
            while data := await reader.read(65536):
                out = []
                for message in decoder.iter_feed(data):
                    if message.type == MessageType.CONNECT:
                        out.append(accepted)
                    elif message.type == MessageType.APPLICATION_MESSAGE and not message.flags & TERMINATE_STREAM:
                        headers = {
                            ":message-type": int(MessageType.APPLICATION_MESSAGE),
                            ":message-flags": TERMINATE_STREAM,
                            ":stream-id": message.stream_id,
                            ":content-type": "application/json",
                            "service-model-type": "aws.greengrass#PublishToIoTCoreResponse",
                        }
                        out.append(encode(headers, b"{}"))
                writer.write(b"".join(out))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def _ceiling(work: Path, run: int, n: int, k: int) -> tuple[float, float, float]:
    """The component's ``n`` publishes, ``k`` in flight, against :class:`_Acker`: seconds, the component's CPU seconds
    and this process's."""
    async with _Acker(work / f"acker-{run}.socket"):
        env = {SOCKET_ENV: str(work / f"acker-{run}.socket"), "SVCUID": "ceiling", "AWS_REGION": "us-east-1"}
        cpu = time.process_time()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _CLIENT, str(n), "0", str(k), str(run), env=env, stdout=asyncio.subprocess.PIPE
        )
        out, _ = await proc.communicate()
        agent_cpu = time.process_time() - cpu
    result = json.loads(out)
    return float(result["publish_s"]), float(result["cpu_s"]), agent_cpu


async def _direct(client: MqttClient, n: int, k: int) -> tuple[float, float]:
    """Seconds for ``n`` QoS 1 publishes from ``client``, ``k`` awaiting their PUBACK at a time, and this process's
    CPU seconds meanwhile."""
    payload = json.dumps({"windowStart": 0, "count": 100, "classes": {"1": 60, "2": 40}, "d": 0}).encode()
    gate = asyncio.Semaphore(k)

    async def one() -> None:
        async with gate:
            await client.publish(TOPIC, payload, qos=1)

    cpu, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one() for _ in range(n)))
    return time.perf_counter() - t0, time.process_time() - cpu


async def _ipc(
    work: Path, device: MqttClient, consumer: _Consumer, run: int, n: int, rounds: int, k: int, drain: bool = True
) -> dict[str, Any]:
    ipc = DeviceIpc(work / f"device-{run}", _Host())
    await ipc.start()
    if drain:
        ipc.attach(device)
    try:
        cpu, loop_cpu = time.process_time(), time.thread_time()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _CLIENT,
            str(n),
            str(rounds),
            str(k),
            str(run),
            env=ipc.environment(COMPONENT),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        result: dict[str, Any] = json.loads(out)
        deadline = time.monotonic() + 60
        while drain and await consumer.ask("count", run) < n and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        result["agent_cpu_s"] = time.process_time() - cpu
        result["agent_loop_cpu_s"] = time.thread_time() - loop_cpu
        received = await consumer.ask("dump", run) if drain else [[time.monotonic(), i] for i in range(n)]
        first: dict[int, float] = {}
        for at, number in received:
            first.setdefault(number, at)
        if sorted(first) != list(range(n)):
            raise SystemExit(f"bench/ipc: K={k}: the broker got {len(first)} of the {n} acknowledged messages")
        result["delivered_s"] = max(first.values()) - result["started"]
        result["duplicates"] = len(received) - n
        result["fsyncs"] = ipc.iot_core.group_commit.commits
    finally:
        await ipc.close()
    return result


async def _round(
    work: Path,
    device: MqttClient,
    consumer: _Consumer,
    run: int,
    n: int,
    rounds: int,
    k: int,
    ipc_first: bool,
    drain: bool,
    ceiling: bool = False,
) -> dict[str, float]:
    load = os.getloadavg()[0]
    if not ipc_first:
        direct_s, direct_cpu = await _direct(device, n, k)
    result = await _ipc(work, device, consumer, run, n, rounds, k, drain)
    extra: dict[str, float] = {}
    if ceiling:  # between the two: the same distance from the direct run, whichever order
        ceiling_s, ceiling_component_cpu, ceiling_agent_cpu = await _ceiling(work, run, n, k)
        extra = {
            "ceiling_per_s": n / ceiling_s,
            "ceiling_component_cpu_us": ceiling_component_cpu / n * 1e6,
            "ceiling_agent_cpu_us": ceiling_agent_cpu / n * 1e6,
        }
    if ipc_first:
        direct_s, direct_cpu = await _direct(device, n, k)
    if ceiling:
        extra["ceiling_ratio"] = direct_s / ceiling_s
    trips = sorted(result["trips"]) or [0.0]
    return extra | {
        "load": (load + os.getloadavg()[0]) / 2,
        "ipc_acked_per_s": n / result["publish_s"],
        "ipc_delivered_per_s": n / result["delivered_s"],
        "direct_per_s": n / direct_s,
        "ratio": direct_s / result["publish_s"],
        "messages_per_fsync": n / max(1, result["fsyncs"]),
        "agent_cpu_us": result["agent_cpu_s"] / n * 1e6,
        "agent_loop_cpu_us": result["agent_loop_cpu_s"] / n * 1e6,
        "component_cpu_us": result["cpu_s"] / n * 1e6,
        "direct_cpu_us": direct_cpu / n * 1e6,
        "duplicates": result["duplicates"],
        "get_config_median_us": statistics.median(trips) * 1e6,
        "get_config_p90_us": trips[int(len(trips) * 0.9)] * 1e6,
    }


async def _run(
    work: Path, n: int, rounds: int, in_flight: tuple[int, ...], repeats: int, drain: bool, ceiling: bool
) -> dict[int, dict[str, float]]:
    broker = MosquittoBroker(work / "broker")
    broker.start()
    rows: dict[int, dict[str, float]] = {}
    try:
        consumer = await _Consumer.start(broker.url)
        device = await connect(broker.url, "dev-1", clean_start=True)
        samples: dict[int, list[dict[str, float]]] = {k: [] for k in in_flight}
        run = 0
        for repeat in range(repeats):  # IPC and direct back to back, alternating which goes first
            for k in in_flight:
                samples[k].append(await _round(work, device, consumer, run, n, rounds, k, repeat % 2 == 0, drain, ceiling))
                run += 1
        for k, runs in samples.items():
            rows[k] = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
            rows[k]["ratio_min"] = min(run["ratio"] for run in runs)
            rows[k]["ratio_max"] = max(run["ratio"] for run in runs)
            quietest = min(runs, key=lambda run: run["load"])
            rows[k]["ratio_quietest"] = quietest["ratio"]
            rows[k]["load_quietest"] = quietest["load"]
            rows[k]["load_min"] = min(run["load"] for run in runs)
            rows[k]["load_max"] = max(run["load"] for run in runs)
            rows[k]["duplicates"] = sum(run["duplicates"] for run in runs)
            rows[k]["rounds"] = len(runs)
        await device.disconnect()
        await consumer.close()
    finally:
        broker.stop()
    return rows


def bench_ipc(
    work: Path,
    n: int,
    rounds: int = 500,
    in_flight: tuple[int, ...] = (1, 16, 64),
    repeats: int = 3,
    drain: bool = True,
    ceiling: bool = False,
) -> dict[int, dict[str, float]]:
    """Per K publishes in flight, medians of ``repeats`` rounds (see the module docstring): acknowledged and delivered
    IPC publishes/s, direct MQTT QoS 1 publishes/s, their ratio (``ratio``: the median of each round's; ``ratio_min``,
    ``ratio_max``, ``ratio_quietest`` with ``load_quietest``), the load average over the rounds (``load_min``,
    ``load_max``), messages per fsync of the agent's spool, CPU per message of the agent and of the direct publisher,
    and duplicates at the broker (all rounds). ``drain=False``: the agent has no MQTT connection (what its IPC and
    spool cost alone; nothing is delivered or checked). ``ceiling``: the component against a zero-cost agent too
    (``ceiling_per_s``, ``ceiling_ratio`` against the same round's direct run, the component's CPU per message then)."""
    return asyncio.run(_run(work, n, rounds, in_flight, repeats, drain, ceiling))


def _count_commit(commits: list[str], sql: str) -> None:
    if sql == "COMMIT":
        commits.append(sql)


def bench_spool_cycle(work: Path, n: int, repeats: int = 3) -> dict[str, dict[str, float]]:
    """Per spool kind (``durable``, ``not durable``): medians over ``repeats`` interleaved rounds of the CPU and wall
    time per message of put + peek + ack, one message at a time, and the write transactions (COMMITs) per message."""
    payload = json.dumps({"windowStart": 0, "count": 100, "classes": {"1": 60, "2": 40}, "r": 0, "n": 0}).encode()
    samples: dict[str, list[dict[str, float]]] = {"durable": [], "not durable": []}
    for r in range(repeats):
        for kind in samples:
            count = n if kind == "not durable" else max(1, n // 5)  # an fsync each: fewer
            spool = Spool(work / f"cycle-{kind.replace(' ', '-')}-{r}.db", durable=kind == "durable")
            commits: list[str] = []
            spool._db.set_trace_callback(functools.partial(_count_commit, commits))
            cpu, wall = time.thread_time(), time.perf_counter()
            for _ in range(count):
                spool.put(TOPIC, payload)
                spool.ack([item.seq for item in spool.peek(50)])
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
            spool._db.set_trace_callback(None)
            spool.close()
            samples[kind].append({"cpu_us": cpu / count * 1e6, "wall_us": wall / count * 1e6, "commits": len(commits) / count})
    return {kind: {key: statistics.median(s[key] for s in runs) for key in runs[0]} for kind, runs in samples.items()}


def print_ipc(ipc: dict[int, dict[str, float]], messages: int) -> None:
    print(f"Greengrass IPC, {messages} publishes from one awsiotsdk component, K in flight (K=1: one after the other);")
    print(f"medians of {int(next(iter(ipc.values()))['rounds'])} rounds, IPC and direct back to back in each:")
    for k, row in ipc.items():
        print(f"  K={k}: direct MQTT publish (QoS 1, PUBACK each)  {row['direct_per_s']:8,.0f} /s")
        print(
            f"  K={k}: IPC PublishToIoTCore, acknowledged        {row['ipc_acked_per_s']:8,.0f} /s   "
            f"{row['ratio']:.2f}x (rounds {row['ratio_min']:.2f}x-{row['ratio_max']:.2f}x; "
            f"quietest round, load {row['load_quietest']:.1f}: {row['ratio_quietest']:.2f}x)"
        )
        print(f"  K={k}: IPC, delivered at the broker              {row['ipc_delivered_per_s']:8,.0f} /s")
        print(
            f"  K={k}: messages per fsync {row['messages_per_fsync']:.1f}; CPU per message: agent "
            f"{row['agent_cpu_us']:.0f} us ({row['agent_loop_cpu_us']:.0f} us in its event loop), IPC component {row['component_cpu_us']:.0f} us, direct publisher "
            f"{row['direct_cpu_us']:.0f} us; "
            f"duplicates at the broker {row['duplicates']:.0f}; load average {row['load_min']:.1f}-{row['load_max']:.1f}"
        )
        if "ceiling_ratio" in row:
            print(
                f"  K={k}: the same component, zero-cost agent          {row['ceiling_per_s']:8,.0f} /s   "
                f"{row['ceiling_ratio']:.2f}x: the ceiling (IPC component {row['ceiling_component_cpu_us']:.0f} us, "
                f"the acker {row['ceiling_agent_cpu_us']:.0f} us per message)"
            )
    last = ipc[max(ipc)]
    print(f"  GetConfiguration round trip: median {last['get_config_median_us']:.0f} us, p90 {last['get_config_p90_us']:.0f} us")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/ipc", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=2000, help="IPC publishes (and direct MQTT publishes) per run")
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 16, 64], help="publishes in flight, one level each")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (an IPC and a direct run per level each)")
    parser.add_argument("--rounds", type=int, default=200, help="GetConfiguration round trips timed per IPC run")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--no-drain", action="store_true", help="the agent without an MQTT connection: what IPC and the spool cost alone"
    )
    parser.add_argument("--spool-only", action="store_true", help="only the uplink spool: put, read, remove, per message")
    parser.add_argument(
        "--ceiling", action="store_true", help="also the component against a zero-cost agent: the most any agent could reach"
    )
    args = parser.parse_args(argv)
    if args.spool_only:
        with tempfile.TemporaryDirectory(prefix="edgekit-bench-ipc-") as tmp:
            cycle = bench_spool_cycle(Path(tmp), args.messages, args.repeats)
        if args.json:
            print(json.dumps({"edgekit": str(Path(edgekit.__file__).resolve().parent), "spool": cycle}))
            return 0
        print(f"edgekit from {Path(edgekit.__file__).resolve().parent}; uplink spool, one message at a time (put, read, remove):")
        for kind, row in cycle.items():
            print(
                f"  {kind:12s} CPU {row['cpu_us']:6.0f} us, wall {row['wall_us']:6.0f} us, "
                f"{row['commits']:.2f} write transactions per message"
            )
        return 0
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-ipc-") as tmp:
        rows = bench_ipc(
            Path(tmp), args.messages, args.rounds, tuple(args.in_flight), args.repeats, not args.no_drain, args.ceiling
        )
    if args.json:
        print(json.dumps({"edgekit": str(Path(edgekit.__file__).resolve().parent), "rows": rows}))
    else:
        print(f"edgekit from {Path(edgekit.__file__).resolve().parent}")
        print_ipc(rows, args.messages)
    return 0


if __name__ == "__main__":
    sys.exit(main())
