"""What every candidate must reproduce: sample inputs and the source model's own outputs on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edgekit.compiler.frontends import SourceModel
from edgekit.compiler.measure import sample_inputs
from edgekit.compiler.pipeline import MeasureSpec
from edgekit.errors import CompilationError
from edgekit.manifest import TensorSpec

__all__ = ["Reference", "reference_outputs"]

Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class Reference:
    """Samples and the outputs the source model gives for them (``name`` says what ran it).

    The samples are random inputs of the model's shapes; real samples (and labels to score
    against) would enter here.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    samples: list[Feed]
    expected: list[list[np.ndarray]]
    name: str


def reference_outputs(source: SourceModel, spec: MeasureSpec) -> Reference:
    predict, output_names = _predictor(source)
    samples = sample_inputs(source.inputs, spec.samples, spec.seed)
    expected = [predict(s) for s in samples]
    outputs = [
        TensorSpec(name=n, shape=list(np.asarray(o).shape), dtype=str(np.asarray(o).dtype))
        for n, o in zip(output_names, expected[0], strict=True)
    ]
    return Reference(inputs=source.inputs, outputs=outputs, samples=samples, expected=expected, name=source.reference_name)


def _predictor(source: SourceModel) -> tuple[Callable[[Feed], list[np.ndarray]], list[str]]:
    """The source model's predictor (its framework's, else ONNX Runtime's unoptimised run) and the ONNX output names."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(source.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompilationError(
            f"'{source.path}': ONNX Runtime cannot run the source model, so there is no reference to check "
            f"candidates against: {str(exc).splitlines()[0]}"
        ) from exc
    names = [o.name for o in session.get_outputs()]
    if source.reference is not None:
        return source.reference, names

    def run(feeds: Feed) -> list[np.ndarray]:
        return [np.asarray(o) for o in session.run(names, feeds)]

    return run, names
