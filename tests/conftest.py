"""Shared fixtures: tiny models generated in the tests, isolated caches."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own artifact cache, so no test sees another's compiles."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE_DIR", str(cache))
    return cache


@pytest.fixture(scope="session")
def sysroot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The aarch64 sysroot is built once per session (or reused from $EDGEKIT_TEST_SYSROOT_CACHE)."""
    env = os.environ.get("EDGEKIT_TEST_SYSROOT_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("sysroot-cache")


def make_mlp(in_features: int = 8, hidden: int = 16, classes: int = 4, batch: int | str = 1, seed: int = 0) -> onnx.ModelProto:
    """A tiny MLP classifier (MatMul, Add, Relu, MatMul, Add, Softmax)."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((in_features, hidden)).astype(np.float32) * 0.5, "w1"),
        numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32) * 0.1, "b1"),
        numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32) * 0.5, "w2"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32) * 0.1, "b2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu"),
        helper.make_node("MatMul", ["r", "w2"], ["o"], name="fc2"),
        helper.make_node("Add", ["o", "b2"], ["logits"], name="fc2_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def mlp_onnx(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    return path


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "build"
