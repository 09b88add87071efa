"""LightGBM frontend: a text model (``Booster.save_model('model.txt')``) or a pickled estimator, converted with onnxmltools.

LightGBM splits on double thresholds; ONNX tree ensembles on float32 ones. Rounding a threshold to the
*nearest* float32 (what a plain conversion does) flips the branch of every input equal to the rounded
value — common, since LightGBM's thresholds lie between two training values. Each numerical threshold is
rounded *down* instead, to the largest float32 not above it: for every float32 input ``x``,
``x <= t`` exactly when ``x <= round_down(t)``, so the converted model takes LightGBM's branches.
"""

from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compiler.frontends.frontend import SourceModel, tabular_batch
from edgekit.compiler.frontends.xgboost import OPSET, finish_tree_model, with_estimator_reference
from edgekit.deps import require
from edgekit.errors import ModelConversionError, ModelLoadError, last_line

__all__ = ["float32_thresholds", "load_lightgbm"]

INPUT_NAME = "input"
_TREE_LINE = re.compile(r"^(decision_type|threshold)=(.*)$")


def _round_down(value: str) -> str:
    t = float(value)
    f = np.float32(t)
    if np.isfinite(f) and float(f) > t:
        f = np.nextafter(f, np.float32(-np.inf))
    return repr(float(f))


def float32_thresholds(model_text: str) -> str:
    """``model_text`` (LightGBM's text model) with every numerical split's threshold rounded down to float32."""
    out: list[str] = []
    decisions: list[int] = []
    for line in model_text.split("\n"):
        if line.startswith("tree_sizes="):
            continue  # byte sizes of the tree blocks, which change; without them LightGBM reads the trees in turn
        m = _TREE_LINE.match(line)
        if m and m.group(1) == "decision_type":
            decisions = [int(d) for d in m.group(2).split()]
        elif m and m.group(1) == "threshold":
            values = m.group(2).split()
            # bit 0 of decision_type marks a categorical split, whose threshold indexes a category bitset
            values = [v if (i < len(decisions) and decisions[i] & 1) else _round_down(v) for i, v in enumerate(values)]
            line = "threshold=" + " ".join(values)
        out.append(line)
    return "\n".join(out)


def _read(path: Path) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' does not exist")
    lgb = require("lightgbm", "loading a LightGBM model", "lightgbm")
    with path.open("rb") as fh:
        head = fh.read(64)
    if not head.startswith(b"tree\n") and not head.startswith(b"tree\r\n"):
        raise ModelLoadError(
            f"'{path}' is not a LightGBM text model (it should start with a 'tree' line); edgekit reads a .txt as a "
            "LightGBM model saved with booster.save_model('model.txt')"
        )
    text = path.read_text(encoding="utf-8", errors="replace")
    # LightGBM parses the trees of a truncated file in parallel and aborts the whole process (SIGABRT), and
    # segfaults on a parameters section cut short: refuse both before it reads anything
    if "\nend of trees" not in text or ("\nparameters:" in text and "\nend of parameters" not in text):
        raise ModelLoadError(
            f"'{path}' is a truncated LightGBM model (no 'end of trees' or 'end of parameters' line); save it again with save_model()"
        )
    try:
        # without tree_sizes LightGBM reads the trees in turn, and a damaged one raises instead of aborting
        return lgb.Booster(model_str="\n".join(line for line in text.split("\n") if not line.startswith("tree_sizes=")))
    except Exception as exc:  # lightgbm.basic.LightGBMError
        raise ModelLoadError(f"'{path}' is not a readable LightGBM model ({last_line(exc)}); save it with save_model()") from None


def _objective(booster: Any) -> str:
    for line in booster.model_to_string(num_iteration=-1).splitlines()[:20]:
        if line.startswith("objective="):
            return str(line.split("=", 1)[1].split()[0])
    return "unknown"


def load_lightgbm(
    path: Path, workdir: Path, input_shapes: dict[str, list[int]] | None, estimator: Any | None = None
) -> SourceModel:
    """Convert a LightGBM text model, or an already loaded (unpickled) LGBMClassifier/LGBMRegressor."""
    lgb = require("lightgbm", "loading a LightGBM model", "lightgbm")
    onnxmltools = require("onnxmltools", "converting a LightGBM model", "lightgbm")
    from onnxmltools.convert.common.data_types import FloatTensorType

    booster = _read(path) if estimator is None else getattr(estimator, "_Booster", None)
    if not isinstance(booster, lgb.Booster):
        raise ModelConversionError(
            f"'{path}': {type(estimator).__name__} is not a fitted LGBMClassifier or LGBMRegressor; fit it, or save its "
            "booster with save_model('model.txt')"
        )
    objective = _objective(booster)
    exact = lgb.Booster(model_str=float32_thresholds(booster.model_to_string(num_iteration=-1)))
    if estimator is None:
        convertible: Any = exact
    else:
        convertible = copy.copy(estimator)
        convertible._Booster = exact
    n_features = int(booster.num_feature())
    batch = tabular_batch(str(path), input_shapes, INPUT_NAME, n_features, "a LightGBM model")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = onnxmltools.convert_lightgbm(
                convertible,
                initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
                target_opset=OPSET,
                zipmap=False,
            )
    except Exception as exc:  # RuntimeError, NotImplementedError, KeyError from the converter
        raise ModelConversionError(
            f"'{path}': onnxmltools cannot convert LightGBM objective '{objective}': {last_line(exc)}"
        ) from exc
    source = finish_tree_model(model, workdir, path, [batch, n_features], "lightgbm", f"lightgbm {lgb.__version__}")
    if estimator is not None:
        return with_estimator_reference(source, estimator, path, f"lightgbm {lgb.__version__}", INPUT_NAME)
    return _with_booster_reference(source, booster, path, lgb.__version__)


def _with_booster_reference(source: SourceModel, booster: Any, path: Path, version: str) -> SourceModel:
    """``source`` checked against ``Booster.predict`` (the original thresholds): probabilities and their arg-max, or values."""
    classifier = len(source.model.graph.output) == 2

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds[INPUT_NAME]
        try:
            y = np.asarray(booster.predict(x))
        except Exception as exc:  # the framework's own code
            raise ModelConversionError(
                f"'{path}': Booster.predict() fails on a float32 input of shape {list(x.shape)}: {last_line(exc)}"
            ) from exc
        if not classifier:
            return [y.reshape(len(x), -1).astype(np.float32)]
        proba = np.stack([1.0 - y, y], axis=1) if y.ndim == 1 else y
        return [np.argmax(proba, axis=1).astype(np.int64), proba.astype(np.float32)]

    source.reference = reference
    source.reference_name = f"lightgbm {version} Booster.predict"
    return source
