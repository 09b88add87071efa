"""The scikit-learn frontend end to end: a joblib pickle → skl2onnx → artifact → predict, on real dataset rows."""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib  # the dev extra installs scikit-learn, skl2onnx and joblib: a missing one is a failure, not a skip
import numpy as np
import onnx
import pytest
import skops.io
from sklearn.datasets import load_diabetes, load_digits, load_iris, make_regression
from sklearn.decomposition import PCA
from sklearn.ensemble import (
    GradientBoostingRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler
from sklearn.semi_supervised import LabelSpreading
from sklearn.svm import SVC, LinearSVC

import edgekit
from edgekit.cli import main
from edgekit.compiler import compile_model
from edgekit.compiler.pipeline import CandidateSpec, MeasureSpec, Pipeline
from edgekit.errors import (
    InputShapeError,
    ModelConversionError,
    ModelLoadError,
    UnsupportedOperatorError,
)

Data = tuple[np.ndarray, np.ndarray]

FAST = Pipeline(
    name="test-fast",
    candidates=[
        CandidateSpec(name="ort", backend="onnxruntime", options={"optimization": "extended"}),
        CandidateSpec(name="tvm", backend="tvm", options={"opt_level": 3}),
    ],
    measure=MeasureSpec(samples=3, warmup=0, repeat=3),
)
ORT_ONLY = Pipeline(name="test-ort", candidates=[FAST.candidates[0]], measure=FAST.measure)


def assert_no_artifact(out: Path) -> None:
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], f"leftovers in {out}: {left}"


def rows(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """n real rows spread over every class/target range (float32, as the artifact takes them)."""
    order = np.argsort(y, kind="stable")
    picked: np.ndarray = x[order[np.linspace(0, len(y) - 1, n).astype(int)]].astype(np.float32)
    return picked


@pytest.fixture(scope="module")
def iris() -> Data:
    x, y = load_iris(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def digits() -> Data:
    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def forest(digits: tuple[np.ndarray, np.ndarray]) -> RandomForestClassifier:
    x, y = digits
    return RandomForestClassifier(n_estimators=4, max_depth=6, random_state=0).fit(x, y)


def dump(model: Any, path: Path) -> Path:
    joblib.dump(model, path)
    return path


# --------------------------------------------------------------------------- classifiers and regressors


def _check_classifier(model: Any, path: Path, out_dir: Path, x: np.ndarray, trust: bool = True) -> edgekit.runtime.LoadedModel:
    n, f = x.shape
    result = compile_model(path, "x86_64", out_dir, pipeline=FAST, input_shapes={"input": [n, f]}, trust_unknown_types=trust)
    assert not result.cache_hit
    loaded = edgekit.load(result.artifact_dir)
    m = loaded.manifest

    assert m.source.format == "sklearn"
    assert m.source.framework.startswith("scikit-learn ")
    assert m.source.size_bytes == path.stat().st_size
    assert [(s.name, s.shape, s.dtype) for s in m.inputs] == [("input", [n, f], "float32")]
    assert loaded.outputs == ["label", "probabilities"]
    assert [s.shape for s in m.outputs] == [[n], [n, len(model.classes_)]]
    assert m.measured is not None and "predict_proba" in m.measured.accuracy.reference

    label, proba = loaded.predict(x)
    want = model.predict(x)
    np.testing.assert_array_equal(label, want)
    np.testing.assert_allclose(proba, model.predict_proba(x), atol=1e-5)
    # not a degenerate model: the rows cover several classes and the forest tells them apart
    assert len(set(want.tolist())) >= 3
    assert loaded.selftest().passed
    return loaded


def test_random_forest_matches_predict_and_proba(
    forest: RandomForestClassifier, digits: Data, tmp_path: Path, out_dir: Path
) -> None:
    x, y = digits
    path = dump(forest, tmp_path / "forest.joblib")
    loaded = _check_classifier(forest, path, out_dir, rows(x, y, 40))
    assert loaded.manifest.backend.name == "onnxruntime"  # TVM cannot take ai.onnx.ml tree ensembles
    assert loaded.manifest.name == "forest-x86_64"


def test_scaler_logistic_pipeline_matches_predict_and_proba(iris: Data, tmp_path: Path, out_dir: Path) -> None:
    x, y = iris
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, y)
    path = dump(model, tmp_path / "logreg.pkl")
    _check_classifier(model, path, out_dir, rows(x, y, 30))


def test_string_labels_survive(iris: Data, tmp_path: Path, out_dir: Path) -> None:
    x, y = iris
    names = np.array(["setosa", "versicolor", "virginica"])[y]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x, names)
    path = dump(model, tmp_path / "named.joblib")
    xs = rows(x, y, 12)
    result = compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [12, 4]}, trust_unknown_types=True)
    label, _ = edgekit.load(result.artifact_dir).predict(xs)
    assert label.tolist() == model.predict(xs).tolist()


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(LinearRegression, id="linear"),
        pytest.param(lambda: GradientBoostingRegressor(n_estimators=10, max_depth=2, random_state=0), id="gbr"),
    ],
)
def test_regressor_matches_predict(make: Callable[[], Any], tmp_path: Path, out_dir: Path) -> None:
    x, y = load_diabetes(return_X_y=True, scaled=False)
    x = x.astype(np.float32)
    model = make().fit(x, y)
    path = dump(model, tmp_path / "reg.joblib")
    xs = rows(x, y, 25)
    result = compile_model(path, "x86_64", out_dir, pipeline=FAST, input_shapes={"input": [25, 10]}, trust_unknown_types=True)
    loaded = edgekit.load(result.artifact_dir)
    assert loaded.manifest.source.format == "sklearn"
    assert loaded.manifest.measured is not None and "scikit-learn" in loaded.manifest.measured.accuracy.reference
    assert [s.shape for s in loaded.manifest.outputs] == [[25, 1]]
    (got,) = loaded.predict(xs)
    want = model.predict(xs)
    assert np.ptp(want) > 50  # targets range over ~25..346: a constant output would fail below
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(
    ("make", "check"),
    [
        # classifiers without predict_proba: label + decision scores, no ZipMap
        pytest.param(lambda: LinearSVC(), "decision_function", id="LinearSVC"),
        pytest.param(lambda: SVC(), "decision_function", id="SVC"),
        # transformers: no predict at all
        pytest.param(lambda: PCA(n_components=2), "transform", id="PCA"),
        pytest.param(StandardScaler, "transform", id="StandardScaler"),
    ],
)
def test_models_without_predict_proba(make: Callable[[], Any], check: str, iris: Data, tmp_path: Path, out_dir: Path) -> None:
    x, y = iris
    model = make().fit(x, y)
    path = dump(model, tmp_path / "m.joblib")
    xs = rows(x, y, 15)
    result = compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [15, 4]}, trust_unknown_types=True)
    outs = edgekit.load(result.artifact_dir).predict(xs)
    assert all(isinstance(o, np.ndarray) and o.dtype != object for o in outs)
    if check == "decision_function":
        label, scores = outs
        np.testing.assert_array_equal(label, model.predict(xs))
        np.testing.assert_allclose(scores, model.decision_function(xs), atol=1e-4)
    else:
        (got,) = outs
        np.testing.assert_allclose(got, model.transform(xs), atol=1e-4)


# --------------------------------------------------------------------------- TVM and tree ensembles


def test_tvm_rejects_forest_before_compiling(
    forest: RandomForestClassifier, tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = dump(forest, tmp_path / "forest.joblib")
    from edgekit.compiler.backends.tvm import TvmBackend

    def must_not_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("the op check must come before any compiling")

    monkeypatch.setattr(TvmBackend, "compile", must_not_compile)
    with pytest.raises(UnsupportedOperatorError) as exc:
        compile_model(
            path, "x86_64", out_dir, pipeline=FAST, backend="tvm", input_shapes={"input": [1, 64]}, trust_unknown_types=True
        )

    err = exc.value
    assert err.backend == "tvm"
    ops = [op for op, _, _ in err.ops]
    assert any(op.endswith("TreeEnsembleClassifier") and op.startswith("ai.onnx.ml") for op in ops), ops
    msg = str(err)
    assert "TreeEnsembleClassifier" in msg and "'tvm'" in msg
    node = next(node for op, node, _ in err.ops if op.endswith("TreeEnsembleClassifier"))
    assert node and f"node '{node}'" in msg
    assert_no_artifact(out_dir)


def test_default_pipeline_still_compiles_forest(
    forest: RandomForestClassifier, digits: Data, tmp_path: Path, out_dir: Path
) -> None:
    x, y = digits
    path = dump(forest, tmp_path / "forest.joblib")
    result = compile_model(
        path, "x86_64", out_dir, input_shapes={"input": [1, 64]}, trust_unknown_types=True
    )  # the bundled default pipeline
    m = result.manifest
    assert m.backend.name == "onnxruntime"
    by_backend = {c.backend: c for c in m.candidates}
    assert set(by_backend) == {"onnxruntime", "tvm"}
    assert by_backend["onnxruntime"].status == "chosen"
    tvm = by_backend["tvm"]
    assert tvm.status == "skipped" and tvm.measured is None
    assert "TreeEnsembleClassifier" in tvm.reason and "tvm" in tvm.reason

    loaded = edgekit.load(result.artifact_dir)
    xs = rows(x, y, 5)
    for row in xs:
        label, proba = loaded.predict(row[None, :])
        assert label.tolist() == forest.predict(row[None, :]).tolist()
        np.testing.assert_allclose(proba, forest.predict_proba(row[None, :]), atol=1e-5)


# --------------------------------------------------------------------------- bad input


def _truncated(path: Path, iris: Data) -> None:
    x, y = iris
    full = path.with_suffix(".full")
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), full)
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _corrupt_compressed(path: Path, iris: Data) -> None:
    x, y = iris
    full = path.with_suffix(".full")
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), full, compress=3)
    data = bytearray(full.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped bit pattern in the zlib stream
    path.write_bytes(bytes(data))


def _garbage(path: Path, iris: Data) -> None:
    path.write_bytes(b"this is not a pickle at all\n" * 20)


def _empty(path: Path, iris: Data) -> None:
    path.write_bytes(b"")


def _unknown_class(path: Path, iris: Data) -> None:
    # a pickle of an object whose class lives in a module that is not installed
    path.write_bytes(b"\x80\x02cek_missing_pkg_x\nThing\nq\x00)\x81q\x01.")


@pytest.mark.parametrize(
    "make",
    [_truncated, _corrupt_compressed, _garbage, _empty, _unknown_class],
    ids=["truncated", "corrupt-compressed", "garbage", "empty", "missing-module"],
)
def test_unreadable_pickle(make: Callable[[Path, Data], None], iris: Data, tmp_path: Path, out_dir: Path) -> None:
    path = tmp_path / "model.joblib"
    make(path, iris)
    with pytest.raises(ModelLoadError) as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, trust_unknown_types=True)
    msg = str(exc.value)
    assert str(path) in msg and "not a readable scikit-learn pickle" in msg and "joblib.dump" in msg
    assert_no_artifact(out_dir)


@pytest.mark.parametrize(
    ("obj", "type_name"),
    [
        ({"coef": [1.0, 2.0]}, "dict"),
        (np.zeros(4), "ndarray"),
        (LogisticRegression(), "LogisticRegression"),  # never fitted
        (RandomForestClassifier(n_estimators=2), "RandomForestClassifier"),
    ],
    ids=["dict", "ndarray", "unfitted-logreg", "unfitted-forest"],
)
def test_not_a_fitted_estimator(obj: Any, type_name: str, tmp_path: Path, out_dir: Path) -> None:
    path = dump(obj, tmp_path / "thing.pkl")
    with pytest.raises(ModelLoadError) as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, trust_unknown_types=True)
    msg = str(exc.value)
    assert str(path) in msg and type_name in msg and "not a fitted scikit-learn estimator" in msg
    assert_no_artifact(out_dir)


@pytest.mark.parametrize(
    ("shapes", "needle"),
    [
        ({"input": [1, 5]}, "[batch, 4]"),  # iris has 4 features
        ({"input": [1, 3]}, "[batch, 4]"),
        ({"input": [2, 4, 1]}, "[batch, 4]"),
        ({"features": [1, 4]}, "'features'"),
    ],
    ids=["too-many-features", "too-few-features", "rank-3", "wrong-name"],
)
def test_wrong_input_shape(shapes: dict[str, list[int]], needle: str, iris: Data, tmp_path: Path, out_dir: Path) -> None:
    x, y = iris
    path = dump(LogisticRegression(max_iter=500).fit(x, y), tmp_path / "lr.joblib")
    with pytest.raises(InputShapeError) as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes=shapes, trust_unknown_types=True)
    assert needle in str(exc.value) and str(path) in str(exc.value)
    assert_no_artifact(out_dir)


def test_unconvertible_estimator(iris: Data, tmp_path: Path, out_dir: Path) -> None:
    x, y = iris
    path = dump(LabelSpreading().fit(x, y), tmp_path / "spread.joblib")
    with pytest.raises(ModelConversionError) as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, trust_unknown_types=True)
    assert "LabelSpreading" in str(exc.value) and "skl2onnx" in str(exc.value)
    assert_no_artifact(out_dir)


# --------------------------------------------------------------------------- HistGradientBoosting, skops, the pairing


def _held_out(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train x, train y, n held-out rows spread over the targets): the compiled model is checked on rows it never saw."""
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    test, train = order[:n], order[n:]
    return x[train], y[train], x[test].astype(np.float32)


def test_hist_gradient_boosting_classifier_matches_predict_proba_on_held_out_rows(
    digits: Data, tmp_path: Path, out_dir: Path
) -> None:
    x, y = digits
    xtr, ytr, xs = _held_out(x, y, 40)
    model = HistGradientBoostingClassifier(max_iter=15, random_state=0).fit(xtr, ytr)
    path = tmp_path / "hgb.skops"
    skops.io.dump(model, path)  # TreePredictor is scikit-learn's own class: no opt-in needed
    result = compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [40, 64]})
    loaded = edgekit.load(result.artifact_dir)
    assert loaded.outputs == ["label", "probabilities"]
    label, proba = loaded.predict(xs)
    np.testing.assert_array_equal(label, model.predict(xs))
    np.testing.assert_allclose(proba, model.predict_proba(xs), atol=1e-5)
    assert len(set(label.tolist())) >= 5  # the held-out rows cover many digits
    assert loaded.manifest.measured is not None and "predict_proba" in loaded.manifest.measured.accuracy.reference


def test_hist_gradient_boosting_regressor_matches_predict_on_held_out_rows(tmp_path: Path, out_dir: Path) -> None:
    # continuous features: with rounded ones (diabetes' 28.7) a value can equal a threshold, which ONNX compares in
    # float32 and scikit-learn in float64 (skl2onnx's known limit, see docs/compile.md)
    x, y = make_regression(n_samples=400, n_features=10, n_informative=6, noise=5.0, random_state=0)
    x = x.astype(np.float32)
    x[::7, 2] = np.nan  # missing values take the branch scikit-learn learned for them
    xtr, ytr, xs = _held_out(x, y, 30)
    model = HistGradientBoostingRegressor(max_iter=30, random_state=0).fit(xtr, ytr)
    path = dump(model, tmp_path / "hgbr.joblib")
    result = compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [30, 10]}, trust_unknown_types=True)
    (got,) = edgekit.load(result.artifact_dir).predict(xs)
    want = model.predict(xs)
    assert np.isnan(xs).any() and np.ptp(want) > 50  # NaN rows among them, and not a constant model
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-5, atol=1e-3)


def test_a_skops_forest_loads_without_an_opt_in(
    forest: RandomForestClassifier, digits: Data, tmp_path: Path, out_dir: Path
) -> None:
    path = tmp_path / "forest.skops"
    skops.io.dump(forest, path)
    assert "sklearn.tree._tree.Tree" in skops.io.get_untrusted_types(file=path)  # skops alone would refuse it
    x, y = digits
    _check_classifier(forest, path, out_dir, rows(x, y, 40), trust=False)


@pytest.mark.parametrize(
    ("func", "type_name"),
    [
        pytest.param(operator.neg, "_operator.neg", id="foreign-function"),
        pytest.param(np.save, "numpy.save", id="numpy-function"),  # numpy's, but a function: never trusted unasked
    ],
)
def test_a_skops_file_with_a_foreign_type_needs_the_opt_in(
    func: Callable[..., Any], type_name: str, iris: Data, tmp_path: Path, out_dir: Path
) -> None:
    x, y = iris
    model = make_pipeline(FunctionTransformer(func, validate=False), StandardScaler(), LogisticRegression(max_iter=500))
    model.steps[1][1].fit(x)
    model.steps[2][1].fit(x, y)
    path = tmp_path / "custom.skops"
    skops.io.dump(model, path)
    with pytest.raises(ModelLoadError) as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [1, 4]})
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and type_name in msg and "--trust-unknown-types" in msg
    assert "sklearn" not in msg.split("classes:")[-1]  # only the foreign type is named
    assert_no_artifact(out_dir)


def test_the_old_trust_flag_still_works_and_warns(
    iris: Data, tmp_path: Path, out_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x, y = iris
    path = dump(LogisticRegression(max_iter=500).fit(x, y), tmp_path / "lr.joblib")
    with pytest.warns(DeprecationWarning, match="trust_pickle is deprecated: use trust_unknown_types"):
        result = compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [1, 4]}, trust_pickle=True)
    assert result.manifest.source.format == "sklearn"
    rc = main(
        [
            "compile",
            str(path),
            "-t",
            "x86_64",
            "-o",
            str(tmp_path / "cli"),
            "-b",
            "onnxruntime",
            "-s",
            "input:1,4",
            "--trust-pickle",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "--trust-pickle is deprecated; use --trust-unknown-types" in err
    rc = main(["compile", "--help"])
    assert "--trust-unknown-types" in capsys.readouterr().out and rc == 0


def test_a_version_pair_outside_the_tested_one_is_one_line(
    iris: Data, tmp_path: Path, out_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import skl2onnx
    import sklearn

    import edgekit.compiler.frontends.sklearn as frontend

    assert frontend.pairing_problem(sklearn.__version__, skl2onnx.__version__) == ""  # what CI installs is the pairing
    monkeypatch.setattr(frontend, "TESTED_PAIRING", ("1.8", "1.19"))
    x, y = iris
    path = dump(LogisticRegression(max_iter=500).fit(x, y), tmp_path / "lr.joblib")
    with caplog.at_level(logging.WARNING, logger="edgekit.compiler.frontends.sklearn"):
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [1, 4]}, trust_unknown_types=True)
    (line,) = [r.getMessage() for r in caplog.records if "tested pairing" in r.getMessage()]
    assert "\n" not in line
    assert f"scikit-learn {sklearn.__version__} with skl2onnx {skl2onnx.__version__}" in line
    assert "scikit-learn 1.8.x with skl2onnx 1.19.x" in line
    # and a conversion that fails outside the pairing says so in its one line
    spread = dump(LabelSpreading().fit(x, y), tmp_path / "spread.joblib")
    with pytest.raises(ModelConversionError) as exc:
        compile_model(spread, "x86_64", tmp_path / "o2", pipeline=ORT_ONLY, trust_unknown_types=True)
    assert "\n" not in str(exc.value) and "outside the tested pairing" in str(exc.value)


def test_a_converter_failure_keeps_its_root_cause_in_one_line(
    iris: Data, tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import edgekit.compiler.frontends.sklearn as frontend

    # skl2onnx's HistGradientBoosting converter as it is, without the ints edgekit hands it: protobuf refuses it,
    # and skl2onnx wraps that cause in a ValueError that dumps every attribute of the node
    try:
        onnx.helper.make_attribute("probe", [0, False])
        pytest.skip("this protobuf (older than 7.34) still takes a bool in an int field: the converter doesn't fail")
    except TypeError:
        pass
    monkeypatch.setattr(frontend, "_int_attribute_converters", dict)
    x, y = iris
    path = dump(HistGradientBoostingClassifier(max_iter=3).fit(x, y), tmp_path / "hgb.joblib")
    with pytest.raises(ModelConversionError) as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [1, 4]}, trust_unknown_types=True)
    msg = str(exc.value)
    assert "\n" not in msg and len(msg) < 600, msg
    assert (
        "HistGradientBoostingClassifier" in msg
        and "TypeError: Field onnx.AttributeProto.ints: Expected an int, got a boolean" in msg
    )
    assert_no_artifact(out_dir)


@pytest.mark.parametrize(
    ("name", "trusted"),
    [
        ("sklearn.tree._tree.Tree", True),
        ("sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor", True),
        ("sklearn.neural_network._stochastic_optimizers.AdamOptimizer", True),
        ("numpy.random._generator.Generator", True),
        ("sklearn.utils._param_validation.Integral", False),  # numbers.Integral, re-exported by a sklearn module
        ("numpy.save", False),  # numpy's, but a function
        ("sklearnx.Thing", False),
        ("sklearn.tests.test_base.T", False),
        ("sklearn.no_such_module.Tree", False),
    ],
)
def test_which_skops_types_load_without_an_opt_in(name: str, trusted: bool) -> None:
    from edgekit.compiler.frontends.sklearn import own_class

    assert own_class(name) is trusted
