"""Frontends: turn a model file (ONNX, PyTorch, scikit-learn, XGBoost, LightGBM, TFLite, Keras, TensorFlow) into one ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compiler.frontends.frontend import (
    DYNAMIC,
    SourceModel,
    input_shapes_from,
    parse_input_shapes,
    source_format,
)
from edgekit.errors import InputShapeError, ModelLoadError

__all__ = ["SourceModel", "input_shapes_from", "load_source", "parse_input_shapes", "source_format"]


def load_source(
    model: str | Path,
    workdir: Path,
    input_shapes: dict[str, list[int]] | None = None,
    *,
    trust_unknown_types: bool = False,
    examples: dict[str, list[np.ndarray]] | None = None,
) -> SourceModel:
    """Read ``model`` and convert it to ONNX in ``workdir``.

    ``model`` is an ``.onnx`` file, a TorchScript file (``.pt``/``.pth``/``.ts``), a
    ``package.module:factory`` spec returning an ``nn.Module``, or a scikit-learn
    pickle (``.joblib``/``.pkl``: only with ``trust_unknown_types``, loading one runs its code; a pickled XGBoost or
    LightGBM estimator goes to its own frontend) or ``.skops`` file (types other than skops' defaults and
    scikit-learn's and numpy's own classes need ``trust_unknown_types``), an XGBoost ``.json``/``.ubj``, a LightGBM
    ``.txt``, a ``.tflite``, a Keras ``.keras``/``.h5`` or a TensorFlow SavedModel folder.
    ``examples``: per input, arrays from the user's samples to try in turn as the example a PyTorch model is traced
    with (see :meth:`edgekit.compiler.samples.Samples.examples`).
    """
    fmt = source_format(model)
    dynamic = sorted(n for n, shape in (input_shapes or {}).items() if DYNAMIC in shape)
    if dynamic and fmt not in ("onnx", "sklearn", "xgboost", "lightgbm"):
        raise InputShapeError(
            f"'{model}': --input-shape gives '{dynamic[0] or 'input'}' a dynamic dimension (-1 or a name), which edgekit "
            f"keeps for ONNX, scikit-learn, XGBoost and LightGBM models only; give every dimension of a {fmt} model a "
            "size, or export it to ONNX with that axis dynamic (torch.onnx.export dynamic_axes) and compile the .onnx"
        )
    if fmt == "onnx":
        from edgekit.compiler.frontends.onnx import load_onnx

        return load_onnx(Path(model), workdir, input_shapes)
    if fmt == "torch":
        from edgekit.compiler.frontends.torch import load_torch

        return load_torch(str(model), workdir, input_shapes, examples)
    if fmt == "sklearn":
        from edgekit.compiler.frontends.sklearn import load_sklearn

        return load_sklearn(Path(model), workdir, input_shapes, trust_unknown_types)
    if fmt == "xgboost":
        from edgekit.compiler.frontends.xgboost import load_xgboost

        return load_xgboost(Path(model), workdir, input_shapes)
    if fmt == "lightgbm":
        from edgekit.compiler.frontends.lightgbm import load_lightgbm

        return load_lightgbm(Path(model), workdir, input_shapes)
    if fmt in ("tflite", "keras", "tensorflow"):
        from edgekit.compiler.frontends.tensorflow import load_tensorflow

        return load_tensorflow(Path(model), fmt, workdir, input_shapes)
    raise ModelLoadError(f"'{model}': unknown model format")  # pragma: no cover - source_format raises first
