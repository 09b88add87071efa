"""scikit-learn frontend: a pickled estimator or pipeline, converted with skl2onnx."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compiler.frontends.base import SourceModel, file_sha256
from edgekit.compiler.frontends.onnx import finish_onnx
from edgekit.deps import require
from edgekit.errors import InputShapeError, ModelConversionError, ModelLoadError

__all__ = ["load_sklearn"]

INPUT_NAME = "input"


def _load(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' does not exist")
    joblib = require("joblib", "loading a scikit-learn model")
    require("sklearn", "loading a scikit-learn model")
    try:
        return joblib.load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, IndexError, AttributeError, ImportError) as exc:
        raise ModelLoadError(
            f"'{path}' is not a readable scikit-learn pickle ({type(exc).__name__}: {exc}); "
            f"save the fitted estimator with joblib.dump(model, path)"
        ) from exc


def load_sklearn(path: Path, workdir: Path, input_shapes: dict[str, list[int]] | None) -> SourceModel:
    estimator = _load(path)
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
            raise InputShapeError(
                f"'{path}': input '{INPUT_NAME}' must be [batch, {n_features}] for this model, got {shape}"
            )
        batch = shape[0]
    is_classifier = hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")
    options = {id(estimator): {"zipmap": False}} if is_classifier else None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = skl2onnx.convert_sklearn(
                estimator,
                initial_types=[(INPUT_NAME, FloatTensorType([None, int(n_features)]))],
                options=options,
                target_opset={"": 17, "ai.onnx.ml": 3},
            )
    except Exception as exc:  # skl2onnx raises RuntimeError, NotImplementedError, MissingShapeCalculator, ...
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelConversionError(
            f"'{path}': skl2onnx cannot convert {type(estimator).__name__}: {msg}"
        ) from exc
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

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds[INPUT_NAME]
        if is_classifier:
            return [np.asarray(estimator.predict(x)), np.asarray(estimator.predict_proba(x))]
        y = np.asarray(estimator.predict(x))
        return [y.reshape(len(x), -1)]

    source.reference = reference
    source.reference_name = f"scikit-learn {sklearn.__version__} predict/predict_proba"
    return source
