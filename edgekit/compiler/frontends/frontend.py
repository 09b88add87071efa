"""What every frontend produces, and the input-shape handling they share."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from edgekit.errors import InputShapeError, ModelLoadError
from edgekit.manifest import TensorSpec

__all__ = [
    "DYNAMIC",
    "Reference",
    "SourceModel",
    "fix_input_shapes",
    "input_shapes_from",
    "input_tensor_type",
    "parse_input_shapes",
    "sequence_element_type",
    "sequence_spec",
    "source_format",
    "tabular_batch",
]

Format = Literal["onnx", "torch", "sklearn", "xgboost", "lightgbm", "tflite", "keras", "tensorflow"]
# Runs the model in its source framework: inputs by name -> outputs in ONNX output order.
Reference = Callable[[dict[str, np.ndarray]], list[np.ndarray]]

_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_SUFFIXES: dict[str, Format] = {
    ".onnx": "onnx",
    ".pt": "torch",
    ".pth": "torch",
    ".ts": "torch",
    ".torchscript": "torch",
    ".joblib": "sklearn",
    ".pkl": "sklearn",
    ".skops": "sklearn",
    ".pickle": "sklearn",
    ".json": "xgboost",  # Booster.save_model / XGBClassifier.save_model (the content is checked when loading)
    ".ubj": "xgboost",
    ".txt": "lightgbm",  # Booster.save_model's text model
    ".tflite": "tflite",
    ".keras": "keras",
    ".h5": "keras",
}


@dataclass
class SourceModel:
    """A model converted to ONNX, with fixed input shapes, ready for any backend."""

    path: str
    format: Format
    framework: str
    sha256: str
    size_bytes: int
    onnx_path: Path
    model: onnx.ModelProto
    inputs: list[TensorSpec]
    reference: Reference | None = None
    reference_name: str = "onnxruntime (no graph optimisation) on the source ONNX"
    module: object | None = None  # the eager torch.nn.Module a factory gave (for torch-pruning), else None

    @property
    def opset(self) -> int:
        for imp in self.model.opset_import:
            if imp.domain in ("", "ai.onnx"):
                return int(imp.version)
        return 0

    @property
    def stem(self) -> str:
        base = self.path.split(":")[-1] if self.format == "torch" and ":" in self.path else Path(self.path).stem
        return re.sub(r"[^A-Za-z0-9_.-]", "_", base) or "model"


def source_format(model: str | Path) -> Format:
    text = str(model)
    if _FACTORY.match(text) and not Path(text).exists():
        return "torch"
    path = Path(text)
    if path.is_dir():
        if (path / "saved_model.pb").is_file() or (path / "saved_model.pbtxt").is_file():
            return "tensorflow"
        raise ModelLoadError(
            f"'{text}' is a folder without saved_model.pb; the only folder edgekit reads is a TensorFlow SavedModel "
            "(tf.saved_model.save or model.export)"
        )
    suffix = path.suffix.lower()
    if suffix == ".pb":
        raise ModelLoadError(
            f"'{text}': a .pb file alone is a frozen graph or part of a SavedModel; pass the SavedModel folder that "
            "holds saved_model.pb (model.export(folder) or tf.saved_model.save)"
        )
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    raise ModelLoadError(
        f"'{text}': cannot tell the model format from the suffix '{suffix}'; use .onnx, a TorchScript "
        f".pt/.pth, a 'package.module:factory' spec, a scikit-learn .skops/.joblib/.pkl, an XGBoost .json/.ubj, "
        f"a LightGBM .txt, a .tflite, a Keras .keras/.h5 or a TensorFlow SavedModel folder"
    )


def tabular_batch(where: str, shapes: dict[str, list[int]] | None, name: str, n_features: int, what: str) -> int:
    """The batch size of a one-input ``[batch, n_features]`` model (tree ensembles, scikit-learn): 1 unless given."""
    given = dict(shapes or {})
    if "" in given:
        given = {name: given.pop("")}
    if not given:
        return 1
    if set(given) != {name}:
        raise InputShapeError(f"'{where}': {what} has one input, '{name}'; got {sorted(given)}")
    shape = given[name]
    if len(shape) != 2 or shape[1] != n_features:
        raise InputShapeError(f"'{where}': input '{name}' must be [batch, {n_features}] for this model, got {shape}")
    return shape[0]


DYNAMIC = -1  # a dynamic dimension in a parsed --input-shape (given as -1 or a symbolic name)
_FORMS = (
    "NAME:D1,D2,... (a -1 or a name such as batch for a dynamic dimension, e.g. input:-1,13), "
    "tvmc's NAME:[D1,D2,...] (several separated by spaces) or Neo's JSON {\"NAME\": [D1, D2, ...]}"
)
_TVMC = re.compile(r"\s*([\w.:/]+?)\s*:\s*\[([^\]]*)\]\s*,?")
_SYMBOL = re.compile(r"^[A-Za-z_]\w*$")


def parse_input_shapes(specs: list[str] | None) -> dict[str, list[int]]:
    """Parse ``--input-shape`` values: ``name:1,3,224,224`` (or ``1,3,224,224`` for a single input), tvmc's
    ``name:[1,3,224,224] other:[1,8]`` and Neo's ``DataInputConfig`` JSON ``{"name": [1,3,224,224]}``.

    A dimension given as ``-1`` or a symbolic name (``batch``) is dynamic: :data:`DYNAMIC` in the result.
    """
    shapes: dict[str, list[int]] = {}
    for spec in specs or []:
        text = spec.strip()
        bracketed = text.startswith("{") or "[" in text  # these forms can say [] : a 0-d (scalar) input
        if text.startswith("{"):
            pairs = _neo_json(spec)
        elif "[" in text:
            pairs = _tvmc_form(spec)
        else:
            name, _, given = text.rpartition(":")
            parts = given.split("x") if re.fullmatch(r"\d+(x\d+)+", given) else given.split(",")  # or 1x3x224x224
            pairs = [(name, list(parts))]
        for name, dims in pairs:
            shapes[name] = _shape(spec, dims, scalar_ok=bracketed)
    return shapes


def input_tensor_type(vi: onnx.ValueInfoProto) -> onnx.TypeProto.Tensor:
    """The tensor type of a graph input: its own, or an optional tensor's (``optional(tensor(T))``), which edgekit
    feeds as a present tensor, as ONNX Runtime and TVM take one. Anything else has ``elem_type`` 0."""
    t = vi.type
    if t.HasField("optional_type") and t.optional_type.elem_type.HasField("tensor_type"):
        return t.optional_type.elem_type.tensor_type
    return t.tensor_type


def sequence_element_type(vi: onnx.ValueInfoProto) -> onnx.TypeProto.Tensor | None:
    """The element tensor type of a ``seq(tensor(T))`` value (or an ``optional(seq(tensor(T)))``, which edgekit
    carries as the sequence it holds); None for anything else."""
    t = vi.type
    if t.HasField("optional_type") and t.optional_type.elem_type.HasField("sequence_type"):
        t = t.optional_type.elem_type
    if t.HasField("sequence_type") and t.sequence_type.elem_type.HasField("tensor_type"):
        return t.sequence_type.elem_type.tensor_type
    return None


def sequence_spec(vi: onnx.ValueInfoProto, where: str) -> TensorSpec:
    """The spec of a sequence input: its element dtype and element shape, ``-1`` where the model leaves a size open
    (an element shape the model doesn't declare at all: ``[]``, any shape accepted)."""
    elem = sequence_element_type(vi)
    if elem is None or elem.elem_type == 0:
        raise ModelLoadError(f"{where}: input '{vi.name}' is a sequence of no known tensor type; declare its element type")
    dims = [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else DYNAMIC for d in elem.shape.dim]
    dtype = str(onnx.helper.tensor_dtype_to_np_dtype(elem.elem_type))
    return TensorSpec(name=vi.name, shape=dims, dtype=dtype, kind="sequence")


def input_shapes_from(value: object) -> dict[str, list[int]] | None:
    """``compile(input_shapes=...)``: a string or list of strings as on the command line, or a mapping of input name to
    dimensions (ints, ``-1`` or symbolic names for dynamic ones)."""
    if value is None:
        return None
    if isinstance(value, str):
        return parse_input_shapes([value])
    if isinstance(value, Mapping):
        out: dict[str, list[int]] = {}
        for name, dims in value.items():
            if not isinstance(dims, (list, tuple)):
                raise InputShapeError(
                    f"input_shapes['{name}']: expected a list of dimensions, got {dims!r}; accepted forms: {_FORMS}"
                )
            out[str(name)] = _shape(f"{name}:{list(dims)}", list(dims), scalar_ok=True)
        return out
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return parse_input_shapes(list(value))
    raise InputShapeError(f"input_shapes: expected strings or a mapping, got {type(value).__name__}; accepted forms: {_FORMS}")


def _neo_json(spec: str) -> list[tuple[str, list[object]]]:
    import json

    try:
        data = json.loads(spec)
    except ValueError:
        data = None
    if not isinstance(data, dict) or not data or not all(isinstance(v, list) for v in data.values()):
        raise InputShapeError(f"--input-shape '{spec}': not a JSON object of shapes; accepted forms: {_FORMS}")
    return [(str(k), list(v)) for k, v in data.items()]


def _tvmc_form(spec: str) -> list[tuple[str, list[object]]]:
    pairs: list[tuple[str, list[object]]] = []
    pos = 0
    while pos < len(spec):
        m = _TVMC.match(spec, pos)
        if m is None or m.end() == pos:
            raise InputShapeError(f"--input-shape '{spec}': cannot read it from '{spec[pos:]}'; accepted forms: {_FORMS}")
        pairs.append((m.group(1), list(m.group(2).split(",")) if m.group(2).strip() else []))
        pos = m.end()
    return pairs


def _shape(spec: str, dims: list[object], *, scalar_ok: bool = False) -> list[int]:
    shape: list[int] = []
    for d in dims:
        text = "" if isinstance(d, bool) else str(d).strip()  # JSON true is no dimension
        if text == "-1" or (isinstance(d, str) and _SYMBOL.match(text)):
            shape.append(DYNAMIC)
        elif text.isdigit() and int(text) > 0:
            shape.append(int(text))
        else:
            raise InputShapeError(f"--input-shape '{spec}': '{text}' is not a dimension; accepted forms: {_FORMS}")
    if not shape and not scalar_ok:
        raise InputShapeError(f"--input-shape '{spec}': no dimensions (a 0-d input: NAME:[]); accepted forms: {_FORMS}")
    return shape


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    out: list[int | str] = []
    for d in input_tensor_type(vi).shape.dim:
        if d.HasField("dim_value") and d.dim_value > 0:
            out.append(int(d.dim_value))
        else:
            out.append(d.dim_param or "?")
    return out


def _dim_name(dim: int | str, name: str, axis: int) -> str:
    """The symbolic name of a dynamic axis: the model's own, else ``batch`` for the first axis."""
    if isinstance(dim, str) and _SYMBOL.match(dim):
        return dim
    return "batch" if axis == 0 else f"{name}_{axis}"


def fix_input_shapes(model: onnx.ModelProto, shapes: dict[str, list[int]], where: str) -> list[TensorSpec]:
    """Give every graph input a static shape (from ``shapes`` where dims are dynamic), except the dimensions
    ``shapes`` gives as :data:`DYNAMIC`: they stay symbolic (their spec's ``dynamic_dims``, size 1 in its shape).

    Edits ``model`` in place and returns the input specs.
    """
    init_names = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init_names]
    names = [i.name for i in graph_inputs]
    if "" in shapes:
        if len(names) != 1:
            raise InputShapeError(f"{where}: the model has inputs {names}; name each one: --input-shape NAME:D1,D2,...")
        shapes = {names[0]: shapes.pop("")} | shapes
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise InputShapeError(f"{where}: --input-shape names {unknown}, but the model's inputs are {names}")
    specs: list[TensorSpec] = []
    for vi in graph_inputs:
        if sequence_element_type(vi) is not None:
            if vi.name in shapes:
                raise InputShapeError(
                    f"{where}: input '{vi.name}' is a sequence (a list of tensors of any length); --input-shape gives "
                    "tensor shapes only: drop it for this input"
                )
            specs.append(sequence_spec(vi, where))
            continue
        dims = _dims(vi)
        elem = input_tensor_type(vi).elem_type
        if elem == 0:
            raise ModelLoadError(
                f"{where}: input '{vi.name}' is not a tensor; edgekit compiles tensor inputs (optional tensors, "
                "always given) and sequences of tensors only"
            )
        dtype = str(onnx.helper.tensor_dtype_to_np_dtype(elem))
        given = shapes.get(vi.name)
        if given is not None:
            if len(given) != len(dims):
                raise InputShapeError(f"{where}: input '{vi.name}' has rank {len(dims)} {dims}, but --input-shape gives {given}")
            for i, (m, g) in enumerate(zip(dims, given, strict=True)):
                if isinstance(m, int) and g == DYNAMIC:
                    raise InputShapeError(
                        f"{where}: input '{vi.name}' dimension {i} is fixed to {m} in the model and can't be made dynamic "
                        f"(shape {dims}); give {m} there, or re-export the model with that axis dynamic"
                    )
                if isinstance(m, int) and m != g:
                    raise InputShapeError(
                        f"{where}: input '{vi.name}' dimension {i} is fixed to {m} in the model, "
                        f"but --input-shape gives {g} (shape {dims})"
                    )
            final = given
        else:
            if not all(isinstance(d, int) for d in dims):
                example = ",".join(str(d) if isinstance(d, int) else "1" for d in dims)
                raise InputShapeError(
                    f"{where}: input '{vi.name}' has dynamic dimensions {dims}; "
                    f"pass a static shape, e.g. --input-shape {vi.name}:{example} (-1 keeps a dimension dynamic)"
                )
            final = [int(d) for d in dims]
        dynamic = {i: _dim_name(dims[i], vi.name, i) for i, d in enumerate(final) if d == DYNAMIC}
        shape = input_tensor_type(vi).shape
        del shape.dim[:]
        for i, d in enumerate(final):
            if i in dynamic:
                shape.dim.add().dim_param = dynamic[i]  # ONNX Runtime runs it at any size
            else:
                shape.dim.add().dim_value = d
        concrete = [1 if d == DYNAMIC else d for d in final]  # what synthesized samples and timing use
        specs.append(TensorSpec(name=vi.name, shape=concrete, dtype=dtype, dynamic_dims=dynamic or None))
    return specs
