"""The simulator's shared tick: one timer wakes every in-process inference loop of a process, and each loop still
takes exactly its own readings, from its own stream; window percentiles without numpy, the same floats."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from helpers import QUICK, make_mlp
from hypothesis import given, settings
from hypothesis import strategies as st

import edgekit
from edgekit.edge.errors import EdgeError
from edgekit.edge.loop import InferenceLoop, LoopOptions
from edgekit.edge.windows import _linear, percentiles
from edgekit.sim.inference import SharedTick


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import onnx

    work = tmp_path_factory.mktemp("mlp")
    onnx.save(make_mlp(), str(work / "mlp.onnx"))
    return edgekit.load(edgekit.compile(work / "mlp.onnx", "x86_64", work / "c", pipeline=QUICK).artifact_dir)


class _Recording:
    """The model, recording each device's inputs (to tell their streams apart)."""

    def __init__(self, model: Any, seen: list[np.ndarray]) -> None:
        self.manifest = model.manifest
        self._model = model
        self.seen = seen

    def predict(self, inputs: Any) -> list[np.ndarray]:
        self.seen.append(np.array(inputs["x"]))
        out: list[np.ndarray] = self._model.predict(inputs)
        return out


def test_one_timer_a_tick_wakes_every_loop_and_each_takes_exactly_its_readings(model: Any) -> None:
    devices, readings = 40, 6
    seen: dict[str, list[np.ndarray]] = {f"d{i:02d}": [] for i in range(devices)}

    async def scenario() -> tuple[SharedTick, list[InferenceLoop]]:
        tick = SharedTick(0.05)
        options = LoopOptions(source="synthetic:ood=0.1", interval_s=0.05, window_s=0.1, max_readings=readings, tick_s=0.05)
        loops = [
            InferenceLoop(_Recording(model, seen[thing]), options, thing=thing, component="c", sleep=tick.sleep) for thing in seen
        ]
        await asyncio.wait_for(asyncio.gather(*(loop.run() for loop in loops)), 30)
        return tick, loops

    tick, loops = asyncio.run(scenario())
    for loop in loops:  # exact counts per device: every reading due was taken once, in exactly one window
        assert loop.readings == readings and loop.source.produced == readings
        assert sum(loop.answered.values()) == readings
        assert len(seen[loop.thing]) == readings
    # the devices slept together: far fewer timers than wake-ups (one timer per tick, not per device)
    assert tick.wakeups >= devices
    assert tick.timers * 5 <= tick.wakeups
    assert tick.sleeping == 0
    # each device ran the model on its own stream (seeded by its thing name): no two alike
    streams = {thing: np.concatenate(inputs).tobytes() for thing, inputs in seen.items()}
    assert len(set(streams.values())) == devices


def test_a_sleep_ends_at_the_first_tick_after_its_deadline_and_a_cancelled_one_is_skipped() -> None:
    async def scenario() -> tuple[list[float], SharedTick]:
        tick = SharedTick(0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        ended: list[float] = []

        async def sleeper(delay: float) -> None:
            await tick.sleep(delay)
            ended.append(loop.time() - started)

        cancelled = loop.create_task(tick.sleep(0.12))
        await asyncio.sleep(0)
        cancelled.cancel()
        await asyncio.gather(*(sleeper(d) for d in (0.0, 0.03, 0.12)))
        assert cancelled.cancelled()
        return ended, tick

    ended, tick = asyncio.run(scenario())
    assert min(ended) >= 0.0 and max(ended) >= 0.12  # never early
    assert max(ended) < 0.12 + 0.05 + 0.5  # ends at the next tick (with room for a busy machine)
    assert tick.wakeups == 3  # the cancelled sleeper was not woken
    with pytest.raises(EdgeError, match="positive"):
        SharedTick(0.0)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(min_value=0.0, max_value=1e5, allow_nan=False), min_size=1, max_size=60),
    st.lists(st.sampled_from([50, 90, 99]), min_size=1, max_size=3, unique=True),
    st.integers(min_value=0, max_value=100),
)
def test_window_percentiles_are_numpys_to_the_bit(values: list[float], qs: list[int], q: int) -> None:
    arr = np.asarray(values)
    got = percentiles(values, qs).model_dump(exclude_none=True)
    assert got == {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs} | {"max": round(float(arr.max()), 3)}
    assert _linear(sorted(values), q) == float(np.percentile(arr, q))  # unrounded: the same float
