"""Dynamic dimensions (-1 or a name in --input-shape): ONNX Runtime artifacts keep them and run any size on them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch  # the dev extra installs torch: a missing one is a failure, not a skip
from helpers import make_mlp
from sklearn.datasets import load_wine
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import edgekit
from edgekit.cli import main
from edgekit.compiler import compile_model
from edgekit.compiler.frontends import input_shapes_from, parse_input_shapes
from edgekit.compiler.pipeline import CandidateSpec, MeasureSpec, Pipeline
from edgekit.errors import InferenceError, InputShapeError
from edgekit.manifest import TensorSpec, read_manifest

ORT = CandidateSpec(name="ort", backend="onnxruntime", options={"optimization": "extended"})
TVM = CandidateSpec(name="tvm", backend="tvm", options={"opt_level": 3})
BOTH = Pipeline(name="test-dyn", candidates=[ORT, TVM], measure=MeasureSpec(samples=3, warmup=0, repeat=3))


@pytest.mark.parametrize(
    ("specs", "want"),
    [
        (["seq:-1,-1,8"], {"seq": [-1, -1, 8]}),
        (["seq:batch,time,8"], {"seq": [-1, -1, 8]}),
        (['{"input": [1, 3, 224, 224]}'], {"input": [1, 3, 224, 224]}),
        (['{"a": [-1, 4], "b": [1, 2]}'], {"a": [-1, 4], "b": [1, 2]}),
        (["input:[1,3,224,224] other:[-1, 8]"], {"input": [1, 3, 224, 224], "other": [-1, 8]}),
        (["a:[1,2],b:[3]"], {"a": [1, 2], "b": [3]}),
        (["x:1x8"], {"x": [1, 8]}),
        (["ids:batch,max_len"], {"ids": [-1, -1]}),
    ],
)
def test_input_shape_forms(specs: list[str], want: dict[str, list[int]]) -> None:
    assert parse_input_shapes(specs) == want


def test_api_takes_strings_and_mappings() -> None:
    assert input_shapes_from("x:batch,8") == {"x": [-1, 8]}
    assert input_shapes_from({"x": ["batch", 8], "y": (2, -1)}) == {"x": [-1, 8], "y": [2, -1]}
    for bad in ({"x": 3}, {"x": [0, 8]}, 42):
        with pytest.raises(InputShapeError, match="accepted forms"):
            input_shapes_from(bad)


def test_old_manifest_specs_load_and_new_ones_round_trip() -> None:
    old = TensorSpec.model_validate({"name": "x", "shape": [1, 13], "dtype": "float32"})
    assert old.dynamic_dims is None and "dynamicDims" not in old.model_dump(mode="json", by_alias=True)
    assert old.accepts([1, 13]) and not old.accepts([8, 13])
    new = TensorSpec.model_validate(json.loads(json.dumps({**old.model_dump(by_alias=True), "dynamicDims": {"0": "batch"}})))
    assert new.dynamic_dims == {0: "batch"} and new.accepts([8, 13]) and not new.accepts([8, 12]) and not new.accepts([13])


def _mlp(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(in_features=8, batch="N"), str(path))
    return path


@pytest.mark.parametrize("candidate", [ORT, TVM], ids=["onnxruntime", "tvm"])
def test_onnx_mlp_keeps_a_dynamic_batch(candidate: CandidateSpec, tmp_path: Path, out_dir: Path) -> None:
    path = _mlp(tmp_path)
    pipeline = Pipeline(name="one", candidates=[candidate], measure=BOTH.measure)
    result = compile_model(path, "x86_64", out_dir, pipeline=pipeline, input_shapes=parse_input_shapes(["x:-1,8"]))
    m = read_manifest(result.artifact_dir)
    assert m.backend.name == candidate.backend  # TVM: Relax keeps the batch a symbolic shape variable
    (spec,) = m.inputs
    assert spec.dynamic_dims == {0: "N"} and spec.shape == [1, 8]
    assert spec.measured_shapes is not None and len({s[0] for s in spec.measured_shapes}) >= 2
    assert m.outputs[0].dynamic_dims == {0: "N"}
    loaded = edgekit.load(result.artifact_dir, self_test=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch in (1, 3, 8, 1):
        x = rng.standard_normal((batch, 8)).astype(np.float32)
        (got,) = loaded.predict(x)
        np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(InferenceError, match=r"expects shape \[N, 8\] float32, any size on the named dimensions, got \[3, 7\]"):
        loaded.predict(np.zeros((3, 7), np.float32))


def test_tuning_refuses_a_dynamic_dimension_in_one_line(tmp_path: Path, out_dir: Path) -> None:
    tuned = CandidateSpec(name="tvm-tuned", backend="tvm", options={"tune": 4})
    pipeline = Pipeline(name="t", candidates=[ORT, tuned], measure=BOTH.measure)
    result = compile_model(_mlp(tmp_path), "x86_64", out_dir, pipeline=pipeline, input_shapes={"x": [-1, 8]})
    reason = next(c.reason for c in result.manifest.candidates if c.name == "tvm-tuned")
    assert "MetaSchedule tunes static shapes only: input 'x' dimension 0 ('N') is dynamic" in reason
    assert result.manifest.backend.name == "onnxruntime"


def test_a_fixed_dimension_cannot_be_made_dynamic(mlp_onnx: Path, tmp_path: Path, out_dir: Path) -> None:
    with pytest.raises(InputShapeError, match=r"dimension 0 is fixed to 1 in the model and can't be made dynamic"):
        compile_model(mlp_onnx, "x86_64", out_dir, pipeline=BOTH, input_shapes={"x": [-1, 8]})


def test_sklearn_pipeline_runs_a_batch_of_8_rows(tmp_path: Path, out_dir: Path) -> None:
    x, y = load_wine(return_X_y=True)
    x = x.astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    path = tmp_path / "wine.joblib"
    joblib.dump(model, path)
    rows = x[::22][:8]
    assert (
        main(
            [
                "compile",
                str(path),
                "-t",
                "x86_64",
                "-o",
                str(out_dir),
                "-s",
                "input:-1,13",
                "--backend",
                "onnxruntime",
                "--trust-unknown-types",
            ]
        )
        == 0
    )
    artifact = next(p for p in out_dir.iterdir() if p.is_dir())
    loaded = edgekit.load(artifact, self_test=True)
    for batch in (1, 3, 8):
        label, proba = loaded.predict(rows[:batch])
        assert label.tolist() == model.predict(rows[:batch]).tolist()
        np.testing.assert_allclose(proba, model.predict_proba(rows[:batch]), atol=1e-5)
    np.save(tmp_path / "rows.npy", rows)
    assert main(["run", str(artifact), "-i", f"input={tmp_path / 'rows.npy'}", "--json"]) == 0


def test_gru_with_a_dynamic_batch_and_time_axis(tmp_path: Path, out_dir: Path) -> None:
    class Gru(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gru = torch.nn.GRU(8, 16, batch_first=True)
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, seq: Any) -> Any:
            out, _ = self.gru(seq)
            return self.fc(out[:, -1])

    torch.manual_seed(0)
    module = Gru().eval()
    path = tmp_path / "gru.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(2, 5, 8),),
            str(path),
            input_names=["seq"],
            output_names=["logits"],
            dynamic_axes={"seq": {0: "batch", 1: "time"}, "logits": {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )
    result = compile_model(path, "x86_64", out_dir, pipeline=BOTH, input_shapes=parse_input_shapes(["seq:batch,time,8"]))
    m = result.manifest
    assert m.backend.name == "onnxruntime" and m.inputs[0].dynamic_dims == {0: "batch", 1: "time"}
    shapes = m.inputs[0].measured_shapes or []
    assert len({s[0] for s in shapes}) >= 2 and len({s[1] for s in shapes}) >= 2  # other batches and lengths checked
    assert "cannot import op 'GRU'" in next(c.reason for c in m.candidates if c.backend == "tvm")  # no Relax converter
    loaded = edgekit.load(result.artifact_dir, self_test=True)
    rng = np.random.default_rng(2)
    for batch, time in ((1, 1), (3, 7), (8, 20)):
        seq = rng.standard_normal((batch, time, 8)).astype(np.float32)
        (got,) = loaded.predict(seq)
        with torch.no_grad():
            want = module(torch.from_numpy(seq)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with pytest.raises(InferenceError, match=r"expects shape \[batch, time, 8\]"):
        loaded.predict(np.zeros((2, 4, 9), np.float32))


def test_torch_and_tensorflow_models_refuse_a_dynamic_dimension_in_one_line(tmp_path: Path, out_dir: Path) -> None:
    with pytest.raises(InputShapeError, match=r"dynamic dimension .* ONNX, scikit-learn, XGBoost and LightGBM models only"):
        compile_model("tests.nosuch:factory", "x86_64", out_dir, pipeline=BOTH, input_shapes={"input": [-1, 8]})


@pytest.mark.parametrize("candidate", [ORT, TVM], ids=["onnxruntime", "tvm"])
def test_conv_over_a_dynamic_time_axis(candidate: CandidateSpec, tmp_path: Path, out_dir: Path) -> None:
    class Tcn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(8, 16, 3, padding=1)
            self.fc = torch.nn.Linear(16, 3)

        def forward(self, seq: Any) -> Any:
            return self.fc(torch.relu(self.conv(seq)).mean(dim=2))

    torch.manual_seed(0)
    module = Tcn().eval()
    path = tmp_path / "tcn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(2, 8, 5),),
            str(path),
            input_names=["seq"],
            output_names=["logits"],
            dynamic_axes={"seq": {0: "batch", 2: "time"}, "logits": {0: "batch"}},
            dynamo=False,
            opset_version=17,
        )
    pipeline = Pipeline(name="one", candidates=[candidate], measure=BOTH.measure)
    result = compile_model(path, "x86_64", out_dir, pipeline=pipeline, input_shapes={"seq": ["batch", 8, "time"]})
    assert result.manifest.backend.name == candidate.backend
    loaded = edgekit.load(result.artifact_dir, self_test=True)
    rng = np.random.default_rng(3)
    for batch, time in ((1, 1), (3, 7), (8, 20)):
        seq = rng.standard_normal((batch, 8, time)).astype(np.float32)
        (got,) = loaded.predict(seq)
        with torch.no_grad():
            want = module(torch.from_numpy(seq)).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_a_bad_form_is_one_line_naming_the_flag(mlp_onnx: Path, out_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(mlp_onnx), "-t", "x86_64", "-o", str(out_dir), "-s", "x:[1,8] y:(2)"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--input-shape 'x:[1,8] y:(2)'" in err[0] and "tvmc's NAME:[D1,D2,...]" in err[0]
