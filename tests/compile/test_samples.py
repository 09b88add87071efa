"""Compiling with the user's own data: samples fix shapes and drive the checks, inputs synthesized by role,
the onnx.reference fallback, an accuracy gate on labels. Tiny models generated here."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import make_mlp
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.compiler.synthetic import input_roles, synthesize
from edgekit.errors import AccuracyError, EdgekitError, SamplesError
from edgekit.manifest import TensorSpec

ORT_ONLY = {"name": "ort", "backend": "onnxruntime"}


def _pipeline(*candidates: Mapping[str, object], **accuracy: float) -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": "samples-test",
            "candidates": list(candidates),
            "measure": {"samples": 4, "warmup": 1, "repeat": 3, "calibrationSamples": 64},
            **({"accuracy": accuracy} if accuracy else {}),
        }
    )


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _gather_model() -> onnx.ModelProto:
    """Embedding-like: Gather rows of a 5x4 table by int64 ids (random ints 0..9 would fall outside it)."""
    table = numpy_helper.from_array(np.arange(20, dtype=np.float32).reshape(5, 4), "table")
    nodes = [
        helper.make_node("Cast", ["ids"], ["ids64"], to=TensorProto.INT64, name="cast"),
        helper.make_node("Gather", ["table", "ids64"], ["rows"], axis=0, name="embed"),
        helper.make_node("Reshape", ["rows", "shape"], ["out"], name="reshape"),
    ]
    graph = helper.make_graph(
        nodes,
        "gather",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT32, [3]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["a", "b"])],
        [table],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_samples_fix_a_dynamic_dimension_and_are_recorded(tmp_path: Path) -> None:
    path = _save(make_mlp(batch="N"), tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((12, 8)).astype(np.float32)  # 12 samples along the batch axis
    np.savez(tmp_path / "val.npz", x=x)
    result = edgekit.compile(path, "x86_64", tmp_path / "build", samples=tmp_path / "val.npz", pipeline=_pipeline(ORT_ONLY))
    manifest = result.manifest
    assert manifest.inputs[0].shape == [1, 8]
    assert manifest.samples is not None and (manifest.samples.evaluation, manifest.samples.calibration) == (12, 0)
    assert manifest.measured is not None and manifest.measured.accuracy.inputs == "samples"
    assert manifest.measured.accuracy.samples == 12
    # the self-test golden vectors are the user's own inputs
    golden = np.load(result.artifact_dir / "selftest.npz")
    assert np.array_equal(golden["0/in/x"], x[:1])


def test_samples_as_a_folder_and_a_function_stacked_on_a_new_axis(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _save(make_mlp(batch="N"), tmp_path / "mlp.onnx")
    folder = tmp_path / "val"
    folder.mkdir()
    np.save(folder / "x.npy", np.ones((3, 2, 8), np.float32))  # 3 samples of batch 2
    result = edgekit.compile(path, "x86_64", tmp_path / "b1", samples=folder, pipeline=_pipeline(ORT_ONLY))
    assert result.manifest.inputs[0].shape == [2, 8]
    (tmp_path / "mysamples.py").write_text(
        "import numpy as np\ndef gen():\n    for i in range(3):\n        yield {'x': np.full((4, 8), i, np.float32)}\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = edgekit.compile(path, "x86_64", tmp_path / "b2", samples="mysamples:gen", pipeline=_pipeline(ORT_ONLY))
    assert result.manifest.inputs[0].shape == [4, 8] and result.manifest.samples is not None
    assert result.manifest.samples.evaluation == 3


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"y": np.zeros((4, 8), np.float32)}, r"'y' is not an input of the model \(inputs: x\)"),
        ({"x": np.zeros((4, 7), np.float32)}, r"array 'x' has shape \[4, 7\].*input 'x' takes \[1, 8\]"),
        ({"x": np.zeros((4, 8), np.complex64)}, r"input 'x' takes float32, but the samples hold complex64"),
        (
            {"x": np.zeros((4, 8), np.float32), "labels": np.array([0, 1, 9, 2])},
            r"'labels' holds 9, but output 'probs' scores 4 classes",
        ),
        (
            {"x": np.zeros((4, 8), np.float32), "labels": np.zeros(3, np.int64)},
            r"'labels' has shape \[3\]; expected its first axis to be the 4 samples",
        ),
    ],
)
def test_samples_that_do_not_match_the_model_fail_in_one_line(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = _save(make_mlp(), tmp_path / "mlp.onnx")
    with pytest.raises(SamplesError, match=message) as err:
        edgekit.compile(path, "x86_64", tmp_path / "build", samples=arrays, pipeline=_pipeline(ORT_ONLY))
    assert "\n" not in str(err.value)


def test_too_few_samples_to_keep_calibration_apart(tmp_path: Path) -> None:
    path = _save(make_mlp(), tmp_path / "mlp.onnx")
    int8 = {"name": "int8", "backend": "onnxruntime", "passes": [{"quantize": {"calibration": "samples"}}]}
    with pytest.raises(SamplesError, match=r"hold 1 sample; int8 calibration and the accuracy check need at least 2"):
        edgekit.compile(path, "x86_64", tmp_path / "build", samples={"x": np.zeros((1, 8), np.float32)}, pipeline=_pipeline(int8))


def test_unreadable_samples_name_the_file(tmp_path: Path) -> None:
    path = _save(make_mlp(), tmp_path / "mlp.onnx")
    bad = tmp_path / "val.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(SamplesError, match=r"samples '.*val.npz' is not a readable .npz"):
        edgekit.compile(path, "x86_64", tmp_path / "build", samples=bad)
    with pytest.raises(SamplesError, match=r"samples 'nowhere.npz' does not exist"):
        edgekit.compile(path, "x86_64", tmp_path / "build", samples="nowhere.npz")


def test_inputs_are_synthesized_by_their_role_in_the_graph(tmp_path: Path) -> None:
    model = _gather_model()
    roles = input_roles(model)
    assert (roles["ids"].op, roles["ids"].bound) == ("Gather", 5)  # found through the Cast
    assert roles["shape"].kind == "reshape"
    specs = [TensorSpec(name="ids", shape=[3], dtype="int32"), TensorSpec(name="shape", shape=[2], dtype="int64")]
    for feed in synthesize(model, specs, 10, 0):
        assert feed["ids"].min() >= 0 and feed["ids"].max() < 5
        assert feed["shape"].tolist() == [-1, 1]
    # integer inputs no longer break the reference: the model compiles without samples
    result = edgekit.compile(_save(model, tmp_path / "gather.onnx"), "x86_64", tmp_path / "build", pipeline=_pipeline(ORT_ONLY))
    assert result.manifest.measured is not None and result.manifest.measured.accuracy.inputs == "synthesized"


def test_a_source_that_cannot_run_on_synthesized_inputs_names_the_input_and_asks_for_samples(tmp_path: Path) -> None:
    """ids + 100 index a 5-row table: no made-up value can know that; the user's samples can."""
    table = numpy_helper.from_array(np.ones((5, 2), np.float32), "table")
    hundred = numpy_helper.from_array(np.array(100, np.int64), "hundred")
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["ids", "hundred"], ["shifted"], name="shift"),
            helper.make_node("Gather", ["table", "shifted"], ["out"], axis=0, name="embed"),
        ],
        "shifted",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 2])],
        [table, hundred],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _save(model, tmp_path / "shifted.onnx")
    with pytest.raises(SamplesError, match=r"synthesized values for input\(s\) 'ids'.*pass real inputs with --samples") as err:
        edgekit.compile(path, "x86_64", tmp_path / "build", pipeline=_pipeline(ORT_ONLY))
    assert "\n" not in str(err.value)
    ok = edgekit.compile(
        path, "x86_64", tmp_path / "build", pipeline=_pipeline(ORT_ONLY), samples={"ids": np.array([[-100, -96]])}
    )
    assert ok.manifest.measured is not None


def test_the_reference_falls_back_to_onnx_reference_when_onnx_runtime_cannot_run_the_source(tmp_path: Path) -> None:
    """ONNX Runtime has no int16 Max kernel; ONNX's reference implementation has, and TVM compiles it."""
    graph = helper.make_graph(
        [helper.make_node("Max", ["a", "b"], ["c"], name="max")],
        "int16max",
        [helper.make_tensor_value_info("a", TensorProto.INT16, [4]), helper.make_tensor_value_info("b", TensorProto.INT16, [4])],
        [helper.make_tensor_value_info("c", TensorProto.INT16, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _save(model, tmp_path / "int16max.onnx")
    tvm = {"name": "tvm", "backend": "tvm", "options": {"opt_level": 3}}
    result = edgekit.compile(path, "x86_64", tmp_path / "build", pipeline=_pipeline(ORT_ONLY, tvm))
    assert result.manifest.backend.name == "tvm"
    assert result.manifest.measured is not None
    assert result.manifest.measured.accuracy.reference.startswith("onnx.reference")
    assert result.manifest.measured.accuracy.max_abs_error == 0.0
    a, b = np.array([1, 20, 3, -4], np.int16), np.array([10, 2, 30, -40], np.int16)
    (c,) = edgekit.load(result.artifact_dir).predict({"a": a, "b": b})
    assert c.tolist() == [10, 20, 30, -4]
    skipped = next(c for c in result.manifest.candidates if c.name == "ort")
    assert skipped.status == "skipped" and "Max" in skipped.reason


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """scikit-learn's digits MLP with its real held-out images and labels."""
    import skops.io as sio
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x.astype(np.float32), y, test_size=0.4, random_state=0)
    model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x_train, y_train)
    path = tmp_path_factory.mktemp("digits") / "digits.skops"  # skops
    sio.dump(model, path)
    return path, x_test, y_test


def _int8_only(budget: dict[str, float], **options: object) -> Pipeline:
    int8 = {
        "name": "int8",
        "backend": "onnxruntime",
        "passes": [{"quantize": {"calibration": "samples", "keep_float": "never", **options}}],
        "accuracy": budget,
    }
    return _pipeline(int8)


TIGHT = {"maxAbsError": 1e-3, "minTop1Agreement": 0.999, "maxAccuracyDrop": 1.0}


def test_int8_rejected_on_agreement_is_accepted_on_labelled_accuracy(
    digits: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path, x, y = digits
    with pytest.raises(AccuracyError, match=r"max abs error"):  # synthesized inputs: judged by agreement only
        edgekit.compile(path, "x86_64", tmp_path / "a", pipeline=_int8_only(TIGHT), trust_unknown_types=True)
    result = edgekit.compile(
        path, "x86_64", tmp_path / "b", pipeline=_int8_only(TIGHT), samples={"input": x, "labels": y}, trust_unknown_types=True
    )
    accuracy = result.manifest.measured.accuracy if result.manifest.measured else None
    assert accuracy is not None and accuracy.top1_accuracy is not None and accuracy.source_top1_accuracy is not None
    assert accuracy.source_top1_accuracy > 0.9  # real digits, real labels
    assert (accuracy.source_top1_accuracy - accuracy.top1_accuracy) * 100 <= 1.0
    assert accuracy.max_abs_error > TIGHT["maxAbsError"]  # it does differ from the float model
    info = result.manifest.samples
    assert info is not None and info.truth == "labels" and info.calibration == 64 and info.evaluation == len(x) - 64
    saved = json.loads((result.artifact_dir / "manifest.json").read_text())
    assert saved["measured"]["accuracy"]["sourceTop1Accuracy"] == accuracy.source_top1_accuracy
    assert edgekit.load(result.artifact_dir).selftest().passed  # its tolerance follows what was measured


def test_a_ruined_int8_candidate_is_rejected_on_labelled_accuracy(
    digits: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path, x, y = digits
    np.savez(tmp_path / "calib.npz", input=x[:32] * 1e4)  # calibrated on values 10,000x too large: ranges ruined
    with pytest.raises(AccuracyError, match=r"top-1 accuracy .* points lost > 1") as err:
        edgekit.compile(
            path, "x86_64", tmp_path / "b", pipeline=_int8_only(TIGHT, calibration=str(tmp_path / "calib.npz")),
            samples={"input": x, "labels": y}, trust_unknown_types=True,
        )  # fmt: skip
    assert "\n" not in str(err.value)


def test_int8_keeps_its_most_sensitive_layers_in_float_until_the_budget_holds(tmp_path: Path) -> None:
    """A hidden channel biased to 1e4 sets the int8 range of its activation: every other channel rounds to 0.
    That channel doesn't matter for the answer; keeping that activation float (its producer and consumer) does."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 32)).astype(np.float32)
    b1 = np.zeros(32, np.float32)
    b1[0] = 1e4
    w2 = rng.standard_normal((32, 32)).astype(np.float32) * 0.3
    w2[0, :] = 0
    w3 = rng.standard_normal((32, 10)).astype(np.float32) * 0.3
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
            helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
            helper.make_node("Relu", ["hb"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["h2"], name="fc2"),
            helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
            helper.make_node("MatMul", ["r2", "w3"], ["logits"], name="fc3"),
        ],
        "sensitive",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (w3, "w3"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _save(model, tmp_path / "sensitive.onnx")
    x = rng.standard_normal((200, 16)).astype(np.float32)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path))
    labels = np.array([session.run(None, {"x": x[i : i + 1]})[0].argmax() for i in range(len(x))])
    budget = {"maxAbsError": 1.0, "minTop1Agreement": 0.5, "maxAccuracyDrop": 2.0}

    def int8(keep_float: str) -> Pipeline:
        quantize = {"quantize": {"keep_float": keep_float}}
        return _pipeline({"name": "int8", "backend": "onnxruntime", "passes": [quantize], "accuracy": budget})

    samples = {"x": x, "labels": labels}
    with pytest.raises(AccuracyError, match=r"points lost"):
        edgekit.compile(path, "x86_64", tmp_path / "a", pipeline=int8("never"), samples=samples)
    result = edgekit.compile(path, "x86_64", tmp_path / "b", pipeline=int8("auto"), samples=samples)
    report = result.manifest.candidates[0]
    assert report.status == "chosen" and report.kept_float, "some layers had to stay float"
    saved = json.loads((result.artifact_dir / "manifest.json").read_text())
    assert saved["candidates"][0]["keptFloat"] == report.kept_float
    ops = {n.op_type for n in onnx.load(str(result.artifact_dir / "model.onnx")).graph.node}
    assert "QuantizeLinear" in ops or "QLinearMatMul" in ops or "MatMulInteger" in ops  # the rest is still int8


def test_no_candidate_meets_the_budget_lists_what_each_reached(
    digits: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    path, x, y = digits
    budget = {"maxAbsError": 1e-3, "minTop1Agreement": 0.999, "maxAccuracyDrop": 0.0}
    np.savez(tmp_path / "calib.npz", input=x[:32] * 1e4)
    int8 = {"name": "int8", "backend": "onnxruntime", "accuracy": budget,
            "passes": [{"quantize": {"calibration": str(tmp_path / "calib.npz"), "keep_float": "never"}}]}  # fmt: skip
    with pytest.raises(AccuracyError, match=r"int8: outside the accuracy budget: top-1 accuracy") as err:
        edgekit.compile(
            path, "x86_64", tmp_path / "b", pipeline=_pipeline(int8), samples={"input": x, "labels": y}, trust_unknown_types=True
        )
    assert isinstance(err.value, EdgekitError) and "\n" not in str(err.value)


def test_cli_takes_samples_and_names_bad_ones_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgekit.cli import main

    path = _save(make_mlp(batch="N"), tmp_path / "mlp.onnx")
    x = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    np.savez(tmp_path / "val.npz", x=x, labels=np.zeros(10, np.int64))
    assert (
        main(
            [
                "compile",
                str(path),
                "-t",
                "x86_64",
                "-o",
                str(tmp_path / "b"),
                "-b",
                "onnxruntime",
                "--samples",
                str(tmp_path / "val.npz"),
            ]
        )
        == 0
    )
    manifest = json.loads((tmp_path / "b" / "mlp-x86_64" / "manifest.json").read_text())
    assert manifest["samples"]["evaluation"] == 10 and manifest["samples"]["truth"] == "labels"
    assert manifest["measured"]["accuracy"]["sourceTop1Accuracy"] is not None
    capsys.readouterr()
    np.savez(tmp_path / "bad.npz", x=x.astype(np.int64).astype(np.complex64))
    code = main(["compile", str(path), "-t", "x86_64", "-o", str(tmp_path / "c"), "--samples", str(tmp_path / "bad.npz")])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # progress lines come before it
    assert code == 27 and last.startswith("error: ") and "input 'x' takes float32" in last


def test_a_scalar_input_runs_on_tvm(tmp_path: Path) -> None:
    """0-d inputs (Clip's bounds here) reach TVM as 0-d tensors: the runtime's aligned copy keeps their rank."""
    graph = helper.make_graph(
        [helper.make_node("Clip", ["x", "lo", "hi"], ["y"], name="clip")],
        "clip",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [4]),
            helper.make_tensor_value_info("lo", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("hi", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = _save(model, tmp_path / "clip.onnx")
    samples = {
        "x": np.array([[-2.0, -0.5, 0.5, 2.0]], np.float32),
        "lo": np.array([-1.0], np.float32),
        "hi": np.array([1.0], np.float32),
    }
    result = edgekit.compile(
        path, "x86_64", tmp_path / "b", backend="tvm", samples=samples, pipeline=_pipeline({"name": "tvm", "backend": "tvm"})
    )
    (y,) = edgekit.load(result.artifact_dir).predict(
        {"x": samples["x"][0], "lo": np.float32(-1.0) * np.ones((), np.float32), "hi": np.ones((), np.float32)}
    )
    assert y.tolist() == [-1.0, -0.5, 0.5, 1.0]
