"""The tuning goal of bench/compile (``--tuning-goal``): tuned TVM against ONNX Runtime on a *trained* digits CNN.

    python -m bench.compile --tuning-goal [--models trained-cnn] [--tune-minutes 10] [--target x86_64_host] [--rounds 10] [--repeat 50] [--json out.json]

``--models trained-cnn`` runs the goal on the benchmark's trained 3×32×32 CNN (:mod:`bench.trained`'s cached run,
its 797 held-out labelled digits), the model the optimize benchmark ships; by default a smaller digits CNN: a small CNN is trained here in seconds (scikit-learn's digits, 8×8 upscaled to 16×16, torch, a few epochs; 40 % held
out with its labels) and saved as TorchScript. Then, into a fresh tuning database:

1. compile it with ONNX Runtime, TVM and TVM tuned for at most ``--tune-minutes`` (the default pipeline plus
   ``--tune-minutes``): the compile measures the three side by side, in turns, on the held-out labelled digits;
2. compile it again the same way (no artifact cache): the database is reused, so nothing is tuned (0 trials) —
   the goal is under a minute;
3. time the ONNX Runtime artifact and the tuned TVM artifact once more in this benchmark's own interleaved rounds,
   with the same number of threads each (TVM's: ``$TVM_NUM_THREADS`` or edgekit's default, one per physical core;
   ORT's intra-op threads set to it), neither pinned;
4. take one call apart, in the same rounds: edgekit's ``predict`` against the bare backend call (ORT's
   ``session.run``, and with IOBinding; TVM's VM ``main`` on the staged input, its graph compiled to native code and
   interpreted as bytecode), ORT as its own project runs it (all graph optimizations at load, default threads), and
   TVM's kernel time alone as MetaSchedule estimates it (ORT's profiler adds more than the kernels take here, so
   ORT has no such figure).

The target is this host's own CPU (``x86_64_host``) unless ``--target`` says otherwise: the goal is "on this machine",
and ONNX Runtime picks its kernels for the CPU it runs on (AVX2 here) whatever the profile, while TVM compiles for the
profile's CPU — the portable ``x86_64`` profile is x86-64-v2 (SSE4.2, no AVX), a different question.

Goals (issue 22): tuned TVM ≤ 1.0× ORT within 10 minutes of tuning; the second compile under a minute.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.compiler import CompileResult
from edgekit.compiler.pipeline import load_pipeline

SEED = 0
SIDE = 16  # the digits' 8×8 upscaled: enough for two conv + pool stages


def train_digits_cnn(work: Path, epochs: int = 8) -> tuple[Path, dict[str, np.ndarray], float]:
    """A trained digits CNN as TorchScript, its held-out labelled samples and its held-out top-1 (percent)."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from torch import nn

    torch.manual_seed(SEED)
    x, y = load_digits(return_X_y=True)
    images = (x.reshape(-1, 1, 8, 8) / 16.0).astype(np.float32)
    images = np.kron(images, np.ones((1, 1, SIDE // 8, SIDE // 8), np.float32))  # nearest-neighbour upscale
    x_train, x_test, y_train, y_test = train_test_split(images, y, test_size=0.4, random_state=SEED, stratify=y)
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * (SIDE // 4) ** 2, 64), nn.ReLU(), nn.Linear(64, 10),
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train).long()
    rng = np.random.default_rng(SEED)
    for _ in range(epochs):
        order = rng.permutation(len(xt))
        for i in range(0, len(order), 64):
            idx = torch.from_numpy(order[i : i + 64])
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        top1 = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean() * 100)
        path = work / "digits_cnn.pt"
        torch.jit.trace(model, torch.from_numpy(x_test[:1])).save(str(path))  # type: ignore[no-untyped-call]
    return path, {"input": x_test, "labels": y_test}, top1


GOAL_MODELS = ("digits-cnn", "trained-cnn")


def goal_model(name: str, work: Path, say: Callable[[str], None]) -> tuple[Path, dict[str, np.ndarray], float, list[int], str]:
    """(TorchScript, held-out labelled samples, held-out top-1 in percent, input shape, description) of ``name``."""
    if name == "trained-cnn":
        import torch

        from bench.trained import trained

        t = trained("cnn", say=say)
        path = work / "trained_cnn.pt"
        with torch.no_grad():
            torch.jit.trace(t.module, torch.from_numpy(t.x[:1])).save(str(path))  # type: ignore[no-untyped-call]
        return path, {"input": t.x, "labels": t.y}, 100 * t.top1, list(t.shape), f"{t.description} (bench/trained.py)"
    path, samples, top1 = train_digits_cnn(work)
    return path, samples, top1, [1, 1, SIDE, SIDE], "digits CNN (conv16-conv32-fc64-fc10, 16×16), trained here"


def _compile(model: Path, shape: list[int], target: str, out: Path, minutes: float, database: Path,
             samples: dict[str, np.ndarray], say: Callable[[str], None]) -> tuple[CompileResult, float]:  # fmt: skip
    pipe = load_pipeline("default").with_tuning(minutes=minutes, database=database)
    t0 = time.perf_counter()
    result = edgekit.compile(
        model, target, out, pipeline=pipe, input_shapes={"input": shape}, samples=samples,
        use_cache=False, progress=say, name=model.stem,
    )  # fmt: skip
    return result, time.perf_counter() - t0


def _candidates(result: CompileResult) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for c in result.manifest.candidates:
        m = c.measured
        out[c.name] = {
            "status": c.status,
            "ms": m.latency.median_ms if m else None,
            "top1": m.accuracy.top1_accuracy if m else None,
            "reason": c.reason,
            "tuning": c.tuning,
        }
    return out


def run_goal(
    target: str,
    minutes: float,
    rounds: int,
    repeat: int,
    work: Path,
    say: Callable[[str], None],
    interleaved: Callable[[dict[str, Callable[[], object]], int, int], dict[str, list[float]]],
    model_name: str = "digits-cnn",
) -> dict[str, Any]:
    """Train, compile twice into one fresh database, time ORT against tuned TVM; the figures as a dict."""
    threads = _threads_alike()  # before anything runs TVM: its pool reads $TVM_NUM_THREADS once, when it starts
    t0 = time.perf_counter()
    model, samples, top1, shape, description = goal_model(model_name, work, say)
    trained_s = time.perf_counter() - t0
    say(f"[tuning goal] {model_name} ready in {trained_s:.1f} s: {top1:.1f} % top-1 on {len(samples['labels'])} held-out digits")
    database = work / "tuning-db"
    database.mkdir()
    first, first_s = _compile(model, shape, target, work / "first", minutes, database, samples, say)
    second, second_s = _compile(model, shape, target, work / "second", minutes, database, samples, say)
    tuned_first = _tuning(first)
    tuned_second = _tuning(second)
    # this benchmark's own rounds: the ONNX Runtime artifact and the tuned TVM artifact (the database applied)
    ort_art = edgekit.compile(model, target, work / "ort", pipeline="ort", input_shapes={"input": shape},
                              use_cache=False, name="ort")  # fmt: skip
    tvm_pipe = load_pipeline("tvm").with_tuning(0, database=database)
    tvm_pipe = tvm_pipe.model_copy(update={"candidates": [tvm_pipe.candidates[-1]]})
    tvm_art = edgekit.compile(model, target, work / "tvm", pipeline=tvm_pipe, input_shapes={"input": shape},
                              use_cache=False, name="tvm")  # fmt: skip
    feed = {"input": samples["input"][:1]}
    ort_model, tvm_model = edgekit.load(ort_art.artifact_dir, threads=threads), edgekit.load(tvm_art.artifact_dir)
    say(f"[tuning goal] timing ort and tvm-tuned ({threads} thread(s) each): {rounds} rounds × {repeat} runs")
    blocks = interleaved({"ort": lambda: ort_model.predict(feed), "tvm-tuned": lambda: tvm_model.predict(feed)}, rounds, repeat)
    bench_ms = {k: statistics.median(v) for k, v in blocks.items()}
    bytecode = _bytecode_twin(model, shape, target, work, database)
    say("[tuning goal] one call taken apart: predict, the bare backend call, ORT's own defaults, VM modes")
    parts = interleaved(_parts(ort_model, tvm_model, bytecode, feed), rounds, repeat)
    anatomy_us = {k: 1e3 * statistics.median(v) for k, v in parts.items()}
    tuning = _tuning(tvm_art) or {}
    if tuning.get("best_ms") is not None:
        anatomy_us["tvm kernels (MetaSchedule)"] = 1e3 * float(tuning["best_ms"])
    return {
        "model": description,
        "trained_seconds": round(trained_s, 1),
        "source_top1": top1,
        "tune_minutes": minutes,
        "first_compile": {"seconds": round(first_s, 1), "candidates": _candidates(first), "tuning": tuned_first},
        "second_compile": {"seconds": round(second_s, 1), "candidates": _candidates(second), "tuning": tuned_second},
        "bench_ms": bench_ms,
        "bench_block_medians_ms": blocks,
        "threads_each": threads,
        "anatomy_us": anatomy_us,
    }


def target_note(target: str) -> str:
    """What the goal's target compiles TVM for, against what ONNX Runtime runs here, in one line."""
    from edgekit.compiler.backends.tvm import resolve_target
    from edgekit.profiles import load_profile

    profile = load_profile(target)
    tvm_target, _ = resolve_target(profile)
    cpu = tvm_target.get("mcpu") or "generic"
    if profile.host_cpu:
        how = f"this host's own CPU ({cpu})"
    else:
        how = f"a portable CPU ({cpu}), not this host's: its TVM code can't use the vector units ORT uses here"
    return (
        f"{target}: TVM compiles for {how}; ONNX Runtime picks its kernels for the CPU it runs on, whatever the profile "
        "(x86_64_host is the like-for-like goal on this machine; x86_64 is x86-64-v2: SSE4.2, no AVX)"
    )


def _threads_alike() -> int:
    """One thread count for both: TVM's (``$TVM_NUM_THREADS``, else edgekit's default: one per physical core, 2 on
    the 2-vCPU host), pinned down in the environment before TVM's pool starts, and ONNX Runtime's intra-op threads
    set to it (``TVM_NUM_THREADS=1`` runs both on one thread)."""
    from edgekit.runtime.tvm_runner import tvm_thread_count

    threads = tvm_thread_count()
    os.environ["TVM_NUM_THREADS"] = str(threads)
    return threads


def _bytecode_twin(model: Path, shape: list[int], target: str, work: Path, database: Path) -> Any:
    """The tuned TVM build again (the database applied, nothing tuned) with its graph interpreted as bytecode."""
    pipe = load_pipeline("tvm").with_tuning(0, database=database)
    spec = pipe.candidates[-1]
    spec = spec.model_copy(update={"options": {**spec.options, "exec_mode": "bytecode"}})
    built = edgekit.compile(model, target, work / "tvm-bytecode", pipeline=pipe.model_copy(update={"candidates": [spec]}),
                            input_shapes={"input": shape}, use_cache=False, name="tvm-bytecode")  # fmt: skip
    return edgekit.load(built.artifact_dir)


def _parts(ort_model: Any, tvm_model: Any, bytecode: Any, feed: dict[str, np.ndarray]) -> dict[str, Callable[[], object]]:
    """Each layer of one call as its own predictor: edgekit's predict, the bare backend call, ORT as its project runs it."""
    import onnxruntime as ort

    session = ort_model.runner.session
    binding = session.io_binding()
    binding.bind_cpu_input("input", feed["input"])
    for out in session.get_outputs():
        binding.bind_output(out.name, "cpu")
    own = ort.InferenceSession(str(ort_model.runner.entry), providers=["CPUExecutionProvider"])  # ORT's defaults
    tvm_runner, bc_runner = tvm_model.runner, bytecode.runner
    tvm_runner.run(feed), bc_runner.run(feed)  # stage the input in both (the bare calls below reuse it)
    tvm_args = [view for _, view in tvm_runner._staged.values()]
    bc_args = [view for _, view in bc_runner._staged.values()]
    return {
        "ort predict": lambda: ort_model.predict(feed),
        "ort session.run": lambda: session.run(None, feed),
        "ort IOBinding": lambda: session.run_with_iobinding(binding),
        "ort own defaults": lambda: own.run(None, feed),
        "tvm predict": lambda: tvm_model.predict(feed),
        "tvm VM call (compiled)": lambda: tvm_runner._main(*tvm_args),
        "tvm VM call (bytecode)": lambda: bc_runner._main(*bc_args),
    }


def _tuning(result: CompileResult) -> dict[str, Any] | None:
    return next((c.tuning for c in result.manifest.candidates if c.name == "tvm-tuned"), None)


def render_goal(figures: dict[str, Any]) -> list[str]:
    """The goal's lines: every figure and, for each goal, met or missed by how much."""
    lines = [f"tuning goal: {figures['model']}, {figures['source_top1']:.1f} % top-1 held out "
             f"(trained in {figures['trained_seconds']} s); tuning budget {figures['tune_minutes']:g} min"]  # fmt: skip
    if figures.get("target_note"):
        lines.append(f"  target: {figures['target_note']}")
    for which in ("first_compile", "second_compile"):
        step = figures[which]
        cands = step["candidates"]
        cells = ", ".join(
            f"{name} {c['ms']:.4f} ms" + (f" ({100 * c['top1']:.1f} %)" if c["top1"] is not None else "") + (" ← chosen" if c["status"] == "chosen" else "")
            for name, c in cands.items()
            if c["ms"] is not None
        )  # fmt: skip
        tuning = step["tuning"] or {}
        lines.append(
            f"  {which.replace('_', ' ')}: {step['seconds']} s; tuning: {tuning.get('measured', '?')} trials measured in "
            f"{tuning.get('seconds', '?')} s, stopped by {tuning.get('stopped', '?')}, {tuning.get('tasks_reused', '?')}/"
            f"{tuning.get('tasks', '?')} tasks reused; measured side by side: {cells}"
        )
    first = figures["first_compile"]["candidates"]
    ratio = None
    if first.get("tvm-tuned", {}).get("ms") and first.get("ort", {}).get("ms"):
        ratio = first["tvm-tuned"]["ms"] / first["ort"]["ms"]
    bench = figures["bench_ms"]
    bench_ratio = bench["tvm-tuned"] / bench["ort"]
    lines.append(
        f"  this benchmark's rounds ({figures.get('threads_each', '?')} thread(s) each, none pinned): ort {bench['ort']:.4f} ms, "
        f"tvm-tuned {bench['tvm-tuned']:.4f} ms = {bench_ratio:.2f}× ORT"
    )
    parts = figures.get("anatomy_us") or {}
    if parts:
        lines.append("  one call taken apart (µs, median of the rounds' block medians; same rounds, same threads):")
        for side in ("ort", "tvm"):
            cells = ", ".join(f"{k.removeprefix(side + ' ')} {v:.1f}" for k, v in parts.items() if k.startswith(side + " "))
            lines.append(f"    {side}: {cells}")
        own = parts.get("ort own defaults")
        if own:
            lines.append(
                f"  tvm-tuned predict against ORT as its project runs it (own defaults): {parts['tvm predict'] / own:.2f}×"
            )
    verdict = "met" if bench_ratio <= 1.0 else f"MISSED by {bench_ratio - 1.0:.2f}× ({bench['tvm-tuned'] - bench['ort']:+.4f} ms)"
    compile_ratio = f"{ratio:.2f}×" if ratio is not None else "n/a"
    lines.append(f"  goal tuned TVM ≤ 1.0× ORT: {verdict} (the compile's own measurement: {compile_ratio})")
    second = figures["second_compile"]["seconds"]
    verdict = "met" if second < 60 else f"MISSED by {second - 60:.0f} s"
    lines.append(f"  goal second compile (database reused) < 60 s: {second} s, {verdict}")
    return lines
