"""Frontends: turn a model file (ONNX, PyTorch, scikit-learn) into one self-contained ONNX model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.compiler.frontends.frontend import SourceModel, parse_input_shapes, source_format
from edgekit.errors import ModelLoadError

__all__ = ["SourceModel", "load_source", "parse_input_shapes", "source_format"]


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
    pickle (``.joblib``/``.pkl``: only with ``trust_unknown_types``, loading one runs its code) or ``.skops`` file
    (types other than skops' defaults and scikit-learn's and numpy's own classes need ``trust_unknown_types``).
    ``examples``: per input, arrays from the user's samples to try in turn as the example a PyTorch model is traced
    with (see :meth:`edgekit.compiler.samples.Samples.examples`).
    """
    fmt = source_format(model)
    if fmt == "onnx":
        from edgekit.compiler.frontends.onnx import load_onnx

        return load_onnx(Path(model), workdir, input_shapes)
    if fmt == "torch":
        from edgekit.compiler.frontends.torch import load_torch

        return load_torch(str(model), workdir, input_shapes, examples)
    if fmt == "sklearn":
        from edgekit.compiler.frontends.sklearn import load_sklearn

        return load_sklearn(Path(model), workdir, input_shapes, trust_unknown_types)
    raise ModelLoadError(f"'{model}': unknown model format")  # pragma: no cover - source_format raises first
