"""edgekit.edge: spool, windows, cloud fallback (a real Open Inference Protocol HTTP server), MQTT drain (real mosquitto).

The windows and the local-first-then-cloud tests drive the inference loop's own code (``edgekit.edge.windows``,
``edgekit.edge.loop``): the one inference path the component and the simulator run.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import InferServer, eventually, make_mlp, requires

import edgekit
from edgekit.clock import FakeClock
from edgekit.edge import (
    CircuitBreaker,
    CloudFallback,
    EdgeError,
    FallbackError,
    FallbackUnavailable,
    Spool,
    SpoolFullError,
    SpoolPublisher,
)
from edgekit.edge.loop import InferenceLoop, LoopOptions
from edgekit.edge.sources import Reading
from edgekit.edge.uplink import SpoolUplink
from edgekit.edge.windows import CLOUD, LOCAL, NONE, Tumbling, summarize, top_class
from edgekit.errors import InferenceError, exit_code_for
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import Backoff, connect
from edgekit.mqtt.errors import MqttTimeoutError
from edgekit.wire.summary import encode_summary

# --------------------------------------------------------------------------- spool


def test_spool_keeps_order_and_survives_reopening(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    seqs = [spool.put("t/a", f"m{i}".encode()) for i in range(5)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    spool.ack(seqs[:2])
    spool.close()
    again = Spool(tmp_path / "spool.db")
    assert [i.payload for i in again.peek()] == [b"m2", b"m3", b"m4"]
    assert again.put("t/a", b"m5") > seqs[-1]  # sequence numbers are never reused


def test_spool_bounds_hold_when_another_connection_writes_the_file(tmp_path: Path) -> None:
    """A put trusts the count and bytes of its own last write only while no other connection wrote the file: the
    bound holds whoever filled the spool, and a put into a backlog does not count its rows."""
    path = tmp_path / "spool.db"
    mine = Spool(path, max_items=5, max_bytes=1000)
    other = Spool(path, max_items=100, deferred_acks=0)  # its removals written at once
    mine.put("t", b"a" * 10)
    mine.put("t", b"b" * 10)
    assert len(mine) == 2 and mine.bytes == 20
    for i in range(3):  # another connection fills the spool to mine's bound behind its back
        other.put("t", str(i).encode())
    assert len(mine) == 5
    with pytest.raises(SpoolFullError):
        mine.put("t", b"c")
    other.ack([item.seq for item in other.peek(2)])  # and empties some of it
    assert len(mine) == 3
    assert mine.put("t", b"x" * 900) > 0
    with pytest.raises(SpoolFullError):  # the bytes bound too: 3 + 900 held, 200 more won't fit in 1000
        mine.put("t", b"y" * 200)
    mine.ack([item.seq for item in mine.peek(100)])
    assert len(mine) == 0 and mine.bytes == 0 and len(other) == 4  # mine's removals wait for its next write
    mine.flush()
    assert len(other) == 0 and other.bytes == 0
    for n in range(1, 6):  # its own writes keep its count: puts and acks alike
        mine.put("t", b"z")
        assert len(mine) == n
    mine.close()
    other.close()


def test_spool_survives_a_killed_process(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    code = (
        "import os, sys; from edgekit.edge import Spool; s = Spool(sys.argv[1]);\n"
        "[s.put('t', str(i).encode()) for i in range(50)]; print('ok', flush=True); os.kill(os.getpid(), 9)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and proc.stdout.strip() == "ok"
    assert [int(i.payload) for i in Spool(path).peek(100)] == list(range(50))


def test_one_transaction_stores_many_each_refused_alone(tmp_path: Path) -> None:
    """put_many: one commit for the batch; a message that doesn't fit fails alone, in place, the rest are stored."""
    reject = Spool(tmp_path / "reject.db", max_items=4, max_message_bytes=8)
    reject.put("t", b"old")
    results = reject.put_many([("t", b"a"), ("t", b"x" * 9), ("t", b"b"), ("t", b"c"), ("t", b"d")])
    assert isinstance(results[1], SpoolFullError) and "max_message_bytes" in str(results[1])
    assert isinstance(results[4], SpoolFullError) and "is full (4 messages" in str(results[4])
    stored = [r for r in results if isinstance(r, int)]
    assert len(stored) == 3 and stored == sorted(stored)
    assert [i.payload for i in reject.peek()] == [b"old", b"a", b"b", b"c"] and reject.bytes == 6

    overwrite = Spool(tmp_path / "overwrite.db", max_items=3, on_full="overwrite_oldest")
    overwrite.put_many([("t", bytes([i])) for i in range(5)])  # the batch overwrites its own oldest
    assert [i.payload for i in overwrite.peek()] == [b"\x02", b"\x03", b"\x04"]
    assert overwrite.dropped == 2 and overwrite.bytes == 3 and len(overwrite) == 3


def test_removing_delivered_messages_leaves_the_spool_flushing_each_put(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    seqs = spool.put_many([("t", b"1"), ("t", b"2")])
    spool.ack([s for s in seqs if isinstance(s, int)][:1])  # done with synchronous=NORMAL: the next put's fsync covers it
    assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again for the puts
    assert [i.payload for i in spool.peek()] == [b"2"]
    spool.close()


def test_a_full_spool_rejects_or_overwrites_the_oldest(tmp_path: Path) -> None:
    reject = Spool(tmp_path / "reject.db", max_items=3)
    for i in range(3):
        reject.put("t", bytes([i]))
    with pytest.raises(SpoolFullError, match=r"is full \(3 messages, max_items 3\).*raise max_items"):
        reject.put("t", b"new")
    assert [i.payload for i in reject.peek()] == [b"\x00", b"\x01", b"\x02"]

    overwrite = Spool(tmp_path / "overwrite.db", max_items=3, on_full="overwrite_oldest")
    for i in range(5):
        overwrite.put("t", bytes([i]))
    assert [i.payload for i in overwrite.peek()] == [b"\x02", b"\x03", b"\x04"]
    assert overwrite.dropped == 2


def test_a_damaged_spool_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "spool.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EdgeError, match=r"spool '.*spool.db' cannot be opened.*move the damaged file away") as info:
        Spool(bad, on_damage="raise")
    assert exit_code_for(info.value) == 23


def _scribble(path: Path, offset: int, length: int = 512) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        f.write(bytes((i * 37) % 256 for i in range(length)))


@pytest.mark.parametrize("damage", ["not sqlite", "scattered"])
def test_a_damaged_spool_is_quarantined_counted_and_replaced(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "spool.db"
    if damage == "not sqlite":
        path.write_bytes(b"this is not sqlite" * 100)
    else:
        spool = Spool(path)
        for i in range(300):
            spool.put("t", f"message {i}".encode() * 20)
        spool.close()
        size = path.stat().st_size
        for offset in (size // 3, size // 2, 2 * size // 3):  # pages in the middle of the table, header intact
            _scribble(path, offset)
    fresh = Spool(path)
    assert fresh.quarantined_to is not None and fresh.quarantined_to.exists()  # kept for a post-mortem
    assert fresh.quarantined_to.name.startswith("spool.db.damaged-")
    assert fresh.quarantined == 1 and len(fresh) == 0 and fresh.bytes == 0
    assert [i.payload for i in fresh.peek()] == [] and fresh.put("t", b"after") >= 1
    fresh.close()
    assert Spool(path).quarantined == 1  # the count stays with the path


def test_a_spool_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    reject = Spool(tmp_path / "reject.db", max_bytes=250)
    for i in range(2):
        reject.put("t", bytes([i]) * 100)
    with pytest.raises(SpoolFullError, match=r"is full \(2 messages, 200 bytes; max_bytes 250\)"):
        reject.put("t", b"x" * 100)
    assert reject.bytes == 200 and len(reject) == 2
    with pytest.raises(SpoolFullError, match=r"message of 200000000 bytes for 't' is over the spool's max_message_bytes"):
        reject.put("t", b"\0" * 200_000_000)  # a 200 MB message: refused before anything is written
    reject.ack([s.seq for s in reject.peek(1)])
    assert reject.bytes == 100
    reject.put("t", b"y" * 100)

    overwrite = Spool(tmp_path / "overwrite.db", max_bytes=250, on_full="overwrite_oldest")
    for i in range(5):
        overwrite.put("t", bytes([i]) * 100)
    assert [i.payload[:1] for i in overwrite.peek()] == [b"\x03", b"\x04"]
    assert overwrite.dropped == 3 and overwrite.bytes == 200


# --------------------------------------------------------------------------- windows


def test_tumbling_windows_summarize_answers() -> None:
    clock = FakeClock(1000.0)
    windows = Tumbling(clock)
    windows.open.record(LOCAL, 1, 0.9, 2.0)
    assert not windows.due(10.0)
    clock.advance(4)
    windows.open.record(LOCAL, 1, 0.7, 4.0)
    windows.open.record(CLOUD, 0, 0.6, 50.0)
    windows.open.record(NONE, None, None, 60.0)
    assert not windows.due(10.0)
    clock.advance(7)  # past the window
    assert windows.due(10.0)
    closed = windows.close()
    windows.open.record(LOCAL, 2, 0.99, 1.0)
    assert closed is not None
    summary = json.loads(encode_summary(summarize(closed, run="r1")))
    assert summary["count"] == 4 and summary["classes"] == {"0": 1, "1": 2}
    assert summary["answeredBy"] == {"local": 2, "cloud": 1, "none": 1}
    assert summary["confidence"] == {"mean": round((0.9 + 0.7 + 0.6) / 3, 4), "min": 0.6, "max": 0.9}
    assert summary["windowStart"] == 1000.0 and summary["windowEnd"] == 1011.0
    assert summary["latencyMs"]["max"] == 60.0
    last = windows.close()
    assert last is not None and last.count == 1 and windows.close() is None


def test_confidence_of_probabilities_and_logits() -> None:
    label, conf = top_class(np.array([[0.1, 0.7, 0.2]], np.float32))
    assert label == 1 and conf == pytest.approx(0.7)
    label, conf = top_class(np.array([[2.0, 0.0, 0.0]]))
    assert label == 0 and conf == pytest.approx(np.exp(2) / (np.exp(2) + 2))
    assert top_class(np.array([3.0])) == (None, None)  # not a class vector: no answer
    assert top_class(np.array([[np.nan, 1.0, 0.0]])) == (None, None)  # nor is a NaN one (a summary holds finite numbers)
    assert top_class(np.array([1.0004, 0.0])) == (0, 1.0)  # a probability is at most 1, rounding or not


# --------------------------------------------------------------------------- the cloud side: a real HTTP server


@pytest.fixture
def mlp_model(tmp_path: Path) -> edgekit.runtime.LoadedModel:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    result = edgekit.compile(path, "x86_64", tmp_path / "build", pipeline="ort")
    return edgekit.load(result.artifact_dir)


@pytest.fixture
def cloud(mlp_model: edgekit.runtime.LoadedModel) -> Iterator[InferServer]:
    server = InferServer("big-model", mlp_model.predict)
    yield server
    server.close()


def test_fallback_speaks_the_open_inference_protocol(cloud: InferServer, mlp_model: edgekit.runtime.LoadedModel) -> None:
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    got = CloudFallback(cloud.url, "big-model").infer({"x": x})
    np.testing.assert_allclose(got[0], mlp_model.predict({"x": x})[0], rtol=1e-6)
    with pytest.raises(FallbackError, match=r"HTTP 404"):
        CloudFallback(cloud.url, "no-such-model").infer({"x": x})
    cloud.mode = "garbage"
    with pytest.raises(FallbackError, match="bad reply"):
        CloudFallback(cloud.url, "big-model").infer({"x": x})


def breaker_state(fallback: CloudFallback) -> str:
    return fallback.breaker.state


def test_breaker_opens_after_failures_and_recovers_half_open(cloud: InferServer) -> None:
    clock = FakeClock(1000.0)
    fallback = CloudFallback(cloud.url, "big-model", breaker=CircuitBreaker(3, reset_after_s=30, clock=clock))
    x = {"x": np.zeros((1, 8), np.float32)}
    cloud.mode = "error"
    for _ in range(3):
        with pytest.raises(FallbackError, match="HTTP 503"):
            fallback.infer(x)
    assert fallback.breaker.state == "open" and cloud.requests == 3
    with pytest.raises(FallbackUnavailable, match="circuit breaker is open"):
        fallback.infer(x)
    assert cloud.requests == 3  # no network call while open
    clock.advance(31)
    assert breaker_state(fallback) == "half-open"  # (a call: mypy would keep the attribute narrowed to "open")
    with pytest.raises(FallbackError):  # the one trial fails: open again
        fallback.infer(x)
    assert fallback.breaker.state == "open" and cloud.requests == 4 and fallback.breaker.opened == 2
    clock.advance(31)
    cloud.mode = "ok"
    fallback.infer(x)  # the trial succeeds: closed
    assert breaker_state(fallback) == "closed" and cloud.requests == 5


def test_unreachable_endpoint_is_a_fallback_error(tmp_path: Path) -> None:
    with pytest.raises(FallbackError, match="unreachable"):
        CloudFallback("http://127.0.0.1:9", "m", timeout_s=1).infer({"x": np.zeros((1, 2), np.float32)})
    with pytest.raises(EdgeError, match="must start with http"):
        CloudFallback("ftp://x", "m")


# --------------------------------------------------------------------------- local first, then cloud, never dropped


class _Model:
    """What the loop runs: ``predict`` and a manifest (a real artifact's, or one whose predict fails)."""

    def __init__(self, model: edgekit.runtime.LoadedModel, predict: Any = None) -> None:
        self.manifest = model.manifest
        self.predict = predict if predict is not None else model.predict


class _Once:
    """An input source of one reading."""

    def __init__(self, reading: Reading) -> None:
        self.reading, self.produced = reading, 0

    def take(self, now: float) -> Reading | None:
        if self.produced:
            return None
        self.produced += 1
        return self.reading


def _loop(tmp_path: Path, model: _Model, fallback: CloudFallback | None, min_confidence: float, x: Reading) -> InferenceLoop:
    options = LoopOptions(interval_s=0, window_s=3600, max_readings=1, topic="edgekit/dev-1", min_confidence=min_confidence)
    uplink = SpoolUplink(tmp_path / "spool.db")
    return InferenceLoop(model, options, uplink=uplink, thing="dev-1", component="c", fallback=fallback, source=_Once(x))


def test_low_confidence_goes_to_the_cloud_and_errors_too(
    tmp_path: Path, cloud: InferServer, mlp_model: edgekit.runtime.LoadedModel, caplog: pytest.LogCaptureFixture
) -> None:
    x = {"x": np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)}
    top = top_class(mlp_model.predict(x)[-1])
    assert top[0] is not None

    async def one(loop: InferenceLoop) -> tuple[int, int, int]:
        await loop._batch(1)
        return loop.windows.open.answered[LOCAL], loop.windows.open.answered[CLOUD], loop.windows.open.answered[NONE]

    confident = _loop(tmp_path / "a", _Model(mlp_model), CloudFallback(cloud.url, "big-model"), 0.0, x)
    assert asyncio.run(one(confident)) == (1, 0, 0) and cloud.requests == 0
    unsure = _loop(tmp_path / "b", _Model(mlp_model), CloudFallback(cloud.url, "big-model"), 1.0, x)
    assert asyncio.run(one(unsure)) == (0, 1, 0) and cloud.requests == 1 and unsure.windows.open.classes == {top[0]: 1}

    def broken(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise InferenceError("input 'x' has shape [1, 7]; the model takes [1, 8]")

    failing = _loop(tmp_path / "c", _Model(mlp_model, broken), CloudFallback(cloud.url, "big-model"), 0.0, x)
    assert asyncio.run(one(failing)) == (0, 1, 0) and failing.windows.open.local_errors == 1
    assert "shape" in caplog.text  # the local model's error is logged when it starts failing


def test_a_reading_nobody_answers_is_spooled_not_dropped(
    tmp_path: Path, cloud: InferServer, mlp_model: edgekit.runtime.LoadedModel
) -> None:
    def broken(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        raise InferenceError("the accelerator went away")

    cloud.mode = "error"
    x = {"x": np.arange(8, dtype=np.float32).reshape(1, 8)}
    loop = _loop(tmp_path, _Model(mlp_model, broken), CloudFallback(cloud.url, "big-model"), 0.5, x)
    final = asyncio.run(loop.run())  # one reading, then the window closes and both messages go to the spool
    assert loop.answered == {"local": 0, "cloud": 0, "none": 1} and final.unanswered == 1
    spool = Spool(tmp_path / "spool.db")
    item, summary_item = spool.peek()
    assert item.topic == "edgekit/dev-1/unanswered"
    with np.load(io.BytesIO(item.payload)) as saved:
        np.testing.assert_array_equal(saved["x"][0], x["x"])  # stacked: one row per unanswered reading
        (errors,) = json.loads(str(saved["__errors__"]))
        assert "accelerator" in errors["local"] and "HTTP 503" in errors["fallback"]
        assert json.loads(str(saved["__window__"]))["window"] == 1
    summary = json.loads(summary_item.payload)
    assert summary["answeredBy"] == {"local": 0, "cloud": 0, "none": 1}
    assert summary["fallback"]["errors"] == {"http": 1}


# --------------------------------------------------------------------------- the spool over a real broker


@requires("mosquitto")
def test_spool_drains_in_order_after_the_broker_comes_back(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    with MosquittoBroker(tmp_path / "broker") as broker:

        async def scenario() -> None:
            async with await connect(broker.url, "consumer", clean_start=False) as consumer:
                await consumer.subscribe("edgekit/dev-1/#", qos=1)
                device = await connect(broker.url, "dev-1", clean_start=True, reconnect=Backoff(initial=0.05, maximum=0.2))
                publisher = SpoolPublisher(spool, device, timeout_s=2)
                for i in range(3):
                    spool.put("edgekit/dev-1/aggregates", json.dumps({"windowStart": i}).encode())
                assert await publisher.drain() == 3 and len(spool) == 0
                spool.put("edgekit/dev-1/aggregates", json.dumps({"windowStart": -1}).encode())
                both = await asyncio.gather(publisher.drain(), publisher.drain())  # concurrent drains: sent once
                assert sorted(both) == [0, 1]

                broker.stop()  # the device is offline: what it produces stays in the spool
                await eventually(lambda: not device.connected, 10, "the device offline")
                for i in range(3, 8):
                    spool.put("edgekit/dev-1/aggregates", json.dumps({"windowStart": i}).encode())
                assert await publisher.drain() == 0 and len(spool) == 5

                broker.start()
                await eventually(lambda: device.connected and consumer.connected, 10, "both back online")
                assert await publisher.drain() == 5 and len(spool) == 0
                got = [json.loads((await consumer.get_message(timeout=10)).payload)["windowStart"] for _ in range(9)]
                assert got == [0, 1, 2, -1, 3, 4, 5, 6, 7]  # all of them, once, in order
                with pytest.raises(MqttTimeoutError):
                    await consumer.get_message(timeout=0.3)
                await device.disconnect()

        asyncio.run(scenario())


@requires("mosquitto")
def test_a_message_the_broker_refuses_stays_in_the_spool(tmp_path: Path) -> None:
    from edgekit.mqtt.tls import TlsMaterial

    tls = TlsMaterial.create(tmp_path / "tls", ["dev-1", "dev-2"])
    spool = Spool(tmp_path / "spool.db")
    mine = spool.put("devices/dev-1/aggregates", b'{"windowStart": 1}')
    theirs = spool.put("devices/dev-2/aggregates", b'{"windowStart": 2}')  # the ACL lets dev-1 write only its own
    with MosquittoBroker(tmp_path / "broker", tls=tls, acl=True) as broker:

        async def scenario() -> None:
            async with await connect(broker.url, "dev-1", tls=tls.device("dev-1"), clean_start=True) as device:
                publisher = SpoolPublisher(spool, device, timeout_s=5)
                assert await publisher.drain() == 1
                assert [i.seq for i in spool.peek()] == [theirs] and mine < theirs
                assert "reason code 135" in publisher.refused
                assert await publisher.drain() == 0  # it is not skipped on the next try either

        asyncio.run(scenario())


@requires("mosquitto")
def test_a_refused_head_does_not_send_the_messages_behind_it_again(tmp_path: Path) -> None:
    """The broker refuses the oldest message on every try: each good one behind it still goes out once."""
    from edgekit.mqtt.tls import TlsMaterial

    tls = TlsMaterial.create(tmp_path / "tls", ["dev-1", "dev-2"])
    spool = Spool(tmp_path / "spool.db")
    refused = spool.put("devices/dev-2/aggregates", b"theirs")  # the ACL lets dev-1 write only its own
    for n in range(3):
        spool.put("devices/dev-1/aggregates", f"good-{n}".encode())
    with MosquittoBroker(tmp_path / "broker", tls=tls, acl=True) as broker:

        async def scenario() -> None:
            async with (
                await connect(broker.service_url, "edgekit-fleet-service", tls=tls.service, clean_start=True) as listener,
                await connect(broker.url, "dev-1", tls=tls.device("dev-1"), clean_start=True) as device,
            ):
                await listener.subscribe("devices/dev-1/#", 1)
                publisher = SpoolPublisher(spool, device, timeout_s=5)
                delivered = [await publisher.drain() for _ in range(4)]  # as the uplink tries it again and again
                assert delivered == [3, 0, 0, 0] and [i.seq for i in spool.peek()] == [refused]
                spool.put("devices/dev-1/aggregates", b"later")
                assert await publisher.drain() == 0 and len(spool) == 2  # behind the refused head: waits, in order
                got: list[bytes] = []
                with contextlib.suppress(MqttTimeoutError):
                    while True:
                        got.append((await listener.get_message(timeout=1.0)).payload)
                assert got == [b"good-0", b"good-1", b"good-2"], got  # each once

        asyncio.run(scenario())


@requires("mosquitto")
def test_a_message_that_can_never_be_sent_is_a_counted_rejection_not_a_stalled_drain(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.put("devices/dev-1/a", b"1")
    spool.put("devices/dev-1/#", b"wildcard")  # no broker takes a wildcard topic in a PUBLISH
    spool.put("devices/dev-1/a", b"3")
    with MosquittoBroker(tmp_path / "broker") as broker:

        async def scenario() -> None:
            async with await connect(broker.url, "dev-1", clean_start=True) as device:
                publisher = SpoolPublisher(spool, device, timeout_s=5)
                assert await publisher.drain() == 2  # the two good ones, in order
                assert publisher.rejected == 1 and len(spool) == 0

        asyncio.run(scenario())
