"""The inference loop and its input sources, driven by a fake clock and a tiny generated model."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import QUICK, make_mlp

import edgekit
from edgekit.clock import FakeClock
from edgekit.edge.component import parse_args
from edgekit.edge.errors import EdgeError
from edgekit.edge.loop import InferenceLoop, LoopOptions
from edgekit.edge.sources import FileSource, MqttSource, Scenario, SyntheticSource, encode_reading, parse_source
from edgekit.edge.uplink import SpoolUplink
from edgekit.edge.windows import top_class
from edgekit.errors import InferenceError


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import onnx

    work = tmp_path_factory.mktemp("mlp")
    onnx.save(make_mlp(), str(work / "mlp.onnx"))
    return edgekit.load(edgekit.compile(work / "mlp.onnx", "x86_64", work / "c", pipeline=QUICK).artifact_dir)


def test_sources_parse_and_refuse_what_they_cannot_read(model: Any, tmp_path: Path) -> None:
    specs = model.manifest.inputs
    synthetic = parse_source("synthetic:classes=3,ood=0.5,seed=4", specs)
    assert isinstance(synthetic, SyntheticSource) and synthetic.scenario == Scenario(classes=3, ood=0.5, seed=4)
    reading = synthetic.take(0.0)
    assert reading is not None and reading["x"].shape == (1, 8) and reading["x"].dtype == np.float32
    np.save(tmp_path / "rows.npy", np.arange(24, dtype=np.float32).reshape(3, 8))
    rows = parse_source(f"file:{tmp_path / 'rows.npy'}", specs)
    assert isinstance(rows, FileSource)
    taken = [rows.take(0.0) for _ in range(4)]
    assert [float(r["x"][0, 0]) for r in taken if r is not None] == [0.0, 8.0, 16.0, 0.0]  # one per row, cycled
    for bad, message in [
        ("synthetic:ood=2", "0 <= ood <= 1"),
        ("synthetic:size=3", "KEY=VALUE"),
        ("kafka:x", "is not synthetic"),
    ]:
        with pytest.raises(EdgeError, match=message):
            parse_source(bad, specs)
    np.save(tmp_path / "wrong.npy", np.zeros((3, 5), np.float32))
    with pytest.raises(EdgeError, match=r"has shape \[3, 5\]"):
        parse_source(f"file:{tmp_path / 'wrong.npy'}", specs)
    mqtt = MqttSource("devices/d/sensor", specs, max_waiting=2)
    for i in range(3):
        mqtt.put(encode_reading({"x": np.full((1, 8), i, np.float32)}))
    mqtt.put(b"not a reading")
    got = mqtt.take(0.0)
    assert got is not None and float(got["x"][0, 0]) == 1.0 and mqtt.dropped == 1 and mqtt.malformed == 1


def test_the_out_of_distribution_share_is_what_the_model_is_unsure_about(model: Any) -> None:
    source = SyntheticSource(model.manifest.inputs, Scenario(ood=1.0, amplitude=5.0))
    unsure = [top_class(model.predict(source.take(0.0))[-1])[1] for _ in range(50)]
    sure = SyntheticSource(model.manifest.inputs, Scenario(ood=0.0, amplitude=20.0))
    confident = [top_class(model.predict(sure.take(0.0))[-1])[1] for _ in range(50)]
    assert float(np.mean(unsure)) < float(np.mean(confident))  # type: ignore[arg-type]


def test_windows_follow_the_clock_and_every_reading_is_in_exactly_one(model: Any, tmp_path: Path) -> None:
    clock = FakeClock()
    uplink = SpoolUplink(tmp_path / "spool.db")
    options = LoopOptions(interval_s=0, window_s=10.0, topic="devices/d/inference")
    loop = InferenceLoop(model, options, uplink=uplink, thing="d", component="c", clock=clock)

    async def scenario() -> None:
        task = asyncio.get_running_loop().create_task(loop.run())
        await asyncio.sleep(0.05)
        clock.advance(10.0)  # the first window closes with the next batch
        await asyncio.sleep(0.05)
        point = await loop.checkpoint()
        assert point.window == 2 and point.readings == sum(w["count"] for w in summaries())
        loop.stop()
        final = await task
        assert final.readings == sum(w["count"] for w in summaries()) and final.unsent == 0

    def summaries() -> list[dict[str, Any]]:
        return [json.loads(i.payload) for i in uplink.spool.peek(1000)]

    asyncio.run(scenario())
    windows = summaries()
    assert [w["window"] for w in windows] == list(range(1, len(windows) + 1))
    assert {w["run"] for w in windows} == {loop.run_id} and windows[0]["windowEnd"] - windows[0]["windowStart"] >= 10.0
    assert all(w["answeredBy"]["local"] == w["count"] for w in windows)


class _Broken:
    def __init__(self, model: Any) -> None:
        self.model, self.manifest, self.failing, self.calls = model, model.manifest, True, 0

    def predict(self, inputs: Any) -> list[np.ndarray]:
        self.calls += 1
        if self.failing:
            raise InferenceError("broken")
        return list(self.model.predict(inputs))


def test_a_failing_local_model_is_skipped_until_its_health_check_then_used_again(model: Any) -> None:
    clock = FakeClock()
    broken = _Broken(model)
    loop = InferenceLoop(broken, LoopOptions(interval_s=0, max_readings=20, window_s=0, health_interval_s=5.0), clock=clock)

    async def scenario() -> None:
        await loop._batch(10)
        assert broken.calls == 3  # 3 failures open its breaker: the other 7 readings don't try it
        broken.failing = False
        await loop._batch(5)
        assert broken.calls == 3
        clock.advance(5.0)  # one health interval later one reading tries it, and it answers again
        await loop._batch(5)
        assert broken.calls == 8 and loop._healthy

    asyncio.run(scenario())
    assert loop.answered == {"local": 5, "cloud": 0, "none": 15}


def test_component_arguments_are_parsed_once_for_both_modes() -> None:
    model_dir, options = parse_args(["/m", "--input-source", "file:/x.npy", "--window-seconds", "2", "--min-confidence", "0.5"])
    assert model_dir == Path("/m") and options.source == "file:/x.npy" and options.window_s == 2.0
    with pytest.raises(EdgeError, match="min-confidence"):
        parse_args(["/m", "--min-confidence", "2"])
    with pytest.raises(EdgeError, match="arguments"):
        parse_args(["/m", "--window-seconds", "soon"])
