"""ONNX frontend: check, fix input shapes, infer shapes, embed external data."""

from __future__ import annotations

from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from edgekit.compiler.frontends.frontend import SourceModel, fix_input_shapes, sequence_element_type
from edgekit.deps import package_version
from edgekit.digests import file_sha256
from edgekit.errors import ModelLoadError

__all__ = ["finish_onnx", "load_onnx"]

_TWO_GB = 2**31 - 1


def load_onnx(path: Path, workdir: Path, input_shapes: dict[str, list[int]] | None) -> SourceModel:
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' does not exist")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"model file '{path}' is empty; re-export the model")
    try:
        model = onnx.load(str(path), load_external_data=True)
    except DecodeError as exc:
        raise ModelLoadError(
            f"'{path}' is not a valid ONNX file (corrupt or truncated protobuf: {exc}); re-export the model"
        ) from exc
    except (FileNotFoundError, onnx.checker.ValidationError, OSError) as exc:
        raise ModelLoadError(
            f"'{path}': cannot load its external data ({exc}); keep the .data file(s) next to the model"
        ) from exc
    size = path.stat().st_size
    sha = file_sha256(path)
    return finish_onnx(
        model,
        workdir,
        input_shapes,
        where=str(path),
        path=str(path),
        fmt="onnx",
        framework=f"onnx {package_version('onnx')}",
        sha256=sha,
        size_bytes=size,
    )


def finish_onnx(
    model: onnx.ModelProto,
    workdir: Path,
    input_shapes: dict[str, list[int]] | None,
    *,
    where: str,
    path: str,
    fmt: str,
    framework: str,
    sha256: str,
    size_bytes: int,
) -> SourceModel:
    """Validate ``model``, pin its input shapes and save it as ``workdir/source.onnx``."""
    if not model.graph.node:
        raise ModelLoadError(f"'{where}': the ONNX graph has no nodes (truncated or empty model); re-export it")
    try:
        onnx.checker.check_model(model)
    except (onnx.checker.ValidationError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"'{where}': the ONNX checker rejects the model: {first}") from exc
    _check_outputs(model, where)
    inputs = fix_input_shapes(model, dict(input_shapes or {}), where)
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=False, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise ModelLoadError(f"'{where}': shape inference fails with the given input shapes: {first}") from exc
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / "source.onnx"
    if model.ByteSize() > _TWO_GB:
        onnx.save(model, str(out), save_as_external_data=True, location="source.onnx.data")
    else:
        onnx.save(model, str(out))
    return SourceModel(
        path=path,
        format=fmt,  # type: ignore[arg-type]
        framework=framework,
        sha256=sha256,
        size_bytes=size_bytes,
        onnx_path=out,
        model=model,
        inputs=inputs,
    )


def _check_outputs(model: onnx.ModelProto, where: str) -> None:
    """One line naming the first output that is neither a tensor (or an optional tensor, carried as the tensor it
    holds) nor a sequence of tensors (``seq(tensor)``, or an optional one: a list of arrays): a map, a sequence of
    sequences or of maps."""
    for out in model.graph.output:
        kind = out.type.WhichOneof("value")
        if kind == "tensor_type" or (kind == "optional_type" and out.type.optional_type.elem_type.HasField("tensor_type")):
            continue  # an optional tensor is carried as the tensor it holds, as ONNX Runtime returns it
        if sequence_element_type(out) is not None:
            continue  # a sequence of tensors (or an optional one): a list of arrays
        what = {"sequence_type": "a sequence", "map_type": "a map", "optional_type": "an optional"}.get(str(kind), str(kind))
        fix = {
            "sequence_type": "edgekit carries sequences of tensors only: end the graph with ConcatFromSequence (or "
            "SequenceAt) so that it gives one tensor",
            "map_type": "give the values as a tensor (for scikit-learn classifiers: convert with zipmap=False)",
            "optional_type": "end the graph with OptionalGetElement so that it gives the tensor",
        }.get(str(kind), "give a tensor instead")
        raise ModelLoadError(
            f"'{where}': output '{out.name}' is {what} ({_type_name(out.type)}), and an edgekit artifact's "
            f"outputs are tensors: {fix}"
        )


def _type_name(t: onnx.TypeProto) -> str:
    """``seq(tensor(float))``, ``map(int64, tensor(float))``: ONNX's own spelling of a value's type."""
    kind = t.WhichOneof("value")
    if kind == "tensor_type":
        return f"tensor({onnx.TensorProto.DataType.Name(t.tensor_type.elem_type).lower()})"
    if kind == "sequence_type":
        return f"seq({_type_name(t.sequence_type.elem_type)})"
    if kind == "optional_type":
        return f"optional({_type_name(t.optional_type.elem_type)})"
    if kind == "map_type":
        key = onnx.TensorProto.DataType.Name(t.map_type.key_type).lower()
        return f"map({key}, {_type_name(t.map_type.value_type)})"
    return str(kind)
