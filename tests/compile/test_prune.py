"""Structured pruning: whole channels removed from ONNX graphs (rewritten directly) and PyTorch modules (torch-pruning),
gated by the accuracy budget; FLOPs and parameters before/after in the manifest. Tiny models generated here."""

from __future__ import annotations

import textwrap
import uuid
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from helpers import make_cnn
from onnx import TensorProto, helper, numpy_helper

import edgekit
from edgekit.compiler.frontends.torch import export_module
from edgekit.compiler.passes.channels import channel_groups, prune_model
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import ConfigError

LOOSE = {"maxAbsError": 100.0, "minTop1Agreement": 0.0, "maxAccuracyDrop": 100.0}


def _pipeline(*candidates: Mapping[str, object]) -> Pipeline:
    return Pipeline.model_validate(
        {"name": "prune-test", "candidates": list(candidates), "measure": {"samples": 4, "warmup": 1, "repeat": 3}}
    )


def _pruned(ratio: float = 0.5, **options: object) -> dict[str, object]:
    return {"name": "pruned", "backend": "onnxruntime", "passes": [{"prune": {"ratio": ratio, **options}}], "accuracy": LOOSE}


def _mobile_block() -> onnx.ModelProto:
    """Expand 1x1 (8→24) + ReLU6, depthwise 3x3 + ReLU6, project 1x1 (24→8) + residual Add: the expanded
    channels (through the depthwise conv) are prunable, the residual ones are not."""
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    lo, hi = numpy_helper.from_array(np.array(0, np.float32), "lo"), numpy_helper.from_array(np.array(6, np.float32), "hi")
    nodes = [
        helper.make_node("Conv", ["x", "we", "be"], ["e"], name="expand"),
        helper.make_node("Clip", ["e", "lo", "hi"], ["e6"], name="relu6_a"),
        helper.make_node("Conv", ["e6", "wd", "bd"], ["d"], group=24, pads=[1, 1, 1, 1], name="depthwise"),
        helper.make_node("Clip", ["d", "lo", "hi"], ["d6"], name="relu6_b"),
        helper.make_node("Conv", ["d6", "wp", "bp"], ["p"], name="project"),
        helper.make_node("Add", ["x", "p"], ["y"], name="residual"),
    ]
    graph = helper.make_graph(
        nodes,
        "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [
            init("we", 24, 8, 1, 1),
            init("be", 24),
            init("wd", 24, 1, 3, 3),
            init("bd", 24),
            init("wp", 8, 24, 1, 1),
            init("bp", 8),
            lo,
            hi,
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def test_channel_groups_follow_depthwise_convs_and_stop_at_residual_adds() -> None:
    groups = {g.producer: g for g in channel_groups(_mobile_block())}
    assert set(groups) == {"expand"}  # project feeds the residual Add: its channels stay
    cut = dict(groups["expand"].cuts)
    assert cut == {"we": 0, "be": 0, "wd": 0, "bd": 0, "wp": 1}
    pruned, kept = prune_model(_mobile_block(), 0.5, 1, "block")
    assert kept == {"expand": 12}
    weights = {i.name: list(i.dims) for i in pruned.graph.initializer}
    assert weights["we"] == [12, 8, 1, 1] and weights["wd"] == [12, 1, 3, 3] and weights["wp"] == [8, 12, 1, 1]
    depthwise = next(n for n in pruned.graph.node if n.name == "depthwise")
    assert next(a.i for a in depthwise.attribute if a.name == "group") == 12
    import onnxruntime as ort

    (y,) = ort.InferenceSession(pruned.SerializeToString()).run(None, {"x": np.ones((1, 8, 8, 8), np.float32)})
    assert y.shape == (1, 8, 8, 8)


def test_pruning_removes_channels_and_the_pruned_model_runs_and_is_smaller(tmp_path: Path) -> None:
    path = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(path))
    fp32 = {"name": "fp32", "backend": "onnxruntime"}
    result = edgekit.compile(path, "x86_64", tmp_path / "build", pipeline=_pipeline(fp32, _pruned(0.5)))
    reports = {c.name: c for c in result.manifest.candidates}
    pruned, full = reports["pruned"], reports["fp32"]
    assert pruned.pruned is not None and pruned.pruned["channelsKept"] == {"conv1": 8, "conv2": 8}
    assert pruned.size_bytes is not None and full.size_bytes is not None and pruned.size_bytes < full.size_bytes * 0.6
    src = result.manifest.source
    assert src.flops and pruned.flops and src.params and pruned.params
    assert pruned.flops < src.flops * 0.5 and pruned.params < src.params * 0.6  # conv2 lost 3/4 of its MACs
    assert full.flops == src.flops
    assert pruned.measured is not None and pruned.measured.accuracy.max_abs_error > 0  # it really changed the model
    # the pruned candidate ships and runs when it is the one chosen
    only = edgekit.compile(path, "x86_64", tmp_path / "only", pipeline=_pipeline(_pruned(0.5)))
    (logits,) = edgekit.load(only.artifact_dir).predict({"x": np.ones((1, 3, 16, 16), np.float32)})
    assert logits.shape == (1, 5)
    conv1 = next(i for i in onnx.load(str(only.artifact_dir / "model.onnx")).graph.initializer if list(i.dims)[:2] == [8, 3])
    assert conv1 is not None


def test_pruning_is_gated_by_the_accuracy_budget(tmp_path: Path) -> None:
    path = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(path))
    tight = {**_pruned(0.5), "accuracy": {"maxAbsError": 1e-3, "minTop1Agreement": 0.99}}
    result = edgekit.compile(
        path, "x86_64", tmp_path / "b", pipeline=_pipeline({"name": "fp32", "backend": "onnxruntime"}, tight)
    )
    pruned = next(c for c in result.manifest.candidates if c.name == "pruned")
    assert pruned.status == "rejected" and pruned.reason.startswith("outside the accuracy budget")


def test_a_ratio_that_leaves_a_layer_without_channels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(path))
    with pytest.raises(ConfigError, match=r"ratio 0.97 leaves layer 'conv1' \(16 channels\) with no channels; use a lower ratio"):
        edgekit.compile(
            path, "x86_64", tmp_path / "b", pipeline=_pipeline({"name": "fp32", "backend": "onnxruntime"}, _pruned(0.97))
        )


def test_a_flops_target_picks_the_ratio(tmp_path: Path) -> None:
    path = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(path))
    result = edgekit.compile(
        path, "x86_64", tmp_path / "b", pipeline=_pipeline({**_pruned(), "passes": [{"prune": {"flops": 0.5}}]})
    )
    report = result.manifest.candidates[0]
    assert report.flops and result.manifest.source.flops
    assert 0.3 * result.manifest.source.flops < report.flops <= 0.5 * result.manifest.source.flops


def test_torch_modules_are_pruned_with_torch_pruning_and_fine_tuned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"ek_prune_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            import torch
            from torch import nn

            def make_model():
                torch.manual_seed(0)
                return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))

            def batches():
                rng = np.random.default_rng(0)
                for _ in range(5):
                    yield rng.standard_normal((8, 3, 12, 12)).astype(np.float32), rng.integers(0, 4, 8)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    pruned = _pruned(0.5, fine_tune=f"{name}:batches", fine_tune_steps=5)
    result = edgekit.compile(
        f"{name}:make_model", "x86_64", tmp_path / "b", pipeline=_pipeline(pruned), input_shapes={"input": [1, 3, 12, 12]}
    )
    report = result.manifest.candidates[0]
    assert report.pruned is not None and report.pruned["method"].startswith("torch-pruning")
    assert "fine-tuned 5 step(s)" in report.pruned["method"]
    assert report.pruned["channelsKept"]["0"] == 8 and report.pruned["channelsKept"]["6"] == 4  # the classifier is kept
    assert report.flops and result.manifest.source.flops and report.flops < result.manifest.source.flops * 0.5
    (out,) = edgekit.load(result.artifact_dir).predict({"input": np.zeros((1, 3, 12, 12), np.float32)})
    assert out.shape == (1, 4)


# --------------------------------------------------------------------------- transformer FFN chains


class _Block(torch.nn.Module):
    """A pre-norm transformer block: attention + residual, then the FFN (fc1 → activation → fc2) + residual."""

    def __init__(self, act: torch.nn.Module, d: int = 16, ffn: int = 64) -> None:
        super().__init__()
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.attn = torch.nn.MultiheadAttention(d, 2, batch_first=True)
        self.fc1, self.act, self.fc2 = torch.nn.Linear(d, ffn), act, torch.nn.Linear(ffn, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln1(x)
        x = x + self.attn(y, y, y, need_weights=False)[0]
        out: torch.Tensor = x + self.fc2(self.act(self.fc1(self.ln2(x))))
        return out


def _block_onnx(act: torch.nn.Module, dead: np.ndarray) -> onnx.ModelProto:
    """The block exported for [batch 2, seq 5, hidden 16], its FFN's ``dead`` hidden units zeroed (weights and bias)."""
    torch.manual_seed(0)
    block = _Block(act).eval()
    with torch.no_grad():
        block.fc1.weight[dead] = 0.0
        block.fc1.bias[dead] = 0.0
    data = export_module(block, (torch.randn(2, 5, 16),), ["x"], 1, "block")
    return onnx.shape_inference.infer_shapes(onnx.load_from_string(data))


@pytest.mark.parametrize(
    ("act", "ops"),
    [
        pytest.param(torch.nn.GELU(), {"Erf", "Div", "Mul"}, id="gelu-erf"),  # opset 17: torch writes GELU out with Erf
        pytest.param(torch.nn.GELU(approximate="tanh"), {"Tanh", "Mul"}, id="gelu-tanh"),  # x * x * x: three branches join
        pytest.param(torch.nn.ReLU(), {"Relu"}, id="relu"),
        pytest.param(torch.nn.SiLU(), {"Sigmoid", "Mul"}, id="silu"),
    ],
)
def test_the_pruner_follows_a_transformer_ffn_chain(act: torch.nn.Module, ops: set[str]) -> None:
    import onnxruntime as ort

    dead = np.arange(0, 64, 2)  # half the hidden units contribute nothing: pruning exactly those changes nothing
    model = _block_onnx(act, dead)
    assert ops <= {n.op_type for n in model.graph.node}
    groups = channel_groups(model)
    assert len(groups) == 1 and groups[0].channels == 64  # the FFN; attention and residual widths stay
    (ffn,) = groups
    inits = {i.name: list(i.dims) for i in model.graph.initializer}
    cut = dict(ffn.cuts)
    assert sorted(inits[n] for n in cut) == sorted([[16, 64], [64], [64, 16]])  # fc1's W and b, fc2's W

    pruned, kept = prune_model(model, 0.5, 1, "block")
    assert kept == {ffn.producer: 32}
    after = {i.name: list(i.dims) for i in pruned.graph.initializer}
    assert sorted(after[n] for n in cut) == sorted([[16, 32], [32], [32, 16]])
    assert all(after[n] == inits[n] for n in after if n in inits and n not in cut)  # attention, norms: untouched
    x = np.random.default_rng(0).standard_normal((2, 5, 16)).astype(np.float32)
    (want,) = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    (got,) = ort.InferenceSession(pruned.SerializeToString()).run(None, {"x": x})
    assert got.shape == (2, 5, 16)
    np.testing.assert_allclose(got, want, atol=1e-5)  # the zeroed units were the ones removed
    # pruning live units does change the output: the check above could fail
    (other,) = ort.InferenceSession(prune_model(_block_onnx(act, np.arange(1, 64, 2)), 0.75, 1, "b")[0].SerializeToString()).run(
        None, {"x": x}
    )
    assert np.abs(other - want).max() > 1e-3


def test_ffn_pruning_through_compile(tmp_path: Path) -> None:
    path = tmp_path / "block.onnx"
    onnx.save(_block_onnx(torch.nn.GELU(), np.arange(0, 64, 4)), str(path))
    tight = {**_pruned(0.25), "accuracy": {"maxAbsError": 1e-4, "minTop1Agreement": 0.99}}
    result = edgekit.compile(path, "x86_64", tmp_path / "b", pipeline=_pipeline(tight))
    (report,) = result.manifest.candidates
    assert report.status == "chosen" and report.pruned is not None
    assert list(report.pruned["channelsKept"].values()) == [48]
    assert report.params and result.manifest.source.params and report.params < result.manifest.source.params


def test_torch_pruning_follows_mobilenetv2_depthwise_convs_and_residual_adds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MobileNetV2 (bench/trained.py's, width 0.25, 32×32, random weights): each depthwise conv keeps exactly its
    expand conv's channels, the blocks joined by a residual add keep one width, and the pruned module's ONNX export
    agrees with it (the pass checks; a disagreement fails the compile)."""
    name = f"ek_mbv2_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(
        "import torch\nfrom bench.trained import mobilenet_v2\n\n\n"
        "def make_model():\n    torch.manual_seed(0)\n    return mobilenet_v2(0.25, 10).eval()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    result = edgekit.compile(
        f"{name}:make_model", "x86_64", tmp_path / "b", pipeline=_pipeline(_pruned(0.5)), input_shapes={"input": [1, 3, 32, 32]}
    )
    (report,) = result.manifest.candidates
    assert report.status == "chosen" and report.pruned is not None
    kept: dict[str, int] = report.pruned["channelsKept"]
    blocks = sorted({int(k.split(".")[0]) for k in kept if ".block." in k})
    expanded = [b for b in blocks if f"{b}.block.6" in kept]  # expand 1×1 (block.0), depthwise 3×3 (block.3), project
    assert len(expanded) == 16
    for b in expanded:
        assert kept[f"{b}.block.3"] == kept[f"{b}.block.0"], b  # the depthwise conv follows its expand conv
    # the stride-1 blocks of a stage add their input to their output: one width across the stage
    stages = [range(4, 6), range(6, 9), range(9, 13), range(13, 16), range(16, 19)]
    for stage in stages:
        assert len({kept[f"{b}.block.6"] for b in stage}) == 1, stage
    assert kept["26"] == 10  # the classifier keeps its classes
    source = __import__(name).make_model()
    full = sum(m.out_channels for m in source.modules() if isinstance(m, torch.nn.Conv2d))
    assert sum(v for k, v in kept.items() if k != "26") < 0.6 * full
    (out,) = edgekit.load(result.artifact_dir).predict({"input": np.zeros((1, 3, 32, 32), np.float32)})
    assert out.shape == (1, 10)


def test_a_pruned_module_whose_export_answers_differently_is_refused(tmp_path: Path) -> None:
    """The pass's export check: a module against the ONNX export of another (as a dependency graph that cut one
    layer out of step would leave it) fails in one line naming the output and the difference."""
    from edgekit.compiler.frontends.frontend import SourceModel
    from edgekit.compiler.passes.prune import _check_export
    from edgekit.errors import CompilationError
    from edgekit.manifest import TensorSpec

    torch.manual_seed(0)
    module, other = torch.nn.Linear(4, 3).eval(), torch.nn.Linear(4, 3).eval()
    example = (torch.zeros(1, 4),)
    data = export_module(module, example, ["input"], 1, "m")
    source = SourceModel(
        "pkg.m:make_model", "torch", "torch", "0" * 64, len(data), tmp_path / "m.onnx", onnx.load_from_string(data),
        [TensorSpec(name="input", shape=[1, 4], dtype="float32")], module=module,
    )  # fmt: skip
    _check_export(module, data, source)  # its own export: agrees
    with pytest.raises(CompilationError, match=r"the pruned 'pkg.m:make_model' and its ONNX export disagree on output 0") as err:
        _check_export(other, data, source)
    assert "\n" not in str(err.value) and "drop the prune pass" in str(err.value)


def test_ratios_and_int8_variants_in_one_candidate_make_every_pair(tmp_path: Path) -> None:
    """``prune: {ratios}`` with ``quantize: {variants}``: a candidate per (ratio, variant), none silently dropped."""
    from edgekit.compiler.phases.check import check

    model = tmp_path / "cnn.onnx"
    onnx.save(make_cnn(), str(model))
    both = {
        "name": "pq",
        "backend": "onnxruntime",
        "passes": [
            {"prune": {"ratios": [0.25, 0.5]}},
            {"quantize": {"mode": "static", "variants": ["qdq-tensor", "qdq-channel"]}},
        ],
        "accuracy": LOOSE,
    }
    plan = check(
        model, "x86_64", tmp_path / "out", pipeline=_pipeline(both), backend=None, input_shapes=None, name=None, tune=None
    )
    names = sorted(c.spec.name for c in plan.candidates)
    assert names == ["pq-25-qdq-channel", "pq-25-qdq-tensor", "pq-50-qdq-channel", "pq-50-qdq-tensor"], names
    for c in plan.candidates:
        _, ratio, variant = c.spec.name.split("-", 2)
        prune, quantize = c.spec.passes
        assert prune == {"prune": {**prune["prune"], "ratio": int(ratio) / 100}}
        assert bool(quantize["quantize"].get("per_channel")) == (variant == "qdq-channel"), quantize
        assert [p.name for p in c.passes] == ["prune", "quantize"]
