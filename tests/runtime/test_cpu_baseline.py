"""Faithful to the target CPU (issue 18): profiles name a CPU, the manifest records the features the code needs,
edgekit.load refuses a CPU without them in one line, and run/serve self-test at load."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import make_cnn, requires

import edgekit
from edgekit.cli import main
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import EXIT_CODES, SelfTestError, UnsupportedCpuError
from edgekit.manifest import artifact_digests, read_manifest
from edgekit.profiles import load_profile
from edgekit.runtime import cpu_features
from edgekit.runtime.cpu_features import X86_LEVELS, from_llvm, host_features, missing_features

V2 = {f for level in ("x86-64", "x86-64-v2") for f in X86_LEVELS[level]}

QUICK = Pipeline.model_validate(
    {
        "name": "quick",
        "candidates": [{"name": "tvm", "backend": "tvm"}, {"name": "ort", "backend": "onnxruntime"}],
        "measure": {"samples": 2, "warmup": 0, "repeat": 3},
    }
)


def _all_level(name: str) -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": name,
            "candidates": [{"name": "ort", "backend": "onnxruntime", "options": {"optimization": "all"}}],
            "measure": {"samples": 2, "warmup": 0, "repeat": 3},
        }
    )


def test_llvm_features_map_to_cpuinfo_names_and_leave_out_what_no_kernel_uses() -> None:
    assert from_llvm(["sse3", "sse4.1", "sse4.2", "popcnt", "sahf", "cx16", "fast-15bytenop"], "x86_64") == [
        "cx16",
        "lahf_lm",
        "pni",
        "popcnt",
        "sse4_1",
        "sse4_2",
    ]
    assert from_llvm(["+avx2", "bmi", "lzcnt", "avx512vnni", "aes", "sha", "rdrnd"], "amd64") == [
        "abm",
        "avx2",
        "avx512_vnni",
        "bmi1",
    ]
    # LLVM's cortex-a72 lists crypto a Raspberry Pi 4 lacks; no kernel uses it, so it is not recorded
    assert from_llvm(["neon", "fp-armv8", "aes", "sha2", "crc", "dotprod"], "aarch64") == ["asimd", "asimddp", "fp"]


def test_missing_features_counts_only_what_can_be_told(monkeypatch: pytest.MonkeyPatch) -> None:
    # a CPU's flags as /proc/cpuinfo would list them: no CPU here lacks avx2 and knows of it, so they are given
    fake = (frozenset({"sse4_2", "avx"}), frozenset({"sse4_2", "avx", "avx2", "avx512f"}))
    monkeypatch.setattr(cpu_features, "running_features", lambda: fake)
    assert missing_features(["avx512f", "sse4_2", "avx2", "some_future_flag"]) == ["avx2", "avx512f"]


def test_the_x86_64_profile_is_the_v2_baseline_and_x86_64_host_this_cpu() -> None:
    base, host = load_profile("x86_64"), load_profile("x86_64_host")
    assert base.tvm.target["mcpu"] == "x86-64-v2" and not base.host_cpu
    assert host.tvm.target["mcpu"] == "host" and host.host_cpu
    assert base.neo.arch == host.neo.arch == "X86_64" and base.greengrass == host.greengrass


def test_a_baseline_tvm_build_records_only_v2_features(mlp_onnx: Path, out_dir: Path) -> None:
    result = edgekit.compile(mlp_onnx, "x86_64", out_dir, pipeline=QUICK, backend="tvm")
    cpu = result.manifest.cpu
    assert cpu is not None and cpu.arch == "x86_64" and cpu.cpu == "x86-64-v2" and not cpu.host_specific
    assert set(cpu.features) <= V2 and {"sse4_2", "popcnt"} <= set(cpu.features)
    assert "avx" not in cpu.features
    saved = json.loads((result.artifact_dir / "manifest.json").read_text())
    assert saved["cpu"]["features"] == cpu.features and saved["cpu"]["hostSpecific"] is False
    assert edgekit.load(result.artifact_dir, self_test=True).predict(np.zeros((1, 8), np.float32))[0].shape == (1, 4)


def test_load_refuses_a_cpu_without_the_features_in_one_line(
    mlp_onnx: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    art = edgekit.compile(mlp_onnx, "x86_64", out_dir, pipeline=QUICK, backend="tvm").artifact_dir
    # this machine, seen as a CPU without SSE4.2 and POPCNT (what a pre-Nehalem x86_64 is): no such CPU runs here
    # but under qemu, which test_default_profile_artifacts_under_the_baselines_oldest_cpu does for real (slow)
    have, known = cpu_features.running_features()
    monkeypatch.setattr(cpu_features, "running_features", lambda: (have - {"sse4_2", "popcnt"}, known | {"sse4_2", "popcnt"}))
    with pytest.raises(UnsupportedCpuError) as caught:
        edgekit.load(art)
    message = str(caught.value)
    assert "\n" not in message and "x86-64-v2" in message and "this CPU lacks popcnt, sse4_2" in message
    assert main(["run", str(art), "--random"]) == EXIT_CODES[UnsupportedCpuError] == 28
    err = capsys.readouterr().err
    assert next(line for line in err.splitlines() if line.startswith("error:")).endswith("lower baseline)")
    assert "Traceback" not in err


def test_run_self_tests_at_load_unless_told_not_to(mlp_onnx: Path, out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = edgekit.compile(mlp_onnx, "x86_64", out_dir, pipeline=QUICK, backend="onnxruntime").artifact_dir
    assert main(["run", str(art), "--random"]) == 0
    # golden outputs that disagree (re-signed, as a build that is wrong on this CPU would be)
    path = art / "selftest.npz"
    with np.load(path) as data:
        arrays = {k: data[k] + (0.5 if "/out/" in k else 0) for k in data.files}
    np.savez(path, **arrays)
    manifest = read_manifest(art, check_files=False)
    manifest.digests = artifact_digests(art)
    manifest.write(art)
    with pytest.raises(SelfTestError, match=r"the self-test failed on this CPU \(max abs error 0\.5"):
        edgekit.run(art, random=True)
    capsys.readouterr()
    assert main(["run", str(art), "--random"]) == EXIT_CODES[SelfTestError] == 29
    assert "self-test failed" in capsys.readouterr().err
    assert main(["run", str(art), "--random", "--no-self-test"]) == 0
    edgekit.load(art)  # a plain load does not self-test


def test_serve_self_tests_each_artifact_when_it_loads(mlp_onnx: Path, out_dir: Path) -> None:
    from edgekit.cloud.servable import load_artifact
    from edgekit.errors import ServeError

    art = edgekit.compile(mlp_onnx, "x86_64", out_dir, pipeline=QUICK, backend="onnxruntime").artifact_dir
    load_artifact("", art)
    manifest = read_manifest(art)
    assert manifest.selftest is not None
    manifest.selftest.max_abs_error = -1.0  # no output can meet it
    manifest.write(art)
    with pytest.raises(ServeError, match=r"cannot serve .*the self-test failed on this CPU"):
        load_artifact("", art)
    assert load_artifact("", art, self_test=False).name == manifest.name


def test_ort_all_level_is_baked_only_for_the_host_profile(tmp_path: Path) -> None:
    cnn = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(cnn))
    portable = edgekit.compile(cnn, "x86_64", tmp_path / "a", pipeline=_all_level("all-a"))
    options = portable.manifest.backend.options
    assert options["optimization"] == "extended" and options["loadOptimization"] == "all"
    domains = {n.domain for n in onnx.load(str(portable.artifact_dir / "model.onnx")).graph.node}
    assert "com.microsoft.nchwc" not in domains  # no layout for this CPU's vector width in the file
    assert portable.manifest.cpu is not None and portable.manifest.cpu.features == []
    assert edgekit.load(portable.artifact_dir, self_test=True).selftest().passed  # 'all' applied at load, for this CPU

    host = edgekit.compile(cnn, "x86_64_host", tmp_path / "b", pipeline=_all_level("all-b"))
    assert host.manifest.backend.options["optimization"] == "all" and "loadOptimization" not in host.manifest.backend.options
    assert host.manifest.cpu is not None and host.manifest.cpu.host_specific
    assert {"sse2", "sse4_2"} <= set(host.manifest.cpu.features)
    assert edgekit.load(host.artifact_dir, self_test=True).selftest().passed


def _qemu() -> str | None:
    return shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux" or os.uname().machine != "x86_64", reason="x86_64 Linux host only")
@requires("qemu-x86_64")
def test_default_profile_artifacts_under_the_baselines_oldest_cpu(tmp_path: Path) -> None:
    """Every backend's and pipeline's x86_64 artifact, run under ``qemu-x86_64 -cpu Nehalem`` (x86-64-v2, no AVX):
    each passes its self-test there or is refused at load in one line; a host build is refused, never SIGILL."""
    qemu = _qemu()
    assert qemu is not None  # requires("qemu-x86_64")
    from bench.cpu_baseline import build_artifacts, run_under

    arts = build_artifacts(tmp_path, models=("mlp", "cnn"), pipelines=("default", "int8"), backends=("tvm", "onnxruntime"))
    arts += build_artifacts(tmp_path, models=("cnn",), pipelines=("default",), backends=("tvm",), target="x86_64_host")
    results = run_under(qemu, "Nehalem", arts)
    assert len(results) == len(arts)
    outcome = {r["artifact"]: r for r in results}
    for r in results:
        assert r["outcome"] in ("passed", "refused"), r
        if r["outcome"] == "refused":
            assert "\n" not in r["message"] and r["error"] == "UnsupportedCpuError", r
    assert all(r["outcome"] == "passed" for r in outcome.values() if r["target"] == "x86_64")
    host = [r for r in results if r["target"] == "x86_64_host"]
    if "avx" in host_features():  # a host build from an AVX machine: refused on Nehalem, naming what it lacks
        assert host and all(r["outcome"] == "refused" and "avx" in r["message"] for r in host)
