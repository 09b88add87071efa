"""XGBoost and LightGBM end to end: a model trained here on bundled data → file or pickle → onnxmltools → artifact,
its outputs compared with the framework's own predictions on held-out rows."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import joblib
import lightgbm as lgb  # the dev extra installs xgboost, lightgbm and onnxmltools: a missing one is a failure, not a skip
import numpy as np
import pytest
import xgboost as xgb
from helpers import ORT_ONLY
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

import edgekit
from edgekit.cli import main
from edgekit.compiler import compile_model
from edgekit.compiler.frontends import source_format
from edgekit.compiler.frontends.lightgbm import float32_thresholds
from edgekit.compiler.frontends.xgboost import ubjson_problem
from edgekit.errors import InputShapeError, MissingDependencyError, ModelConversionError, ModelLoadError

Split = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

# TVM can't take ai.onnx.ml tree ensembles (tests/compile/test_frontend_sklearn.py shows it is skipped with the reason)


def split(x: np.ndarray, y: np.ndarray) -> Split:
    """Even rows to train on, odd rows held out (float32, as the artifact takes them)."""
    x = x.astype(np.float32)
    return x[::2], y[::2], x[1::2], y[1::2]


@pytest.fixture(scope="module")
def wine() -> Split:
    return split(*load_wine(return_X_y=True))


@pytest.fixture(scope="module")
def cancer() -> Split:
    return split(*load_breast_cancer(return_X_y=True))


@pytest.fixture(scope="module")
def diabetes() -> Split:
    return split(*load_diabetes(return_X_y=True, scaled=False))


def compiled(path: Path, out_dir: Path, x: np.ndarray, *, trust_unknown_types: bool = False) -> edgekit.runtime.LoadedModel:
    result = compile_model(
        path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": list(x.shape)}, trust_unknown_types=trust_unknown_types
    )
    loaded = edgekit.load(result.artifact_dir)
    assert loaded.selftest().passed
    return loaded


# --------------------------------------------------------------------------- XGBoost


@pytest.mark.parametrize("suffix", [".json", ".ubj"])
def test_xgboost_classifier_file_matches_predict_proba(suffix: str, wine: Split, tmp_path: Path, out_dir: Path) -> None:
    x, y, xt, yt = wine
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    path = tmp_path / f"wine{suffix}"
    model.save_model(path)
    loaded = compiled(path, out_dir, xt)
    m = loaded.manifest
    assert (m.source.format, m.source.framework) == ("xgboost", f"xgboost {xgb.__version__}")
    assert loaded.outputs == ["label", "probabilities"]
    assert m.measured is not None and "XGBClassifier.predict/predict_proba" in m.measured.accuracy.reference

    label, proba = loaded.predict(xt)
    np.testing.assert_array_equal(label, model.predict(xt))
    np.testing.assert_allclose(proba, model.predict_proba(xt), atol=1e-5)
    assert len(set(label.tolist())) == 3 and np.mean(label == yt) > 0.85  # a real model on unseen rows


def test_xgboost_booster_from_train_binary(cancer: Split, tmp_path: Path, out_dir: Path) -> None:
    x, y, xt, _ = cancer
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 3}, xgb.DMatrix(x, label=y), num_boost_round=15)
    path = tmp_path / "cancer.json"
    booster.save_model(path)
    _, proba = compiled(path, out_dir, xt).predict(xt)
    want = booster.predict(xgb.DMatrix(xt))  # P(class 1)
    assert 0.05 < want.mean() < 0.95
    np.testing.assert_allclose(proba[:, 1], want, atol=1e-5)


def test_xgboost_pickled_regressor(diabetes: Split, tmp_path: Path, out_dir: Path) -> None:
    x, y, xt, _ = diabetes
    model = xgb.XGBRegressor(n_estimators=30, max_depth=3, random_state=0).fit(x, y)
    path = tmp_path / "reg.joblib"
    joblib.dump(model, path)
    loaded = compiled(path, out_dir, xt, trust_unknown_types=True)
    assert loaded.manifest.source.format == "xgboost"
    (got,) = loaded.predict(xt)
    want = model.predict(xt)
    assert np.ptp(want) > 50
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-5, atol=1e-3)


def test_xgboost_softmax_objective_says_what_to_train_with(wine: Split, tmp_path: Path, out_dir: Path) -> None:
    x, y, xt, _ = wine
    booster = xgb.train({"objective": "multi:softmax", "num_class": 3}, xgb.DMatrix(x, label=y), num_boost_round=2)
    path = tmp_path / "softmax.json"
    booster.save_model(path)
    with pytest.raises(ModelConversionError, match=r"softmax.json.*'multi:softprob'"):
        compiled(path, out_dir, xt)


def test_json_that_is_not_xgboost_is_one_line(tmp_path: Path, out_dir: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"layers": 3}')
    with pytest.raises(ModelLoadError, match=r"config.json' is JSON but not an XGBoost model") as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY)
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------- LightGBM


def test_lightgbm_text_classifier_matches_booster_predict(wine: Split, tmp_path: Path, out_dir: Path) -> None:
    x, y, xt, yt = wine
    model = lgb.LGBMClassifier(n_estimators=20, num_leaves=8, min_child_samples=5, verbose=-1).fit(x, y)
    path = tmp_path / "wine.txt"
    model.booster_.save_model(path)
    loaded = compiled(path, out_dir, xt)
    m = loaded.manifest
    assert (m.source.format, m.source.framework) == ("lightgbm", f"lightgbm {lgb.__version__}")
    assert m.measured is not None and "Booster.predict" in m.measured.accuracy.reference

    label, proba = loaded.predict(xt)
    want = lgb.Booster(model_file=path).predict(xt)
    np.testing.assert_allclose(proba, want, atol=1e-5)
    np.testing.assert_array_equal(label, np.argmax(want, axis=1))
    assert np.mean(label == yt) > 0.85


def test_lightgbm_text_regressor_takes_lightgbms_branches(diabetes: Split, tmp_path: Path, out_dir: Path) -> None:
    """Held-out rows often equal a training value next to a split: float32 thresholds rounded to nearest flip them."""
    x, y, xt, _ = diabetes
    model = lgb.LGBMRegressor(n_estimators=30, num_leaves=8, verbose=-1).fit(x, y)
    path = tmp_path / "reg.txt"
    model.booster_.save_model(path)
    (got,) = compiled(path, out_dir, xt).predict(xt)
    want = lgb.Booster(model_file=path).predict(xt)
    assert np.ptp(want) > 50
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-5, atol=1e-3)


def test_float32_thresholds_keep_every_prediction(diabetes: Split) -> None:
    x, y, xt, _ = diabetes
    booster = lgb.LGBMRegressor(n_estimators=30, num_leaves=8, verbose=-1).fit(x, y).booster_
    exact = lgb.Booster(model_str=float32_thresholds(booster.model_to_string()))
    rows = np.concatenate([x, xt])  # training rows sit exactly on the values the thresholds fall between
    np.testing.assert_array_equal(exact.predict(rows), booster.predict(rows))
    thresholds = [
        float(v) for line in exact.model_to_string().splitlines() if line.startswith("threshold=") for v in line[10:].split()
    ]
    assert thresholds and all(float(np.float32(t)) == t for t in thresholds)


def test_lightgbm_pickled_binary_classifier(cancer: Split, tmp_path: Path, out_dir: Path) -> None:
    x, y, xt, _ = cancer
    model = lgb.LGBMClassifier(n_estimators=15, num_leaves=8, verbose=-1).fit(x, y)
    path = tmp_path / "cancer.pkl"
    joblib.dump(model, path)
    loaded = compiled(path, out_dir, xt, trust_unknown_types=True)
    assert loaded.manifest.source.format == "lightgbm"
    label, proba = loaded.predict(xt)
    np.testing.assert_array_equal(label, model.predict(xt))
    np.testing.assert_allclose(proba, model.predict_proba(xt), atol=1e-5)


def test_txt_that_is_not_lightgbm_is_one_line(tmp_path: Path, out_dir: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    with pytest.raises(ModelLoadError, match=r"notes.txt' is not a LightGBM text model") as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.8, 0.9])
def test_truncated_files_are_one_line_not_a_crash(keep: float, wine: Split, tmp_path: Path, out_dir: Path) -> None:
    """LightGBM aborts the whole process (SIGABRT) on some truncated files; edgekit must refuse them first."""
    x, y, _, _ = wine
    whole = tmp_path / "whole.txt"
    lgb.LGBMClassifier(n_estimators=5, num_leaves=4, verbose=-1).fit(x, y).booster_.save_model(whole)
    booster = tmp_path / "whole.ubj"
    xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, y).save_model(booster)
    for full, name in [(whole, "cut.txt"), (booster, "cut.ubj")]:
        data = full.read_bytes()
        cut = tmp_path / name
        cut.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(ModelLoadError, match=rf"'{cut}' is (a truncated LightGBM model|not a complete UBJSON file)") as exc:
            compile_model(cut, "x86_64", out_dir, pipeline=ORT_ONLY)
        assert "\n" not in str(exc.value) and "[bt]" not in str(exc.value)


def test_every_truncation_of_a_ubj_is_caught_before_xgboost_reads_it(cancer: Split, tmp_path: Path) -> None:
    """xgboost 3.2 segfaults, or asks for gigabytes, on many truncated .ubj files (seen at 481, 881, 1521 of 13987 bytes)."""
    x, y, _, _ = cancer
    path = tmp_path / "m.ubj"
    xgb.XGBClassifier(n_estimators=8, max_depth=3).fit(x, y).save_model(path)
    data = path.read_bytes()
    assert ubjson_problem(data) is None
    cuts = sorted({*range(0, 64), *np.linspace(64, len(data) - 1, 300).astype(int).tolist()})
    assert all(ubjson_problem(data[:n]) is not None for n in cuts)
    assert ubjson_problem(data + b"Z") == "1 bytes after the end of the value"


def test_wrong_feature_count_names_the_shape(wine: Split, tmp_path: Path, out_dir: Path) -> None:
    x, y, _, _ = wine
    path = tmp_path / "wine.txt"
    lgb.LGBMClassifier(n_estimators=2, verbose=-1).fit(x, y).booster_.save_model(path)
    with pytest.raises(InputShapeError, match=r"must be \[batch, 13\]"):
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [4, 12]})


# --------------------------------------------------------------------------- detection and missing extras


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("m.json", "xgboost"),
        ("m.UBJ", "xgboost"),
        ("m.txt", "lightgbm"),
        ("m.tflite", "tflite"),
        ("m.keras", "keras"),
        ("m.h5", "keras"),
    ],
)
def test_format_from_suffix(name: str, fmt: str) -> None:
    assert source_format(name) == fmt


def test_folder_is_a_savedmodel_or_one_line(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"folder without saved_model.pb"):
        source_format(tmp_path)
    with pytest.raises(ModelLoadError, match=r"frozen.pb'.*pass the SavedModel folder"):
        source_format(tmp_path / "frozen.pb")
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert source_format(tmp_path) == "tensorflow"


@pytest.mark.parametrize(
    ("module", "suffix", "extra"),
    [("xgboost", ".json", "xgboost"), ("onnxmltools", ".txt", "lightgbm"), ("tensorflow", ".tflite", "tensorflow")],
)
def test_missing_extra_names_it(
    module: str, suffix: str, extra: str, wine: Split, tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x, y, _, _ = wine
    path = tmp_path / f"m{suffix}"
    if suffix == ".json":
        xgb.XGBClassifier(n_estimators=2).fit(x, y).save_model(path)
    elif suffix == ".txt":
        lgb.LGBMClassifier(n_estimators=2, verbose=-1).fit(x, y).booster_.save_model(path)
    else:
        path.write_bytes(b"TFL3")
    monkeypatch.setitem(sys.modules, module, None)  # import -> ImportError
    with pytest.raises(MissingDependencyError, match=rf"pip install 'edgekit\[{extra}\]'"):
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY)


@pytest.mark.parametrize(
    ("make", "blocked", "needle"),
    [
        (lambda d: (d / "m.tflite").write_bytes(b"TFL3"), "tensorflow", "pip install 'edgekit[tensorflow]'"),
        (lambda d: (d / "m.keras").write_bytes(b"PK"), "keras", "pip install 'edgekit[tensorflow]'"),
        (lambda d: (d / "m.json").write_text("[1, 2]"), None, "not an XGBoost model"),
        (lambda d: (d / "m.pb").write_bytes(b""), None, "pass the SavedModel folder"),
        (lambda d: (d / "m").mkdir(), None, "folder without saved_model.pb"),
    ],
)
def test_cli_says_it_in_one_line(
    make: Any,
    blocked: str | None,
    needle: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make(tmp_path)
    model = next(p for p in tmp_path.iterdir() if p.name.startswith("m"))
    if blocked is not None:
        monkeypatch.setitem(sys.modules, blocked, None)
        if blocked == "keras":
            monkeypatch.setitem(sys.modules, "tensorflow", None)
    code = main(["compile", str(model), "-t", "x86_64", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code != 0 and len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
