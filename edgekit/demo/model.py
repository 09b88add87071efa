"""The bundled demo model: a small 1-D CNN that classifies windows of 6-axis IMU data.

Built with ``onnx.helper`` from fixed-seed weights, so the demo needs no download and
no training framework, and every run compiles the same bytes (and hits the cache).
See README.md and docs/index.md.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["demo_model", "write_demo_model"]

CHANNELS, WINDOW, CLASSES = 6, 64, 4


def demo_model(seed: int = 7) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)

    def w(name: str, *shape: int, scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    inits = [
        w("conv1.w", 16, CHANNELS, 5),
        w("conv1.b", 16, scale=0.05),
        w("conv2.w", 32, 16, 3, scale=0.15),
        w("conv2.b", 32, scale=0.05),
        w("fc.w", 32, CLASSES, scale=0.2),
        w("fc.b", CLASSES, scale=0.05),
    ]
    nodes = [
        helper.make_node("Conv", ["imu", "conv1.w", "conv1.b"], ["c1"], pads=[2, 2], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2], strides=[2], name="pool1"),
        helper.make_node("Conv", ["p1", "conv2.w", "conv2.b"], ["c2"], pads=[1, 1], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1, name="flatten"),
        helper.make_node("MatMul", ["flat", "fc.w"], ["mm"], name="fc"),
        helper.make_node("Add", ["mm", "fc.b"], ["logits"], name="fc_bias"),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "sensor_cnn",
        [helper.make_tensor_value_info("imu", TensorProto.FLOAT, [1, CHANNELS, WINDOW])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-demo")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def write_demo_model(path: Path) -> Path:
    data = demo_model().SerializeToString()
    if not path.is_file() or path.read_bytes() != data:
        path.write_bytes(data)
    return path
