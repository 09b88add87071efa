"""ONNX sequences (``seq(tensor)``) through compile → artifact → predict, against ONNX Runtime's own session on the same
model: a sequence output, a sequence input (samples with sequences of different lengths, an empty one), golden vectors
that carry them, ``edgekit run`` in and out; TVM, ``edgekit serve``, ``package`` and the inference component refuse
them in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import QUICK
from onnx import TensorProto, helper

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import EdgekitError, InferenceError, PackagingError, SamplesError, ServeError
from edgekit.manifest import read_manifest
from edgekit.runtime.selftest import compare_outputs, read_selftest

BOTH = Pipeline.model_validate(
    {
        "name": "both",
        "candidates": [{"name": "ort", "backend": "onnxruntime"}, {"name": "tvm", "backend": "tvm"}],
        "measure": {"samples": 2, "warmup": 0, "repeat": 2},
    }
)


def _save(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], path: Path) -> Path:
    graph = helper.make_graph(nodes, "seq", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _split_model(path: Path) -> Path:
    """``x`` [6, 2] -> ``parts``: SplitToSequence into rows of [1, 2], and ``rows`` = SequenceLength(parts)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [6, 2])
    parts = helper.make_tensor_sequence_value_info("parts", TensorProto.FLOAT, None)
    rows = helper.make_tensor_value_info("rows", TensorProto.INT64, [])
    nodes = [
        helper.make_node("SplitToSequence", ["x"], ["parts"], axis=0),
        helper.make_node("SequenceLength", ["parts"], ["rows"]),
    ]
    return _save(nodes, [x], [parts, rows], path)


def _insert_model(path: Path) -> Path:
    """``seq`` (a sequence of [?, 3] floats) and ``t`` [2, 3] -> ``grown`` = SequenceInsert(seq, t) (at the back),
    ``joined`` = ConcatFromSequence(grown, axis 0) and ``count`` = SequenceLength(grown)."""
    seq = helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, [None, 3])
    t = helper.make_tensor_value_info("t", TensorProto.FLOAT, [2, 3])
    grown = helper.make_tensor_sequence_value_info("grown", TensorProto.FLOAT, None)
    joined = helper.make_tensor_value_info("joined", TensorProto.FLOAT, [None, 3])
    count = helper.make_tensor_value_info("count", TensorProto.INT64, [])
    nodes = [
        helper.make_node("SequenceInsert", ["seq", "t"], ["grown"]),
        helper.make_node("ConcatFromSequence", ["grown"], ["joined"], axis=0),
        helper.make_node("SequenceLength", ["grown"], ["count"]),
    ]
    return _save(nodes, [seq, t], [grown, joined, count], path)


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _same(got: object, want: object) -> None:
    """``got`` is ``want``: a list of arrays of the same length, element by element, or one array."""
    if isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _same(g, w)
        return
    want_arr = np.asarray(want)
    assert isinstance(got, np.ndarray) and got.dtype == want_arr.dtype and got.shape == want_arr.shape
    np.testing.assert_allclose(got, want_arr, rtol=1e-6)


def test_a_sequence_output_compiles_runs_and_self_tests_as_onnx_runtime_gives_it(tmp_path: Path) -> None:
    model = _split_model(tmp_path / "split.onnx")
    result = edgekit.compile(model, "x86_64", tmp_path / "build", pipeline=QUICK, use_cache=False)
    spec = {s.name: s for s in result.manifest.outputs}
    assert spec["parts"].kind == "sequence" and spec["parts"].dtype == "float32" and spec["parts"].shape == [1, 2]
    assert "kind" not in json.loads((result.artifact_dir / "manifest.json").read_text())["outputs"][1]  # a tensor: as before
    loaded = edgekit.load(result.artifact_dir, self_test=True)
    x = np.random.default_rng(1).standard_normal((6, 2)).astype(np.float32)
    got = loaded.predict({"x": x})
    want = _session(model).run(None, {"x": x})
    assert isinstance(got[0], list) and len(got[0]) == 6
    _same(got, want)
    # The golden vectors carry the sequence (NAME/# and its elements) and compare it element by element.
    st = result.manifest.selftest
    assert st is not None
    cases = read_selftest(result.artifact_dir / st.file, result.manifest.inputs, result.manifest.outputs)
    assert isinstance(cases[0][1]["parts"], list) and len(cases[0][1]["parts"]) == 6
    assert loaded.selftest().passed


def test_a_sequence_input_with_samples_of_different_lengths_and_an_empty_sequence(tmp_path: Path) -> None:
    model = _insert_model(tmp_path / "insert.onnx")
    rng = np.random.default_rng(0)
    f = np.float32
    seqs = [
        [rng.standard_normal((1, 3)).astype(f), rng.standard_normal((4, 3)).astype(f)],
        [],
        [rng.standard_normal((2, 3)).astype(f)],
    ]
    samples = {"seq": seqs, "t": rng.standard_normal((3, 2, 3)).astype(f)}
    result = edgekit.compile(model, "x86_64", tmp_path / "build", pipeline=QUICK, use_cache=False, samples=samples)
    inputs = {s.name: s for s in result.manifest.inputs}
    assert (
        inputs["seq"].kind == "sequence" and inputs["seq"].shape == [-1, 3] and inputs["seq"].declared() == "sequence of [?, 3]"
    )
    assert {s.name: s.kind for s in result.manifest.outputs} == {"grown": "sequence", "joined": "tensor", "count": "tensor"}
    assert result.manifest.outputs[0].shape == [-1, 3]  # elements of 1, 4, 2 rows: that axis is open
    loaded = edgekit.load(result.artifact_dir, self_test=True)
    session = _session(model)
    t = rng.standard_normal((2, 3)).astype(f)
    for seq in ([rng.standard_normal((5, 3)).astype(f)], [], [np.zeros((0, 3), f), np.ones((1, 3), f)]):
        feeds: dict[str, Any] = {"seq": seq, "t": t}  # a sequence: a list of arrays
        got = loaded.predict(feeds)
        _same(got, session.run(None, feeds))
        assert int(got[2]) == len(seq) + 1
    # the golden vectors hold the empty sequence of the samples, and agree
    st = result.manifest.selftest
    assert st is not None
    cases = read_selftest(result.artifact_dir / st.file, result.manifest.inputs, result.manifest.outputs)
    assert [len(feed["seq"]) for feed, _ in cases] == [2, 0, 1]
    assert all(isinstance(out["grown"], list) for _, out in cases)


def test_a_sequence_input_without_samples_is_synthesized(tmp_path: Path) -> None:
    result = edgekit.compile(_insert_model(tmp_path / "m.onnx"), "x86_64", tmp_path / "build", pipeline=QUICK, use_cache=False)
    assert result.manifest.measured is not None and result.manifest.measured.accuracy.max_abs_error == 0.0
    run = edgekit.run(result.artifact_dir, random=True, save=tmp_path / "out.npz")
    assert len(run.outputs["grown"]) == 3  # two synthesized elements and t
    with np.load(tmp_path / "out.npz") as saved:
        assert int(saved["grown/#"]) == 3 and saved["grown/2"].shape == (2, 3) and saved["joined"].shape == (6, 3)


def test_edgekit_run_reads_a_sequence_from_json_and_from_npz(tmp_path: Path) -> None:
    model = _insert_model(tmp_path / "m.onnx")
    result = edgekit.compile(model, "x86_64", tmp_path / "build", pipeline=QUICK, use_cache=False)
    (tmp_path / "in.json").write_text(json.dumps({"seq": [[[1, 2, 3]], [[4, 5, 6], [7, 8, 9]]], "t": [[0, 0, 0], [1, 1, 1]]}))
    run = edgekit.run(result.artifact_dir, input_files=[str(tmp_path / "in.json")])
    np.testing.assert_array_equal(run.outputs["joined"][:, 0], [1, 4, 7, 0, 1])
    arrays = {"seq/#": np.asarray(0, np.int64), "t": np.ones((2, 3), np.float32)}  # an empty sequence
    np.savez(tmp_path / "in.npz", **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
    run = edgekit.run(result.artifact_dir, input_files=[str(tmp_path / "in.npz")])
    assert int(run.outputs["count"]) == 1 and run.outputs["joined"].shape == (2, 3)


def test_bad_sequence_inputs_are_one_line_each(tmp_path: Path) -> None:
    result = edgekit.compile(_insert_model(tmp_path / "m.onnx"), "x86_64", tmp_path / "build", pipeline=QUICK, use_cache=False)
    loaded = edgekit.load(result.artifact_dir)
    t = np.zeros((2, 3), np.float32)
    cases = {
        "an array, not a list": (
            {"seq": np.zeros((2, 3), np.float32), "t": t},
            "input 'seq' is a sequence (sequence of [?, 3] float32)",
        ),
        "a wrong element rank": (
            {"seq": [np.zeros(3, np.float32)], "t": t},
            "input 'seq' element 0: expects shape [?, 3], got [3]",
        ),
        "a wrong element dtype": ({"seq": [np.zeros((1, 3), "U3")], "t": t}, "input 'seq' element 0: expects dtype float32"),
    }
    for why, (feeds, line) in cases.items():
        with pytest.raises(InferenceError) as caught:
            loaded.predict(feeds)  # type: ignore[arg-type]
        assert line in str(caught.value) and "\n" not in str(caught.value), why
    with pytest.raises(SamplesError) as bad:
        edgekit.compile(
            tmp_path / "m.onnx", "x86_64", tmp_path / "b2", pipeline=QUICK, use_cache=False,
            samples={"seq": np.zeros((2, 1, 3), np.float32), "t": np.zeros((2, 2, 3), np.float32)},
        )  # fmt: skip
    assert "input 'seq' is ndarray, and the input is a sequence" in str(bad.value) and "\n" not in str(bad.value)


def test_golden_vectors_of_another_length_fail_the_self_test() -> None:
    one = np.ones((1, 2), np.float32)
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [({}, {"parts": [one] * 3})]  # a sequence: a list of arrays

    def gives(*outputs: Any) -> Callable[[dict[str, np.ndarray]], list[Any]]:
        return lambda _: list(outputs)

    assert compare_outputs(gives([one] * 3), cases, ["parts"], 1e-3).passed
    assert not compare_outputs(gives([one] * 2), cases, ["parts"], 1e-3).passed  # one element short
    assert not compare_outputs(gives(np.ones((3, 1, 2), np.float32)), cases, ["parts"], 1e-3).passed  # stacked
    far = compare_outputs(gives([one, one, np.zeros((1, 2), np.float32)]), cases, ["parts"], 1e-3)
    assert far.max_abs_error == 1.0 and not far.passed


def test_tvm_refuses_a_sequence_in_one_line_and_onnx_runtime_wins(tmp_path: Path) -> None:
    result = edgekit.compile(_split_model(tmp_path / "m.onnx"), "x86_64", tmp_path / "build", pipeline=BOTH, use_cache=False)
    reports = {c.name: c for c in result.manifest.candidates}
    assert reports["ort"].status == "chosen" and reports["tvm"].status == "skipped"
    assert "output 'parts'" in reports["tvm"].reason and "tensors only" in reports["tvm"].reason
    assert "\n" not in reports["tvm"].reason
    with pytest.raises(EdgekitError) as caught:
        edgekit.compile(tmp_path / "m.onnx", "x86_64", tmp_path / "b2", backend="tvm", use_cache=False)
    assert "output 'parts'" in str(caught.value) and "\n" not in str(caught.value)


def test_serve_package_and_the_component_refuse_a_sequence_in_one_line(tmp_path: Path) -> None:
    from edgekit.cloud.servable import load_artifact
    from edgekit.manifest import tensors_only

    result = edgekit.compile(_split_model(tmp_path / "m.onnx"), "x86_64", tmp_path / "build", pipeline=QUICK, use_cache=False)
    with pytest.raises(ServeError) as served:
        load_artifact("m", result.artifact_dir)
    with pytest.raises(PackagingError) as packaged:
        edgekit.package([result.artifact_dir], name="com.example.Seq", output=tmp_path / "gg")
    for caught in (served, packaged):
        line = str(caught.value)
        assert "output 'parts' is a sequence (sequence of [1, 2] float32)" in line and "\n" not in line
    assert "KServe v2" in str(served.value) and "input sources" in str(packaged.value)
    assert not (tmp_path / "gg").exists()
    with pytest.raises(EdgekitError, match="the inference component carries tensors only"):
        tensors_only(read_manifest(result.artifact_dir), "the inference component", "its input sources make tensors")


def test_a_device_input_source_refuses_a_sequence_input_in_one_line() -> None:
    from edgekit.edge.errors import EdgeError
    from edgekit.edge.sources import parse_source
    from edgekit.manifest import TensorSpec

    specs = [TensorSpec(name="seq", shape=[-1, 3], dtype="float32", kind="sequence")]
    for text in ("synthetic", "file:x.npy", "mqtt:t/in"):
        with pytest.raises(EdgeError) as caught:
            parse_source(text, specs)
        assert f"input 'seq' is a sequence (sequence of [?, 3] float32), and input source '{text}'" in str(caught.value)
        assert "\n" not in str(caught.value)
    assert parse_source("synthetic", [TensorSpec(name="x", shape=[1, 3], dtype="float32")]) is not None


def sequence_samples() -> list[dict[str, Any]]:
    """``module:function`` samples of the insert model: a sequence as a list of arrays, [] an empty one."""
    rng = np.random.default_rng(3)
    f = np.float32
    return [
        {"seq": [rng.standard_normal((2, 3)).astype(f)], "t": rng.standard_normal((2, 3)).astype(f)},
        {"seq": [], "t": rng.standard_normal((2, 3)).astype(f)},
    ]


def test_sequence_samples_from_a_function_with_an_empty_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    model = _insert_model(tmp_path / "m.onnx")
    result = edgekit.compile(
        model, "x86_64", tmp_path / "build", pipeline=QUICK, use_cache=False, samples="test_sequences:sequence_samples"
    )
    assert result.manifest.samples is not None and result.manifest.samples.evaluation == 2
    st = result.manifest.selftest
    assert st is not None
    cases = read_selftest(result.artifact_dir / st.file, result.manifest.inputs, result.manifest.outputs)
    assert [len(feed["seq"]) for feed, _ in cases] == [1, 0]
