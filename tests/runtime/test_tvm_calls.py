"""What one TVM call costs besides its kernels: inputs staged once and reused, the VM's graph compiled to native code.

These check behaviour (outputs right, buffers reused, both VM modes agree); the time they save is in
``bench/compile --tuning-goal`` and docs/benchmarks.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import make_cnn, make_mlp

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import ConfigError
from edgekit.runtime.tvm_runner import TvmRunner


def _pipeline(**options: object) -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": "one-tvm",
            "candidates": [{"name": "tvm", "backend": "tvm", "options": options}],
            "measure": {"samples": 2, "warmup": 1, "repeat": 3},
        }
    )


def _reference(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_inputs_are_staged_once_and_outputs_are_fresh(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(in_features=8, batch="N"), str(path))  # a dynamic batch: a new size restages the input
    result = edgekit.compile(path, "x86_64", tmp_path / "build", pipeline=_pipeline(), input_shapes={"x": [-1, 8]})
    model = edgekit.load(result.artifact_dir)
    runner = model.runner
    assert isinstance(runner, TvmRunner)
    session = _reference(path)
    rng = np.random.default_rng(5)
    staged = runner._staged["x"]
    seen = []
    for batch in (1, 1, 4, 4, 1):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        (got,) = model.predict(x)
        np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
        seen.append((got, x))
        buf, _view = runner._staged["x"]
        assert buf.shape == (batch, 8) and buf.ctypes.data % 64 == 0
        if batch == 1 and len(seen) == 2:
            assert runner._staged["x"] is staged  # same size: the same buffer and TVM view, no new one per call
    for got, x in seen:  # every result is its own array: later calls didn't overwrite it
        np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("exec_mode", ["compiled", "bytecode"])
def test_both_vm_modes_build_the_same_model(exec_mode: str, tmp_path: Path) -> None:
    path = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(path))
    result = edgekit.compile(path, "x86_64", tmp_path / "build", pipeline=_pipeline(exec_mode=exec_mode))
    assert result.manifest.backend.options["exec_mode"] == exec_mode
    model = edgekit.load(result.artifact_dir, self_test=True)
    session = _reference(path)
    name = session.get_inputs()[0].name
    x = np.random.default_rng(2).standard_normal(model.manifest.inputs[0].shape).astype(np.float32)
    np.testing.assert_allclose(model.predict({name: x})[0], session.run(None, {name: x})[0], rtol=1e-4, atol=1e-5)


def test_the_vm_mode_defaults_to_compiled_and_a_wrong_one_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    result = edgekit.compile(path, "x86_64", tmp_path / "build", pipeline=_pipeline())
    assert result.manifest.backend.options["exec_mode"] == "compiled"
    with pytest.raises(
        ConfigError,
        match=r"^pipeline 'one-tvm', candidate 'tvm': tvm option 'exec_mode' must be compiled or bytecode, got 'native'$",
    ):
        edgekit.compile(path, "x86_64", tmp_path / "build2", pipeline=_pipeline(exec_mode="native"))


def test_running_tvm_leaves_the_process_on_every_cpu(tmp_path: Path) -> None:
    """TVM's pool would pin the calling thread to core 0 for good (and ONNX Runtime's threads started after it).

    (On a 1-CPU machine this holds trivially.)"""
    path = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(path))
    artifact = edgekit.compile(path, "x86_64", tmp_path / "build", pipeline=_pipeline()).artifact_dir
    script = textwrap.dedent(
        f"""
        import os, numpy as np, edgekit
        os.environ.pop("TVM_BIND_THREADS", None)
        before = sorted(os.sched_getaffinity(0))
        model = edgekit.load({str(artifact)!r})
        model.predict(np.zeros(model.manifest.inputs[0].shape, np.float32))
        import tvm_ffi  # what a kernel with a parallel loop does first (this small model has none): start the pool
        tvm_ffi.get_global_func("runtime.config_threadpool")(1, 1)
        print(before, sorted(os.sched_getaffinity(0)))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "TVM_BIND_THREADS"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env, check=True)
    before, after = out.stdout.strip().splitlines()[-1].split("] [")
    assert before + "]" == "[" + after, out.stdout


@pytest.mark.parametrize("env", [{}, {"TVM_NUM_THREADS": "3"}], ids=["default", "set"])
def test_tuning_counts_the_threads_tvm_runs_with(env: dict[str, str]) -> None:
    """The tuning target's num-cores (its database key, what trials are built for) is TVM's own thread count."""
    script = textwrap.dedent(
        """
        from edgekit.runtime.tvm_runner import tvm_thread_count
        from edgekit.runtime.tvm_runner import _load_runtime
        _load_runtime()
        import tvm_ffi
        print(tvm_thread_count(), tvm_ffi.get_global_func("runtime.NumThreads")())
        """
    )
    base = {k: v for k, v in os.environ.items() if k not in ("TVM_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env={**base, **env}, check=True
    )
    ours, tvms = out.stdout.split()[-2:]
    assert ours == tvms


def _sysfs(root: Path, cores: dict[int, tuple[int, int]]) -> Path:
    for cpu, (package, core) in cores.items():
        topology = root / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "physical_package_id").write_text(f"{package}\n")
        (topology / "core_id").write_text(f"{core}\n")
    return root


def test_tvm_runs_one_thread_a_physical_core(tmp_path: Path) -> None:
    """Hyper-threads of one core count once, cores of two packages with one core id twice, vCPUs that are cores of
    their own each once (TVM's own default would halve them); no topology: None, and TVM's rule decides."""
    from edgekit.runtime.tvm_runner import physical_cores

    cpus = sorted(os.sched_getaffinity(0))
    paired = _sysfs(tmp_path / "ht", {cpu: (0, i // 2) for i, cpu in enumerate(cpus)})
    assert physical_cores(paired) == (len(cpus) + 1) // 2
    packages = _sysfs(tmp_path / "packages", {cpu: (i % 2, 0) for i, cpu in enumerate(cpus)})
    assert physical_cores(packages) == min(2, len(cpus))
    alone = _sysfs(tmp_path / "alone", {cpu: (0, i) for i, cpu in enumerate(cpus)})
    assert physical_cores(alone) == len(cpus)
    assert physical_cores(tmp_path / "none") is None
