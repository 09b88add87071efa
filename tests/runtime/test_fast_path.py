"""The runners' fast path: an exact ndarray goes straight through; anything else takes the full check, which still
casts, refuses in one line, and gives the same outputs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from helpers import make_mlp
from onnx import TensorProto, helper

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import InferenceError
from edgekit.manifest import TensorSpec
from edgekit.runtime import Runner, runner_for

X = TensorSpec(name="x", shape=[1, 8], dtype="float32")
PROBS = TensorSpec(name="probs", shape=[1, 4], dtype="float32")


class _Sub(np.ndarray):  # an ndarray subclass: not the exact type, so the full check takes it
    pass


@pytest.fixture(scope="module", params=["onnxruntime", "tvm"])
def runner(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runner]:
    work = tmp_path_factory.mktemp(f"fast-{request.param}")
    onnx.save(make_mlp(), str(work / "mlp.onnx"))
    if request.param == "onnxruntime":
        yield runner_for("onnxruntime", work / "mlp.onnx", [X], [PROBS], threads=1)
        return
    pipe = Pipeline.model_validate(
        {
            "name": "tvm-only",
            "candidates": [{"name": "tvm", "backend": "tvm"}],
            "measure": {"samples": 2, "warmup": 0, "repeat": 3},
        }
    )
    built = edgekit.compile(work / "mlp.onnx", "x86_64", work / "out", pipeline=pipe, use_cache=False)
    yield edgekit.load(built.artifact_dir).runner


def _x(dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(5).standard_normal((1, 8)).astype(dtype)


def test_an_exact_array_goes_straight_through(runner: Runner) -> None:
    x = _x()
    for given in (x, {"x": x}):
        feeds = runner._fast_check(given)
        assert feeds is not None and feeds["x"] is x  # passed on as it is: no copy, no cast
    (fast,) = runner.predict(x)
    (full,) = runner.run(runner._check(x.tolist()))  # a nested list: the full check makes the array
    np.testing.assert_array_equal(fast, full)
    assert fast.shape == (1, 4) and abs(float(fast.sum()) - 1.0) < 1e-5  # the MLP's softmax


@pytest.mark.parametrize(
    "given",
    [
        _x(np.float64),  # another dtype: cast
        _x(np.int32),  # same kind enough: cast
        _x().astype(">f4"),  # float32 of the other byte order: cast
        _x().view(_Sub),  # an ndarray subclass
        _x().tolist(),  # not an array at all
        {"x": _x(np.float64)},
    ],
    ids=["float64", "int32", "big-endian", "subclass", "list", "dict-float64"],
)
def test_what_the_fast_path_passes_over_is_still_cast(runner: Runner, given: object) -> None:
    assert runner._fast_check(given) is None
    (got,) = runner.predict(given)  # type: ignore[arg-type]
    want = np.asarray(given["x"] if isinstance(given, dict) else given).astype(np.float32)
    (ref,) = runner.predict(np.ascontiguousarray(want))
    np.testing.assert_allclose(got, ref, rtol=1e-6)


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (np.zeros((1, 9), np.float32), r"^input 'x' expects shape \[1, 8\] float32, got \[1, 9\]; recompile with"),
        (np.zeros((8,), np.float32), r"^input 'x' expects shape \[1, 8\] float32, got \[8\]"),
        ({"x": np.zeros((2, 8), np.float32)}, r"--input-shape x:2,8"),
        ({"y": np.zeros((1, 8), np.float32)}, r"^missing input 'x' \(expects shape \[1, 8\] float32\)$"),
        ({"x": np.zeros((1, 8), np.float32), "z": np.zeros(1)}, r"^unknown input\(s\) \['z'\]; the model's inputs are \['x'\]$"),
        (np.zeros((1, 8), np.complex64), r"^input 'x' expects dtype float32, got complex64$"),
        ({"x": np.zeros((1, 8), np.str_)}, r"^input 'x' expects dtype float32, got <U1$"),
    ],
)
def test_wrong_inputs_are_refused_in_one_line(runner: Runner, given: object, message: str) -> None:
    with pytest.raises(InferenceError, match=message) as err:
        runner.predict(given)  # type: ignore[arg-type]
    assert "\n" not in str(err.value)


def _two_inputs(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["s"])],
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("b", TensorProto.INT64, [3]),
        ],
        [helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, 3])],
    )
    graph.node.insert(0, helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT))
    graph.node[1].input[1] = "bf"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_two_inputs_by_name(tmp_path: Path) -> None:
    _two_inputs(tmp_path / "add.onnx")
    specs = [TensorSpec(name="a", shape=[2, 3], dtype="float32"), TensorSpec(name="b", shape=[3], dtype="int64")]
    runner = runner_for("onnxruntime", tmp_path / "add.onnx", specs, [TensorSpec(name="s", shape=[2, 3], dtype="float32")])
    a, b = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([10, 20, 30])
    assert runner._fast_check({"b": b, "a": a}) is not None  # any order
    (s,) = runner.predict({"a": a, "b": b})
    np.testing.assert_array_equal(s, a + b)
    assert runner._fast_check({"a": a, "b": b.astype(np.int32)}) is None
    (cast,) = runner.predict({"a": a, "b": b.astype(np.int32)})  # int32 → int64: cast by the full check
    np.testing.assert_array_equal(cast, s)
    with pytest.raises(InferenceError, match=r"^the model has inputs \['a', 'b'\]; pass a dict of arrays by name$"):
        runner.predict(a)
    with pytest.raises(InferenceError, match=r"^input 'b' expects shape \[3\] int64, got \[4\]"):
        runner.predict({"a": a, "b": np.zeros(4, np.int64)})
    with pytest.raises(InferenceError, match=r"^missing input 'b' \(expects shape \[3\] int64\)$"):
        runner.predict({"a": a, "c": b})  # as many names as inputs, one of them not an input
