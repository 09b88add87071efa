"""Batched inference across simulated devices: the loops one shared tick wakes run their readings as one model call
(:class:`edgekit.sim.inference.TickBatcher`), and each device gets exactly what its own call would have given."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from helpers import QUICK, make_mlp

import edgekit
from edgekit.edge.loop import InferenceLoop, LoopOptions
from edgekit.edge.sources import Reading
from edgekit.sim.inference import ModelCache, SharedTick, TickBatcher


def _compiled(work: Path, batch: int | str) -> Any:
    work.mkdir(parents=True, exist_ok=True)
    onnx.save(make_mlp(batch=batch, seed=3), str(work / "mlp.onnx"))
    shapes = {"x": [1, 8]} if isinstance(batch, str) else None  # a dynamic batch axis, measured at 1 row
    built = edgekit.compile(work / "mlp.onnx", "x86_64", work / "c", pipeline=QUICK, input_shapes=shapes)
    return edgekit.load(built.artifact_dir, threads=1)


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return _compiled(tmp_path_factory.mktemp("mlp"), 1)


class _Seen:
    """A batcher's ``infer``, recording what each device handed it and got back."""

    def __init__(self, batcher: TickBatcher, log: list[tuple[Reading, list[np.ndarray]]]) -> None:
        self.batcher = batcher
        self.log = log

    async def infer(self, readings: list[Reading]) -> tuple[list[list[np.ndarray]], float] | None:
        answered = await self.batcher.infer(readings)
        assert answered is not None
        self.log.extend(zip(readings, answered[0], strict=True))
        return answered


def _fleet(
    model: Any, folder: Path, devices: int, readings: int, batcher: TickBatcher | None
) -> tuple[list[InferenceLoop], dict[str, list[Any]]]:
    seen: dict[str, list[Any]] = {f"d{i:02d}": [] for i in range(devices)}

    async def scenario() -> list[InferenceLoop]:
        tick = SharedTick(0.05)
        loops = []
        for thing in seen:
            options = LoopOptions(
                source="synthetic:ood=0.2", interval_s=0.05, window_s=0.1, max_readings=readings, tick_s=0.05,
                output_path=str(folder / f"{thing}.jsonl"),
            )  # fmt: skip
            infer = _Seen(batcher, seen[thing]).infer if batcher is not None else None
            loops.append(InferenceLoop(model, options, thing=thing, component="c", sleep=tick.sleep, infer=infer))
        await asyncio.wait_for(asyncio.gather(*(loop.run() for loop in loops)), 60)
        return loops

    return asyncio.run(scenario()), seen


def _classes(path: Path) -> tuple[int, Counter[str]]:
    count, classes = 0, Counter[str]()
    for line in path.read_text().splitlines():
        summary = json.loads(line)
        count += summary["count"]
        classes.update({str(k): int(v) for k, v in summary.get("classes", {}).items()})
    return count, classes


@pytest.mark.parametrize("batch", [1, "N"], ids=["batch-1", "dynamic-batch"])
def test_one_call_a_tick_answers_every_device_with_its_own_rows_bit_for_bit(model: Any, batch: int | str, tmp_path: Path) -> None:
    model = model if batch == 1 else _compiled(tmp_path / "dyn", batch)
    devices, readings = 30, 8
    batcher = TickBatcher(model)
    assert batcher.batched, batcher.why_not
    (tmp_path / "batched").mkdir()
    loops, seen = _fleet(model, tmp_path / "batched", devices, readings, batcher)

    for loop in loops:  # exact counts per device: every reading taken once, answered locally, in one window
        assert loop.readings == readings and loop.source.produced == readings
        assert loop.answered == {"local": readings, "cloud": 0, "none": 0}
        assert len(seen[loop.thing]) == readings
    # each device's rows are what its own call gives, to the bit
    for log in seen.values():
        for reading, answer in log:
            own = model.predict(reading)
            assert len(answer) == len(own)
            for a, b in zip(answer, own, strict=True):
                assert a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b)
    # the devices shared calls: every reading went through a batched call, far fewer calls than readings
    assert batcher.rows == devices * readings and batcher.unbatched == 0
    assert batcher.calls * 5 <= batcher.rows
    # each device still ran its own stream (seeded by its thing name): no two alike
    streams = {np.concatenate([r["x"] for r, _ in log]).tobytes() for log in seen.values()}
    assert len(streams) == devices

    # the same fleet without the batcher: every device's windows hold the same readings and the same classes
    (tmp_path / "alone").mkdir()
    alone, _ = _fleet(model, tmp_path / "alone", devices, readings, None)
    assert [loop.readings for loop in alone] == [loop.readings for loop in loops]
    for thing in seen:
        batched, own = _classes(tmp_path / "batched" / f"{thing}.jsonl"), _classes(tmp_path / "alone" / f"{thing}.jsonl")
        assert batched == own and batched[0] == readings


def test_what_cannot_be_batched_runs_one_call_per_reading(model: Any, tmp_path: Path) -> None:
    fixed_two = TickBatcher(_compiled(tmp_path, 2))  # a batch axis of 2: a device's reading is two rows
    assert not fixed_two.batched and "batch axis" in fixed_two.why_not

    batcher = TickBatcher(model)
    wrong = {"x": np.zeros((1, 8), np.float64)}  # not the input's dtype: its loop's own predict says so (or casts)
    assert asyncio.run(batcher.infer([wrong])) is None
    assert batcher.unbatched == 1 and batcher.calls == 0

    async def failing() -> Any:  # a call that fails hands every reading back to its loop
        batcher._names = ["no-such-output"]
        return await asyncio.gather(
            batcher.infer([{"x": np.ones((1, 8), np.float32)}]), batcher.infer([{"x": np.ones((1, 8), np.float32)}])
        )

    assert asyncio.run(failing()) == [None, None]
    assert batcher.unbatched == 3

    off = ModelCache(batch=False)
    assert off.batcher(model) is None
    on = ModelCache()
    assert on.batcher(model) is on.batcher(model)  # one batcher per model, shared by its devices
