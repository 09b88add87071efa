"""bench/edge (the inference loop): one component's readings/s beside a bare ``predict`` loop, and the cloud fallback
taking over from a failing local model.

See docs/benchmarks.md (edge runtime: the inference loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.edge.errors import EdgeError
from edgekit.edge.loop import InferenceLoop, LoopOptions
from edgekit.edge.uplink import SpoolUplink
from edgekit.errors import InferenceError

__all__ = ["bench_failover", "bench_loop", "mlp_artifact"]


def mlp_artifact(work: Path) -> Path:
    """The benchmark MLP (64→128→64→8, bench/compile's), built with onnx.helper and compiled for ONNX Runtime."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.compiler.pipeline import Pipeline

    rng = np.random.default_rng(0)
    dims, inits, nodes, x = [64, 128, 64, 8], [], [], "x"
    for i in range(3):
        scale = 1 / np.sqrt(dims[i])
        inits += [
            numpy_helper.from_array((rng.standard_normal((dims[i], dims[i + 1])) * scale).astype(np.float32), f"w{i}"),
            numpy_helper.from_array(np.zeros(dims[i + 1], np.float32), f"b{i}"),
        ]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"])]
        x = f"a{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Softmax", [x], ["p"], axis=1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(work / "mlp.onnx"))
    pipeline = Pipeline.model_validate(
        {
            "name": "bench",
            "candidates": [{"name": "ort", "backend": "onnxruntime"}],
            "measure": {"samples": 2, "warmup": 0, "repeat": 2},
        }
    )
    return edgekit.compile(work / "mlp.onnx", "x86_64", work / "compiled", pipeline=pipeline).artifact_dir


def bench_loop(work: Path, n: int, rounds: int = 5, artifact: Path | None = None) -> dict[str, float]:
    """Readings/s of a bare predict loop and of the inference loop (synthetic source, 1 s windows, a spool uplink),
    interleaved rounds on one core (the process is pinned to it; ONNX Runtime gets one thread)."""
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[-1]})
    model = edgekit.load(artifact or mlp_artifact(work), threads=1)
    x = {"x": np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)}
    bare, loop_rates, uplink = [], [], []
    for r in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            model.predict(x)
        bare.append(n / (time.perf_counter() - t0))
        spool = SpoolUplink(work / f"uplink-{r}.db")
        options = LoopOptions(interval_s=0, max_readings=n, window_s=1.0, topic="devices/bench/inference")
        loop = InferenceLoop(model, options, uplink=spool, thing="bench", component="bench")
        t0 = time.perf_counter()
        asyncio.run(loop.run())
        wall = time.perf_counter() - t0
        loop_rates.append(n / wall)
        uplink.append(len(spool.spool) / wall)
        spool.spool.close()
    b, lo = statistics.median(bare), statistics.median(loop_rates)
    return {"bare_per_s": b, "loop_per_s": lo, "ratio": lo / b, "uplink_per_s": statistics.median(uplink)}


class _Flaky:
    """The model, with a switch that makes every predict fail (as a broken accelerator or a bad artifact would)."""

    def __init__(self, model: Any) -> None:
        self.model, self.manifest, self.failing = model, model.manifest, False
        self.local_ok_at: list[float] = []

    def predict(self, inputs: Any) -> list[np.ndarray]:
        if self.failing:
            raise InferenceError("the local model is failing (benchmark switch)")
        out = self.model.predict(inputs)
        self.local_ok_at.append(time.monotonic())
        return out


def bench_failover(work: Path, url: str, *, rate: float = 200.0, health_s: float = 1.0) -> dict[str, float]:
    """The local model fails for 3 s, then recovers: the cloud answers' latency (p50/p99) meanwhile, and how long
    after the recovery the loop answers locally again (at most one health interval)."""
    model = _Flaky(edgekit.load(work / "compiled" / "mlp-x86_64", threads=1))
    options = LoopOptions(interval_s=1 / rate, window_s=1.0, fallback_url=url, fallback_model="m", health_interval_s=health_s)

    async def scenario() -> dict[str, float]:
        loop = InferenceLoop(model, options)
        task = asyncio.get_running_loop().create_task(loop.run())
        await asyncio.sleep(1.0)
        model.failing = True
        await asyncio.sleep(3.0)
        model.failing = False
        recovered = time.monotonic()
        await asyncio.sleep(health_s * 2 + 0.5)
        loop.stop()
        await task
        back = next((t for t in model.local_ok_at if t >= recovered), float("nan"))
        ms = np.asarray(loop.stats.cloud_ms)
        if not ms.size:
            raise EdgeError("no cloud answers: is the fallback server up?")
        return {
            "cloud_answers": float(ms.size),
            "cloud_p50_ms": float(np.percentile(ms, 50)),
            "cloud_p99_ms": float(np.percentile(ms, 99)),
            "back_to_local_s": back - recovered,
            "health_s": health_s,
            "errors": float(sum(loop.stats.fallback_errors.values())),
        }

    with contextlib.redirect_stdout(None):  # the loop prints its summaries when it has no uplink
        return asyncio.run(scenario())
