"""bench/cpu_baseline: do the x86_64 artifacts run on the baseline's oldest CPU? One command, one table.

    python -m bench.cpu_baseline [--cpu Nehalem] [--work DIR] [--json]

Compiles a small MLP and a small CNN with every pipeline (default, int8, optimize) and every backend each
pipeline has, for the portable profile (x86_64: x86-64-v2) and for this host's CPU (x86_64_host); then loads
each artifact with its self-test under ``qemu-x86_64 -cpu Nehalem`` (x86-64-v2: SSE4.2, no AVX), one emulated
Python for all of them (a crash is caught, counted and the rest go on). Each artifact either passes its
self-test, is refused at load in one line (UnsupportedCpuError: features missing; SelfTestError: wrong outputs
here), or fails otherwise (a crash, SIGILL, any other error) — the count that must stay 0.
Needs qemu-user (Debian: qemu-user-static); no network. See docs/compile.md (CPU baselines).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
PIPELINES = ("default", "int8", "optimize")
BACKENDS = ("onnxruntime", "tvm")

# Runs inside the emulated CPU: one JSON line before and after each artifact, so a crash names its artifact.
_PROBE = """
import json, sys
import edgekit
from edgekit.errors import EdgekitError, SelfTestError, UnsupportedCpuError
for path in sys.argv[1:]:
    print(json.dumps({"start": path}), flush=True)
    try:
        model = edgekit.load(path, self_test=True)
        check = model.selftest()
        out = {"outcome": "passed", "maxAbsError": check.max_abs_error}
    except (UnsupportedCpuError, SelfTestError) as exc:
        out = {"outcome": "refused", "error": type(exc).__name__, "message": str(exc)}
    except EdgekitError as exc:
        out = {"outcome": "failed", "error": type(exc).__name__, "message": str(exc)}
    except Exception as exc:
        out = {"outcome": "failed", "error": type(exc).__name__, "message": str(exc)[:300]}
    print(json.dumps({"done": path, **out}), flush=True)
"""


def make_mlp() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((32, 64)) * 0.2).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal(64) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((64, 10)) * 0.2).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal(10) * 0.1).astype(np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "w2"], ["o0"]),
        helper.make_node("Add", ["o0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def make_cnn() -> onnx.ModelProto:
    """Conv 3→16 3x3, Relu, Conv 16→32 3x3 stride 2, Relu, global pool, Gemm to 10: what NCHWc layouts rewrite."""
    rng = np.random.default_rng(1)
    inits = [
        numpy_helper.from_array((rng.standard_normal((16, 3, 3, 3)) * 0.3).astype(np.float32), "c1"),
        numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "c1b"),
        numpy_helper.from_array((rng.standard_normal((32, 16, 3, 3)) * 0.1).astype(np.float32), "c2"),
        numpy_helper.from_array((rng.standard_normal(32) * 0.1).astype(np.float32), "c2b"),
        numpy_helper.from_array((rng.standard_normal((10, 32)) * 0.3).astype(np.float32), "fc"),
        numpy_helper.from_array((rng.standard_normal(10) * 0.1).astype(np.float32), "fcb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "c1", "c1b"], ["a1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a1"], ["r1"]),
        helper.make_node("Conv", ["r1", "c2", "c2b"], ["a2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["a2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


MODELS = {"mlp": make_mlp, "cnn": make_cnn}


def build_artifacts(
    work: Path,
    *,
    models: tuple[str, ...] = ("mlp", "cnn"),
    pipelines: tuple[str, ...] = PIPELINES,
    backends: tuple[str, ...] = BACKENDS,
    target: str = "x86_64",
) -> list[dict[str, Any]]:
    """Compile every model × pipeline × backend the pipeline has, for ``target``: one row per artifact (or compile error)."""
    import edgekit
    from edgekit.compiler.pipeline import load_pipeline
    from edgekit.errors import EdgekitError

    rows: list[dict[str, Any]] = []
    for model in models:
        source = work / f"{model}.onnx"
        if not source.is_file():
            onnx.save(MODELS[model](), str(source))
        for pipeline in pipelines:
            has = {c.backend for c in load_pipeline(pipeline).candidates}
            for backend in backends:
                if backend not in has:
                    continue
                name = f"{model}-{pipeline}-{backend}-{target}"
                row: dict[str, Any] = {"model": model, "pipeline": pipeline, "backend": backend, "target": target}
                try:
                    result = edgekit.compile(source, target, work / "build", pipeline=pipeline, backend=backend, name=name)
                except EdgekitError as exc:
                    rows.append({**row, "artifact": name, "compiled": False, "message": str(exc)})
                    continue
                cpu = result.manifest.cpu
                rows.append(
                    {
                        **row,
                        "artifact": str(result.artifact_dir),
                        "compiled": True,
                        "chosen": next(c.name for c in result.manifest.candidates if c.status == "chosen"),
                        "cpu": cpu.cpu if cpu else None,
                        "features": cpu.features if cpu else [],
                        "optimization": result.manifest.backend.options.get("optimization"),
                    }
                )
    return rows


def run_under(qemu: str, cpu: str, artifacts: list[dict[str, Any]], timeout: float = 900) -> list[dict[str, Any]]:
    """Load and self-test each compiled artifact in one emulated Python (restarted after a crash): one row each."""
    todo = [a for a in artifacts if a.get("compiled")]
    by_path = {a["artifact"]: a for a in todo}
    results: list[dict[str, Any]] = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))}
    env["TVM_NUM_THREADS"] = "1"
    while todo:
        proc = subprocess.run(
            [qemu, "-cpu", cpu, sys.executable, "-c", _PROBE, *[a["artifact"] for a in todo]],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
        started: str | None = None
        done: set[str] = set()
        for line in proc.stdout.splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if "start" in item:
                started = item["start"]
            elif "done" in item:
                path = item.pop("done")
                results.append({**by_path[path], **item})
                done.add(path)
                started = None
        if proc.returncode != 0:
            crashed = started or next((a["artifact"] for a in todo if a["artifact"] not in done), None)
            if crashed is None:
                break
            signal = -proc.returncode if proc.returncode < 0 else None
            tail = proc.stderr.strip().splitlines()[-1:] if proc.stderr.strip() else []
            message = f"signal {signal}" if signal else f"exit {proc.returncode}: {' '.join(tail)[:300]}"
            results.append({**by_path[crashed], "outcome": "failed", "error": "crash", "message": message})
            done.add(crashed)
        todo = [a for a in todo if a["artifact"] not in done]
        if proc.returncode == 0:
            break
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cpu_baseline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", default="Nehalem", help="qemu CPU model: the baseline's oldest (x86-64-v2: Nehalem)")
    parser.add_argument("--work", type=Path, default=None, help="build folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = parser.parse_args(argv)
    qemu = shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
    if qemu is None:
        print("qemu-x86_64 is not installed (Debian: apt-get install qemu-user-static)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="edgekit-cpu-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = build_artifacts(work) + build_artifacts(work, target="x86_64_host")
        results = run_under(qemu, args.cpu, rows)
    uncompiled = [r for r in rows if not r.get("compiled")]
    counts = {t: Counter(r["outcome"] for r in results if r["target"] == t) for t in ("x86_64", "x86_64_host")}
    if args.json:
        print(json.dumps({"cpu": args.cpu, "counts": counts, "results": results, "notCompiled": uncompiled}, indent=1))
    else:
        print(f"qemu-x86_64 -cpu {args.cpu}: each artifact loaded with its self-test")
        print(f"{'artifact':38} {'chosen':16} {'cpu':10} {'outcome':8} detail")
        for r in results:
            detail = f"max abs err {r['maxAbsError']:.2g}" if r["outcome"] == "passed" else f"{r['error']}: {r['message']}"
            print(f"{Path(r['artifact']).name:38} {r['chosen']:16} {r['cpu'] or '-':10} {r['outcome']:8} {detail[:160]}")
        for r in uncompiled:
            print(f"{r['artifact']:38} not compiled: {r['message'][:160]}")
        for target, c in counts.items():
            print(
                f"{target}: {sum(c.values())} artifacts: {c['passed']} passed their self-test, {c['refused']} refused "
                f"at load in one line, {c['failed']} failed otherwise"
            )
    return 1 if any(c["failed"] for c in counts.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
