"""bench/runtime: installed size and peak RSS of each backend's runtime component, side by side in one run.

    python -m bench.runtime [--work DIR] [--hidden N] [--runs N]

Compiles one MLP for x86_64 with each backend, packages it, builds for each backend a virtual environment with
only what that runtime component installs (its requirements file), unzips the components as a device does, and
loads and runs the artifact with edgekit's runtime in a subprocess of that environment (peak RSS: VmHWM).
See docs/benchmarks.md (runtime component).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.greengrass.package import runtime_component

BACKENDS = ("onnxruntime", "tvm")

# Run inside the device-like venv: python -S (no .pth: only the venv's site-packages and the component's edgekit).
_PROBE = """
import json, sys, time
import numpy as np
mode, model_dir, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
if mode == "model":
    import edgekit
    model = edgekit.load(model_dir)
    x = {s.name: np.ones(s.shape, dtype=s.dtype) for s in model.manifest.inputs}
    for _ in range(runs):
        model.predict(x)
# VmHWM: the peak RSS of this process's own memory (getrusage's ru_maxrss keeps the parent's peak across fork)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"rss_mb": hwm / 1024, "load_s": time.perf_counter() - t0,
                  "modules": sorted({m.split(".")[0] for m in sys.modules if m.split(".")[0] in ("tvm", "tvm_ffi", "onnxruntime")})}))
"""


def make_mlp(features: int, hidden: int, classes: int) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((features, hidden)) * 0.1).astype(np.float32), "w1"),
        numpy_helper.from_array(np.zeros(hidden, np.float32), "b1"),
        numpy_helper.from_array((rng.standard_normal((hidden, classes)) * 0.1).astype(np.float32), "w2"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Add", ["h", "b1"], ["hb"]),
        helper.make_node("Relu", ["hb"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["o"]),
        helper.make_node("Add", ["o", "b2"], ["ob"]),
        helper.make_node("Softmax", ["ob"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, classes])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _site(venv: Path) -> Path:
    return next((venv / "lib").glob("python3*/site-packages"))


def _sizes_by_package(site: Path) -> dict[str, float]:
    """MB per top-level entry of site-packages (a package and its .libs / .dist-info folders together)."""
    sizes: dict[str, float] = {}
    for entry in site.iterdir():
        if entry.name in ("pip", "setuptools", "_distutils_hack", "__pycache__") or entry.name.startswith(
            ("pip-", "setuptools-")
        ):
            continue
        key = entry.name.split("-")[0].removesuffix(".libs").removesuffix(".py").lower()
        size = _du(entry) if entry.is_dir() else entry.stat().st_size
        sizes[key] = sizes.get(key, 0.0) + size / 1e6
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def _venv(path: Path, requirements: Path) -> Path:
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    subprocess.run(
        [str(path / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q", "-r", str(requirements)],
        check=True,
    )
    return path


def _probe(venv: Path, mode: str, runtime_dir: Path, model_dir: Path, runs: int, env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [str(venv / "bin" / "python"), "-c", _PROBE, mode, str(model_dir), str(runs)],
        env={**env, "PYTHONPATH": str(runtime_dir), "PYTHONNOUSERSITE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"probe failed in {venv}: {proc.stderr.strip().splitlines()[-1:]}")
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.runtime", description=__doc__.split("\n")[0])
    ap.add_argument("--work", type=Path, help="keep the venvs and builds here (default: a temporary folder)")
    ap.add_argument("--features", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--runs", type=int, default=100)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="edgekit-bench-runtime-"))
    work.mkdir(parents=True, exist_ok=True)
    onnx.save(make_mlp(args.features, args.hidden, 10), str(work / "mlp.onnx"))
    rows = []
    for backend in BACKENDS:
        pipeline = Pipeline.model_validate(
            {
                "name": backend,
                "candidates": [{"name": backend, "backend": backend}],
                "measure": {"samples": 2, "warmup": 0, "repeat": 2},
            }
        )
        art = edgekit.compile(work / "mlp.onnx", "x86_64", work / "build", pipeline=pipeline, name=f"mlp-{backend}").artifact_dir
        gg = work / f"gg-{backend}"
        result = edgekit.package([art], name=f"bench.Mlp{backend.capitalize()}", version="1.0.0", output=gg)
        device = work / f"device-{backend}"
        for comp in result.components:
            for z in comp.artifacts:
                if "aarch64" not in z.name:
                    with zipfile.ZipFile(z) as zf:
                        zf.extractall(device / comp.name / z.stem)
        runtime = device / runtime_component(backend)
        venv = work / f"venv-{backend}"
        if not (venv / "bin" / "python").exists():
            _venv(venv, runtime / "runtime" / f"requirements-{backend}.txt")
        env = dict(os.environ)
        env.pop("EDGEKIT_TVM_RUNTIME", None)
        lib = runtime / "tvm-runtime-amd64" / "libtvm_runtime.so"
        if backend == "tvm":
            env["EDGEKIT_TVM_RUNTIME"] = str(lib)  # what the inference component's Setenv does on the device
        model_dir = device / f"bench.Mlp{backend.capitalize()}" / "model-x86_64"
        base = _probe(venv, "baseline", runtime / "runtime", model_dir, 0, env)
        loaded = _probe(venv, "model", runtime / "runtime", model_dir, args.runs, env)
        packages = _sizes_by_package(_site(venv))
        backend_mb = (
            packages.get("tvm_ffi", 0.0) + packages.get("apache_tvm_ffi", 0.0) + lib.stat().st_size / 1e6
            if backend == "tvm"
            else packages.get("onnxruntime", 0.0)
        )
        rows.append(
            {
                "backend": backend,
                "venv_mb": _du(_site(venv)) / 1e6,
                "backend_mb": backend_mb,
                "numpy_mb": packages.get("numpy", 0.0),
                "component_artifacts_mb": sum(_du(z.parent) for z in result.component(runtime_component(backend)).artifacts[:1])
                / 1e6,
                "rss_baseline_mb": base["rss_mb"],
                "rss_mb": loaded["rss_mb"],
                "load_and_run_s": loaded["load_s"],
                "imported": loaded["modules"],
                "packages_mb": {k: round(v, 1) for k, v in packages.items() if v >= 0.5},
            }
        )
    print(f"MLP {args.features}->{args.hidden}->10, x86_64, {args.runs} predictions; venvs in {work}")
    print(f"{'backend':12} {'site-pkgs MB':>12} {'backend MB':>10} {'numpy MB':>9} {'RSS MB':>7} {'RSS py+numpy':>12}")
    for r in rows:
        print(
            f"{r['backend']:12} {r['venv_mb']:12.1f} {r['backend_mb']:10.1f} {r['numpy_mb']:9.1f} "
            f"{r['rss_mb']:7.1f} {r['rss_baseline_mb']:12.1f}"
        )
    ort, tvm = rows
    print(f"TVM/ORT peak RSS: {tvm['rss_mb'] / ort['rss_mb']:.2f}  (over the python+numpy baseline: "
          f"{(tvm['rss_mb'] - tvm['rss_baseline_mb']) / (ort['rss_mb'] - ort['rss_baseline_mb']):.2f})")  # fmt: skip
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
