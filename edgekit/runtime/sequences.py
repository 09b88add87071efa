"""ONNX sequences (``seq(tensor)``) as edgekit carries them: a Python list of numpy arrays, in and out.

A sequence input takes a list (or tuple) of arrays of its element dtype, of any length (empty too); a sequence output
comes back from ``predict`` as a list of arrays. In ``.npz`` files (golden vectors, ``edgekit run --output``) a
sequence ``NAME`` is stored as ``NAME/#`` (its length, a 0-d int64) and ``NAME/0``, ``NAME/1``, ... (its elements).
Consumers that carry tensors only (serve's Open Inference Protocol, a device's input sources, the fleet's inference
component) refuse an artifact with a sequence input or output (:func:`edgekit.manifest.tensors_only`).
See docs/compile.md (sequences).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from edgekit.errors import InferenceError
from edgekit.manifest import TensorSpec

__all__ = [
    "LENGTH",
    "as_value",
    "check_sequence",
    "flat_values",
    "is_sequence",
    "pack_value",
    "unpack_values",
    "value_nbytes",
]

LENGTH = "#"
"""The key suffix (``NAME/#``) of a sequence's length in an ``.npz``."""


def is_sequence(value: object) -> bool:
    """Whether ``value`` is a sequence as edgekit carries one: a list or tuple (of arrays)."""
    return isinstance(value, (list, tuple))


def as_value(value: object) -> Any:
    """An output as edgekit returns it: a sequence (list/tuple) as a list of arrays, anything else as an array."""
    if isinstance(value, (list, tuple)):
        return [np.asarray(v) for v in value]
    return np.asarray(value)


def value_nbytes(value: object) -> int:
    """Bytes of an array, or of a sequence's elements together."""
    if isinstance(value, (list, tuple)):
        return sum(int(np.asarray(v).nbytes) for v in value)
    return int(np.asarray(value).nbytes)


def flat_values(value: object) -> np.ndarray:
    """Every value of an array, or of a sequence's elements one after the other, as one 1-d array."""
    if isinstance(value, (list, tuple)):
        parts = [np.asarray(v).reshape(-1) for v in value]
        return np.concatenate(parts) if parts else np.zeros(0)
    return np.asarray(value).reshape(-1)


def check_sequence(spec: TensorSpec, value: object) -> list[np.ndarray]:
    """``value`` as input ``spec`` (a sequence) takes it: a list of arrays of its dtype (same-kind casts allowed),
    each of the element rank and fixed sizes the spec knows. InferenceError, one line, otherwise."""
    if not isinstance(value, (list, tuple)):
        got = f"an array of shape {list(np.shape(value))}" if isinstance(value, np.ndarray) else type(value).__name__
        raise InferenceError(
            f"input '{spec.name}' is a sequence ({spec.declared()} {spec.dtype}), got {got}; "
            f"pass a list of arrays (empty for an empty sequence)"
        )
    want = np.dtype(spec.dtype)
    out: list[np.ndarray] = []
    for i, item in enumerate(value):
        arr = np.asarray(item)
        if arr.dtype != want:
            if not np.can_cast(arr.dtype, want, casting="same_kind"):
                raise InferenceError(f"input '{spec.name}' element {i}: expects dtype {spec.dtype}, got {arr.dtype}")
            arr = arr.astype(want)
        if spec.shape and not spec.accepts(arr.shape):
            raise InferenceError(
                f"input '{spec.name}' element {i}: expects shape {spec.declared().removeprefix('sequence of ')}, "
                f"got {list(arr.shape)}"
            )
        out.append(arr)
    return out


def pack_value(key: str, value: object, into: dict[str, np.ndarray]) -> None:
    """Put an array under ``key``, or a sequence as ``key/#`` (its length) and ``key/0``, ``key/1``, ... in ``into``."""
    if isinstance(value, (list, tuple)):
        into[f"{key}/{LENGTH}"] = np.asarray(len(value), dtype=np.int64)
        for i, item in enumerate(value):
            into[f"{key}/{i}"] = np.asarray(item)
    else:
        into[key] = np.asarray(value)


def unpack_values(arrays: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The inverse of :func:`pack_value` over a whole mapping: arrays by key, sequences (``key/#``) as lists."""
    lengths = {k.removesuffix(f"/{LENGTH}"): int(v) for k, v in arrays.items() if k.endswith(f"/{LENGTH}")}
    out: dict[str, Any] = {key: [arrays[f"{key}/{i}"] for i in range(n)] for key, n in lengths.items()}
    parts = {f"{key}/{i}" for key, n in lengths.items() for i in range(n)} | {f"{k}/{LENGTH}" for k in lengths}
    out.update({k: v for k, v in arrays.items() if k not in parts})
    return out
