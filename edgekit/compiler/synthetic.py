"""Synthesized sample inputs when the user gives none: values valid for each input's role in the graph.

Random floats are fine for activations, but an input that reaches an index, axes, shape, ``k`` or
scales slot of an op (Gather, Reshape, TopK, Resize, Slice, ...) needs small valid values. The graph
is walked to find, for every graph input, the ops that consume it and at which input slot
(through Cast/Identity); each such slot has a rule. See docs/compile.md ("Samples").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgekit.manifest import TensorSpec
from edgekit.runtime.inputs import random_feed

__all__ = ["Role", "input_roles", "synthesize"]

_REDUCE = ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
           "ReduceLogSumExp", "ReduceSumSquare")  # fmt: skip
# (op, input slot) -> role. "index:<slot>@<axis attr>" bounds indices by that data input's dim along the axis.
_SLOTS: dict[tuple[str, int], str] = {
    ("Gather", 1): "index",
    ("GatherElements", 1): "index",
    ("GatherND", 1): "index0",
    ("ScatterElements", 1): "index",
    ("ScatterND", 1): "index0",
    ("OneHot", 0): "index-depth",
    ("OneHot", 1): "depth",
    ("Reshape", 1): "reshape",
    ("Expand", 1): "ones",
    ("Tile", 1): "ones",
    ("Slice", 1): "zeros",
    ("Slice", 2): "ones",
    ("Slice", 3): "axes",
    ("Slice", 4): "ones",
    ("Unsqueeze", 1): "axes",
    ("Squeeze", 1): "axes",
    ("TopK", 1): "ones",
    ("Resize", 1): "roi",
    ("Resize", 2): "ones",
    ("Resize", 3): "same-shape",
    ("Upsample", 1): "ones",
    ("Pad", 1): "zeros",
    ("Pad", 3): "axes",
    ("ConstantOfShape", 0): "ones",
    ("Range", 0): "zeros",
    ("Range", 1): "four",
    ("Range", 2): "ones",
    ("CumSum", 1): "zeros",
    ("Split", 1): "split",
    ("Div", 1): "nonzero",
    ("Mod", 1): "nonzero",
    ("Trilu", 1): "zeros",
    ("Compress", 1): "bool",
    **{(op, 1): "axes" for op in _REDUCE},
}
_PASS_THROUGH = frozenset({"Cast", "Identity"})


@dataclass(frozen=True)
class Role:
    """Where an input ends up: ``kind`` from the table above, the node and slot that decided it."""

    kind: str
    op: str
    node: str
    bound: int | None = None  # for index roles: values stay in [0, bound)


def input_roles(model: onnx.ModelProto) -> dict[str, Role]:
    """The role of every graph input that reaches a slot with a rule (first such consumer wins)."""
    graph = model.graph
    consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((node, slot))
    shapes = _known_shapes(model)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    roles: dict[str, Role] = {}
    for vi in graph.input:
        frontier, seen = [vi.name], set()
        while frontier and vi.name not in roles:
            name = frontier.pop(0)
            seen.add(name)
            for node, slot in consumers.get(name, []):
                kind = _SLOTS.get((node.op_type, slot))
                if kind is not None:
                    roles[vi.name] = Role(kind, node.op_type, node.name, _bound(kind, node, shapes, inits))
                    break
                if node.op_type in _PASS_THROUGH:
                    frontier.extend(o for o in node.output if o not in seen)
    return roles


def _known_shapes(model: onnx.ModelProto) -> dict[str, list[int]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # a graph ONNX's inference can't follow: go without bounds
        inferred = model
    out = {}
    g = inferred.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        dims = vi.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            out[vi.name] = [int(d.dim_value) for d in dims]
    for init in g.initializer:
        out[init.name] = list(init.dims)
    return out


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _bound(kind: str, node: onnx.NodeProto, shapes: dict[str, list[int]], inits: dict[str, np.ndarray]) -> int | None:
    data = shapes.get(node.input[0]) if node.input else None
    if kind == "index" and data:
        axis = _attr(node, "axis", 0)
        return data[axis] if -len(data) <= axis < len(data) else None
    if kind == "index0" and data:
        return min(data)
    if kind == "index-depth" and len(node.input) > 1 and node.input[1] in inits:
        return int(np.asarray(inits[node.input[1]]).reshape(-1)[0])
    if kind in ("reshape", "same-shape", "split") and data:
        return int(np.prod(data)) if kind == "reshape" else (data[_attr(node, "axis", 0)] if kind == "split" else None)
    return None


def _values(kind: str, spec: TensorSpec, bound: int | None, rng: np.random.Generator) -> np.ndarray:
    shape, dt = spec.shape, np.dtype(spec.dtype)
    n = int(np.prod(shape)) if shape else 1
    arr: np.ndarray
    if kind in ("index", "index0", "index-depth"):
        arr = np.asarray(rng.integers(0, max(1, bound or 1), shape))
    elif kind == "reshape":
        arr = np.asarray(np.array([-1] + [1] * (n - 1)).reshape(shape))  # [-1, 1, ...]: any size fits
    elif kind == "axes":
        arr = np.asarray(np.arange(n).reshape(shape))
    elif kind == "zeros":
        arr = np.asarray(np.zeros(shape))
    elif kind == "four" or kind == "depth":
        arr = np.asarray(np.full(shape, 4))
    elif kind == "nonzero":
        arr = np.asarray(rng.integers(1, 10, shape) if dt.kind != "f" else rng.uniform(0.5, 2.0, shape))
    elif kind == "split" and bound is not None and n >= 1:
        arr = np.asarray(np.array([bound // n] * (n - 1) + [bound - bound // n * (n - 1)]).reshape(shape))
    elif kind == "bool":
        arr = np.asarray(rng.integers(0, 2, shape))
    elif kind == "roi":
        arr = np.asarray(np.zeros(shape))
    else:  # ones, same-shape (a best guess), split without a known size
        arr = np.asarray(np.ones(shape))
    return arr.astype(dt)


def synthesize(
    model: onnx.ModelProto, specs: Sequence[TensorSpec], count: int, seed: int, roles: dict[str, Role] | None = None
) -> list[dict[str, np.ndarray]]:
    """``count`` deterministic inputs: each input's role decides its values; otherwise standard normal floats,
    0/1 booleans and integers in [0, 10) (small, non-negative: safe as values, counts and most indices)."""
    roles = input_roles(model) if roles is None else roles
    rng = np.random.default_rng(seed)
    out: list[dict[str, np.ndarray]] = []
    for _ in range(count):
        feed: dict[str, Any] = {}  # a sequence input: a list of arrays
        for s in specs:
            dt = np.dtype(s.dtype)
            role = roles.get(s.name)
            if s.is_sequence:  # two elements of the element shape (size 2 where it is open)
                one = s.model_copy(update={"shape": [d if d > 0 else 2 for d in s.shape], "kind": "tensor"})
                feed[s.name] = [random_feed([one], rng)[s.name] for _ in range(2)]
            elif role is not None:
                feed[s.name] = _values(role.kind, s, role.bound, rng)
            elif dt.kind == "f":
                feed[s.name] = rng.standard_normal(s.shape).astype(dt)
            elif dt.kind == "b":
                feed[s.name] = rng.integers(0, 2, s.shape).astype(dt)
            elif dt.kind in "iu":
                feed[s.name] = rng.integers(0, 10, s.shape).astype(dt)
            else:  # strings and the like: nothing sensible to make up
                feed[s.name] = np.zeros(s.shape, dtype=dt)
        out.append(feed)
    return out
