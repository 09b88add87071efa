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

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.errors import CompilationError, ConfigError

__all__ = ["ChannelGroup", "channel_groups", "prune_model"]

_THROUGH = frozenset({
    "Relu", "LeakyRelu", "PRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu", "Softplus",
    "Identity", "Dropout", "MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Gelu", "Mish",
})  # fmt: skip
_ARITH = frozenset({"Add", "Mul", "Sub", "Div"})


@dataclass
class ChannelGroup:
    """One producer's output channels and every initializer slice that follows them."""

    producer: str  # node name
    channels: int
    score: np.ndarray  # L1 norm per channel (higher = kept first)
    cuts: list[tuple[str, int]] = field(default_factory=list)  # (initializer, axis) to slice by the kept channels
    groups_attr: list[str] = field(default_factory=list)  # depthwise Conv nodes whose ``group`` becomes the kept count


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def channel_groups(model: onnx.ModelProto) -> list[ChannelGroup]:
    """Every prunable channel group of ``model`` (the graph must have inferred shapes for Flatten)."""
    graph = model.graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    uses: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if name:
                uses.setdefault(name, []).append((node, slot))
    outputs = {o.name for o in graph.output}
    shapes = {
        vi.name: [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        for vi in [*graph.value_info, *graph.input, *graph.output]
    }

    def private(name: str) -> bool:  # an initializer only this group reads
        return name in inits and len(uses.get(name, [])) == 1

    groups = []
    for node in graph.node:
        start = _producer(node, inits, private)
        if start is None:
            continue
        channels, score, cuts, axis = start
        group = ChannelGroup(node.name, channels, score, cuts)
        if _walk(node.output[0], axis, group, uses, inits, private, outputs, shapes):
            groups.append(group)
    return groups


def _producer(
    node: onnx.NodeProto, inits: dict[str, np.ndarray], private: Callable[[str], bool]
) -> tuple[int, np.ndarray, list[tuple[str, int]], int] | None:
    """(channels, score, cuts, channel axis counted from the end) when ``node`` starts a group."""
    if len(node.input) < 2 or not private(node.input[1]):
        return None
    w = inits[node.input[1]]
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias is not None and not private(bias):
        return None
    if node.op_type == "Conv" and _attr(node, "group", 1) == 1 and w.ndim >= 3:
        score = np.abs(w.reshape(w.shape[0], -1)).sum(axis=1)
        return w.shape[0], score, [(node.input[1], 0)] + ([(bias, 0)] if bias else []), -(w.ndim - 1)
    if node.op_type == "Gemm" and w.ndim == 2 and _attr(node, "transA", 0) == 0:
        out_axis = 0 if _attr(node, "transB", 0) else 1
        score = np.abs(w).sum(axis=1 - out_axis)
        if bias is not None and inits[bias].size not in (1, w.shape[out_axis]):
            return None
        cuts = [(node.input[1], out_axis)] + ([(bias, inits[bias].ndim - 1)] if bias and inits[bias].size > 1 else [])
        return w.shape[out_axis], score, cuts, -1
    if node.op_type == "MatMul" and w.ndim == 2:
        return w.shape[1], np.abs(w).sum(axis=0), [(node.input[1], 1)], -1
    return None


def _per_channel(arr: np.ndarray, channels: int, axis: int) -> int | None:
    """The axis of ``arr`` to slice when it broadcasts per channel at ``axis`` (from the end); -1 for a scalar."""
    if arr.size == 1:
        return -1
    if arr.ndim < -axis or arr.shape[axis] != channels or arr.size != channels:
        return None
    return arr.ndim + axis


def _walk(
    tensor: str,
    axis: int,
    group: ChannelGroup,
    uses: dict[str, list[tuple[onnx.NodeProto, int]]],
    inits: dict[str, np.ndarray],
    private: Callable[[str], bool],
    outputs: set[str],
    shapes: dict[str, list[int]],
) -> bool:
    """Follow ``tensor`` (channels at ``axis`` from the end) to its ends; False when it reaches an op that mixes them."""
    if tensor in outputs or not uses.get(tensor):
        return False
    for node, slot in uses[tensor]:
        op = node.op_type
        if slot != 0:
            return False
        if op in _THROUGH:
            if op == "PRelu" and (len(node.input) < 2 or not _cut_param(node.input[1], axis, group, inits, private)):
                return False
            if op == "Dropout" and len(node.output) > 1 and node.output[1]:
                return False
            if not _walk(node.output[0], axis, group, uses, inits, private, outputs, shapes):
                return False
        elif op == "BatchNormalization":
            if not all(private(p) for p in node.input[1:5]):
                return False
            group.cuts.extend((p, 0) for p in node.input[1:5])
            if not _walk(node.output[0], axis, group, uses, inits, private, outputs, shapes):
                return False
        elif op in _ARITH:
            other = node.input[1]
            if not _cut_param(other, axis, group, inits, private):
                return False
            if not _walk(node.output[0], axis, group, uses, inits, private, outputs, shapes):
                return False
        elif op == "Conv" and _attr(node, "group", 1) == group.channels and len(node.input) > 1 and private(node.input[1]):
            w = inits[node.input[1]]
            if w.shape[0] != group.channels or w.shape[1] != 1:
                return False
            group.cuts.append((node.input[1], 0))
            if len(node.input) > 2 and node.input[2]:
                if not private(node.input[2]):
                    return False
                group.cuts.append((node.input[2], 0))
            group.groups_attr.append(node.name)
            if not _walk(node.output[0], axis, group, uses, inits, private, outputs, shapes):
                return False
        elif op == "Flatten" and _attr(node, "axis", 1) == 1 and _ones_after_channel(shapes.get(tensor), axis):
            if not _walk(node.output[0], -1, group, uses, inits, private, outputs, shapes):
                return False
        elif op == "Conv" and _attr(node, "group", 1) == 1 and len(node.input) > 1 and private(node.input[1]):
            group.cuts.append((node.input[1], 1))
        elif op == "Gemm" and axis == -1 and len(node.input) > 1 and private(node.input[1]) and _attr(node, "transA", 0) == 0:
            group.cuts.append((node.input[1], 1 if _attr(node, "transB", 0) else 0))
        elif op == "MatMul" and axis == -1 and len(node.input) > 1 and private(node.input[1]) and inits[node.input[1]].ndim == 2:
            group.cuts.append((node.input[1], 0))
        else:
            return False
    return True


def _cut_param(name: str, axis: int, group: ChannelGroup, inits: dict[str, np.ndarray], private: Callable[[str], bool]) -> bool:
    if name not in inits:
        return False
    at = _per_channel(inits[name], group.channels, axis)
    if at is None:
        return False
    if at >= 0:
        if not private(name):
            return False
        group.cuts.append((name, at))
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
