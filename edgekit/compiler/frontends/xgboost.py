"""XGBoost frontend: a model file (``save_model``'s ``.json``/``.ubj``) or a pickled estimator, converted with onnxmltools."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compiler.frontends.frontend import SourceModel, tabular_batch
from edgekit.compiler.frontends.onnx import finish_onnx
from edgekit.deps import require
from edgekit.digests import file_sha256
from edgekit.errors import ModelConversionError, ModelLoadError, last_line

__all__ = ["load_xgboost"]

INPUT_NAME = "input"
# onnxmltools 1.16 writes the main domain at opset 15 at most (its tree ensembles are ai.onnx.ml)
OPSET = 15
_CLASSIFIERS = ("binary:logistic", "multi:softprob")
_REGRESSORS = ("reg:squarederror", "reg:squaredlogerror", "reg:logistic", "reg:pseudohubererror", "reg:absoluteerror")


def _objective(booster: Any) -> str:
    return str(json.loads(booster.save_config())["learner"]["objective"]["name"])


def _read(path: Path) -> Any:
    """The estimator in an XGBoost model file: an XGBClassifier or XGBRegressor, by the file's objective."""
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' does not exist")
    xgb = require("xgboost", "loading an XGBoost model", "xgboost")
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(path.read_bytes())
        except ValueError as exc:
            raise ModelLoadError(f"'{path}' is not JSON ({exc}); save the model with booster.save_model('model.json')") from None
        if not isinstance(doc, dict) or "learner" not in doc:
            raise ModelLoadError(
                f"'{path}' is JSON but not an XGBoost model (no 'learner' key); edgekit reads a .json as an XGBoost "
                "model saved with save_model('model.json')"
            )
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except Exception as exc:  # xgboost.core.XGBoostError with a C++ backtrace
        raise ModelLoadError(f"'{path}' is not a readable XGBoost model ({last_line(exc)}); save it with save_model()") from None
    objective = _objective(booster)
    if objective == "multi:softmax":  # xgboost's own predict_proba gives no probabilities for it
        raise ModelConversionError(
            f"'{path}': XGBoost objective 'multi:softmax' predicts classes without probabilities; train with "
            "'multi:softprob' (the same trees, with probabilities) and save again"
        )
    if objective in _CLASSIFIERS:
        estimator = xgb.XGBClassifier()
    elif objective in _REGRESSORS:
        estimator = xgb.XGBRegressor()
    else:
        raise ModelConversionError(
            f"'{path}': XGBoost objective '{objective}' is not supported; edgekit compiles {', '.join(_CLASSIFIERS + _REGRESSORS)}"
        )
    estimator.load_model(str(path))
    return estimator


def load_xgboost(
    path: Path, workdir: Path, input_shapes: dict[str, list[int]] | None, estimator: Any | None = None
) -> SourceModel:
    """Convert an XGBoost model file, or an already loaded (unpickled) XGBClassifier/XGBRegressor."""
    xgb = require("xgboost", "loading an XGBoost model", "xgboost")
    if estimator is None:
        estimator = _read(path)
    if not isinstance(estimator, (xgb.XGBClassifier, xgb.XGBRegressor)):
        raise ModelConversionError(
            f"'{path}': {type(estimator).__name__} is not supported; edgekit compiles XGBClassifier and XGBRegressor "
            "(and model files they or xgboost.train saved)"
        )
    onnxmltools = require("onnxmltools", "converting an XGBoost model", "xgboost")
    from onnxmltools.convert.common.data_types import FloatTensorType

    try:
        booster = estimator.get_booster()
    except Exception as exc:  # NotFittedError
        raise ModelLoadError(f"'{path}': {type(estimator).__name__} is not fitted ({last_line(exc)})") from None
    n_features = int(booster.num_features())
    batch = tabular_batch(str(path), input_shapes, INPUT_NAME, n_features, "an XGBoost model")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnxmltools.convert_xgboost(
                estimator, initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))], target_opset=OPSET
            )
    except Exception as exc:  # RuntimeError, NotImplementedError, KeyError from the converter
        raise ModelConversionError(
            f"'{path}': onnxmltools cannot convert {type(estimator).__name__} (objective '{_objective(booster)}'): {last_line(exc)}"
        ) from exc
    source = finish_onnx(
        model,
        workdir,
        {INPUT_NAME: [batch, n_features]},
        where=str(path),
        path=str(path),
        fmt="xgboost",
        framework=f"xgboost {xgb.__version__}",
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
    )
    return with_estimator_reference(source, estimator, path, f"xgboost {xgb.__version__}", INPUT_NAME)


def with_estimator_reference(source: SourceModel, estimator: Any, path: Path, framework: str, input_name: str) -> SourceModel:
    """``source`` checked against a scikit-learn-style estimator's own ``predict`` (and ``predict_proba``).

    A classifier's ONNX outputs are (label, probabilities), a regressor's one ``[batch, targets]`` tensor; each
    reference output takes the dtype of the ONNX output it stands for (labels: int64).
    """
    outputs = source.model.graph.output
    is_classifier = hasattr(estimator, "predict_proba") and len(outputs) == 2
    methods = ["predict", "predict_proba"] if is_classifier else ["predict"]
    import onnx

    dtypes = [onnx.helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type) for o in outputs]

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds[input_name]
        outs = []
        for method, dtype in zip(methods, dtypes, strict=False):
            try:
                y = np.asarray(getattr(estimator, method)(x))
            except Exception as exc:  # the framework's own code
                raise ModelConversionError(
                    f"'{path}': {type(estimator).__name__}.{method}() fails on a float32 input of shape {list(x.shape)}: "
                    f"{last_line(exc)}"
                ) from exc
            outs.append((y if is_classifier else y.reshape(len(x), -1)).astype(dtype))
        return outs

    source.reference = reference
    source.reference_name = f"{framework} {type(estimator).__name__}.{'/'.join(methods)}"
    return source
