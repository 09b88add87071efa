"""Side-by-side latency of ONNX Runtime, PyTorch eager, TVM (untuned) and edgekit's chosen artifact.

    python -m bench.compile [--models mlp,cnn,mobilenet,mobilenetv2,kws,digits,rf,trained-cnn,trained-mobilenetv2]
                            [--rounds 10] [--repeat 50] [--optimize] [--tune N] [--json out.json]
                            [--prune-ratios 0.3,0.5,0.7] [--fine-tune-steps N] [--optimize-only]
                            [--tune-minutes M] [--tuning-records DIR] [--held-out N]
    python -m bench.compile --optimize-only --models trained-cnn --target x86_64_host --tune-minutes 5
    python -m bench.compile --tuning-goal [--models trained-cnn] [--tune-minutes 10]   # tuned TVM vs ORT on a trained CNN

``trained-cnn`` and ``trained-mobilenetv2`` are trained on upscaled scikit-learn digits by :mod:`bench.trained`
(cached after the first run) and compiled from their factories, with their held-out images and labels.
``--tuning-goal``: see :mod:`bench.tuning_goal` (a trained digits CNN, tuned within a time budget, compiled twice).

``--optimize`` also compiles each model with ``compiler/optimize.yaml`` (fp32, int8, pruned, pruned+int8; with
``--tune N`` / ``--tune-minutes M`` tuned TVM on the source and on each pruned ratio) and labelled samples, and times
what it ships in the same rounds. Tuning starts from an empty database each run (the figure includes the tuning)
unless ``--tuning-records DIR`` names one. Tuned TVM against ONNX Runtime is like for like on ``--target x86_64_host``
(TVM for this CPU); the portable ``x86_64`` profile compiles TVM for SSE4.2 while ONNX Runtime uses AVX2 here.

See docs/benchmarks.md (compile).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

import edgekit
from edgekit.compiler import CompileResult
from edgekit.compiler.cache import ArtifactCache
from edgekit.compiler.measurement import host_description, settle
from edgekit.compiler.pipeline import Pipeline, load_pipeline
from edgekit.errors import EdgekitError
from edgekit.manifest import CandidateReport

SEED = 0
BACKENDS = ("onnxruntime", "tvm")
Predict = Callable[[], object]


# --------------------------------------------------------------------------- models


@dataclass
class Case:
    name: str
    description: str
    path: Path | str  # a file, or a PyTorch factory 'module:function'
    shapes: dict[str, list[int]]
    feed: dict[str, np.ndarray]
    eager: Predict | None  # the source framework, called on the same input
    eager_name: str
    samples: dict[str, np.ndarray] | None = None  # labelled samples for --optimize (inputs stacked + "labels")
    labels_are: str = ""  # where the labels come from
    calibration: int | None = None  # --optimize: samples set aside to calibrate int8 and fine-tune (pipeline's: 64)


def _torch_models() -> dict[str, tuple[str, Any, list[int]]]:
    import torch
    from torch import nn

    def bn(c: int) -> nn.BatchNorm2d:
        layer = nn.BatchNorm2d(c)
        assert layer.running_mean is not None and layer.running_var is not None
        with torch.no_grad():  # non-trivial running stats, so folding BN actually matters
            layer.running_mean.normal_(0.0, 0.1)
            layer.running_var.uniform_(0.5, 1.5)
            layer.weight.uniform_(0.5, 1.5)
            layer.bias.normal_(0.0, 0.1)
        return layer

    def conv_block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), bn(cout), nn.ReLU()]

    def separable(cin: int, cout: int, stride: int) -> list[nn.Module]:
        return [
            nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False),
            bn(cin),
            nn.ReLU6(),
            nn.Conv2d(cin, cout, 1, bias=False),
            bn(cout),
            nn.ReLU6(),
        ]

    torch.manual_seed(SEED)
    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 8))
    cnn = nn.Sequential(
        *conv_block(3, 16), nn.MaxPool2d(2),
        *conv_block(16, 32), nn.MaxPool2d(2),
        *conv_block(32, 64), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip
    mobilenet = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1, bias=False), bn(16), nn.ReLU6(),
        *separable(16, 32, 1), *separable(32, 64, 2), *separable(64, 64, 1),
        *separable(64, 128, 2), *separable(128, 128, 1),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10),
    )  # fmt: skip
    return {
        "mobilenetv2": ("MobileNetV2-1.0 3×224×224 (random weights)", _mobilenet_v2(), [1, 3, 224, 224]),
        "kws": ("Transformer encoder, keyword spotting (49×40 MFCC, 2 layers, d=64)", _kws_transformer(), [1, 49, 40]),
        "mlp": ("MLP 64→128→64→8", mlp, [1, 64]),
        "cnn": ("CNN 3×32×32, 3×(conv+BN+ReLU)", cnn, [1, 3, 32, 32]),
        "mobilenet": ("MobileNet-style 3×64×64, 5 dw-sep blocks", mobilenet, [1, 3, 64, 64]),
    }


def _mobilenet_v2() -> Any:
    """MobileNetV2-1.0 (Sandler et al. 2018), as torchvision builds it, in code: no download, random weights."""
    from bench.trained import mobilenet_v2

    return mobilenet_v2(1.0, 1000)


def _kws_transformer() -> Any:
    """A keyword-spotting-sized transformer encoder: 49 frames of 40 MFCCs → 12 keywords. Written with plain
    layers (Linear, matmul, softmax, LayerNorm): torch's fused encoder layer has no TorchScript-to-ONNX export."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self, d: int, heads: int, ff: int) -> None:
            super().__init__()
            self.heads, self.dk = heads, d // heads
            self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.ff = nn.Sequential(nn.Linear(d, ff), nn.ReLU(), nn.Linear(ff, d))
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

        def forward(self, x: Any) -> Any:
            b, t, d = x.shape
            q, k, v = self.qkv(x).reshape(b, t, 3, self.heads, self.dk).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) / self.dk**0.5, dim=-1)
            x = self.norm1(x + self.out((att @ v).transpose(1, 2).reshape(b, t, d)))
            return self.norm2(x + self.ff(x))

    class Kws(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(40, 64)
            self.pos = nn.Parameter(torch.randn(1, 49, 64) * 0.02)
            self.layers = nn.Sequential(Layer(64, 4, 128), Layer(64, 4, 128))
            self.head = nn.Linear(64, 12)

        def forward(self, x: Any) -> Any:
            return self.head(self.layers(self.embed(x) + self.pos).mean(dim=1))

    return Kws()


def _prototype_task(module: Any, shape: list[int], count: int, classes: int = 10) -> dict[str, np.ndarray]:
    """A labelled task the random-weight model really solves: ``classes`` random prototype inputs, samples = a
    prototype + noise, label = its prototype. The last Linear layer is fitted to it (ridge regression on the
    features it sees, closed form, seconds), so the labels are real and the margins are the model's own; the
    rest of the weights stay random. ``count`` held-out samples (plus as many to fit the head) are returned."""
    import torch

    rng = np.random.default_rng(SEED + 1)
    protos = rng.standard_normal((classes, *shape)).astype(np.float32)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, classes, n)
        return (protos[y] + 0.8 * rng.standard_normal((n, *shape))).astype(np.float32), y

    head = [m for m in module.modules() if isinstance(m, torch.nn.Linear)][-1]
    seen: list[np.ndarray] = []
    hook = head.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach().numpy().reshape(1, -1)))
    x_fit, y_fit = draw(count)
    with torch.no_grad():
        for i in range(count):
            module(torch.from_numpy(x_fit[i]))
    hook.remove()
    feats = np.concatenate([np.concatenate(seen), np.ones((count, 1), np.float32)], axis=1).astype(np.float64)
    target = np.zeros((count, head.out_features))
    target[np.arange(count), y_fit] = 1.0
    w = np.linalg.solve(feats.T @ feats + 1e-2 * np.eye(feats.shape[1]), feats.T @ target)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w[:-1].T.astype(np.float32)))
        head.bias.copy_(torch.from_numpy(w[-1].astype(np.float32)))
    x, y = draw(count)
    return {"input": x, "labels": y}


def _torch_case(name: str, work: Path) -> Case:
    import torch

    description, module, shape = _torch_models()[name]
    module.eval()
    count = 164 if name == "mobilenetv2" else 264  # 64 calibrate int8, the rest evaluate
    samples = _prototype_task(module, shape, count)  # fits the head first: traced below with it
    x = np.random.default_rng(SEED).standard_normal(shape).astype(np.float32)
    path = work / f"{name}.pt"
    with torch.no_grad():
        torch.jit.trace(module, torch.from_numpy(x)).save(str(path))  # type: ignore[no-untyped-call]

    def eager() -> object:
        with torch.no_grad():
            return module(torch.from_numpy(x))

    return Case(
        name, description, path, {"input": shape}, {"input": x}, eager, "torch eager", samples, "prototype task (head fitted)"
    )


def _rf_case(work: Path) -> Case:
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, _ = train_test_split(x.astype(np.float32), y, test_size=0.25, random_state=SEED)
    model = RandomForestClassifier(n_estimators=100, max_depth=10, n_jobs=1, random_state=SEED).fit(x_train, y_train)
    path = work / "rf.joblib"
    joblib.dump(model, path)
    sample = x_test[:1]
    return Case(
        "rf",
        "RandomForest(100 trees) on sklearn digits",
        path,
        {"input": [1, 64]},
        {"input": sample},
        lambda: model.predict_proba(sample),
        "sklearn predict_proba",
    )


def _digits_case(work: Path) -> Case:
    """scikit-learn's MLPClassifier on the digits, with its real held-out images and labels."""
    import joblib
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.neural_network import MLPClassifier

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x.astype(np.float32), y, test_size=0.4, random_state=SEED)
    model = MLPClassifier(hidden_layer_sizes=(128, 64), max_iter=400, random_state=SEED).fit(x_train, y_train)
    path = work / "digits.joblib"
    joblib.dump(model, path)
    sample = x_test[:1]
    return Case(
        "digits", "MLPClassifier 64→128→64→10 on sklearn digits", path, {"input": [1, 64]}, {"input": sample},
        lambda: model.predict_proba(sample), "sklearn predict_proba", {"input": x_test, "labels": y_test}, "real digit labels",
    )  # fmt: skip


def trained_cnn() -> Any:
    """The factory ``bench.compile:trained_cnn``: the small CNN of :mod:`bench.trained`, trained (or its cached run)."""
    from bench.trained import model

    return model("cnn")[0]


def trained_mobilenetv2() -> Any:
    """The factory ``bench.compile:trained_mobilenetv2``: MobileNetV2-0.5 of :mod:`bench.trained`, trained."""
    from bench.trained import model

    return model("mobilenetv2")[0]


def _trained_case(name: str, say: Callable[[str], None], held_out: int | None = None) -> Case:
    """A model of :mod:`bench.trained`, compiled from its factory (an eager module: pruning can fine-tune it), with
    its held-out digits and their labels as the samples; ``held_out``: this many of the 797 held-out digits instead
    of the model's own count (the cached training run is loaded as it is: the held-out part is never trained on)."""
    import torch

    from bench.trained import digits, held_out_top1, trained

    t = trained(name.removeprefix("trained-"), say=say)
    held_out = held_out or HELD_OUT.get(name)
    if held_out is not None and held_out != len(t.y):
        t.x, t.y = digits(t.shape[-1], "held_out", held_out)
        t.top1 = held_out_top1(t.module, t.x, t.y)
    say(f"[{name}] held-out top-1 in torch: {t.top1:.2%} on {len(t.y)} images")
    x = t.x[:1]

    def eager() -> object:
        with torch.no_grad():
            return t.module(torch.from_numpy(x))

    factory = f"bench.compile:trained_{t.name}"
    return Case(
        name, t.description, factory, {"input": t.shape}, {"input": x}, eager, "torch eager",
        {"input": t.x, "labels": t.y}, f"held-out digits ({len(t.y)})", calibration=len(t.y) // 3,
    )  # fmt: skip


HELD_OUT = {"trained-mobilenetv2": 797}
"""The held-out digits the bench hands a trained model when --held-out doesn't say (else the model's own count):
MobileNetV2's 30 % pruning holds 1 point with 265 images to fine-tune on (98.5 %, source 99.25 %, 532 evaluated)
and misses it with 133 (97.0 %, source 98.9 %, 267 evaluated); see docs/benchmarks.md."""

MODELS = ("mlp", "cnn", "mobilenet", "mobilenetv2", "kws", "digits", "rf", "trained-cnn", "trained-mobilenetv2")


def make_case(name: str, work: Path, say: Callable[[str], None] = lambda _m: None, held_out: int | None = None) -> Case:
    """The benchmark case ``name``; ``held_out``: the trained models' count of held-out digits (default: each model's)."""
    if name == "rf":
        return _rf_case(work)
    if name == "digits":
        return _digits_case(work)
    if name.startswith("trained-"):
        return _trained_case(name, say, held_out)
    return _torch_case(name, work)


# --------------------------------------------------------------------------- compile


@dataclass
class Result:
    model: str
    description: str
    chosen: str = ""
    compile_s: dict[str, float] = field(default_factory=dict)  # "default" and each backend's own compile
    max_abs_error: dict[str, float] = field(default_factory=dict)
    manifest_ms: dict[str, float] = field(default_factory=dict)  # the compile step's own medians (other moments)
    unavailable: dict[str, str] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)  # this benchmark's interleaved medians
    block_medians_ms: dict[str, list[float]] = field(default_factory=dict)
    refused_s: dict[str, float] = field(default_factory=dict)  # time to refuse a backend that can't take the model
    cache_s: dict[str, float] = field(default_factory=dict)  # "cold" (a miss) and "hit", default pipeline
    size_bytes: dict[str, int] = field(default_factory=dict)  # artifact sizes: fp32 ORT and int8 ORT
    optimize: dict[str, Any] = field(default_factory=dict)  # --optimize: what the optimize pipeline measured and chose


def _short_reason(reason: str) -> str:
    ops = re.findall(r"op '(?:[\w.]*\.)?(\w+)'", reason)
    if ops:
        return "unsupported op " + ", ".join(dict.fromkeys(ops))
    return reason.split(";")[0][:60]


def _compile(case: Case, target: str, out: Path, **kwargs: Any) -> CompileResult:
    kwargs.setdefault("use_cache", False)
    # the benchmark's own scikit-learn pickle: trusted, it was written a moment ago by this process
    return edgekit.compile(case.path, target, out, input_shapes=case.shapes, name=case.name, trust_unknown_types=True, **kwargs)


def compile_case(
    case: Case,
    target: str,
    out: Path,
    say: Callable[[str], None],
    tune: int = 0,
    optimize: bool = False,
    prune: dict[str, Any] | None = None,
    optimize_only: bool = False,
    tuning: Tuning | None = None,
) -> tuple[Result, dict[str, Predict]]:
    """Compile ``case`` with the default pipeline and per backend; return the result stub and the predictors to time.
    ``optimize_only``: ONNX Runtime fp32 (the ratios' denominator) and the optimize pipeline, nothing else.
    ``tuning``: the optimize pipeline's tuning (its trials, minutes and database; ``tune`` when not given)."""
    tuning = tuning or Tuning(tune, None, out / "tuning")
    res = Result(case.name, case.description)
    if optimize_only:
        say(f"[{case.name}] compiling with backend=onnxruntime")
        ort_fp32 = _compile(case, target, out / "onnxruntime", backend="onnxruntime")
        res.compile_s["onnxruntime"] = ort_fp32.manifest.compile_seconds
        predictors: dict[str, Predict] = {
            "onnxruntime": _bind(edgekit.load(ort_fp32.artifact_dir).predict, case.feed),
            "ort-bare": bare_ort(case, out / "bare-ort"),
        }
        _optimize(case, target, out, say, tuning, res, predictors, prune)
        return res, predictors
    say(f"[{case.name}] compiling with the default pipeline")
    cache = ArtifactCache(out / "cache")  # private and empty: the first compile is a miss
    t0 = time.perf_counter()
    default = _compile(case, target, out / "default", pipeline="default", use_cache=True, cache=cache)
    res.cache_s["cold"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = _compile(case, target, out / "default", pipeline="default", use_cache=True, cache=cache)
    res.cache_s["hit"] = time.perf_counter() - t0
    assert again.cache_hit and not default.cache_hit, "the benchmark's private cache misbehaved"
    manifest = default.manifest
    res.chosen = manifest.backend.name
    res.compile_s["default"] = manifest.compile_seconds
    reports: dict[str, CandidateReport] = {c.backend: c for c in manifest.candidates}
    predictors = {"ort-bare": bare_ort(case, out / "bare-ort")}
    if case.eager is not None:
        predictors["eager"] = case.eager
    for backend in BACKENDS:
        rep = reports.get(backend)
        if rep is None:
            res.unavailable[backend] = "not in the pipeline"
            continue
        if rep.measured is None:
            res.unavailable[backend] = rep.reason or rep.status
            t0 = time.perf_counter()  # how long a user waits to hear it (issue 2: under 5 s)
            try:
                _compile(case, target, out / backend, backend=backend)
            except EdgekitError:
                res.refused_s[backend] = time.perf_counter() - t0
            continue
        res.manifest_ms[backend] = rep.measured.latency.median_ms
        say(f"[{case.name}] compiling with backend={backend}")
        try:
            one = _compile(case, target, out / backend, backend=backend)
        except EdgekitError as exc:
            res.unavailable[backend] = str(exc)
            continue
        res.compile_s[backend] = one.manifest.compile_seconds
        assert one.manifest.measured is not None
        res.max_abs_error[backend] = one.manifest.measured.accuracy.max_abs_error
        predictors[backend] = _bind(edgekit.load(one.artifact_dir).predict, case.feed)
    say(f"[{case.name}] quantizing to int8 (static, ONNX Runtime)")
    int8_pipe = load_pipeline("int8")
    int8_spec = next(c for c in int8_pipe.candidates if c.passes)
    try:
        int8 = _compile(case, target, out / "int8", pipeline=int8_pipe.model_copy(update={"candidates": [int8_spec]}))
    except EdgekitError as exc:
        res.unavailable["ort-int8"] = str(exc)
    else:
        assert int8.manifest.measured is not None
        res.max_abs_error["ort-int8"] = int8.manifest.measured.accuracy.max_abs_error
        res.size_bytes["ort-int8"] = int8.manifest.size_bytes
        res.size_bytes["onnxruntime-fp32"] = next(c.size_bytes or 0 for c in manifest.candidates if c.backend == "onnxruntime")
        predictors["ort-int8"] = _bind(edgekit.load(int8.artifact_dir).predict, case.feed)
    if tune and "tvm" not in res.unavailable:
        say(f"[{case.name}] tuning TVM with MetaSchedule: {tune} trials (a fresh database, so every run tunes)")
        tuned_pipe = load_pipeline("tvm").with_tuning(tune)
        spec = tuned_pipe.candidates[-1]
        spec = spec.model_copy(
            update={"options": {**spec.options, "tune": {**spec.options["tune"], "database": str(tuning.database)}}}
        )
        t0 = time.perf_counter()
        tuned = _compile(case, target, out / "tuned", pipeline=tuned_pipe.model_copy(update={"candidates": [spec]}), progress=say)
        res.compile_s["tvm-tuned"] = time.perf_counter() - t0
        assert tuned.manifest.measured is not None
        res.max_abs_error["tvm-tuned"] = tuned.manifest.measured.accuracy.max_abs_error
        predictors["tvm-tuned"] = _bind(edgekit.load(tuned.artifact_dir).predict, case.feed)
    elif tune:
        res.unavailable["tvm-tuned"] = res.unavailable["tvm"]
    predictors["chosen"] = _bind(edgekit.load(default.artifact_dir).predict, case.feed)
    if optimize:
        _optimize(case, target, out, say, tuning, res, predictors, prune)
    return res, predictors


BARE_ORT_THREADS = 0
"""ONNX Runtime's own default (0: one intra-op thread per physical core, 2 on this machine: the x86_64 profile's 2 too),
so the anchor runs as its project runs it and with the threads edgekit's artifacts get. It was 1 until 6 December 2026:
on a quiet 2-core machine that left the anchor a core short (trained CNN: 0.111 ms at 1 thread against edgekit's fp32
artifact's 0.083 ms at 2) and flattered the "shipped vs bare ORT" ratio."""


def bare_ort(case: Case, work: Path) -> Predict:
    """The anchor: ONNX Runtime as its own project runs the fp32 model, without edgekit. The source converted to ONNX
    (edgekit's frontend: what ``torch.onnx.export`` gives, no pass, no offline optimization) in an
    ``InferenceSession`` with default ``SessionOptions`` (graph level ``all`` at load, for this CPU; intra-op threads
    :data:`BARE_ORT_THREADS`: ORT's default), called as ``session.run(None, feed)``."""
    import onnxruntime as ort

    from edgekit.compiler.frontends import load_source

    work.mkdir(parents=True, exist_ok=True)
    source = load_source(case.path, work, case.shapes, trust_unknown_types=True)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = BARE_ORT_THREADS
    session = ort.InferenceSession(str(source.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    feed = dict(case.feed)
    return lambda: session.run(None, feed)


@dataclass(frozen=True)
class Tuning:
    """The optimize pipeline's tuning: ``--tune`` trials and/or ``--tune-minutes``, in ``database`` (fresh per run
    unless ``--tuning-records`` names one). No trials and no minutes: no tuned candidates."""

    trials: int
    minutes: float | None
    database: Path

    @property
    def on(self) -> bool:
        return bool(self.trials or self.minutes)


def _optimize(
    case: Case,
    target: str,
    out: Path,
    say: Callable[[str], None],
    tuning: Tuning,
    res: Result,
    predictors: dict[str, Predict],
    prune: dict[str, Any] | None = None,
) -> None:
    """Compile with compiler/optimize.yaml and labelled samples; with ``tuning`` on, its tuned TVM candidates (the
    source model and each pruned ratio) tune in ``tuning.database`` (tvm-tuned reuses what the tuning run above
    found). ``prune``: options set on every prune step (the bench's --prune-ratios and --fine-tune-steps)."""
    pipe = with_prune_options(load_pipeline("optimize"), prune or {})
    if tuning.on:
        tuning.database.mkdir(parents=True, exist_ok=True)
        pipe = pipe.with_tuning(tuning.trials or None, tuning.minutes, tuning.database)
        say(f"[{case.name}] tuning TVM candidates: {tuning.trials or 'as many'} trials, {tuning.minutes or 'no'} minutes' "
            f"budget, database {tuning.database}")  # fmt: skip
    if case.calibration:
        pipe = pipe.model_copy(update={"measure": pipe.measure.model_copy(update={"calibration": case.calibration})})
    say(f"[{case.name}] optimize pipeline with {len(next(iter((case.samples or {}).values()), []))} labelled samples")
    try:
        result = _compile(case, target, out / "optimize", pipeline=pipe, samples=case.samples, progress=say)
    except EdgekitError as exc:
        res.unavailable["optimized"] = str(exc)
        return
    m = result.manifest
    res.optimize = {
        "chosen": m.candidates[[c.status for c in m.candidates].index("chosen")].name,
        "threads": m.backend.options.get("session", {}).get("intraOpThreads"),
        "thread_timing": m.backend.options.get("threadTiming"),
        "labels": case.labels_are,
        "samples": m.samples.model_dump(by_alias=True) if m.samples else None,
        "source_flops": m.source.flops,
        "candidates": {
            c.name: {
                "status": c.status,
                "reason": c.reason,
                "ms": c.measured.latency.median_ms if c.measured else None,
                "top1": c.measured.accuracy.top1_accuracy if c.measured else None,
                "source_top1": c.measured.accuracy.source_top1_accuracy if c.measured else None,
                "size": c.size_bytes,
                "flops": c.flops,
                "kept_float": c.kept_float,
                "quantization": c.quantization,
                "compile_s": c.compile_seconds,
                "fine_tuned": (c.pruned or {}).get("fineTuned"),
                "prune_ratio": (c.pruned or {}).get("ratio"),
                "tuning": c.tuning,
            }
            for c in m.candidates
        },
    }
    predictors["optimized"] = _bind(edgekit.load(result.artifact_dir).predict, case.feed)


def with_prune_options(pipe: Pipeline, options: dict[str, Any]) -> Pipeline:
    """``pipe`` with ``options`` set on the prune step of every candidate that prunes."""
    if not options:
        return pipe
    candidates = [
        c.model_copy(update={"passes": [{k: {**v, **options} if k == "prune" else v for k, v in p.items()} for p in c.passes]})
        for c in pipe.candidates
    ]
    return pipe.model_copy(update={"candidates": candidates})


def _bind(predict: Callable[[dict[str, np.ndarray]], list[np.ndarray]], feed: dict[str, np.ndarray]) -> Predict:
    return lambda: predict(feed)


# --------------------------------------------------------------------------- timing


def interleaved(predictors: dict[str, Predict], rounds: int, repeat: int, warmup: int = 5) -> dict[str, list[float]]:
    """Median per block of ``repeat`` runs, for each predictor, ``rounds`` times round-robin (rotating the order)."""
    names = list(predictors)
    for name in names:
        for _ in range(warmup):
            predictors[name]()
    blocks: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            fn = predictors[name]
            settle()  # the previous backend's threads may still be spinning (ONNX Runtime's: tens of ms)
            fn()  # one untimed call: the cache belongs to this one again
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
            blocks[name].append(statistics.median(times))
    return blocks


# --------------------------------------------------------------------------- report


def _cell(res: Result, key: str) -> str:
    if key in res.latency_ms:
        ms = res.latency_ms[key]
        ort = res.latency_ms.get("onnxruntime")
        ratio = f"  {ms / ort:.2f}x" if ort else ""
        return f"{ms:.3f} ms{ratio}"
    if key in res.unavailable:
        return escape(f"n/a ({_short_reason(res.unavailable[key])})")
    return "—"


def _cache_cell(r: Result) -> str:
    if "hit" not in r.cache_s:
        return "—"
    hit, cold = r.cache_s["hit"], r.cache_s["cold"]
    return f"{hit * 1e3:.0f} ms / {cold:.2f} s = {hit / cold:.1%}"


def render(results: list[Result], header: str, eager_names: dict[str, str], tune: int = 0) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 150))
    console.print(header)
    lat = Table(title="Latency, batch 1 (median of block medians; ratio to edgekit's ONNX Runtime fp32 artifact, >1 = slower)")
    lat.add_column("model")
    tuned = any("tvm-tuned" in r.compile_s or "tvm-tuned" in r.unavailable for r in results)
    cols = ["ONNX Runtime (edgekit's fp32 artifact)", "bare ORT (its defaults)", "eager (torch / sklearn)", "ORT int8 (size)",
            "TVM untuned"]  # fmt: skip
    cols += [f"TVM tuned ({tune} trials)"] if tuned else []
    for col in (*cols, "chosen artifact"):
        lat.add_column(col, justify="right")
    for r in results:
        chosen = f"{_cell(r, 'chosen')} [dim]({r.chosen})[/dim]"
        eager = _cell(r, "eager") if "eager" in r.latency_ms else escape(f"n/a ({eager_names[r.model]})")
        sizes = r.size_bytes
        shrink = f" [dim]({sizes['onnxruntime-fp32'] / sizes['ort-int8']:.1f}x smaller)[/dim]" if sizes.get("ort-int8") else ""
        row = [r.model, _cell(r, "onnxruntime"), _cell(r, "ort-bare"), eager, _cell(r, "ort-int8") + shrink, _cell(r, "tvm")]
        if tuned:
            took = f" [dim]in {r.compile_s['tvm-tuned']:.0f} s[/dim]" if "tvm-tuned" in r.compile_s else ""
            row.append(_cell(r, "tvm-tuned") + took)
        lat.add_row(*row, chosen)
    console.print(lat)

    det = Table(title="Compile and accuracy (from each artifact's manifest)")
    det.add_column("model")
    det.add_column("description")
    det.add_column("compile s: default / ort / tvm", justify="right")
    det.add_column("max |err| ORT", justify="right")
    det.add_column("max |err| TVM", justify="right")
    det.add_column("max |err| int8", justify="right")
    det.add_column("manifest ms ORT / TVM", justify="right")
    det.add_column("cache hit / compile", justify="right")

    def fmt(d: dict[str, float], k: str, spec: str) -> str:
        return format(d[k], spec) if k in d else "—"

    for r in results:
        det.add_row(
            r.model,
            r.description,
            " / ".join(fmt(r.compile_s, k, ".2f") for k in ("default", "onnxruntime", "tvm")),
            fmt(r.max_abs_error, "onnxruntime", ".1e"),
            fmt(r.max_abs_error, "tvm", ".1e"),
            fmt(r.max_abs_error, "ort-int8", ".1e"),
            " / ".join(fmt(r.manifest_ms, k, ".3f") for k in BACKENDS),
            _cache_cell(r),
        )
    console.print(det)
    if any(r.optimize for r in results):
        console.print(_optimize_table(results))
        console.print(_int8_table(results))
        console.print(_pruned_table(results))
        if any(tuned_variants(r.optimize) for r in results):
            console.print(_tuned_table(results))
    for r in results:
        for backend, reason in r.unavailable.items():
            took = f" (refused in {r.refused_s[backend]:.2f} s)" if backend in r.refused_s else ""
            console.print(f"[dim]{r.model}: {backend} unavailable{took}: {escape(reason)}[/dim]")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "—"


def _optimize_table(results: list[Result]) -> Any:
    from rich.table import Table

    t = Table(
        title="optimize pipeline with labelled samples (latency ratios: this run's rounds for 'shipped', the manifest's for the rest)"
    )
    for col in ("model", "labels", "shipped (vs ORT fp32)", "shipped vs bare ORT", "top-1 source → shipped", "int8 size / fp32", "int8 ms / fp32",
                "pruned ms / fp32", "pruned MACs / source", "candidates"):  # fmt: skip
        t.add_column(col)
    for r in results:
        o = r.optimize
        if not o:
            continue
        c = o["candidates"]
        fp32, int8, pruned = c.get("ort", {}), c.get(best_int8(o) or "", {}), c.get(best_pruned(o) or "", {})
        chosen = c[o["chosen"]]
        top1 = f"{chosen['source_top1']:.1%} → {chosen['top1']:.1%}" if chosen.get("top1") is not None else "—"
        shipped = f"{o['chosen']} {_ratio(r.latency_ms.get('optimized'), r.latency_ms.get('onnxruntime'))}"
        shipped += f" ({o['threads']} thread{'s' * (o['threads'] != 1)})" if o.get("threads") else ""
        variants = int8_variants(o) + pruned_variants(o) + tuned_variants(o)  # each in a table of its own
        states = "; ".join(
            f"{n}: {v['status']}" + (f" ({escape(v['reason'][:70])})" if v["status"] != "chosen" else "")
            for n, v in c.items()
            if n not in variants
        )
        t.add_row(
            r.model, o["labels"], shipped, _ratio(r.latency_ms.get("optimized"), r.latency_ms.get("ort-bare")), top1, _ratio(int8.get("size"), fp32.get("size")), _ratio(int8.get("ms"), fp32.get("ms")),
            _ratio(pruned.get("ms"), fp32.get("ms")) + (f" ({best_pruned(o)})" if pruned else ""),
            _ratio(pruned.get("flops"), o.get("source_flops")), states,
        )  # fmt: skip
    return t


def int8_variants(optimize: dict[str, Any]) -> list[str]:
    """The optimize pipeline's int8 candidates (one per variant: ``ort-int8-<variant>``), in pipeline order."""
    return [
        n
        for n, v in optimize.get("candidates", {}).items()
        if not n.startswith("ort-pruned") and (v.get("quantization") or v["reason"].startswith("not tried"))
    ]


def best_int8(optimize: dict[str, Any]) -> str | None:
    """The int8 variant that ships or would: the chosen one if int8 shipped, else the fastest within the budget."""
    c = optimize.get("candidates", {})
    names = int8_variants(optimize)
    if optimize.get("chosen") in names:
        return str(optimize["chosen"])
    within = [n for n in names if c[n].get("ms") and not c[n]["reason"].startswith("outside")]
    return min(within, key=lambda n: c[n]["ms"]) if within else None


def pruned_variants(optimize: dict[str, Any]) -> list[str]:
    """The optimize pipeline's pruned candidates, fp32 and int8 (one per ratio: ``ort-pruned-<percent>``), in order."""
    return [n for n, v in optimize.get("candidates", {}).items() if n.startswith("ort-pruned")]


def best_pruned(optimize: dict[str, Any]) -> str | None:
    """The pruned fp32 candidate that ships or would: the chosen one if it is pruned fp32, else the fastest within
    the budget."""
    c = optimize.get("candidates", {})
    names = [n for n in pruned_variants(optimize) if not c[n].get("quantization")]
    if optimize.get("chosen") in names:
        return str(optimize["chosen"])
    within = [n for n in names if c[n].get("ms") and not c[n]["reason"].startswith("outside")]
    return min(within, key=lambda n: c[n]["ms"]) if within else None


def _pruned_table(results: list[Result]) -> Any:
    """Each ratio the optimize pipeline's pruning search tried (fp32 and + int8): latency, size and MACs against ORT
    fp32 and the source (the compile's own interleaved medians), top-1 against the source's, and the gate's decision."""
    from rich.table import Table

    t = Table(title="pruning ratios of the optimize pipeline (latency: the compile's interleaved medians, ratio to ORT fp32)")
    for col in ("model", "candidate", "ratio", "fine-tune", "ms / fp32", "size / fp32", "MACs / source",
                "top-1 source → pruned", "outcome"):  # fmt: skip
        t.add_column(col)
    for r in results:
        o = r.optimize
        c = o.get("candidates", {})
        fp32 = c.get("ort", {})
        for name in pruned_variants(o):
            v = c[name]
            ft = v.get("fine_tuned")
            tuned = f"{ft['steps']} steps, loss {ft['lossBefore']:.3f} → {ft['lossAfter']:.3f}" if ft else "none"
            top1 = f"{v['source_top1']:.1%} → {v['top1']:.1%}" if v.get("top1") is not None else "—"
            outcome = v["status"] + (f": {escape(v['reason'][:90])}" if v["reason"] else "")
            t.add_row(
                r.model, name, f"{v['prune_ratio']:.0%}" if v.get("prune_ratio") else "—", tuned,
                _ratio(v.get("ms"), fp32.get("ms")), _ratio(v.get("size"), fp32.get("size")),
                _ratio(v.get("flops"), o.get("source_flops")), top1, outcome,
            )  # fmt: skip
    return t


def tuned_variants(optimize: dict[str, Any]) -> list[str]:
    """The optimize pipeline's tuned TVM candidates (tvm-tuned, tvm-tuned-pruned-<percent>), in pipeline order."""
    return [n for n in optimize.get("candidates", {}) if n.startswith("tvm-tuned")]


def _tuned_table(results: list[Result]) -> Any:
    """Each tuned TVM candidate of the optimize pipeline (the source model and each pruned ratio): latency against ORT
    fp32 (the compile's own interleaved medians), top-1 against the source's, what tuning did and took, the outcome."""
    from rich.table import Table

    t = Table(title="tuned TVM in the optimize pipeline (latency: the compile's interleaved medians, ratio to ORT fp32)")
    for col in ("model", "candidate", "ms", "ms / fp32", "top-1 source → tuned", "tuning: trials, tasks, stopped",
                "tuning min (budget)", "outcome"):  # fmt: skip
        t.add_column(col)
    for r in results:
        c = r.optimize.get("candidates", {})
        fp32 = c.get("ort", {})
        for name in tuned_variants(r.optimize):
            v = c[name]
            tu = v.get("tuning") or {}
            how = (
                f"{tu['measured']} measured, {tu['tasks_tuned']}/{tu['tasks']} tuned, {tu['tasks_reused']} reused, "
                f"{tu['tasks_unmeasured']} unmeasured, {tu.get('tasks_light', 0)} light, {tu['stopped']}"
                if tu
                else "not tuned"
            )
            took = f"{tu['seconds'] / 60:.1f}" if tu else "—"
            took += f" ({tu['minutes']:g})" if tu.get("minutes") else ""
            top1 = f"{v['source_top1']:.1%} → {v['top1']:.1%}" if v.get("top1") is not None else "—"
            outcome = v["status"] + (f": {escape(v['reason'][:90])}" if v["reason"] else "")
            t.add_row(
                r.model, name, f"{v['ms']:.4f}" if v.get("ms") else "—", _ratio(v.get("ms"), fp32.get("ms")), top1, how,
                took, outcome,
            )  # fmt: skip
    return t


def _int8_table(results: list[Result]) -> Any:
    """Each int8 variant the optimize pipeline tried: latency and size against ORT fp32 (the compile's own
    interleaved medians: side by side in one run), top-1 against the source's, and why it lost or was not tried."""
    from rich.table import Table

    t = Table(title="int8 variants of the optimize pipeline (latency: the compile's interleaved medians, ratio to ORT fp32)")
    for col in ("model", "variant", "mode / format / weights", "ms / fp32", "size / fp32", "top-1 source → int8",
                "kept float", "backend compile s", "outcome"):  # fmt: skip
        t.add_column(col)
    for r in results:
        c = r.optimize.get("candidates", {})
        fp32 = c.get("ort", {})
        for name in int8_variants(r.optimize):
            v = c[name]
            q = v["quantization"]
            how = f"{q['mode']} / {q['format']} / {q['granularity']}" if q else "—"
            how += " (per channel failed)" if q and q.get("note") else ""
            top1 = f"{v['source_top1']:.1%} → {v['top1']:.1%}" if v.get("top1") is not None else "—"
            outcome = v["status"] + (f": {escape(v['reason'][:90])}" if v["reason"] else "")
            t.add_row(
                r.model, name.removeprefix("ort-int8-"), how, _ratio(v.get("ms"), fp32.get("ms")),
                _ratio(v.get("size"), fp32.get("size")), top1, str(len(v.get("kept_float") or [])),
                f"{v['compile_s']:.1f}" if v.get("compile_s") else "—", outcome,
            )  # fmt: skip
    return t


def _threads() -> str:
    import torch

    from edgekit.runtime.tvm_runner import tvm_thread_count

    tvm = f"{tvm_thread_count()}" + ("" if os.environ.get("TVM_NUM_THREADS") else " (edgekit's default: one per physical core)")
    return (
        f"threads: torch {torch.get_num_threads()}, edgekit's ORT artifacts their manifest's intra-op threads (the "
        "profile's, or 1 where timing on the profile's CPU found it faster), bare ORT "
        f"{BARE_ORT_THREADS or 'default (one per physical core)'} intra-op, TVM {tvm} ({os.cpu_count()} logical CPUs)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/compile", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated subset of {','.join(MODELS)}")
    parser.add_argument(
        "--target",
        default=None,
        help="device profile (must run on this host to be timed; default x86_64, and x86_64_host for --tuning-goal)",
    )
    parser.add_argument("--repeat", type=int, default=50, help="timed runs per block (default 50)")
    parser.add_argument("--rounds", type=int, default=10, help="round-robin blocks per variant (default 10)")
    parser.add_argument(
        "--tune",
        type=int,
        default=0,
        metavar="N",
        help="also tune TVM with MetaSchedule for N trials per model (minutes each) and time it alongside",
    )
    parser.add_argument(
        "--optimize",
        action="store_true",
        help="also compile with compiler/optimize.yaml and labelled samples, and time what it ships",
    )
    parser.add_argument(
        "--prune-ratios",
        metavar="R,R",
        help="--optimize: the pruning ratios to search instead of optimize.yaml's (e.g. 0.5,0.7)",
    )
    parser.add_argument(
        "--fine-tune-steps",
        type=int,
        metavar="N",
        help="--optimize: fine-tune steps per pruning ratio instead of optimize.yaml's (fewer for a 224² model on a busy CPU)",
    )
    parser.add_argument(
        "--optimize-only",
        action="store_true",
        help="only ONNX Runtime fp32 and the optimize pipeline (no default pipeline, TVM or int8 pipeline compiles): "
        "for 224² models on a busy CPU",
    )
    parser.add_argument(
        "--tuning-goal",
        action="store_true",
        help="only the tuning goal: tuned TVM vs ONNX Runtime on a digits CNN trained here, and a second compile "
        "reusing the tuning database (bench/tuning_goal.py)",
    )
    parser.add_argument(
        "--tune-minutes",
        type=float,
        metavar="MIN",
        help="--tuning-goal's budget (default 10); with --optimize/--optimize-only: the optimize compile's tuning budget "
        "(tuned TVM on the source and each pruned ratio, sharing it)",
    )
    parser.add_argument(
        "--tuning-records",
        type=Path,
        metavar="DIR",
        help="--optimize: the tuning database to read and add to (default: a fresh one per run, so the figures include "
        "the tuning)",
    )
    parser.add_argument(
        "--held-out",
        type=int,
        metavar="N",
        help="trained-*: hand this many of the 797 held-out digits as --samples (default: all 797 for MobileNetV2, "
        "the CNN's own 797); a third calibrate int8 and fine-tune pruned models, the rest evaluate",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this file")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    args = parser.parse_args(argv)
    if args.tuning_goal:
        args.target = args.target or "x86_64_host"  # "on this machine": see bench/tuning_goal.py
        if args.models == ",".join(MODELS):
            args.goal_model = "digits-cnn"
        elif args.models == "trained-cnn":
            args.goal_model = "trained-cnn"
        else:
            parser.error(f"--tuning-goal runs on its digits CNN or on --models trained-cnn, not on '{args.models}'")
        args.tune_minutes = args.tune_minutes or 10.0
        return _tuning_goal(args)
    args.target = args.target or "x86_64"
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(names) - set(MODELS))
    if unknown or not names:
        parser.error(f"unknown model(s) {unknown}; choose from {','.join(MODELS)}")
    if args.repeat < 1 or args.rounds < 1 or args.tune < 0:
        parser.error("--repeat and --rounds must be at least 1, --tune at least 0")
    if args.tune_minutes is not None and not args.tune_minutes > 0:
        parser.error("--tune-minutes must be more than 0")
    if args.held_out is not None and not 6 <= args.held_out <= 797:
        parser.error("--held-out must be 6 to 797 (the digits held out of training)")
    if args.tuning_records is not None and not args.tuning_records.is_dir():
        parser.error(f"--tuning-records '{args.tuning_records}' is not a folder; create it (mkdir) to start one")
    prune: dict[str, Any] = {}
    if args.prune_ratios:
        try:
            prune["ratios"] = [float(r) for r in args.prune_ratios.split(",") if r.strip()]
        except ValueError:
            parser.error(f"--prune-ratios: '{args.prune_ratios}' is not a comma-separated list of numbers")
    if args.fine_tune_steps is not None:
        if args.fine_tune_steps < 1:
            parser.error("--fine-tune-steps must be at least 1")
        prune["fine_tune_steps"] = args.fine_tune_steps

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    started = time.perf_counter()
    results: list[Result] = []
    eager_names: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
        work = Path(tmp)
        for name in names:
            case = make_case(name, work, say, args.held_out)
            eager_names[name] = case.eager_name
            tuning = Tuning(args.tune, args.tune_minutes, args.tuning_records or work / "build" / name / "tuning")
            try:
                res, predictors = compile_case(
                    case, args.target, work / "build" / name, say, args.tune, args.optimize or args.optimize_only, prune,
                    args.optimize_only, tuning,
                )  # fmt: skip
            except EdgekitError as exc:  # one model that can't be compiled doesn't lose the others' figures
                say(f"[{name}] skipped: {exc}")
                continue
            say(f"[{name}] timing {', '.join(predictors)}: {args.rounds} rounds × {args.repeat} runs")
            blocks = interleaved(predictors, args.rounds, args.repeat)
            res.block_medians_ms = blocks
            res.latency_ms = {k: statistics.median(v) for k, v in blocks.items()}
            results.append(res)
    total = time.perf_counter() - started
    header = (
        f"host: {host_description()} | {_threads()} | timed runs per variant: {args.rounds} rounds × {args.repeat} "
        f"= {args.rounds * args.repeat} | target {args.target} | edgekit {edgekit.__version__}"
    )
    if args.tune or args.tune_minutes:
        from bench.tuning_goal import target_note

        header += f"\n{target_note(args.target)}"
    render(results, header, eager_names, args.tune)
    print(f"total {total:.1f} s")
    if args.json:
        payload = {
            "host": host_description(),
            "threads": _threads(),
            "rounds": args.rounds,
            "repeat": args.repeat,
            "target": args.target,
            "tune_trials": args.tune,
            "tune_minutes": args.tune_minutes,
            "tuning_records": str(args.tuning_records) if args.tuning_records else None,
            "prune_overrides": prune,
            "held_out": args.held_out,
            "edgekit": edgekit.__version__,
            "total_seconds": round(total, 2),
            "results": [asdict(r) for r in results],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 0


def _tuning_goal(args: argparse.Namespace) -> int:
    from bench.tuning_goal import render_goal, run_goal, target_note

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="edgekit-bench-tuning-") as tmp:
        figures = run_goal(args.target, args.tune_minutes, args.rounds, args.repeat, Path(tmp), say, interleaved, args.goal_model)
    figures["target_note"] = target_note(args.target)
    figures.update(host=host_description(), threads=_threads(), rounds=args.rounds, repeat=args.repeat, target=args.target)
    print(f"host: {host_description()} | {_threads()} | target {args.target} | edgekit {edgekit.__version__}")
    for line in render_goal(figures):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
