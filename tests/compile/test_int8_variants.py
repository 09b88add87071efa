"""int8 variants as candidates (issue 22, item 4): QDQ and QOperator, per channel and per tensor, dynamic; each
built, checked against the float source on real held-out inputs and labels, measured; the fastest within budget ships."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from threadpoolctl import threadpool_limits

import edgekit
from edgekit.compiler.frontends.torch import export_module
from edgekit.compiler.passes.quantize import VARIANTS
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import ConfigError
from edgekit.manifest import CandidateReport

BUDGET = {"maxAbsError": 0.5, "minTop1Agreement": 0.9, "maxAccuracyDrop": 2.0}
# what each variant's graph must hold: QDQ keeps float ops between Q/DQ pairs, QOperator writes int8 operators
_OPS = {
    "QDQ": {"QuantizeLinear", "DequantizeLinear"},
    "QOperator": {"QLinearMatMul", "QGemm", "QLinearConv", "MatMulInteger", "DynamicQuantizeMatMul", "ConvInteger"},
}


@pytest.fixture(scope="module")
def digits_data() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def digits_mlp(tmp_path_factory: pytest.TempPathFactory, digits_data: tuple[np.ndarray, np.ndarray]) -> Path:
    """scikit-learn's MLPClassifier trained on 1000 digits (seconds); the rest are held out."""
    import skops.io as sio
    from sklearn.neural_network import MLPClassifier

    x, y = digits_data
    with threadpool_limits(1):  # one BLAS thread: many threads on a busy machine take ten times as long
        model = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x[:1000], y[:1000])
    path = tmp_path_factory.mktemp("digits") / "digits.skops"
    sio.dump(model, path)
    return path


@pytest.fixture(scope="module")
def digits_cnn(tmp_path_factory: pytest.TempPathFactory, digits_data: tuple[np.ndarray, np.ndarray]) -> Path:
    """A tiny CNN trained on 1000 8×8 digits for a few epochs in the test (seconds), exported to ONNX."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    x, y = digits_data
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    xt, yt = torch.from_numpy(x[:1000].reshape(-1, 1, 8, 8)), torch.from_numpy(y[:1000])
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches: one thread is fastest, and the machine may be busy
    try:
        for _ in range(8):
            for i in range(0, 1000, 50):
                opt.zero_grad()
                nn.functional.cross_entropy(model(xt[i : i + 50]), yt[i : i + 50]).backward()  # type: ignore[no-untyped-call]
                opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    path.write_bytes(export_module(model, (xt[:1],), ["input"], 1, "digits CNN"))
    return path


def _pipeline(
    variants: list[str] | str, budget: dict[str, float] | None = None, select: str = "latency", **quantize: object
) -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": "variants",
            "candidates": [
                {"name": "ort", "backend": "onnxruntime"},
                {
                    "name": "int8",
                    "backend": "onnxruntime",
                    "passes": [{"quantize": {"variants": variants, "keep_float": "never", **quantize}}],
                    "accuracy": budget or BUDGET,
                },
            ],
            "measure": {"warmup": 1, "repeat": 5, "calibrationSamples": 64},
            "select": select,
        }
    )


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [np.asarray(session.run(None, f)[-1]) for f in feeds]


def _check_variants(result: Any, variants: list[str], fp32_top1_floor: float) -> dict[str, CandidateReport]:
    reports = {c.name: c for c in result.manifest.candidates}
    assert set(reports) == {"ort", *(f"int8-{v}" for v in variants)}
    for v in variants:
        report = reports[f"int8-{v}"]
        mode, fmt, per_channel = VARIANTS[v]
        assert report.status in ("chosen", "rejected"), (v, report.status, report.reason)
        assert report.measured is not None and report.measured.latency.median_ms > 0
        acc = report.measured.accuracy
        assert acc.source_top1_accuracy is not None and acc.source_top1_accuracy >= fp32_top1_floor
        assert acc.top1_accuracy is not None and acc.source_top1_accuracy - acc.top1_accuracy <= 2.0 / 100 + 1e-9, v
        assert report.quantization is not None
        assert report.quantization["mode"] == mode and report.quantization["format"] == fmt
        want = "per-channel" if per_channel else "per-tensor"
        assert report.quantization["granularity"] == want or "per tensor" in report.quantization.get("note", ""), v
        assert report.passes == [{"quantize": report.passes[0]["quantize"]}] and report.passes[0]["quantize"]["mode"] == mode
        if report.status == "rejected":  # every loser says why it lost
            assert report.reason.startswith(("slower: ", "tie: ", "larger: ")), report.reason
    return reports


def test_every_int8_variant_of_a_trained_cnn_is_correct_and_measured(
    digits_cnn: Path, digits_data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y = digits_data
    held = x[1000:].reshape(-1, 1, 1, 8, 8)
    samples = {"input": held, "labels": y[1000:]}
    static = [v for v, (mode, _, _) in VARIANTS.items() if mode == "static"]
    result = edgekit.compile(digits_cnn, "x86_64", tmp_path / "b", pipeline=_pipeline(static), samples=samples)
    reports = _check_variants(result, static, fp32_top1_floor=0.8)
    for v in static:  # the first conv's single input channel padded to 4 (ORT's int8 conv is slow on fewer)
        padded = (reports[f"int8-{v}"].quantization or {}).get("paddedInputChannels")
        assert padded is not None and len(padded) == 1 and padded[0].endswith(": 1 -> 4"), (v, padded)
    chosen = next(r for r in reports.values() if r.status == "chosen")
    assert chosen.measured is not None  # the fastest within budget ships: each loser's reason says it was slower
    # the artifact shipped agrees with the float source on held-out inputs beyond the evaluation
    feeds = [{"input": held[i]} for i in range(0, len(held), 7)]
    got = _outputs(result.artifact_dir / "model.onnx", feeds)
    want = _outputs(digits_cnn, feeds)
    agree = np.mean([g.argmax() == w.argmax() for g, w in zip(got, want, strict=True)])
    assert agree >= 0.9, agree
    ops = {n.op_type for n in onnx.load(str(result.artifact_dir / "model.onnx")).graph.node}
    if chosen.quantization is not None:  # an int8 shipped: its graph is written in its own format
        assert ops & _OPS[chosen.quantization["format"]], (chosen.name, ops)
    else:  # fp32 shipped: each int8 variant was slower, or tied with it (a tie keeps the model as given)
        assert not ops & _OPS["QOperator"]
        assert all(r.reason.startswith(("slower: ", "tie: ")) for r in reports.values() if r is not chosen)


def test_dynamic_int8_is_a_measured_candidate_for_a_trained_mlp(
    digits_mlp: Path, digits_data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y = digits_data
    samples = {"input": x[1000:], "labels": y[1000:]}
    variants = ["dynamic-tensor", "qdq-tensor", "qoperator-channel"]
    result = edgekit.compile(digits_mlp, "x86_64", tmp_path / "b", pipeline=_pipeline(variants), samples=samples)
    reports = _check_variants(result, variants, fp32_top1_floor=0.85)
    dynamic = reports["int8-dynamic-tensor"]
    assert dynamic.quantization is not None and "calibrationSamples" not in dynamic.quantization
    assert reports["int8-qdq-tensor"].quantization == {**(reports["int8-qdq-tensor"].quantization or {}), "method": "MinMax"}
    chosen = next(r.name for r in reports.values() if r.status == "chosen")
    ops = {n.op_type for n in onnx.load(str(result.artifact_dir / "model.onnx")).graph.node}
    if chosen == "int8-dynamic-tensor":
        assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}, ops
    elif chosen.startswith("int8-qdq"):
        assert ops & _OPS["QDQ"], ops


def test_auto_tries_dynamic_on_dense_models_and_not_on_convolutions(
    digits_mlp: Path, digits_cnn: Path, digits_data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y = digits_data
    mlp = edgekit.compile(
        digits_mlp, "x86_64", tmp_path / "mlp", pipeline=_pipeline("auto"), samples={"input": x[1000:], "labels": y[1000:]}
    )
    reports = {c.name: c for c in mlp.manifest.candidates}
    assert reports["int8-dynamic-tensor"].measured is not None, reports["int8-dynamic-tensor"].reason
    assert all(reports[f"int8-{v}"].measured is not None for v in ("qdq-channel", "qoperator-tensor"))
    samples = {"input": x[1000:1300].reshape(-1, 1, 1, 8, 8), "labels": y[1000:1300]}
    cnn = edgekit.compile(digits_cnn, "x86_64", tmp_path / "cnn", pipeline=_pipeline("auto"), samples=samples)
    reports = {c.name: c for c in cnn.manifest.candidates}
    skipped = reports["int8-dynamic-tensor"]
    assert skipped.status == "skipped" and skipped.measured is None
    assert skipped.reason.startswith("not tried: dynamic int8 is for MatMul/Gemm-heavy models"), skipped.reason
    assert reports["int8-qdq-channel"].measured is not None
    # named explicitly, dynamic is tried on the CNN all the same (its classifier's Gemm; the convolutions stay float)
    asked = edgekit.compile(
        digits_cnn, "x86_64", tmp_path / "asked", pipeline=_pipeline(["dynamic-tensor", "qdq-tensor"]), samples=samples
    )
    tried = {c.name: c for c in asked.manifest.candidates}["int8-dynamic-tensor"]
    assert tried.measured is not None and tried.quantization is not None and tried.quantization["mode"] == "dynamic"


def test_a_bad_variant_name_in_a_pipeline_file_is_one_line_naming_file_and_field(digits_mlp: Path, tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "schemaVersion: 1\nname: mine\ncandidates:\n"
        "  - {name: ort, backend: onnxruntime}\n"
        "  - name: int8\n    backend: onnxruntime\n    passes:\n      - quantize: {variants: [qdq-channel, qdq-chanel]}\n"
    )
    with pytest.raises(ConfigError) as err:
        edgekit.compile(digits_mlp, "x86_64", tmp_path / "b", pipeline=path)
    message = str(err.value)
    assert "\n" not in message
    assert f"pipeline file '{path}'" in message and "candidate 'int8'" in message and "variants" in message
    assert "unknown int8 variant 'qdq-chanel'; did you mean 'qdq-channel'?" in message
    path.write_text(path.read_text().replace("[qdq-channel, qdq-chanel]", "[]"))
    with pytest.raises(ConfigError, match=r"variants: list at least one of qdq-channel"):
        edgekit.compile(digits_mlp, "x86_64", tmp_path / "b", pipeline=path)
    path.write_text(path.read_text().replace("[]", "fastest"))
    with pytest.raises(ConfigError, match=rf"pipeline file '{path}', candidate 'int8'.*variants"):
        edgekit.compile(digits_mlp, "x86_64", tmp_path / "b", pipeline=path)


def test_dynamic_int8_on_a_model_of_convolutions_only_fails_that_candidate_saying_why(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("GlobalAveragePool", ["c"], ["y"])],
        "convs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 1, 1])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "convs.onnx"
    onnx.save(model, str(path))
    result = edgekit.compile(path, "x86_64", tmp_path / "b", pipeline=_pipeline(["dynamic-tensor"]))
    report = {c.name: c for c in result.manifest.candidates}["int8-dynamic-tensor"]
    assert report.status == "failed" and "has none of them (its Conv take static int8); use mode: static" in report.reason


def _int8_weights(path: Path) -> list[np.ndarray]:
    """The int8 weight tensors of an artifact (its int8 initializers of more than one element)."""
    model = onnx.load(str(path))
    arrays = [onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    return [a for a in arrays if a.size > 1]


@pytest.mark.parametrize("variant", ["qdq-channel", "qoperator-tensor"])
def test_weights_are_7_bit_by_default_so_no_int8_kernel_saturates(
    variant: str, digits_cnn: Path, digits_data: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    x, y = digits_data
    samples = {"input": x[1000:1400].reshape(-1, 1, 1, 8, 8), "labels": y[1000:1400]}
    loose = {"maxAbsError": 10.0, "minTop1Agreement": 0.0, "maxAccuracyDrop": 100.0}
    largest = {}
    for reduce_range in (True, False):
        # select: size, so the int8 artifact ships and its weights can be read
        pipe = _pipeline([variant], loose, select="size", reduce_range=reduce_range)
        result = edgekit.compile(digits_cnn, "x86_64", tmp_path / f"b-{reduce_range}", pipeline=pipe, samples=samples)
        report = {c.name: c for c in result.manifest.candidates}[f"int8-{variant}"]
        assert report.status == "chosen", report.reason
        assert report.quantization is not None and report.quantization["weightBits"] == (7 if reduce_range else 8)
        acc = report.measured.accuracy if report.measured else None
        assert acc is not None and acc.top1_accuracy is not None and acc.source_top1_accuracy is not None
        if reduce_range:  # 7 bits: the kernels' 16-bit sums of u8×s8 pairs can't overflow; int8 keeps the float top-1
            assert acc.source_top1_accuracy - acc.top1_accuracy <= 0.02, acc
        weights = _int8_weights(result.artifact_dir / "model.onnx")
        largest[reduce_range] = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
        # the first conv reads 4 channels, 3 of them zeros (same outputs: the top-1 check above held), padded in float
        # straight from the input (no quantize/dequantize pair before the Pad)
        assert sorted(w.shape for w in weights if w.ndim == 4)[0] == (8, 4, 3, 3)
        graph = onnx.load(str(result.artifact_dir / "model.onnx")).graph
        assert [n.input[0] for n in graph.node if n.op_type == "Pad"] == [graph.input[0].name]
    assert largest[True] <= 64 < largest[False], largest


def test_padding_a_convs_input_channels_keeps_its_outputs_and_leaves_other_convs_alone(tmp_path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.compiler.passes.quantize import _pad_input_channels

    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w_rgb"),
        numpy_helper.from_array(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), "w_depthwise"),
        numpy_helper.from_array(rng.standard_normal((4, 4, 1, 1)).astype(np.float32), "w_four"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["rgb", "w_rgb"], ["a"], pads=[1, 1, 1, 1], name="rgb_conv"),
            helper.make_node("Conv", ["rgb", "w_depthwise"], ["b"], pads=[1, 1, 1, 1], group=3, name="depthwise"),
            helper.make_node("Conv", ["four", "w_four"], ["c"], name="four_conv"),
        ],
        "convs",
        [
            helper.make_tensor_value_info("rgb", TensorProto.FLOAT, ["n", 3, 6, 6]),
            helper.make_tensor_value_info("four", TensorProto.FLOAT, [1, 4, 6, 6]),
        ],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("a", "b", "c")],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "convs.onnx"
    onnx.save(model, str(path))
    feed = {
        "rgb": rng.standard_normal((2, 3, 6, 6)).astype(np.float32),
        "four": rng.standard_normal((1, 4, 6, 6)).astype(np.float32),
    }
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    assert _pad_input_channels(path) == ["rgb_conv: 3 -> 4"]
    padded = onnx.load(str(path))
    weights = {i.name: list(i.dims) for i in padded.graph.initializer}
    assert weights["w_rgb"] == [8, 4, 3, 3] and weights["w_depthwise"] == [3, 1, 3, 3] and weights["w_four"] == [4, 4, 1, 1]
    assert [n.input[0] for n in padded.graph.node if n.op_type == "Conv"] == ["rgb_channels_padded", "rgb", "four"]
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    for want, got in zip(before, after, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert _pad_input_channels(path) == []  # nothing left to pad


@pytest.mark.parametrize("fmt", ["QDQ", "QOperator"])
def test_compacting_a_quantized_graph_keeps_its_outputs_and_its_input_and_output_names(fmt: str, tmp_path: Path) -> None:
    from helpers import make_cnn
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from edgekit.compiler.passes.quantize import _compact

    model = make_cnn()

    def long(name: str) -> str:  # the long names a PyTorch export gives
        return name if name in ("x", "logits") else f"/features/features.0/conv/{name}/output_0"

    for init in model.graph.initializer:
        init.name = long(init.name)
    for node in model.graph.node:
        node.input[:] = [long(n) for n in node.input]
        node.output[:] = [long(n) for n in node.output]
    onnx.checker.check_model(model)
    src, quantized = tmp_path / "cnn.onnx", tmp_path / "int8.onnx"
    onnx.save(model, str(src))
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(8)]

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    quantize_static(str(src), str(quantized), Reader(), quant_format=getattr(QuantFormat, fmt), per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=True)  # fmt: skip
    before, size = _outputs(quantized, feeds), quantized.stat().st_size
    written = onnx.load(str(quantized))
    _compact(quantized)
    compact = onnx.load(str(quantized))
    onnx.checker.check_model(compact)
    assert quantized.stat().st_size < size - 1000, (size, quantized.stat().st_size)
    assert [i.name for i in compact.graph.input] == ["x"] and [o.name for o in compact.graph.output] == ["logits"]
    assert [n.name for n in compact.graph.node] == [n.name for n in written.graph.node]  # kept-float layers: by name
    assert [n.op_type for n in compact.graph.node] == [n.op_type for n in written.graph.node]
    assert max(len(i.name) for i in compact.graph.initializer) <= 4
    # the two 16-channel convs' per-channel weight zero points (all zero) are one initializer now
    assert len(compact.graph.initializer) < len(written.graph.initializer)
    for want, got in zip(before, _outputs(quantized, feeds), strict=True):
        np.testing.assert_array_equal(got, want)
