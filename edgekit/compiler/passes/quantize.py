"""The ``quantize`` pass: int8 with ONNX Runtime's quantization tool after its pre-processing (shape inference and
graph clean-up).

``static`` needs calibration data to fix each activation's range: ``samples`` (the default: the part of
``--samples`` set aside for calibration, never used to evaluate; 32 synthesized inputs when there are none), an int
(that many synthesized inputs: enough to exercise the path, not to calibrate a real model) or a ``.npz`` file with one
array per input name, samples stacked along a new first axis. ``method`` is the calibration method (MinMax, Entropy,
Percentile), ``per_channel`` quantizes weights per output channel. When the candidate's accuracy budget fails on the
evaluation samples, ``keep_float: auto`` keeps the most sensitive layers in float (largest error added by the layer,
measured against the float model) until it holds, and the manifest names them. See docs/int8-and-tuning.md.
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
    last_line,
)
from edgekit.progress import Progress

__all__ = ["QuantizeOptions", "QuantizePass"]

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
    seed: int = 1


# The ops whose int8 kernels are the point of quantizing (weights and arithmetic); a model without any
# of them has nothing to gain.
_QUANTIZABLE = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization"})


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
    model_in = source.onnx_path.resolve()
    prepared = (folder / "prepared.onnx").resolve()
    out = (folder / "model.onnx").resolve()
    try:
        with _scratch_cwd(folder):
            _pre_process(model_in, prepared)
        _name_nodes(prepared)
        samples: list[Feed] = []
        if options.mode == "dynamic":
            progress("quantize: int8 weights, activations quantized at run time (dynamic)")
        else:
            samples = _calibration(source, options, context)  # a relative calibration path is the caller's: read it here
            progress(
                f"quantize: int8 weights and activations (static, QDQ, {options.method}"
                f"{', per channel' if options.per_channel else ''}), calibrating on {len(samples)} sample(s)"
            )
        with _scratch_cwd(folder):
            try:
                _run_quantizer(prepared, out, options, samples, [])
            except Exception as exc:
                if not options.per_channel:
                    raise
                # ONNX Runtime's quantizer fails per-channel on some Gemm biases (an array compared as a scalar)
                progress(f"quantize: per-channel failed ({last_line(exc, 120)}); quantizing per tensor")
                options = options.model_copy(update={"per_channel": False})
                _run_quantizer(prepared, out, options, samples, [])
            if options.keep_float == "auto" and context.eval_feeds:
                notes.kept_float = _keep_sensitive_in_float(prepared, out, options, samples, context, progress)
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


def _session(model: Path | onnx.ModelProto) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, sess_options=opts, providers=["CPUExecutionProvider"])


def _outputs(path: Path, feeds: list[Feed]) -> list[list[np.ndarray]]:
    session = _session(path)
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
    ranked = _sensitivity(prepared, out, context.eval_feeds[:8])
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
            str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=options.per_channel, nodes_to_exclude=exclude
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
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=options.per_channel,
        calibrate_method=getattr(CalibrationMethod, options.method),
        nodes_to_exclude=exclude,
    )
