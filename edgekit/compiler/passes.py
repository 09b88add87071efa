"""Graph passes a candidate applies to the ONNX model before its backend compiles it.

``passes:`` in a pipeline candidate is a list of one-key mappings, applied in order::

    passes:
      - quantize: {mode: static, calibration: 64}     # int8 weights and activations (QDQ)
      - quantize: {mode: dynamic}                      # int8 weights, activations quantized at run time

**quantize** uses ONNX Runtime's quantization tool after its pre-processing (shape inference and
graph clean-up). ``static`` needs calibration data to fix each activation's range: an int (that many
random samples from the input shapes: enough to exercise the path, not to calibrate a real model) or
a ``.npz`` file with one array per input name, samples stacked along a new first axis (for a batch-1
input, along the batch axis also works). Quantized
candidates are measured against the *float* source model like every other, so the pipeline's (or the
candidate's own) accuracy budget decides whether the int8 error is acceptable.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.compiler.frontends.base import SourceModel
from edgekit.compiler.measure import sample_inputs
from edgekit.digests import file_sha256
from edgekit.errors import CompilationError, ConfigError, did_you_mean, first_problem, last_line, reject_unknown_keys
from edgekit.progress import Progress

__all__ = ["PASSES", "PassStep", "QuantizeOptions", "apply_passes", "file_inputs", "parse_passes"]


class QuantizeOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["static", "dynamic"] = "static"
    calibration: int | str = Field(default=32, description="random samples (int) or a .npz file of real ones")
    per_channel: bool = False
    seed: int = 1


PASSES: dict[str, type[BaseModel]] = {"quantize": QuantizeOptions}

# The ops whose int8 kernels are the point of quantizing (weights and arithmetic); a model without any
# of them has nothing to gain.
_QUANTIZABLE = frozenset({"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "LSTM", "GRU", "EmbedLayerNormalization"})


@dataclass(frozen=True)
class PassStep:
    """One step of a candidate's ``passes:``, its options checked."""

    name: str
    options: BaseModel


def _parse(step: Any, where: str) -> PassStep:
    if not isinstance(step, dict) or len(step) != 1:
        raise ConfigError(f"{where}: each pass is a one-key mapping like {{quantize: {{mode: static}}}}, got {step!r}")
    ((name, options),) = step.items()
    if name not in PASSES:
        raise ConfigError(f"{where}: unknown pass '{name}'; {did_you_mean(str(name), PASSES)}known passes: {', '.join(PASSES)}")
    model = PASSES[name]
    reject_unknown_keys(options or {}, model.model_fields, f"{where}: pass '{name}'")
    try:
        return PassStep(name, model.model_validate(options or {}))
    except ValidationError as exc:
        raise ConfigError(f"{where}: pass '{name}': {first_problem(exc)}") from None


def parse_passes(passes: list[dict[str, Any]], where: str) -> list[PassStep]:
    """The checked steps, or ConfigError for a pass or option that doesn't exist, before anything is loaded."""
    steps = []
    for step in passes:
        parsed = _parse(step, where)
        options = parsed.options
        if isinstance(options, QuantizeOptions) and isinstance(options.calibration, str):
            path = Path(options.calibration).expanduser()
            if not path.is_file():
                raise ConfigError(f"{where}: pass '{parsed.name}': calibration file '{path}' does not exist")
        if isinstance(options, QuantizeOptions) and isinstance(options.calibration, int) and options.calibration < 1:
            raise ConfigError(f"{where}: pass '{parsed.name}': calibration must be at least 1 sample")
        steps.append(parsed)
    return steps


def apply_passes(source: SourceModel, steps: Sequence[PassStep], work: Path, progress: Progress) -> SourceModel:
    """``source`` with every step applied, written under ``work``; the source itself is unchanged."""
    current = source
    for i, step in enumerate(steps):
        folder = work / f"pass-{i}-{step.name}"
        folder.mkdir(parents=True, exist_ok=True)
        if isinstance(step.options, QuantizeOptions):
            current = _quantize(current, step.options, folder, progress)
    return current


def file_inputs(steps: Sequence[PassStep]) -> list[str]:
    """SHA-256 of the files the steps read (calibration data): part of the artifact cache key."""
    found = []
    for step in steps:
        calibration = getattr(step.options, "calibration", None)
        if isinstance(calibration, str) and Path(calibration).expanduser().is_file():
            found.append(file_sha256(Path(calibration).expanduser()))
    return found


def _calibration(source: SourceModel, options: QuantizeOptions) -> list[dict[str, np.ndarray]]:
    if isinstance(options.calibration, int):
        return sample_inputs(source.inputs, options.calibration, options.seed)
    path = Path(options.calibration).expanduser()
    try:
        data = np.load(path)
    except Exception as exc:
        raise ConfigError(f"calibration file '{path}' is not a readable .npz ({exc})") from None
    samples: list[dict[str, np.ndarray]] = []
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


def _quantize(source: SourceModel, options: QuantizeOptions, folder: Path, progress: Progress) -> SourceModel:
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
        samples: list[dict[str, np.ndarray]] = []
        if options.mode == "dynamic":
            progress("quantize: int8 weights, activations quantized at run time (dynamic)")
        else:
            samples = _calibration(source, options)  # a relative calibration path is the caller's: read it here
            progress(f"quantize: int8 weights and activations (static, QDQ), calibrating on {len(samples)} sample(s)")
        with _scratch_cwd(folder):
            _run_quantizer(prepared, out, options, samples)
    except ConfigError:
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


def _pre_process(model_in: Path, prepared: Path) -> None:
    """ONNX Runtime's pre-processing for quantization: shape inference and graph clean-up."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(model_in), str(prepared))
    except Exception:  # symbolic shape inference can't follow every op (ai.onnx.ml): ONNX's own inference then
        quant_pre_process(str(model_in), str(prepared), skip_symbolic_shape=True)


def _run_quantizer(prepared: Path, out: Path, options: QuantizeOptions, samples: list[dict[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, quantize_static

    if options.mode == "dynamic":
        quantize_dynamic(str(prepared), str(out), weight_type=QuantType.QInt8, per_channel=options.per_channel)
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
    )
