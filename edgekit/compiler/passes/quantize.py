"""The ``quantize`` pass: int8 with ONNX Runtime's quantization tool after its pre-processing (shape inference and
graph clean-up).

``static`` needs calibration data to fix each activation's range: ``samples`` (the default: the part of
``--samples`` set aside for calibration, never used to evaluate; 32 synthesized inputs when there are none), an int
(that many synthesized inputs: enough to exercise the path, not to calibrate a real model) or a ``.npz`` file with one
array per input name, samples stacked along a new first axis. ``method`` is the calibration method (MinMax, Entropy,
Percentile), ``per_channel`` quantizes weights per output channel. When the candidate's accuracy budget fails on the
evaluation samples, ``keep_float: auto`` keeps the most sensitive layers in float (largest error added by the layer,
measured against the float model) until it holds, and the manifest names them.

``format`` is how a static int8 graph is written: ``QDQ`` (QuantizeLinear/DequantizeLinear pairs around float ops, which
ONNX Runtime fuses into int8 kernels when it loads the model) or ``QOperator`` (int8 operators written out: QLinearConv,
QLinearMatMul, QGemm). ``variants`` turns one candidate into one candidate per int8 variant (:data:`VARIANTS`), each
built and measured, the fastest within the budget shipping; ``auto`` (:data:`AUTO_VARIANTS`) tries the static ones
where the model has Conv/MatMul/Gemm and dynamic where MatMul/Gemm/recurrent weights hold most of the model's weights.

``reduce_range`` (the default) writes 7-bit weights: ONNX Runtime's u8×s8 kernels on x86 CPUs without VNNI (AVX2)
add pairs of products in 16 bits, which saturate with 8-bit weights (a trained CNN lost 9 points that way, and
keeping layers in float to win them back cost a third of int8's size saving); with 7 bits they cannot, on any CPU.
Static int8 pads a Conv's graph input to a multiple of 4 channels (:func:`_pad_input_channels`): ONNX Runtime's int8
convolution is slow on 3.
See docs/int8-and-tuning.md.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field

from edgekit.compiler.frontends.frontend import SourceModel
from edgekit.compiler.passes.step import Feed, GraphPass, PassContext, PassNotes
from edgekit.compiler.synthetic import synthesize
from edgekit.errors import (
    CompilationError,
    ConfigError,
    EdgekitError,
    did_you_mean,
    last_line,
)
from edgekit.progress import Progress

__all__ = ["AUTO_VARIANTS", "VARIANTS", "QuantizeOptions", "QuantizePass"]

_SYNTHESIZED_CALIBRATION = 32


class QuantizeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["static", "dynamic"] = "static"
    calibration: int | str = Field(
        default="samples", description="'samples' (the calibration part of --samples), a number of synthesized inputs, or a .npz"
    )
    method: Literal["MinMax", "Entropy", "Percentile"] = "MinMax"
    per_channel: bool = False
    keep_float: Literal["auto", "never"] = Field(
        "auto", description="auto: keep the most sensitive layers in float until the accuracy budget holds"
    )
    format: Literal["QDQ", "QOperator"] = Field(
        "QDQ", description="static: Q/DQ pairs around float ops (QDQ) or int8 operators written out (QOperator)"
    )
    variants: list[str] | Literal["auto"] | None = Field(
        None, description="one candidate per int8 variant (see VARIANTS), or 'auto': those that suit the model"
    )
    reduce_range: bool = Field(
        True,
        description="7-bit weights: ONNX Runtime's u8×s8 kernels on x86 CPUs without VNNI (AVX2) saturate with 8-bit "
        "weights; false for 8-bit weights where the device has VNNI or is ARM",
    )
    only_if_suited: bool = Field(
        False, description="skip the candidate when the model doesn't suit its mode (set for the variants of 'auto')"
    )
    seed: int = 1


# name -> (mode, format, per_channel): what a pipeline's ``variants:`` may list.
VARIANTS: dict[str, tuple[Literal["static", "dynamic"], Literal["QDQ", "QOperator"], bool]] = {
    "qdq-channel": ("static", "QDQ", True),
    "qdq-tensor": ("static", "QDQ", False),
    "qoperator-channel": ("static", "QOperator", True),
    "qoperator-tensor": ("static", "QOperator", False),
    "dynamic-tensor": ("dynamic", "QOperator", False),
    "dynamic-channel": ("dynamic", "QOperator", True),
}
# ``variants: auto``: every static variant and dynamic per tensor, each skipped where the model doesn't suit it.
AUTO_VARIANTS = ("qdq-channel", "qdq-tensor", "qoperator-channel", "qoperator-tensor", "dynamic-tensor")


# The ops whose int8 kernels are the point of quantizing (weights and arithmetic); a model without any
# of them has nothing to gain.
_QUANTIZABLE = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization"})
# What static quantization turns into int8 kernels (ONNX Runtime has no static int8 LSTM/GRU/Attention).
_STATIC_OPS = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm"})
# What dynamic quantization quantizes here: Conv is left out (ConvInteger with run-time activation scales is slower
# than float Conv on CPU: static int8 is the way for convolutions).
_DYNAMIC_OPS = ("MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization")


def _calibration(source: SourceModel, options: QuantizeOptions, context: PassContext) -> list[Feed]:
    if options.calibration == "samples":
        if context.calibration:
            return context.calibration
        return synthesize(source.model, source.inputs, _SYNTHESIZED_CALIBRATION, options.seed)
    if isinstance(options.calibration, int):
        return synthesize(source.model, source.inputs, options.calibration, options.seed)
    path = Path(options.calibration).expanduser()
    try:
        data = np.load(path)
    except Exception as exc:
        raise ConfigError(f"calibration file '{path}' is not a readable .npz ({exc})") from None
    samples: list[Feed] = []
    for spec in source.inputs:
        if spec.name not in data.files:
            raise ConfigError(f"calibration file '{path}' has no array '{spec.name}' (it has: {', '.join(data.files) or 'none'})")
        arr = data[spec.name]
        shape = list(spec.shape)
        if list(arr.shape[1:]) != shape:
            if shape and shape[0] == 1 and list(arr.shape[1:]) == shape[1:]:
                arr = arr[:, None]  # batch-1 input: the samples were stacked along the batch axis
            else:
                dims = ", ".join(str(d) for d in shape)
                rest = ", ".join(str(d) for d in shape[1:])
                also = f" (or [samples, {rest}] for this batch-1 input)" if shape and shape[0] == 1 else ""
                raise ConfigError(
                    f"calibration file '{path}': array '{spec.name}' has shape {list(arr.shape)}; "
                    f"expected [samples, {dims}]{also}"
                )
        for j in range(arr.shape[0]):
            if len(samples) <= j:
                samples.append({})
            samples[j][spec.name] = arr[j].astype(spec.dtype)
    if not samples:
        raise ConfigError(f"calibration file '{path}' holds no samples")
    return samples


@contextlib.contextmanager
def _scratch_cwd(folder: Path) -> Iterator[None]:
    """Run in ``folder/scratch``: ONNX Runtime's symbolic shape inference saves ``sym_shape_infer_temp.onnx``
    (and its data) into the working directory when it gives up. The working directory is the process's:
    callers pass absolute paths, and compiling is not meant to run in several threads at once."""
    scratch = folder / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    with contextlib.chdir(scratch):
        yield


class QuantizePass(GraphPass[QuantizeOptions]):
    options = QuantizeOptions

    def check(self, options: QuantizeOptions, where: str) -> None:
        if isinstance(options.calibration, str) and options.calibration != "samples":
            path = Path(options.calibration).expanduser()
            if not path.is_file():
                raise ConfigError(f"{where}: calibration file '{path}' does not exist")
        if isinstance(options.calibration, int) and options.calibration < 1:
            raise ConfigError(f"{where}: calibration must be at least 1 sample")

        if options.variants is not None and options.variants != "auto":
            if not options.variants:
                raise ConfigError(f"{where}: variants: list at least one of {', '.join(VARIANTS)}, or write 'auto'")
            for name in options.variants:
                if name not in VARIANTS:
                    raise ConfigError(
                        f"{where}: variants: unknown int8 variant '{name}'; {did_you_mean(name, VARIANTS)}"
                        f"known variants: {', '.join(VARIANTS)}, or 'auto'"
                    )

    def variants(self, options: QuantizeOptions) -> list[tuple[str, QuantizeOptions]]:
        """One (name, options) per variant ``options.variants`` lists; [] when it lists none."""
        if options.variants is None:
            return []
        names = list(AUTO_VARIANTS) if options.variants == "auto" else list(dict.fromkeys(options.variants))
        return [
            (
                name,
                options.model_copy(
                    update={
                        "mode": VARIANTS[name][0],
                        "format": VARIANTS[name][1],
                        "per_channel": VARIANTS[name][2],
                        "variants": None,
                        "only_if_suited": options.variants == "auto",
                    }
                ),
            )
            for name in names
        ]

    def unsuited(self, source: SourceModel, options: QuantizeOptions) -> str | None:
        """Why this model doesn't suit ``options``' mode, when the candidate is to be skipped then; else None."""
        if not options.only_if_suited:
            return None
        if options.mode == "static":
            if not _has_ops(source.model, _STATIC_OPS):
                return "static int8 quantizes Conv/MatMul/Gemm and the model has none of them"
            return None
        weights = _weights_by_op(source.model)
        dense = sum(weights.get(op, 0) for op in _DYNAMIC_OPS)
        total = sum(weights.values())
        if not total or dense * 2 < total:
            share = f"{dense / total:.0%}" if total else "none"
            return (
                f"dynamic int8 is for MatMul/Gemm-heavy models; {share} of this model's weights are in MatMul/Gemm/"
                "recurrent layers (the rest in Conv: static int8 covers it)"
            )
        return None

    def calibrates_from_samples(self, options: QuantizeOptions) -> bool:
        return options.mode == "static" and options.calibration == "samples"

    def files_read(self, options: QuantizeOptions) -> list[Path]:
        calibration = options.calibration
        if isinstance(calibration, str) and calibration != "samples" and Path(calibration).expanduser().is_file():
            return [Path(calibration).expanduser()]
        return []

    def apply(
        self,
        source: SourceModel,
        options: QuantizeOptions,
        folder: Path,
        progress: Progress,
        context: PassContext,
        notes: PassNotes,
    ) -> SourceModel:
        return _quantize(source, options, folder, progress, context, notes)


def _quantize(
    source: SourceModel, options: QuantizeOptions, folder: Path, progress: Progress, context: PassContext, notes: PassNotes
) -> SourceModel:
    heavy = {n.op_type for n in source.model.graph.node if n.domain in ("", "ai.onnx")} & _QUANTIZABLE
    if not heavy:
        raise CompilationError(
            f"nothing to quantize in '{source.path}': int8 applies to {', '.join(sorted(_QUANTIZABLE))}, and the model "
            "has none of them; drop the quantize pass for this model"
        )
    if options.mode == "dynamic" and not _has_ops(source.model, _DYNAMIC_OPS):
        raise CompilationError(
            f"dynamic int8 quantizes {', '.join(_DYNAMIC_OPS)} and '{source.path}' has none of them (its "
            f"{', '.join(sorted(heavy))} take static int8); use mode: static for this model"
        )
    model_in = source.onnx_path.resolve()
    prepared = (folder / "prepared.onnx").resolve()
    out = (folder / "model.onnx").resolve()
    try:
        with _scratch_cwd(folder):
            _pre_process(model_in, prepared)
        _name_nodes(prepared)
        padded = _pad_input_channels(prepared) if options.mode == "static" else []
        if padded:
            progress(f"quantize: input channels padded with zeros to a multiple of 4 for {', '.join(padded)}")
        samples: list[Feed] = []
        if options.mode == "dynamic":
            progress("quantize: int8 weights, activations quantized at run time (dynamic)")
        else:
            samples = _calibration(source, options, context)  # a relative calibration path is the caller's: read it here
            progress(
                f"quantize: int8 weights and activations (static, {options.format}, {options.method}"
                f"{', per channel' if options.per_channel else ''}), calibrating on {len(samples)} sample(s)"
            )
        fallback = ""
        with _scratch_cwd(folder):
            try:
                _run_quantizer(prepared, out, options, samples, [])
            except Exception as exc:
                if not options.per_channel:
                    raise
                # ONNX Runtime's quantizer fails per-channel on some Gemm biases (an array compared as a scalar)
                fallback = f"per channel failed ({last_line(exc, 120)}); quantized per tensor"
                progress(f"quantize: {fallback}")
                options = options.model_copy(update={"per_channel": False})
                _run_quantizer(prepared, out, options, samples, [])
            if options.keep_float == "auto" and context.eval_feeds:
                notes.kept_float = _keep_sensitive_in_float(prepared, out, options, samples, context, progress)
        _compact(out)
        notes.quantization = _described(options, len(samples), fallback)
        if padded:
            notes.quantization["paddedInputChannels"] = padded
    except EdgekitError:
        raise
    except Exception as exc:
        raise CompilationError(
            f"int8 quantization ({options.mode}) failed: {last_line(exc, 300)}; "
            "drop the quantize pass for this model or try the other mode"
        ) from exc
    data = out.read_bytes()
    return replace(
        source, onnx_path=out, model=onnx.load(str(out)), sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data)
    )


def _described(options: QuantizeOptions, calibrated_on: int, fallback: str) -> dict[str, Any]:
    """What the manifest says of the int8 a candidate used: mode, format, granularity (and calibration)."""
    said: dict[str, Any] = {
        "mode": options.mode,
        "format": options.format if options.mode == "static" else "QOperator",
        "granularity": "per-channel" if options.per_channel else "per-tensor",
        "weightBits": 7 if options.reduce_range else 8,
    }
    if options.mode == "static":
        said.update(method=options.method, calibrationSamples=calibrated_on)
    else:
        said["ops"] = list(_DYNAMIC_OPS)
    if fallback:
        said["note"] = fallback
    return said


def _has_ops(model: onnx.ModelProto, ops: frozenset[str] | tuple[str, ...]) -> bool:
    return any(n.op_type in ops for n in model.graph.node if n.domain in ("", "ai.onnx"))


def _weights_by_op(model: onnx.ModelProto) -> dict[str, int]:
    """How many weight elements (initializers) each quantizable op type reads."""
    sizes = {i.name: int(np.prod(i.dims)) if i.dims else 1 for i in model.graph.initializer}
    found: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in _QUANTIZABLE and node.domain in ("", "ai.onnx"):
            found[node.op_type] = found.get(node.op_type, 0) + sum(sizes.get(i, 0) for i in node.input[1:])
    return found


def _name_nodes(path: Path) -> None:
    """Give unnamed nodes a name: layers are kept in float by node name."""
    model = onnx.load(str(path))
    taken = {n.name for n in model.graph.node}
    changed = False
    for i, node in enumerate(model.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}" if f"{node.op_type}_{i}" not in taken else f"{node.op_type}_{i}_edgekit"
            taken.add(node.name)
            changed = True
    if changed:
        onnx.save(model, str(path))


_SHARED_MAX = 4096  # elements: identical scales and zero points up to this size are shared
_QUANT_PARAMS = ("_scale", "_zero_point")  # how ONNX Runtime's quantizer names them


def _compact(path: Path) -> None:
    """Shorten what ONNX Runtime's quantizer writes, the graph unchanged: identical scales and zero points (the
    per-channel weight zero points of layers of one width, the activations' zero points) shared as one, and every
    tensor name but the model's inputs and outputs replaced with a short id (``/3/Conv_output_0_quantized_scale``
    becomes ``q1f``): names and scales are ~5 KB of a 30 KB int8 CNN. Node names stay (the layers kept in float are
    named by them). A graph with subgraphs (If, Loop, Scan: they may name outer values) or sparse initializers is
    left as written."""
    model = onnx.load(str(path))
    graph = model.graph
    subgraphs = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
    if graph.sparse_initializer or any(a.type in subgraphs for n in graph.node for a in n.attribute):
        return
    keep = {v.name for v in graph.input} | {v.name for v in graph.output}
    same: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    alias: dict[str, str] = {}
    kept = []
    for init in graph.initializer:
        if (
            init.name.endswith(_QUANT_PARAMS)
            and init.name not in keep
            and init.data_location != onnx.TensorProto.EXTERNAL
            and _elements(init) <= _SHARED_MAX
        ):
            key = (init.data_type, tuple(init.dims), onnx.numpy_helper.to_array(init).tobytes())
            if key in same:
                alias[init.name] = same[key]
                continue
            same[key] = init.name
        kept.append(init)
    ids: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        name = alias.get(name, name)
        if name not in ids:
            new = f"q{len(ids):x}"
            while new in keep:
                new += "_"
            ids[name] = new
        return ids[name]

    del graph.initializer[:]
    graph.initializer.extend(kept)
    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    infos = [i for i in graph.value_info if i.name not in alias]  # a shared initializer's type is described once
    del graph.value_info[:]
    graph.value_info.extend(infos)
    for info in graph.value_info:
        info.name = short(info.name)
    onnx.save(model, str(path))


def _elements(init: onnx.TensorProto) -> int:
    return int(np.prod(init.dims)) if init.dims else 1


_PADDING = "edgekit: input channels padded to a multiple of 4"  # the doc string of the Pad nodes it adds


def _pad_input_channels(path: Path) -> list[str]:
    """Pad the input channels of each Conv that reads a graph input with zeros, up to a multiple of 4 (3 -> 4 for an
    RGB image): ONNX Runtime's int8 convolution is slow on 3 input channels (the trained CNN's first QLinearConv took
    longer than its other two together) and fast on 4. A zero channel times zero weights adds nothing: the outputs
    are the same. Only a plain Conv (group 1, NCHW, weights an initializer of its own) on an input with a known
    channel count; what was padded, as 'node: 3 -> 4'."""
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    if next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0) < 11:
        return []  # Pad takes its pads as an input from opset 11
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    uses: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    channels: dict[str, int] = {}
    for i in graph.input:
        dims = i.type.tensor_type.shape.dim
        if i.name not in inits and len(dims) == 4 and dims[1].HasField("dim_value"):
            channels[i.name] = dims[1].dim_value
    padded: list[str] = []
    made: dict[str, str] = {}  # graph input -> its padded tensor
    for node in list(graph.node):
        if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or node.input[0] not in channels:
            continue
        c = channels[node.input[0]]
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        if c % 4 == 0 or w is None or group != 1 or uses.get(w.name, 0) != 1 or len(w.dims) != 4 or w.dims[1] != c:
            continue
        to = c + (-c) % 4
        weights = numpy_helper.to_array(w)
        pad = np.zeros((weights.shape[0], to - c, *weights.shape[2:]), dtype=weights.dtype)
        w.CopyFrom(numpy_helper.from_array(np.concatenate([weights, pad], axis=1), w.name))
        source = node.input[0]
        if source not in made:
            made[source] = f"{source}_channels_padded"
            pads = numpy_helper.from_array(np.array([0, 0, 0, 0, 0, to - c, 0, 0], dtype=np.int64), f"{source}_channel_pads")
            graph.initializer.append(pads)
            graph.node.insert(
                0,
                helper.make_node(
                    "Pad",
                    [source, pads.name],
                    [made[source]],
                    name=f"{source}_pad_channels",
                    mode="constant",
                    doc_string=_PADDING,
                ),
            )
        node.input[0] = made[source]
        padded.append(f"{node.name}: {c} -> {to}")
    if padded:  # the convolutions' outputs keep their shapes: the value infos stay right
        onnx.save(model, str(path))
    return padded


def _session(model: Path | onnx.ModelProto, fused: bool = False) -> Any:
    """An ONNX Runtime session on ``model``: as written (to read every Q/DQ step), or ``fused`` as the artifact will
    run (Q/DQ pairs fused into int8 kernels, whose arithmetic differs: u8×s8 products can saturate on AVX2)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    level = "ORT_ENABLE_EXTENDED" if fused else "ORT_DISABLE_ALL"
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
    opts.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def _outputs(path: Path, feeds: list[Feed]) -> list[list[np.ndarray]]:
    """What ``path`` outputs on ``feeds`` with the int8 kernels the artifact will run (the budget is checked on these)."""
    session = _session(path, fused=True)
    names = [o.name for o in session.get_outputs()]
    return [[np.asarray(o) for o in session.run(names, f)] for f in feeds]


def _keep_sensitive_in_float(
    prepared: Path, out: Path, options: QuantizeOptions, samples: list[Feed], context: PassContext, progress: Progress
) -> list[str]:
    """Quantize again with the most sensitive layers excluded (1, 2, 4, ... of them) until the budget holds on the
    evaluation samples (measured with ONNX Runtime); the layers kept in float, or [] when int8 met it at once."""
    problems = context.problems(_outputs(out, context.eval_feeds))
    if not problems:
        return []
    if context.problems(_outputs(prepared, context.eval_feeds)):
        progress("quantize: the model misses the budget before int8 already; no layer kept in float would help")
        return []
    ranked_on = out
    if options.mode == "static" and options.format != "QDQ":  # the ranking reads Q/DQ pairs: rank on a QDQ twin
        ranked_on = out.with_name("ranking-qdq.onnx")
        _run_quantizer(prepared, ranked_on, options.model_copy(update={"format": "QDQ"}), samples, [])
    ranked = _sensitivity(prepared, ranked_on, context.eval_feeds[:8])
    progress(f"quantize: int8 misses the budget ({problems[0]}); keeping the most sensitive layers in float")
    total = len({n.name for n in onnx.load(str(prepared)).graph.node})
    count = 1
    kept: list[str] = []
    while count <= len(ranked):
        kept = list(dict.fromkeys(name for names in ranked[:count] for name in names))
        if len(kept) > max(1, total // 2):  # beyond half the graph in float, int8 has little left to give
            break
        _run_quantizer(prepared, out, options, samples, kept)
        problems = context.problems(_outputs(out, context.eval_feeds))
        progress(f"quantize: {len(kept)} layer(s) in float: {'within the budget' if not problems else problems[0]}")
        if not problems:
            break
        count *= 2
    return kept


def _sensitivity(prepared: Path, quantized: Path, feeds: list[Feed]) -> list[list[str]]:
    """What to keep in float, the noisiest first: for each tensor the quantizer put a QuantizeLinear/DequantizeLinear
    pair on (activations) or dequantizes (weights), the relative error that pair adds on the evaluation samples, and
    the nodes that would have to stay float for the tensor to stay float (its producer and its consumers)."""
    qmodel = onnx.load(str(quantized))
    fmodel = onnx.load(str(prepared))
    float_weights = {i.name: onnx.numpy_helper.to_array(i) for i in fmodel.graph.initializer}
    float_nodes = {n.name: n for n in fmodel.graph.node}
    producer = {o: n for n in qmodel.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in qmodel.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    units: list[tuple[str, str, list[str]]] = []  # (tensor before, tensor after, nodes to keep float)
    for dq in (n for n in qmodel.graph.node if n.op_type == "DequantizeLinear"):
        users = [u.name for u in consumers.get(dq.output[0], []) if u.name in float_nodes]
        q = producer.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear":  # an activation: x -> Q -> DQ
            source = q.input[0]
            made_by = producer.get(source)
            names = users + ([made_by.name] if made_by is not None and made_by.name in float_nodes else [])
            units.append((source, dq.output[0], names))
        elif users:  # a weight: find the float initializer the first user read in that slot
            user = float_nodes[users[0]]
            quser = next(u for u in consumers[dq.output[0]] if u.name == users[0])
            slot = list(quser.input).index(dq.output[0])
            if slot < len(user.input) and user.input[slot] in float_weights:
                units.append((user.input[slot], dq.output[0], users))
    if not units:
        return []
    have = {o.name for o in qmodel.graph.output}
    for _, after, _ in units:
        if after not in have:
            qmodel.graph.output.append(onnx.helper.make_empty_tensor_value_info(after))
            have.add(after)
    for before, _, _ in units:
        if before not in have and before not in float_weights and before in producer:
            qmodel.graph.output.append(onnx.helper.make_empty_tensor_value_info(before))
            have.add(before)
    session = _session(qmodel)
    names = [o.name for o in session.get_outputs()]
    runs = [dict(zip(names, session.run(names, f), strict=True)) for f in feeds]
    errors: dict[int, float] = {}
    for k, (before, after, _) in enumerate(units):
        num = den = 0.0
        for f, run in zip(feeds, runs, strict=True):
            ref = float_weights.get(before, run.get(before, f.get(before)))
            if ref is None or after not in run:
                break
            got = np.asarray(run[after], dtype=np.float64)
            want = np.asarray(ref, dtype=np.float64)
            if got.size != want.size:
                break
            num += float(np.sum((got.reshape(-1) - want.reshape(-1)) ** 2))
            den += float(np.sum(want**2))
        errors[k] = float(np.sqrt(num / den)) if den else 0.0
    order = sorted(errors, key=lambda k: -errors[k])
    return [units[k][2] for k in order if units[k][2]]


def _pre_process(model_in: Path, prepared: Path) -> None:
    """ONNX Runtime's pre-processing for quantization: shape inference and graph clean-up."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(model_in), str(prepared))
    except Exception:  # symbolic shape inference can't follow every op (ai.onnx.ml): ONNX's own inference then
        quant_pre_process(str(model_in), str(prepared), skip_symbolic_shape=True)


def _run_quantizer(prepared: Path, out: Path, options: QuantizeOptions, samples: list[Feed], exclude: list[str]) -> None:
    # The channel padding stays float: quantized, the QDQ format would quantize and dequantize the input once more
    # before it (ONNX Runtime doesn't fold a Q/DQ pair around a Pad); float, it is Pad then one QuantizeLinear.
    padding = [n.name for n in onnx.load(str(prepared), load_external_data=False).graph.node if n.doc_string == _PADDING]
    exclude = [*exclude, *padding]
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    if options.mode == "dynamic":
        quantize_dynamic(
            str(prepared),
            str(out),
            weight_type=QuantType.QInt8,
            per_channel=options.per_channel,
            nodes_to_exclude=exclude,
            op_types_to_quantize=list(_DYNAMIC_OPS),
            reduce_range=options.reduce_range,
        )
        return

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it: Iterator[dict[str, np.ndarray]] = iter(samples)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    quantize_static(
        str(prepared),
        str(out),
        Reader(),
        quant_format=getattr(QuantFormat, options.format),
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=options.per_channel,
        calibrate_method=getattr(CalibrationMethod, options.method),
        nodes_to_exclude=exclude,
        reduce_range=options.reduce_range,
    )
