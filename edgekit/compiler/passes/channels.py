"""Structured channel pruning of an ONNX graph: whole channels of Conv/Gemm/MatMul chains removed physically.

A *channel group* starts at a producer (a Conv with ``group=1``, a Gemm or a MatMul whose weight is an
initializer), runs through ops that keep channels apart (activations, pooling, BatchNormalization,
depthwise Conv, per-channel or scalar Add/Mul/Sub/Div, Flatten of a 1×1 map) and ends at consumers
that read the channels as their input dimension (Conv, Gemm, MatMul with an initializer weight). A
group whose channels reach anything else (a residual Add, Concat, Reshape, a graph output) is left
alone. Channels are ranked by the L1 norm of the producer's weights; the weakest are removed from
every initializer of the group and the shapes inferred again. See docs/int8-and-tuning.md (pruning).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import CompilationError, ConfigError

__all__ = ["ChannelGroup", "channel_groups", "prune_model"]

_THROUGH = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
    "Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Gelu", "Mish",
    "Erf", "Exp", "Neg", "Abs", "Sqrt", "Reciprocal", "Softsign",
})  # fmt: skip
# Element-wise binary ops: the other operand is a constant (per channel or scalar), or a tensor of the same group
# (the erf GELU torch exports, x * 0.5 * (1 + erf(x / sqrt(2))), and SiLU, x * sigmoid(x), join two branches of x).
_ARITH = frozenset({"Add", "Mul", "Sub", "Div", "Pow"})


@dataclass
class ChannelGroup:
    """One producer's output channels and every initializer slice that follows them."""

    producer: str  # node name
    channels: int
    score: np.ndarray  # L1 norm per channel (higher = kept first)
    cuts: list[tuple[str, int]] = field(default_factory=list)  # (initializer, axis) to slice by the kept channels
    groups_attr: list[str] = field(default_factory=list)  # depthwise Conv nodes whose ``group`` becomes the kept count


@dataclass
class _Graph:
    """What the walk reads of a graph: who uses each tensor, the constants, the outputs and the inferred shapes."""

    uses: dict[str, list[tuple[onnx.NodeProto, int]]]
    inits: dict[str, np.ndarray]  # initializers: sliceable
    consts: dict[str, np.ndarray]  # initializers and Constant nodes' values: readable
    outputs: set[str]
    shapes: dict[str, list[int]]

    def private(self, name: str) -> bool:  # an initializer only this group reads
        return name in self.inits and len(self.uses.get(name, [])) == 1


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for node in graph.node:
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def channel_groups(model: onnx.ModelProto) -> list[ChannelGroup]:
    """Every prunable channel group of ``model`` (the graph must have inferred shapes for Flatten)."""
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append((node, slot))
    shapes = {
        vi.name: [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        for vi in [*graph.value_info, *graph.input, *graph.output]
    }
    g = _Graph(uses, inits, {**_constants(graph), **inits}, {o.name for o in graph.output}, shapes)
    groups = []
    for node in graph.node:
        start = _producer(node, g)
        if start is None:
            continue
        channels, score, cuts, axis = start
        group = ChannelGroup(node.name, channels, score, cuts)
        if _Walk(group, g).run(node.output[0], axis):
            groups.append(group)
    return groups


def _producer(node: onnx.NodeProto, g: _Graph) -> tuple[int, np.ndarray, list[tuple[str, int]], int] | None:
    """(channels, score, cuts, channel axis counted from the end) when ``node`` starts a group."""
    if len(node.input) < 2 or not g.private(node.input[1]):
        return None
    w = g.inits[node.input[1]]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and not g.private(bias):
        return None
    if node.op_type == "Conv" and _attr(node, "group", 1) == 1 and w.ndim >= 3:
        score = np.abs(w.reshape(w.shape[0], -1)).sum(axis=1)
        return w.shape[0], score, [(node.input[1], 0)] + ([(bias, 0)] if bias else []), -(w.ndim - 1)
    if node.op_type == "Gemm" and w.ndim == 2 and _attr(node, "transA", 0) == 0:
        out_axis = 0 if _attr(node, "transB", 0) else 1
        score = np.abs(w).sum(axis=1 - out_axis)
        if bias is not None and g.inits[bias].size not in (1, w.shape[out_axis]):
            return None
        cuts = [(node.input[1], out_axis)] + ([(bias, g.inits[bias].ndim - 1)] if bias and g.inits[bias].size > 1 else [])
        return w.shape[out_axis], score, cuts, -1
    if node.op_type == "MatMul" and w.ndim == 2:  # [..., in] x [in, out]: 2-D or 3-D ([batch, seq, hidden]) activations
        return w.shape[1], np.abs(w).sum(axis=0), [(node.input[1], 1)], -1
    return None


def _per_channel(arr: np.ndarray, channels: int, axis: int) -> int | None:
    """The axis of ``arr`` to slice when it broadcasts per channel at ``axis`` (from the end); -1 for a scalar."""
    if arr.size == 1:
        return -1
    if arr.ndim < -axis or arr.shape[axis] != channels or arr.size != channels:
        return None
    return arr.ndim + axis


class _Walk:
    """Follows a group's channels from its producer to the ops that end it (consumers reading them as their input
    dimension); ``run`` is False when they reach an op that mixes them, a graph output, or a tensor of another group."""

    def __init__(self, group: ChannelGroup, graph: _Graph) -> None:
        self.group = group
        self.g = graph
        self.carrying: dict[str, int] = {}  # tensors holding the group's channels -> their axis from the end
        self.done: set[str] = set()  # nodes already followed (an element-wise op joining two branches is reached twice)
        self.joins: list[tuple[str, int]] = []  # other operands of element-wise ops: must carry the channels too

    def run(self, tensor: str, axis: int) -> bool:
        stack = [(tensor, axis)]
        while stack:
            name, ax = stack.pop()
            if name in self.carrying:
                if self.carrying[name] != ax:
                    return False
                continue
            self.carrying[name] = ax
            if name in self.g.outputs or not self.g.uses.get(name):
                return False
            for node, slot in self.g.uses[name]:
                if node.name in self.done:
                    continue
                self.done.add(node.name)
                nxt = self._step(node, slot, ax)
                if nxt is None:
                    return False
                stack.extend(nxt)
        return all(self.carrying.get(t) == ax for t, ax in self.joins)

    def _step(self, node: onnx.NodeProto, slot: int, axis: int) -> list[tuple[str, int]] | None:
        """Where the channels go through ``node`` (``[]``: it ends the group), or None when they can't."""
        g, group, op = self.g, self.group, node.op_type
        if op in _ARITH and len(node.input) == 2:
            other = node.input[1 - slot]
            if other in g.consts:
                if not self._cut_param(other, axis):
                    return None
            elif other != node.input[slot]:
                self.joins.append((other, axis))
            return [(node.output[0], axis)]
        if slot != 0:
            return None
        if op in _THROUGH:
            if op == "PRelu" and (len(node.input) < 2 or not self._cut_param(node.input[1], axis)):
                return None
            if op == "Dropout" and len(node.output) > 1 and node.output[1]:
                return None
            return [(node.output[0], axis)]
        if op == "BatchNormalization":
            if not all(g.private(p) for p in node.input[1:5]):
                return None
            group.cuts.extend((p, 0) for p in node.input[1:5])
            return [(node.output[0], axis)]
        if op == "Conv" and _attr(node, "group", 1) == group.channels and len(node.input) > 1 and g.private(node.input[1]):
            w = g.inits[node.input[1]]
            if w.shape[0] != group.channels or w.shape[1] != 1:
                return None
            group.cuts.append((node.input[1], 0))
            if len(node.input) > 2 and node.input[2]:
                if not g.private(node.input[2]):
                    return None
                group.cuts.append((node.input[2], 0))
            group.groups_attr.append(node.name)
            return [(node.output[0], axis)]
        if op == "Flatten" and _attr(node, "axis", 1) == 1 and _ones_after_channel(g.shapes.get(node.input[0]), axis):
            return [(node.output[0], -1)]
        if op == "Conv" and _attr(node, "group", 1) == 1 and len(node.input) > 1 and g.private(node.input[1]):
            group.cuts.append((node.input[1], 1))
            return []
        if op == "Gemm" and axis == -1 and len(node.input) > 1 and g.private(node.input[1]) and _attr(node, "transA", 0) == 0:
            group.cuts.append((node.input[1], 1 if _attr(node, "transB", 0) else 0))
            return []
        if (
            op == "MatMul"
            and axis == -1
            and len(node.input) > 1
            and g.private(node.input[1])
            and g.inits[node.input[1]].ndim == 2
        ):
            group.cuts.append((node.input[1], 0))
            return []
        return None

    def _cut_param(self, name: str, axis: int) -> bool:
        """A constant operand: a scalar stays, a per-channel initializer only this group reads is sliced with it."""
        arr = self.g.consts.get(name)
        if arr is None:
            return False
        at = _per_channel(arr, self.group.channels, axis)
        if at is None:
            return False
        if at >= 0:
            if not self.g.private(name):
                return False
            self.group.cuts.append((name, at))
        return True


def _ones_after_channel(shape: list[int] | None, axis: int) -> bool:
    return bool(shape) and shape is not None and len(shape) >= -axis and all(d == 1 for d in shape[len(shape) + axis + 1 :])


def _own_copies(model: onnx.ModelProto) -> None:
    """Replace ``Identity(initializer)`` nodes by an initializer of their own: exporters share equal constants
    (torch: every zero bias of BN-folded convs) through Identity nodes, which would tie unrelated layers together."""
    inits = {i.name: i for i in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            copy = onnx.TensorProto()
            copy.CopyFrom(inits[node.input[0]])
            copy.name = node.output[0]
            model.graph.initializer.append(copy)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    used = {i for n in model.graph.node for i in n.input} | outputs | {i.name for i in model.graph.input}
    for init in [i for i in model.graph.initializer if i.name not in used]:
        model.graph.initializer.remove(init)


def prune_model(model: onnx.ModelProto, ratio: float, multiple: int, where: str) -> tuple[onnx.ModelProto, dict[str, int]]:
    """A copy of ``model`` with ``ratio`` of every group's channels removed; and channels kept per producer."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    taken = {n.name for n in out.graph.node}
    for i, node in enumerate(out.graph.node):
        if not node.name:
            node.name = next(c for c in (f"{node.op_type}_{i}", f"{node.op_type}_{i}_{len(taken)}") if c not in taken)
            taken.add(node.name)
    _own_copies(out)
    groups = channel_groups(out)
    if not groups:
        raise CompilationError(
            f"nothing to prune in '{where}': no Conv/Gemm/MatMul chain whose channels can be removed "
            "(residual adds and concatenations keep theirs); drop the prune pass for this model"
        )
    keep: dict[str, np.ndarray] = {}
    kept: dict[str, int] = {}
    cuts: dict[str, list[tuple[int, np.ndarray]]] = {}
    for g in groups:
        n = round(g.channels * (1 - ratio))
        if multiple > 1 and g.channels > multiple:
            n = max(multiple, round(n / multiple) * multiple)
        if n < 1:
            raise ConfigError(
                f"prune: ratio {ratio:g} leaves layer '{g.producer}' ({g.channels} channels) with no channels; use a lower ratio"
            )
        n = min(n, g.channels)
        idx = np.sort(np.argsort(-g.score, kind="stable")[:n])
        keep[g.producer] = idx
        kept[g.producer] = n
        for name, ax in g.cuts:
            cuts.setdefault(name, []).append((ax, idx))
    for init in out.graph.initializer:
        if init.name in cuts:
            arr = numpy_helper.to_array(init)
            for ax, idx in cuts[init.name]:
                arr = np.take(arr, idx, axis=ax)
            init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), init.name))
    depthwise = {name: len(keep[g.producer]) for g in groups for name in g.groups_attr}
    for node in out.graph.node:
        if node.name in depthwise:
            for a in node.attribute:
                if a.name == "group":
                    a.i = depthwise[node.name]
    del out.graph.value_info[:]
    try:
        out = onnx.shape_inference.infer_shapes(out, strict_mode=True)
        onnx.checker.check_model(out)
    except Exception as exc:  # a group this walk got wrong: fail the candidate, not the compile
        raise CompilationError(
            f"pruning '{where}' gave an invalid graph ({str(exc).splitlines()[0]}); drop the prune pass"
        ) from exc
    return out, kept
