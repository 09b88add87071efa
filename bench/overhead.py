"""bench/overhead: what edgekit's runner adds to one call, and what ONNX Runtime's load-time level changes.

    python -m bench.overhead [--models digits-cnn,trained-cnn,trained-mobilenetv2] [--rounds 10] [--repeat 200]
                             [--no-tvm] [--json out.json]

Each model is compiled for ``x86_64`` with ONNX Runtime (fp32, the ``ort`` pipeline: ``extended`` in the file, the
rest at load) and,
for the digits CNN, with TVM (untuned). One thread each (ONNX Runtime's intra-op threads 1; TVM's pool
``$TVM_NUM_THREADS``, 1 by default on a 2-vCPU VM), timed in the same interleaved rounds (µs per call, median of
block medians):

- ``predict``: ``edgekit.load(dir).predict(x)``, the inputs checked against the manifest;
- ``session.run``: the same ONNX Runtime session called bare (``session.run(None, feed)``): the difference is
  edgekit's wrapper;
- ``load none`` / ``load all``: the same file in sessions of its own at level ``none`` (what edgekit loaded an
  ``extended`` artifact with) and ``all`` (NCHWc layouts for this CPU, made at load), bare ``session.run``; the time
  each takes to load;
- TVM ``predict`` against the bare VM call on the runner's staged inputs.

The digits CNN is bench/tuning_goal.py's (trained here in seconds); the trained CNN and MobileNetV2-0.5 are
bench/trained.py's (cached). See docs/benchmarks.md (per-call overhead).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import edgekit
from edgekit.compiler.measurement import host_description

MODELS = ("digits-cnn", "trained-cnn", "trained-mobilenetv2")
Predict = Callable[[], object]


def _source(name: str, work: Path) -> tuple[str | Path, list[int], np.ndarray]:
    """The model to compile (a file or a factory), its input shape and one held-out input."""
    if name == "digits-cnn":
        from bench.tuning_goal import SIDE, train_digits_cnn

        path, samples, _top1 = train_digits_cnn(work)
        return path, [1, 1, SIDE, SIDE], samples["input"][:1]
    from bench.trained import trained

    t = trained(name.removeprefix("trained-"))
    return f"bench.compile:trained_{t.name}", t.shape, t.x[:1]


def _session(path: Path, level: str) -> tuple[Any, float]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    t0 = time.perf_counter()
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return session, time.perf_counter() - t0


def _load_seconds(path: Path, level: str, times: int = 5) -> float:
    """Median seconds to create a session of ``path`` at ``level`` (the device's load)."""
    return statistics.median(_session(path, level)[1] for _ in range(times))


def predictors(name: str, work: Path, tvm: bool, say: Callable[[str], None]) -> tuple[dict[str, Predict], dict[str, float]]:
    source, shape, x = _source(name, work)
    feed = {"input": x}
    say(f"[{name}] compiling with onnxruntime")
    ort_art = edgekit.compile(source, "x86_64", work / name / "ort", pipeline="ort", input_shapes={"input": shape},
                              use_cache=False, name=name.replace("-", "_"))  # fmt: skip
    model = edgekit.load(ort_art.artifact_dir, threads=1)
    session = model.runner.session  # type: ignore[attr-defined]
    entry = ort_art.artifact_dir / ort_art.manifest.backend.entry
    level_none, _ = _session(entry, "ORT_DISABLE_ALL")
    level_all, _ = _session(entry, "ORT_ENABLE_ALL")
    out: dict[str, Predict] = {
        "predict": lambda: model.predict(feed),
        "session.run": lambda: session.run(None, feed),
        "load none: session.run": lambda: level_none.run(None, feed),
        "load all: session.run": lambda: level_all.run(None, feed),
    }
    load_s = {"none": _load_seconds(entry, "ORT_DISABLE_ALL"), "all": _load_seconds(entry, "ORT_ENABLE_ALL")}
    if tvm:
        say(f"[{name}] compiling with tvm (untuned)")
        tvm_art = edgekit.compile(source, "x86_64", work / name / "tvm", backend="tvm", input_shapes={"input": shape},
                                  use_cache=False, name=name.replace("-", "_"))  # fmt: skip
        tvm_model = edgekit.load(tvm_art.artifact_dir)
        runner: Any = tvm_model.runner
        runner.run(feed)  # stage the input: the bare call below reuses the runner's view
        args = [view for _, view in runner._staged.values()]
        out["tvm predict"] = lambda: tvm_model.predict(feed)
        out["tvm VM call"] = lambda: runner._main(*args)
    for key, fn in out.items():  # every predictor gives the same answer (the bare calls too)
        got = fn()
        first = got[0] if isinstance(got, (list, tuple)) else got
        ref = session.run(None, feed)[0]
        if not isinstance(first, np.ndarray):
            first = np.from_dlpack(first)  # the bare VM call's TVM tensor
        if not np.allclose(first, ref, atol=1e-3):
            raise SystemExit(f"[{name}] {key} disagrees with session.run")
    return out, load_s


def main(argv: list[str] | None = None) -> int:
    from bench.compile import interleaved

    parser = argparse.ArgumentParser(
        prog="bench/overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument("--rounds", type=int, default=10, help="round-robin blocks per variant (default 10)")
    parser.add_argument("--repeat", type=int, default=200, help="timed calls per block (default 200)")
    parser.add_argument("--no-tvm", action="store_true", help="skip the digits CNN's TVM build")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON to this file")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if not names or set(names) - set(MODELS):
        parser.error(f"choose models from {','.join(MODELS)}")
    os.environ.setdefault("TVM_NUM_THREADS", "1")

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    figures: dict[str, Any] = {"host": host_description(), "load": os.getloadavg()[0], "models": {}}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-overhead-") as tmp:
        for name in names:
            preds, load_s = predictors(name, Path(tmp), name == "digits-cnn" and not args.no_tvm, say)
            repeat = max(10, args.repeat // 20) if "mobilenet" in name else args.repeat
            say(f"[{name}] timing {', '.join(preds)}: {args.rounds} rounds × {repeat}")
            blocks = interleaved(preds, args.rounds, repeat)
            us = {k: round(1e3 * statistics.median(v), 2) for k, v in blocks.items()}
            figures["models"][name] = {"us": us, "load_ms": {k: round(v * 1e3, 2) for k, v in load_s.items()}}
    figures["load_after"] = os.getloadavg()[0]
    print(f"host: {figures['host']} | load average {figures['load']:.1f} → {figures['load_after']:.1f} | 1 thread each")
    for name, f in figures["models"].items():
        us = f["us"]
        parts = [f"{k} {v:.1f}" for k, v in us.items()]
        wrapper = us["predict"] - us["session.run"]
        line = f"{name}: µs per call: " + ", ".join(parts) + f" | edgekit wrapper (predict − session.run) {wrapper:.1f} µs"
        if "tvm predict" in us:
            line += f", TVM wrapper {us['tvm predict'] - us['tvm VM call']:.1f} µs"
        line += f" | level all at load: {us['load all: session.run'] / us['load none: session.run']:.2f}× none's run time"
        line += f", load {f['load_ms']['all']:.1f} ms vs {f['load_ms']['none']:.1f} ms"
        print(line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
