"""What every candidate must reproduce: sample inputs and the source model's own outputs on them.

The inputs are the user's evaluation samples, or inputs synthesized by role (:mod:`edgekit.compiler.synthetic`).
The source runs in its own framework (torch eager, scikit-learn), else in ONNX Runtime without graph
optimisation, else — when ONNX Runtime can't load or run it — in ONNX's reference implementation
(``onnx.reference``), so the candidates can still be checked.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from edgekit.compiler.evaluation import Score, Truth, truth_for
from edgekit.compiler.frontends import SourceModel
from edgekit.compiler.frontends.frontend import sequence_element_type
from edgekit.compiler.pipeline import MeasureSpec
from edgekit.compiler.samples import SampleSet
from edgekit.compiler.synthetic import input_roles, synthesize
from edgekit.errors import CompilationError, EdgekitError, SamplesError, last_line
from edgekit.manifest import TensorSpec
from edgekit.runtime.sequences import as_value, is_sequence

__all__ = ["DYNAMIC", "Reference", "output_specs", "reference_outputs"]

DYNAMIC = -1
"""An output dimension whose size depends on the input data (``NonZero``, ``Unique``): any size, run to run."""

log = logging.getLogger(__name__)

Feed = dict[str, np.ndarray]
Predict = Callable[[Feed], list[np.ndarray]]


@dataclass(frozen=True)
class Reference:
    """Samples and the outputs the source model gives for them (``name`` says what ran it).

    ``truth`` (labels or expected outputs) comes with the user's samples; ``source_score`` is the
    source model's score against it, which every candidate's stands beside.
    """

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    samples: list[Feed]
    expected: list[list[np.ndarray]]
    name: str
    synthesized: bool = True
    truth: Truth | None = None
    source_score: Score | None = None
    other_sizes: list[tuple[Feed, list[np.ndarray]]] = field(default_factory=list)
    """Inputs with dynamic dimensions: feeds at other sizes (a batch of the samples, a doubled length) and the
    source's outputs on them; every candidate must agree on these too, and the self-test keeps them."""

    def measured_inputs(self) -> list[TensorSpec]:
        """The input specs, each dynamic one with the shapes the compile checked (``measuredShapes``)."""
        feeds = self.samples[:1] + [f for f, _ in self.other_sizes]
        return [
            s.model_copy(update={"measured_shapes": [list(f[s.name].shape) for f in feeds if s.name in f]})
            if s.dynamic_dims
            else s
            for s in self.inputs
        ]

    def measured_outputs(self) -> list[TensorSpec]:
        """The output specs; with dynamic inputs, the axes whose size changed at the other sizes are dynamic
        (named as the inputs' axis 0, e.g. ``batch``, for the first axis; ``<output>_<axis>`` otherwise)."""
        if not self.other_sizes or not self.expected:
            return self.outputs
        first = {d.get(0) for s in self.inputs if (d := s.dynamic_dims or {})}
        batch = next(iter(first)) if len(first) == 1 and None not in first else "batch"
        specs = []
        for i, spec in enumerate(self.outputs):
            if spec.is_sequence:
                specs.append(spec)
                continue
            base = np.asarray(self.expected[0][i]).shape
            shapes = [base, *(np.asarray(outs[i]).shape for _, outs in self.other_sizes)]
            axes = sorted({a for sh in shapes[1:] if len(sh) == len(base) for a in range(len(base)) if sh[a] != base[a]})
            dynamic = {a: (batch if a == 0 else f"{spec.name}_{a}") for a in axes}
            update = {"dynamic_dims": dynamic, "measured_shapes": [list(sh) for sh in shapes]} if dynamic else {}
            specs.append(spec.model_copy(update=update))
        return specs


def reference_outputs(source: SourceModel, spec: MeasureSpec, samples: SampleSet | None = None, where: str = "") -> Reference:
    """The reference on ``samples`` (the evaluation part of the user's), or on inputs synthesized by role."""
    names = [o.name for o in source.model.graph.output]
    feeds = samples.feeds if samples is not None else synthesize(source.model, source.inputs, spec.samples, spec.seed)
    expected, ran_by, predict = _run_source(source, feeds, samples is None, where)
    outputs = output_specs(source.model, names, expected)
    truth = truth_for(samples, names, expected[0], where) if samples is not None else None
    score = truth.score(expected) if truth is not None else None
    others = _other_sizes(source.inputs, feeds, predict) if predict is not None else []
    return Reference(source.inputs, outputs, feeds, expected, ran_by, samples is None, truth, score, others)


def _other_sizes(inputs: list[TensorSpec], feeds: list[Feed], predict: Predict) -> list[tuple[Feed, list[np.ndarray]]]:
    """For dynamic dimensions: a batch of up to 8 samples when every input's first axis is dynamic, then that (or
    the first sample) with every other dynamic axis doubled. Each with the source's outputs; none it can't run."""
    dynamic = {s.name: s.dynamic_dims or {} for s in inputs}
    if not feeds or not any(dynamic.values()):
        return []
    cases: list[Feed] = []
    base = feeds[0]
    if all(0 in d for d in dynamic.values()):
        picked = feeds[:8] if len(feeds) > 1 else feeds * 3
        try:
            base = {n: np.concatenate([f[n] for f in picked], axis=0) for n in base}
            cases.append(base)
        except ValueError:  # samples of different lengths: no batch of them
            base = feeds[0]
    longer = {n: a for n, a in base.items()}
    for n, axes in dynamic.items():
        for axis in axes:
            if axis != 0 and n in longer:
                longer[n] = np.concatenate([longer[n], longer[n]], axis=axis)
    if any(axis != 0 for axes in dynamic.values() for axis in axes):
        cases.append(longer)
    out: list[tuple[Feed, list[np.ndarray]]] = []
    for feed in cases:
        try:
            out.append((feed, [np.asarray(o) for o in predict(feed)]))
        except Exception as exc:  # the source itself can't run this size: nothing to check candidates against
            log.info("the source model doesn't run inputs of shapes %s: %s", {n: np.shape(a) for n, a in feed.items()}, exc)
    return out


# Ops whose output shape can follow the values of their inputs, not only their shapes.
_DATA_DEPENDENT = frozenset(
    {
        "NonZero", "Unique", "Compress", "NonMaxSuppression", "StringSplit", "TopK", "Range", "Loop", "If", "Scan",
        "ConstantOfShape", "Expand", "Tile", "Reshape", "Slice", "Pad", "Resize", "Upsample", "OneHot", "CenterCropPad",
    }
)  # fmt: skip


def output_specs(model: onnx.ModelProto, names: list[str], expected: list[list[np.ndarray]]) -> list[TensorSpec]:
    """Each output's name, dtype and shape as the source gave them on the samples, with :data:`DYNAMIC` for a
    data-dependent dimension: one whose size differs between the samples, or that the graph does not fix — ONNX shape
    inference (inputs pinned, the outputs' declared shapes set aside) leaves it unknown and an op whose output shape
    can follow its input values (``NonZero``, ``Unique``, ``Range``, ...) feeds the output. (Inference also leaves
    dimensions unknown behind ops it has no shape function for, e.g. ``ai.onnx.ml``'s: those keep the samples' size.)"""
    static = _inferred_output_dims(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    declared = {o.name: o for o in model.graph.output}
    specs = []
    for i, name in enumerate(names):
        if any(is_sequence(outs[i]) for outs in expected) or (
            name in declared and sequence_element_type(declared[name]) is not None
        ):
            specs.append(_sequence_output(name, declared.get(name), [outs[i] for outs in expected]))
            continue
        shapes = [np.asarray(outs[i]).shape for outs in expected]
        dims = list(shapes[0])
        if any(len(s) != len(dims) for s in shapes):
            dims = [DYNAMIC] * len(dims)
        dims = [DYNAMIC if any(s[d] != size for s in shapes) else size for d, size in enumerate(dims)]
        fixed = static.get(name)
        if fixed is not None and len(fixed) == len(dims) and _fed_by(name, producers) & _DATA_DEPENDENT:
            dims = [DYNAMIC if known is None else size for size, known in zip(dims, fixed, strict=True)]
        specs.append(TensorSpec(name=name, shape=dims, dtype=str(np.asarray(expected[0][i]).dtype)))
    return specs


def _sequence_output(name: str, declared: onnx.ValueInfoProto | None, values: list[np.ndarray]) -> TensorSpec:
    """A sequence output's spec: the element dtype (the model's, else its elements'), and the element shape where
    every element of every sample has the same size (``-1`` elsewhere; the model's declared rank when none has one)."""
    elems = [np.asarray(e) for v in values if is_sequence(v) for e in v]
    elem = sequence_element_type(declared) if declared is not None else None
    if elem is not None and elem.elem_type:
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(elem.elem_type))
    else:
        dtype = str(elems[0].dtype) if elems else "float32"
    if elems and all(e.ndim == elems[0].ndim for e in elems):
        dims = [size if all(e.shape[d] == size for e in elems) else DYNAMIC for d, size in enumerate(elems[0].shape)]
    elif elems:
        dims = []  # elements of different ranks: any shape
    else:
        dims = [DYNAMIC] * len(elem.shape.dim) if elem is not None else []
    return TensorSpec(name=name, shape=dims, dtype=dtype, kind="sequence")


def _fed_by(name: str, producers: dict[str, onnx.NodeProto]) -> set[str]:
    """The op types of every node upstream of the value ``name``."""
    ops: set[str] = set()
    seen: set[int] = set()
    todo = [name]
    while todo:
        node = producers.get(todo.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        ops.add(node.op_type)
        todo.extend(node.input)
    return ops


def _inferred_output_dims(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    """Output name -> its dimensions as shape inference gives them (``None``: unknown); outputs of unknown rank left out."""
    declared = [onnx.TypeProto() for _ in model.graph.output]
    for saved, out in zip(declared, model.graph.output, strict=True):
        saved.CopyFrom(out.type)
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):  # too large to infer in memory, or inference fails
        return {}
    finally:
        for saved, out in zip(declared, model.graph.output, strict=True):
            out.type.CopyFrom(saved)
    dims: dict[str, list[int | None]] = {}
    for out in inferred.graph.output:
        tensor = out.type.tensor_type
        if out.type.HasField("tensor_type") and tensor.HasField("shape"):
            dims[out.name] = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    return dims


def _run_source(
    source: SourceModel, feeds: list[Feed], synthesized: bool, where: str
) -> tuple[list[list[np.ndarray]], str, Predict | None]:
    """The source's outputs on every feed, and what ran it; one edgekit error when nothing can."""
    attempts: list[tuple[str, Callable[[], Predict]]] = []
    if source.reference is not None:
        framework = source.reference
        attempts.append((source.reference_name, lambda: framework))
    else:
        attempts.append((source.reference_name, lambda: _ort_predictor(source)))
        attempts.append(("onnx.reference (ONNX's reference implementation) on the source ONNX", lambda: _onnx_reference(source)))
    first: Exception | None = None
    for name, make in attempts:
        try:
            predict = make()
            outs = _outputs(predict, feeds, batched=source.reference is not None)
        except Exception as exc:  # ORT Fail/InvalidArgument, numpy errors in onnx.reference, the framework's own
            first = first or exc
            continue
        if first is not None:
            name += f" (ONNX Runtime can't run it: {last_line(first, 160)})"
        return outs, name, predict
    assert first is not None
    cause = last_line(first, 240)
    if isinstance(first, EdgekitError) and not synthesized:
        raise first
    if synthesized:
        raise SamplesError(f"'{source.path}': {_who(source)}: {cause}; pass real inputs with --samples (samples=)") from first
    raise CompilationError(
        f"'{source.path}': the source model fails on the samples {where} ({cause}), so there is no reference to check "
        "candidates against; check the samples' values"
    ) from first


_BATCH = 32
"""Samples a framework reference runs at once (torch eager: 532 MobileNetV2 images at 224² one at a time took
minutes; in batches of 32 a fraction of it — docs/int8-and-tuning.md)."""


def _outputs(predict: Predict, feeds: list[Feed], batched: bool) -> list[list[np.ndarray]]:
    """``predict``'s outputs on each feed (a sequence output: a list of arrays); with ``batched``, the feeds stacked
    in batches of :data:`_BATCH` where they allow it (:func:`_batched_outputs`), else one at a time."""
    got = _batched_outputs(predict, feeds) if batched and len(feeds) > 2 else None
    return got if got is not None else [[as_value(o) for o in predict(f)] for f in feeds]


def _batched_outputs(predict: Predict, feeds: list[Feed]) -> list[list[np.ndarray]] | None:
    """Each feed's outputs from runs on batches of them, split back per feed; None where that can't stand for running
    them one at a time: feeds of different shapes or dtypes, an input or an output without a leading batch axis of 1,
    a sequence output, a batch the framework refuses, or batched outputs that differ from the first and last feed's
    own (a model that mixes the samples of a batch)."""
    names = list(feeds[0])
    if any(list(f) != names for f in feeds):
        return None
    for n in names:
        kinds = {(np.shape(f[n]), np.asarray(f[n]).dtype) for f in feeds}
        if len(kinds) != 1 or np.shape(feeds[0][n])[:1] != (1,):
            return None
    ends = [[as_value(o) for o in predict(f)] for f in (feeds[0], feeds[-1])]  # one at a time: what batches must give
    if any(is_sequence(o) or np.shape(o)[:1] != (1,) for outs in ends for o in outs):
        return None
    outs: list[list[np.ndarray]] = []
    for i in range(0, len(feeds), _BATCH):
        chunk = feeds[i : i + _BATCH]
        try:
            got = [as_value(o) for o in predict({n: np.concatenate([f[n] for f in chunk]) for n in names})]
        except Exception:  # the framework takes one sample at a time: run them so
            return None
        if len(got) != len(ends[0]) or any(
            is_sequence(g) or np.shape(g) != (len(chunk), *np.shape(e)[1:]) or np.asarray(g).dtype != np.asarray(e).dtype
            for g, e in zip(got, ends[0], strict=False)
        ):
            return None
        outs += [[np.asarray(g)[j : j + 1] for g in got] for j in range(len(chunk))]
        if i == 0 and not all(_same(a, b) for a, b in zip(ends[0], outs[0], strict=True)):  # at once: no batch more
            return None
    return outs if all(_same(a, b) for a, b in zip(ends[1], outs[-1], strict=True)) else None


def _same(one: np.ndarray, batched: np.ndarray) -> bool:
    """A batched run's output agrees with the one-sample run's: equal, or for floats within what a batched kernel's
    other summation order moves (1e-4 relative to the output's scale)."""
    a, b = np.asarray(one), np.asarray(batched)
    if a.dtype.kind not in "fc":
        return bool(np.array_equal(a, b))
    finite = np.abs(a[np.isfinite(a)])
    scale = float(finite.max()) if finite.size else 0.0
    return bool(np.allclose(a, b, rtol=1e-4, atol=1e-4 * max(scale, 1e-6), equal_nan=True))


def _who(source: SourceModel) -> str:
    """Which inputs the synthesized values may not suit: those with a role in the graph, else the non-float ones."""
    roles = input_roles(source.model)
    if roles:
        named = ", ".join(f"'{n}' (feeds {r.op} '{r.node}')" for n, r in roles.items())
        return f"the source model can't run on synthesized values for input(s) {named}"
    odd = [s.name for s in source.inputs if np.dtype(s.dtype).kind != "f"] or [s.name for s in source.inputs]
    return f"the source model can't run on synthesized values for input(s) {', '.join(repr(n) for n in odd)}"


def _ort_predictor(source: SourceModel) -> Predict:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 4  # fatal only: a failing node's error comes back in the exception edgekit's error keeps
    session = ort.InferenceSession(str(source.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feeds: Feed) -> list[np.ndarray]:
        return [as_value(o) for o in session.run(names, feeds)]

    return run


def _onnx_reference(source: SourceModel) -> Predict:
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(source.model)

    def run(feeds: Feed) -> list[np.ndarray]:
        return [as_value(o) for o in evaluator.run(None, feeds)]

    return run
