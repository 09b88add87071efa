"""XGBoost frontend: a model file (``save_model``'s ``.json``/``.ubj``) or a pickled estimator, converted with onnxmltools."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compiler.frontends.frontend import SourceModel, tabular_batch
from edgekit.compiler.frontends.onnx import finish_onnx
from edgekit.deps import require
from edgekit.digests import file_sha256
from edgekit.errors import ModelConversionError, ModelLoadError, last_line

__all__ = ["finish_tree_model", "load_xgboost", "ubjson_problem", "with_estimator_reference"]

INPUT_NAME = "input"
# onnxmltools 1.16 writes the main domain at opset 15 at most (its tree ensembles are ai.onnx.ml)
OPSET = 15
_CLASSIFIERS = ("binary:logistic", "multi:softprob")
_REGRESSORS = ("reg:squarederror", "reg:squaredlogerror", "reg:logistic", "reg:pseudohubererror", "reg:absoluteerror")


_FIXED = {b"i": 1, b"U": 1, b"C": 1, b"I": 2, b"l": 4, b"d": 4, b"L": 8, b"D": 8, b"Z": 0, b"T": 0, b"F": 0, b"N": 0}
_INTS = {b"i": ">b", b"U": ">B", b"I": ">h", b"l": ">i", b"L": ">q"}


def ubjson_problem(data: bytes) -> str | None:
    """What makes ``data`` other than one complete UBJSON value (truncation, a count past the end), or None.

    XGBoost's UBJSON reader trusts lengths and counts: a truncated ``.ubj`` crashes the process or asks for
    gigabytes. This walk checks every length against the bytes left, without building anything.
    """
    import struct

    pos = 0

    def need(n: int) -> None:
        if n < 0 or pos + n > len(data):
            raise ValueError(f"needs {n} bytes at offset {pos}, {len(data) - pos} left")

    def integer(marker: bytes | None = None) -> int:
        nonlocal pos
        if marker is None:
            need(1)
            marker = data[pos : pos + 1]
            pos += 1
        if marker not in _INTS:
            raise ValueError(f"expected an integer at offset {pos - 1}, found {marker!r}")
        size = _FIXED[marker]
        need(size)
        value = int(struct.unpack_from(_INTS[marker], data, pos)[0])
        pos += size
        return value

    def value(marker: bytes, depth: int) -> None:
        nonlocal pos
        if depth > 64:
            raise ValueError("nested more than 64 deep")
        if marker in _FIXED:
            need(_FIXED[marker])
            pos += _FIXED[marker]
        elif marker in (b"S", b"H"):
            n = integer()
            need(n)
            pos += n
        elif marker in (b"[", b"{"):
            container(marker == b"{", depth)
        else:
            raise ValueError(f"unknown marker {marker!r} at offset {pos - 1}")

    def container(is_object: bool, depth: int) -> None:
        nonlocal pos
        typed: bytes | None = None
        count: int | None = None
        need(1)
        if data[pos : pos + 1] == b"$":
            need(2)
            typed, pos = data[pos + 1 : pos + 2], pos + 2
        need(1)
        if data[pos : pos + 1] == b"#":
            pos += 1
            count = integer()
            if count < 0:
                raise ValueError(f"negative count at offset {pos}")
        elif typed is not None:
            raise ValueError(f"a typed container without a count at offset {pos}")
        if typed is not None and not is_object and typed in _FIXED and count is not None:
            need(count * _FIXED[typed])  # a typed numeric array: its bytes at once
            pos += count * _FIXED[typed]
            return
        n = 0
        while count is None or n < count:
            need(1)
            if count is None and data[pos : pos + 1] == (b"}" if is_object else b"]"):
                pos += 1
                return
            if is_object:
                key = integer()
                need(key)
                pos += key
            if typed is None:
                need(1)
                marker, pos = data[pos : pos + 1], pos + 1
            else:
                marker = typed
            value(marker, depth + 1)
            n += 1

    try:
        need(1)
        marker, pos = data[:1], 1
        value(marker, 0)
    except ValueError as exc:
        return str(exc)
    return None if pos == len(data) else f"{len(data) - pos} bytes after the end of the value"


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
    elif path.suffix.lower() == ".ubj":
        problem = ubjson_problem(path.read_bytes())
        if problem is not None:  # xgboost's own reader segfaults or allocates without bound on these
            raise ModelLoadError(
                f"'{path}' is not a complete UBJSON file ({problem}); save the model again with save_model('model.ubj')"
            )
    booster = xgb.Booster()
    try:
        booster.load_model(str(path))
    except Exception as exc:  # xgboost.core.XGBoostError: "[12:00:00] src/...cc:42: Check failed: ..." then a backtrace
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        cause = re.sub(r"^\[[\d:]+\] \S+: ", "", first)[:300]
        raise ModelLoadError(f"'{path}' is not a readable XGBoost model ({cause}); save it with save_model()") from None
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
    source = finish_tree_model(model, workdir, path, [batch, n_features], "xgboost", f"xgboost {xgb.__version__}")
    return with_estimator_reference(source, estimator, path, f"xgboost {xgb.__version__}", INPUT_NAME)


def finish_tree_model(model: Any, workdir: Path, path: Path, shape: list[int], fmt: str, framework: str) -> SourceModel:
    """The :class:`SourceModel` of a tree ensemble file (XGBoost, LightGBM) converted to ONNX ``model``: one input,
    ``input`` of ``shape``, with the file's digest and size."""
    return finish_onnx(
        model,
        workdir,
        {INPUT_NAME: shape},
        where=str(path),
        path=str(path),
        fmt=fmt,
        framework=framework,
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
    )


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
