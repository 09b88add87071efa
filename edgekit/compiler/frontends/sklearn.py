"""scikit-learn frontend: a pickled estimator or pipeline, converted with skl2onnx."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compiler.frontends.frontend import SourceModel
from edgekit.compiler.frontends.onnx import finish_onnx
from edgekit.deps import require
from edgekit.digests import file_sha256
from edgekit.errors import InputShapeError, ModelConversionError, ModelLoadError, last_line

__all__ = ["load_sklearn"]

INPUT_NAME = "input"


def _load(path: Path, trust_pickle: bool) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' does not exist")
    require("sklearn", "loading a scikit-learn model")
    if path.suffix == ".skops":
        return _load_skops(path, trust_pickle)
    if not trust_pickle:
        raise ModelLoadError(
            f"'{path}' is a pickle: loading it runs whatever code it holds; pass --trust-pickle (trust_pickle=True) "
            "if you made it or trust who did, or save the model with skops (skops.io.dump(model, 'model.skops')) or as ONNX"
        )
    joblib = require("joblib", "loading a scikit-learn model")
    try:
        return joblib.load(path)
    except Exception as exc:  # a corrupt pickle raises almost anything: struct.error, zlib.error, TypeError, ...
        raise ModelLoadError(
            f"'{path}' is not a readable scikit-learn pickle ({type(exc).__name__}: {exc}); "
            f"save the fitted estimator with joblib.dump(model, path)"
        ) from exc


def _load_skops(path: Path, trust_pickle: bool) -> Any:
    """A ``.skops`` file: only scikit-learn's and numpy's own types are loaded unless the user trusts the rest."""
    sio = require("skops.io", "loading a .skops model")
    try:
        untrusted = [str(t) for t in sio.get_untrusted_types(file=path)]
        if untrusted and not trust_pickle:
            raise ModelLoadError(
                f"'{path}' holds types skops does not trust by default: {', '.join(untrusted[:5])}; "
                "pass --trust-pickle (trust_pickle=True) if you trust them"
            )
        return sio.load(path, trusted=untrusted)
    except ModelLoadError:
        raise
    except Exception as exc:  # a damaged file raises almost anything: zipfile.BadZipFile, KeyError, TypeError, ...
        raise ModelLoadError(f"'{path}' is not a readable .skops model ({type(exc).__name__}: {last_line(exc)})") from None


def load_sklearn(path: Path, workdir: Path, input_shapes: dict[str, list[int]] | None, trust_pickle: bool = False) -> SourceModel:
    estimator = _load(path, trust_pickle)
    skl2onnx = require("skl2onnx", "converting a scikit-learn model")
    sklearn = require("sklearn", "converting a scikit-learn model")
    from skl2onnx.common.data_types import FloatTensorType

    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise ModelLoadError(f"'{path}': {type(estimator).__name__} is not a fitted scikit-learn estimator")
    shapes = dict(input_shapes or {})
    if "" in shapes:
        shapes = {INPUT_NAME: shapes.pop("")}
    batch = 1
    if shapes:
        if set(shapes) != {INPUT_NAME}:
            raise InputShapeError(f"'{path}': a scikit-learn model has one input, '{INPUT_NAME}'; got {sorted(shapes)}")
        shape = shapes[INPUT_NAME]
        if len(shape) != 2 or shape[1] != n_features:
            raise InputShapeError(f"'{path}': input '{INPUT_NAME}' must be [batch, {n_features}] for this model, got {shape}")
        batch = shape[0]
    # Every classifier (with or without predict_proba, e.g. SVC) gets its scores as a tensor, not a ZipMap.
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "classes_") else None

    def convert(opts: dict[int, dict[str, Any]] | None) -> Any:
        return skl2onnx.convert_sklearn(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, int(n_features)]))],
            options=opts,
            target_opset={"": 17, "ai.onnx.ml": 3},
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = convert(options)
            except NameError as exc:  # "Option 'zipmap' not in [...]": this converter never adds a ZipMap (LinearSVC)
                if options is None or "zipmap" not in str(exc):
                    raise
                model = convert(None)
    except Exception as exc:  # skl2onnx raises RuntimeError, NotImplementedError, MissingShapeCalculator, ...
        msg = last_line(exc, first=True)  # skl2onnx's own line comes first; a wrapped cause (protobuf's) follows it
        raise ModelConversionError(f"'{path}': skl2onnx cannot convert {type(estimator).__name__}: {msg}") from exc
    source = finish_onnx(
        model,
        workdir,
        {INPUT_NAME: [batch, int(n_features)]},
        where=str(path),
        path=str(path),
        fmt="sklearn",
        framework=f"scikit-learn {sklearn.__version__}",
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
    )
    return _with_reference(source, estimator, path, sklearn.__version__)


def _with_reference(source: SourceModel, estimator: Any, path: Path, version: str) -> SourceModel:
    """``source`` with the estimator's own methods as the reference the compiled candidates are checked against."""
    # One scikit-learn method per ONNX output. Where there is none (label + scores of LinearSVC, SVC without
    # probabilities, KMeans, IsolationForest, ...) the reference stays ONNX Runtime on the converted model.
    is_classifier = hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")
    n_outputs = len(source.model.graph.output)
    if is_classifier and n_outputs == 2:
        methods = ["predict", "predict_proba"]
    elif n_outputs == 1 and hasattr(estimator, "predict"):
        methods = ["predict"]
    elif n_outputs == 1 and hasattr(estimator, "transform"):
        methods = ["transform"]
    else:
        source.reference_name = f"onnxruntime (no graph optimisation) on the skl2onnx conversion of {type(estimator).__name__}"
        return source

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds[INPUT_NAME]
        outs = []
        for method in methods:
            try:
                y = np.asarray(getattr(estimator, method)(x))
            except Exception as exc:  # the estimator's own code, on float32 input
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelConversionError(
                    f"'{path}': {type(estimator).__name__}.{method}() fails on a float32 input of shape {list(x.shape)}, "
                    f"so there is no reference to check the compiled model against: {msg}"
                ) from exc
            outs.append(y if is_classifier else y.reshape(len(x), -1))
        return outs

    source.reference = reference
    source.reference_name = f"scikit-learn {version} {'/'.join(methods)}"
    return source
