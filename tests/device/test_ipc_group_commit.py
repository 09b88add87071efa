"""Group commit of the agent's uplink spool: publishes that arrive together share one fsync, and none is
acknowledged before the fsync that covers it — checked with the agent as a real process SIGKILLed mid-burst."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import eventually, requires, wait_until

from edgekit.edge.errors import EdgeError, SpoolFullError
from edgekit.edge.store.group_commit import GroupCommit
from edgekit.edge.store.spool import Spool
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import MqttMessage, connect

COMPONENT = "com.example.Burst"
TOPIC = "devices/dev-1/burst"

# The agent's IPC as a process of its own: DeviceIpc on ``root`` (its socket and uplink spool), attached to the broker
# at ``url`` when one is given; prints the component's environment, then serves until killed.
AGENT = r"""
import asyncio, json, sys
from edgekit.device.ipc import DeviceIpc
from edgekit.mqtt.client import connect

COMPONENT = sys.argv[3]
POLICY = {"operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["devices/dev-1/#"]}

class Host:
    thing = "dev-1"
    def configuration(self, component):
        return {"accessControl": {"aws.greengrass.ipc.mqttproxy": {"burst:1": POLICY}}} if component == COMPONENT else None
    def set_configuration(self, component, configuration):
        pass
    def report_state(self, component, state):
        pass

async def main(root, url):
    ipc = DeviceIpc(root, Host())
    await ipc.start()
    if url:
        ipc.attach(await connect(url, "dev-1", clean_start=True))
    print(json.dumps(ipc.environment(COMPONENT)), flush=True)
    await asyncio.Event().wait()

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""


def start_agent(root: Path, url: str = "") -> tuple[subprocess.Popen[str], dict[str, str]]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", AGENT, str(root), url, COMPONENT], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise AssertionError(f"the agent process exited ({proc.wait()}) before it served")
    return proc, json.loads(line)


def burst(env: dict[str, str], count: int, in_flight: int, acked: list[int], stop: threading.Event) -> None:
    """``count`` PublishToIoTCore from awsiotsdk, ``in_flight`` at a time; each acknowledged number goes to ``acked``."""
    from awsiot.greengrasscoreipc import connect as ipc_connect
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    client = GreengrassCoreIPCClientV2(
        client=ipc_connect(ipc_socket=env["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"], authtoken=env["SVCUID"])
    )
    lock = threading.Lock()

    def on_done(n: int, future: Any) -> None:
        if future.exception() is None:
            with lock:
                acked.append(n)

    window: collections.deque[Any] = collections.deque()
    try:
        for n in range(count):
            if stop.is_set():
                break
            if len(window) >= in_flight:
                window.popleft().exception(timeout=10)  # waits; a failure (the agent gone) is the point
            future = client.publish_to_iot_core_async(topic_name=TOPIC, qos="1", payload=json.dumps({"n": n}).encode())
            future.add_done_callback(lambda f, n=n: on_done(n, f))
            window.append(future)
        for future in window:
            future.exception(timeout=10)
    except Exception:  # the agent was killed under us: whatever was acknowledged is in `acked`
        pass
    finally:
        with contextlib.suppress(Exception):
            client.close()


@requires("mosquitto")
def test_a_sigkilled_agent_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    root = tmp_path / "device"
    agent, env = start_agent(root)  # no broker yet: everything stays in the spool
    acked: list[int] = []
    stop = threading.Event()
    publisher = threading.Thread(target=burst, args=(env, 20_000, 16, acked, stop), daemon=True)
    publisher.start()
    try:
        wait_until(lambda: len(acked) >= 300, timeout=60, what="300 publishes acknowledged")
        agent.send_signal(signal.SIGKILL)  # mid-burst: no close, no final commit
        assert agent.wait(10) == -signal.SIGKILL
    finally:
        stop.set()
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        if agent.stdout is not None:
            agent.stdout.close()
    publisher.join(30)
    told = set(acked)
    assert 300 <= len(told) < 20_000  # killed in the middle of the burst

    spool = Spool(root / "config" / "uplink.db", on_damage="raise")  # what a restarted agent opens
    try:
        stored = [json.loads(item.payload)["n"] for item in spool.peek(100_000)]
    finally:
        spool.close()
    assert told <= set(stored), f"acknowledged but lost: {sorted(told - set(stored))[:10]}"
    assert stored == sorted(stored) and len(stored) == len(set(stored))  # in the order sent, none twice

    with MosquittoBroker(tmp_path / "broker") as broker:
        received: list[int] = []

        async def listen_while_restarted() -> None:
            consumer = await connect(broker.url, "consumer", clean_start=True)

            def got(message: MqttMessage) -> None:
                received.append(json.loads(message.payload)["n"])

            await consumer.subscribe("devices/dev-1/#", 1, got)
            again, _ = await asyncio.to_thread(start_agent, root, broker.url)  # a new agent on the same folder
            try:
                deadline = time.monotonic() + 30
                while len(received) < len(stored) and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
            finally:
                again.kill()
                again.wait()
                if again.stdout is not None:
                    again.stdout.close()
                await consumer.disconnect()

        asyncio.run(listen_while_restarted())
    assert received[: len(stored)] == stored  # every acknowledged message delivered after the restart, in order
    assert told <= set(received)


class Listener:
    """A subscriber to ``devices/dev-1/#`` on a thread of its own, for the whole test: the numbers it received."""

    def __init__(self, url: str) -> None:
        self.received: list[int] = []
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._main(url),), daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "the subscriber did not connect"

    async def _main(self, url: str) -> None:
        self._done = asyncio.Event()
        consumer = await connect(url, "consumer", clean_start=True)
        await consumer.subscribe("devices/dev-1/#", 1, lambda message: self.received.append(json.loads(message.payload)["n"]))
        self._ready.set()
        await self._done.wait()
        await consumer.disconnect()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._done.set)
        self._thread.join(20)
        self._loop.close()


@requires("mosquitto")
def test_an_agent_sigkilled_while_sending_loses_nothing_it_acknowledged(tmp_path: Path) -> None:
    """The same kill with the agent online: 64 publishes in flight while its drain sends and deletes what the broker
    took. Every acknowledged message is in the spool or was delivered; a new agent delivers the rest."""
    with MosquittoBroker(tmp_path / "broker") as broker:
        listener = Listener(broker.url)
        root = tmp_path / "device"
        agent, env = start_agent(root, broker.url)
        acked: list[int] = []
        stop = threading.Event()
        publisher = threading.Thread(target=burst, args=(env, 20_000, 64, acked, stop), daemon=True)
        publisher.start()
        try:
            wait_until(lambda: len(acked) >= 500 and len(listener.received) >= 100, timeout=60, what="a burst under way")
            agent.send_signal(signal.SIGKILL)
            assert agent.wait(10) == -signal.SIGKILL
        finally:
            stop.set()
            if agent.poll() is None:
                agent.kill()
                agent.wait()
            if agent.stdout is not None:
                agent.stdout.close()
        publisher.join(30)
        told = set(acked)
        assert 500 <= len(told) < 20_000
        spool = Spool(root / "config" / "uplink.db", on_damage="raise")
        try:
            stored = [json.loads(item.payload)["n"] for item in spool.peek(100_000)]
        finally:
            spool.close()

        # what the broker took (and the agent deleted from its spool) reaches the subscriber, which may lag behind
        # by hundreds of messages on a loaded machine: waited for, not assumed after a fixed sleep
        def missing() -> set[int]:
            return told - set(stored) - set(listener.received)

        with contextlib.suppress(AssertionError):
            wait_until(lambda: not missing(), timeout=30, what="acknowledged messages at the subscriber")
        assert not missing(), f"acknowledged but lost: {sorted(missing())[:10]}"
        assert stored == sorted(stored) and len(stored) == len(set(stored))

        again, _ = start_agent(root, broker.url)  # a new agent on the same folder sends what the spool kept
        try:
            wait_until(lambda: set(stored) <= set(listener.received), timeout=30, what="the spool delivered")
        finally:
            again.kill()
            again.wait()
            if again.stdout is not None:
                again.stdout.close()
            listener.close()
        assert told <= set(listener.received)


class SlowSpool(Spool):
    """A real spool whose commits can be held open (as a slow fsync would be), counting what each one stored."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, max_message_bytes=64)
        self.gate = threading.Event()
        self.gate.set()
        self.batches: list[int] = []
        self.entered = 0  # messages of the commits that started (held at the gate or not)
        self.returned = 0

    def put_many(self, messages: Any) -> list[int | EdgeError]:
        self.entered += len(messages)
        self.gate.wait(10)
        results = super().put_many(messages)
        self.batches.append(len(messages))
        self.returned += len(messages)
        return results


def test_publishes_that_arrive_during_an_fsync_share_the_next_one(tmp_path: Path) -> None:
    spool = SlowSpool(tmp_path / "spool.db")

    async def scenario() -> None:
        commit = GroupCommit(spool)
        spool.gate.clear()  # the first commit "fsyncs" until the gate opens
        first = asyncio.ensure_future(commit.put("t", b"0"))
        await eventually(lambda: spool.entered == 1, 10, "the first commit under way")  # its thread took it alone
        rest = [asyncio.ensure_future(commit.put("t", str(i).encode())) for i in range(1, 40)]
        big = asyncio.ensure_future(commit.put("t", b"x" * 65))  # over max_message_bytes: refused alone
        await asyncio.sleep(0.1)
        assert not first.done() and not any(f.done() for f in rest)  # nothing acknowledged before its commit returned
        spool.gate.set()
        seqs = [await first] + [await f for f in rest]
        with pytest.raises(SpoolFullError, match="max_message_bytes"):
            await big
        assert spool.batches == [1, 40]  # the lone first alone, then everyone who arrived while it was in flight
        assert seqs == sorted(seqs) and len(set(seqs)) == 40  # in the order of arrival
        assert commit.commits == 2 and commit.committed == 40
        await commit.close()
        with pytest.raises(EdgeError, match="closed"):
            await commit.put("t", b"late")

    asyncio.run(asyncio.wait_for(scenario(), 30))
    assert [item.payload for item in spool.peek(100)] == [str(i).encode() for i in range(40)]
    spool.close()


def test_no_answer_leaves_the_socket_before_the_fsync_that_covers_it(tmp_path: Path) -> None:
    """Through the real socket and awsiotsdk: while the commit is held open (a slow fsync) no PublishToIoTCore is
    answered, however many the server could write out together; once it returns, all are, and all are stored."""
    from awsiot.greengrasscoreipc import connect as ipc_connect
    from awsiot.greengrasscoreipc.clientv2 import GreengrassCoreIPCClientV2

    from edgekit.device.ipc import DeviceIpc

    class Host:
        thing = "dev-1"

        def configuration(self, component: str) -> dict[str, Any] | None:
            policy = {"operations": ["aws.greengrass#PublishToIoTCore"], "resources": ["devices/dev-1/#"]}
            return {"accessControl": {"aws.greengrass.ipc.mqttproxy": {"p:1": policy}}} if component == COMPONENT else None

        def set_configuration(self, component: str, configuration: dict[str, Any]) -> None:
            pass

        def report_state(self, component: str, state: str) -> None:
            pass

    async def scenario() -> None:
        ipc = DeviceIpc(tmp_path / "device", Host())
        spool = SlowSpool(tmp_path / "held.db")
        ipc.iot_core._spool = spool  # the link's spool, with commits that can be held
        await ipc.start()
        env = ipc.environment(COMPONENT)
        client = await asyncio.to_thread(
            lambda: GreengrassCoreIPCClientV2(
                client=ipc_connect(ipc_socket=env["AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"], authtoken=env["SVCUID"])
            )
        )
        try:
            spool.gate.clear()
            futures = [client.publish_to_iot_core_async(topic_name=TOPIC, qos="1", payload=str(i).encode()) for i in range(30)]
            await eventually(lambda: spool.batches == [] and spool.entered > 0, 10, "a commit held open")
            await asyncio.sleep(0.3)
            assert not any(f.done() for f in futures)  # the commit is held: nothing answered
            spool.gate.set()
            await asyncio.to_thread(lambda: [f.result(10) for f in futures])
            assert spool.returned == 30 and [int(i.payload) for i in spool.peek(100)] == list(range(30))
        finally:
            spool.gate.set()
            await asyncio.to_thread(client.close)
            await ipc.close()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_a_commit_stores_each_message_with_its_own_number_among_refusals_and_drops(tmp_path: Path) -> None:
    """put_many writes its rows in a few multi-row INSERTs: each message still gets its own sequence number, one
    refused in the middle none, and a spool that drops its oldest to make room drops them in order."""
    spool = Spool(tmp_path / "spool.db", max_message_bytes=64)
    messages = [("t", str(i).encode()) for i in range(150)]
    messages[70] = ("t", b"x" * 65)  # over max_message_bytes: refused alone
    results = spool.put_many(messages)
    assert isinstance(results[70], SpoolFullError)
    seqs = [r for r in results if isinstance(r, int)]
    assert [(item.seq, item.payload) for item in spool.peek(200)] == [
        (seq, payload) for seq, (_, payload) in zip(seqs, [m for i, m in enumerate(messages) if i != 70], strict=True)
    ]
    spool.close()
    small = Spool(tmp_path / "small.db", max_items=5, on_full="overwrite_oldest")
    results = small.put_many([("t", str(i).encode()) for i in range(9)])
    assert [(item.seq, item.payload) for item in small.peek(10)] == [(results[i], str(i).encode()) for i in range(4, 9)]
    assert small.dropped == 4
    small.close()


def test_puts_of_many_and_of_one_share_commits_and_get_their_own_results(tmp_path: Path) -> None:
    spool = SlowSpool(tmp_path / "spool.db")

    async def scenario() -> None:
        commit = GroupCommit(spool, max_batch=10)
        spool.gate.clear()
        first = commit.put_nowait("t", b"0")
        await eventually(lambda: spool.entered == 1, 10, "the first commit held open")  # the rest queue behind it
        many = commit.put_many_nowait([("t", b"1"), ("t", b"x" * 65), ("t", b"2")])
        one = commit.put_nowait("t", b"3")
        more = commit.put_many_nowait([("t", str(i).encode()) for i in range(4, 16)])  # over max_batch: a commit alone
        spool.gate.set()
        seqs = [await first]
        results = await many
        assert isinstance(results[1], SpoolFullError)
        seqs += [results[0], results[2], await one]  # type: ignore[list-item]
        seqs += await more  # type: ignore[arg-type]
        assert spool.batches == [1, 4, 12]
        assert [item.seq for item in spool.peek(100)] == seqs and seqs == sorted(seqs)
        assert [item.payload for item in spool.peek(100)] == [str(i).encode() for i in range(16)]
        await commit.close()
        with pytest.raises(EdgeError, match="closed"):
            commit.put_many_nowait([("t", b"late")])

    asyncio.run(asyncio.wait_for(scenario(), 30))
    spool.close()


def test_an_ack_of_many_removes_them_all(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    seqs = [seq for seq in spool.put_many([("t", b"x" * 10)] * 1234) if isinstance(seq, int)]
    spool.ack(seqs[::2] + seqs[1::2] + [seqs[0], 10**9])  # out of order, one twice, one unknown: over 500 a statement
    assert len(spool) == 0 and spool.bytes == 0
    spool.close()


def test_a_spool_that_is_not_durable_is_written_in_the_loop_with_no_commit_thread(tmp_path: Path) -> None:
    """A simulated device's uplink (durable=False): both publish paths store at once and start no thread."""
    from edgekit.device.ipc.iotcore import IotCoreLink

    async def main() -> tuple[int, int, bool, int]:
        link = IotCoreLink(tmp_path / "uplink.db", durable=False)
        try:
            first = await link.put(TOPIC, b"a")
            stored = link.put_nowait(TOPIC, b"b")
            done = stored.done()
            return first, await stored, done, len(link.spool.peek(10))
        finally:
            await link.close()

    threads = threading.active_count()
    first, second, done, spooled = asyncio.run(main())
    assert (second, done, spooled) == (first + 1, True, 2)
    assert threading.active_count() == threads
