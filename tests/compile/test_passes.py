"""Graph passes before a backend: int8 quantization (ONNX Runtime's tool), per-candidate budgets, select by size."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import make_cnn, make_mlp
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit.compiler.pipeline import Pipeline, load_pipeline
from edgekit.errors import AccuracyError, ConfigError

INT8_BUDGET = {"maxAbsError": 0.05, "minTop1Agreement": 0.75}


@pytest.fixture
def cnn_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(path))
    return path


def _pipeline(*candidates: Mapping[str, object], select: str = "latency") -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": "int8-test",
            "select": select,
            "candidates": list(candidates),
            "measure": {"samples": 6, "warmup": 1, "repeat": 5},
        }
    )


FP32 = {"name": "fp32", "backend": "onnxruntime"}


def _int8(
    mode: str = "static", name: str = "int8", budget: dict[str, float] | None = None, **options: object
) -> dict[str, object]:
    return {
        "name": name,
        "backend": "onnxruntime",
        "passes": [{"quantize": {"mode": mode, **options}}],
        "accuracy": budget or INT8_BUDGET,
    }


def test_static_int8_is_smaller_close_and_chosen_by_size(cnn_onnx: Path, tmp_path: Path) -> None:
    result = edgekit.compile(cnn_onnx, "x86_64", tmp_path / "build", pipeline=_pipeline(FP32, _int8(), select="size"))
    reports = {c.name: c for c in result.manifest.candidates}
    assert reports["int8"].status == "chosen" and reports["fp32"].reason.startswith("larger: ")
    fp32_size, int8_size = reports["fp32"].size_bytes, reports["int8"].size_bytes
    assert (
        fp32_size is not None and int8_size is not None and int8_size * 2 < fp32_size
    )  # int8 weights (graph overhead keeps it under 4x here)
    assert reports["int8"].passes == [{"quantize": {"mode": "static"}}]
    assert result.manifest.backend.options["passes"] == [{"quantize": {"mode": "static"}}]
    assert result.manifest.pipeline["select"] == "size"
    measured = result.manifest.measured
    assert measured is not None
    assert 0 < measured.accuracy.max_abs_error <= INT8_BUDGET["maxAbsError"]  # really quantized, within its budget
    graph_ops = {n.op_type for n in onnx.load(str(result.artifact_dir / "model.onnx")).graph.node}
    assert "QuantizeLinear" in graph_ops or "QLinearConv" in graph_ops
    model = edgekit.load(result.artifact_dir)
    check = model.selftest()
    assert check.passed and check.tolerance == INT8_BUDGET["maxAbsError"]  # the chosen candidate's own budget


def test_select_latency_keeps_the_fastest_and_records_every_size(cnn_onnx: Path, tmp_path: Path) -> None:
    result = edgekit.compile(cnn_onnx, "x86_64", tmp_path / "build", pipeline=_pipeline(FP32, _int8()))
    reports = [c for c in result.manifest.candidates if c.measured is not None]
    assert len(reports) == 2 and all(c.size_bytes for c in reports)
    chosen = next(c for c in reports if c.status == "chosen")
    other = next(c for c in reports if c.status != "chosen")
    assert chosen.measured is not None and other.measured is not None
    if other.reason.startswith("slower: "):
        assert chosen.measured.latency.median_ms <= other.measured.latency.median_ms
    else:  # within the timing noise: a tie, broken by graph passes (fp32 keeps the model as given), then size
        assert other.reason.startswith("tie: ") and other.tied_with == [chosen.name]
        assert chosen.name == "fp32" and other.reason.endswith("changes the model more (graph passes: quantize; fp32: none)")


def test_dynamic_quantization_of_an_mlp(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(in_features=32, hidden=64, classes=8), str(path))
    result = edgekit.compile(path, "x86_64", tmp_path / "build", pipeline=_pipeline(_int8("dynamic")))
    ops = {n.op_type for n in onnx.load(str(result.artifact_dir / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}, ops
    assert result.manifest.measured is not None and result.manifest.measured.accuracy.max_abs_error > 0


def test_a_candidate_outside_its_own_budget_loses_to_fp32(cnn_onnx: Path, tmp_path: Path) -> None:
    strict = _int8(budget={"maxAbsError": 1e-7, "minTop1Agreement": 1.0})
    result = edgekit.compile(cnn_onnx, "x86_64", tmp_path / "build", pipeline=_pipeline(FP32, strict, select="size"))
    reports = {c.name: c for c in result.manifest.candidates}
    assert reports["fp32"].status == "chosen"
    assert reports["int8"].reason.startswith("outside the accuracy budget: max abs error")
    with pytest.raises(AccuracyError, match="int8: outside the accuracy budget"):
        edgekit.compile(cnn_onnx, "x86_64", tmp_path / "only", pipeline=_pipeline(strict))


def test_calibration_from_a_file_and_its_problems(cnn_onnx: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    good = tmp_path / "calib.npz"
    np.savez(good, x=rng.standard_normal((8, 1, 3, 16, 16)).astype(np.float32))
    result = edgekit.compile(cnn_onnx, "x86_64", tmp_path / "build", pipeline=_pipeline(_int8(calibration=str(good))))
    assert result.manifest.measured is not None and result.manifest.measured.accuracy.max_abs_error <= 0.05

    # changed calibration data is a different artifact: not a cache hit (stacked along the batch axis works too)
    np.savez(good, x=rng.standard_normal((8, 3, 16, 16)).astype(np.float32))
    assert not edgekit.compile(cnn_onnx, "x86_64", tmp_path / "build", pipeline=_pipeline(_int8(calibration=str(good)))).cache_hit

    wrong_name = tmp_path / "wrong-name.npz"
    np.savez(wrong_name, image=np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(ConfigError, match=r"calibration file .*wrong-name.npz.* has no array 'x' \(it has: image\)"):
        edgekit.compile(cnn_onnx, "x86_64", tmp_path / "b2", pipeline=_pipeline(_int8(calibration=str(wrong_name))))
    wrong_shape = tmp_path / "wrong-shape.npz"
    np.savez(wrong_shape, x=np.zeros((2, 3, 8, 8), np.float32))
    with pytest.raises(
        ConfigError,
        match=r"shape \[2, 3, 8, 8\]; expected \[samples, 1, 3, 16, 16\] \(or \[samples, 3, 16, 16\] for this batch-1 input\)",
    ):
        edgekit.compile(cnn_onnx, "x86_64", tmp_path / "b3", pipeline=_pipeline(_int8(calibration=str(wrong_shape))))
    for leftover in ("b2", "b3"):
        assert not (tmp_path / leftover).exists()  # not even the output folder the failed compile made


@pytest.mark.parametrize(
    ("passes", "match"),
    [
        ([{"quantise": {}}], r"unknown pass 'quantise'; did you mean 'quantize'"),
        ([{"quantize": {"mdoe": "static"}}], r"pass 'quantize': unknown key 'mdoe'; did you mean 'mode'"),
        ([{"quantize": {"mode": "int4"}}], r"pass 'quantize': field 'mode'"),
        ([{"quantize": {"calibration": 0}}], r"calibration must be at least 1"),
        ([{"quantize": {"calibration": "/nowhere/calib.npz"}}], r"calibration file '/nowhere/calib.npz' does not exist"),
        ([{"quantize": {}, "prune": {}}], r"one-key mapping"),
    ],
)
def test_bad_passes_fail_before_the_model_is_loaded(
    passes: list[object], match: str, cnn_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def must_not_load(*args: object, **kwargs: object) -> None:
        raise AssertionError("passes are checked before the model is loaded")

    monkeypatch.setattr("edgekit.compiler.compile.load_source", must_not_load)
    bad = _pipeline({"name": "q", "backend": "onnxruntime", "passes": passes})
    with pytest.raises(ConfigError, match=rf"candidate 'q': .*{match}"):
        edgekit.compile(cnn_onnx, "x86_64", tmp_path / "build", pipeline=bad)


def test_a_model_with_nothing_to_quantize_fails_that_candidate_only(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "relu.onnx"
    onnx.save(model, str(path))
    result = edgekit.compile(path, "x86_64", tmp_path / "build", pipeline=_pipeline(FP32, _int8()))
    reports = {c.name: c for c in result.manifest.candidates}
    assert reports["fp32"].status == "chosen" and reports["int8"].status == "failed"
    assert "nothing to quantize" in reports["int8"].reason and "drop the quantize pass" in reports["int8"].reason


def test_bundled_int8_pipeline_picks_the_smallest_within_budget(cnn_onnx: Path, tmp_path: Path) -> None:
    pipe = load_pipeline("int8")
    assert pipe.select == "size"
    result = edgekit.compile(cnn_onnx, "x86_64", tmp_path / "build", pipeline=pipe)
    assert result.manifest.backend.options.get("passes"), "an int8 candidate should win by size"


def _gemm_then_normalizer(path: Path) -> Path:
    """Gemm → ai.onnx.ml Normalizer: ONNX Runtime's symbolic shape inference can't follow the second op."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w", "b"], ["h"], name="fc"),
            helper.make_node("Normalizer", ["h"], ["y"], norm="L2", domain="ai.onnx.ml", name="norm"),
        ],
        "gemm-normalizer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [
            numpy_helper.from_array(rng.standard_normal((8, 16)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_int8_compile_writes_nothing_into_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = _gemm_then_normalizer(tmp_path / "norm.onnx")
    # This model sends ONNX Runtime's pre-processing down the path that saves a file into the working directory.
    probe = tmp_path / "probe"
    probe.mkdir()
    monkeypatch.chdir(probe)
    with pytest.raises(Exception, match="Incomplete symbolic shape inference"):
        quant_pre_process(str(model), str(tmp_path / "prepared.onnx"))
    assert "sym_shape_infer_temp.onnx" in os.listdir(probe)

    clean = tmp_path / "clean"
    clean.mkdir()
    monkeypatch.chdir(clean)
    result = edgekit.compile(Path("..") / "norm.onnx", "x86_64", "build", pipeline="int8")  # relative paths, on purpose
    int8 = next(c for c in result.manifest.candidates if c.passes)
    assert int8.measured is not None  # quantized, built and measured (whether it won or not)
    assert os.listdir(clean) == ["build"]
    assert sorted(os.listdir(clean / "build")) == ["norm-x86_64", "norm-x86_64.tar.gz"]
