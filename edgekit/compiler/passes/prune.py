"""The ``prune`` pass: torch-pruning on an eager PyTorch module (with an optional short fine-tune), else the
ONNX graph rewrite of :mod:`edgekit.compiler.passes.channels`; to a ratio of channels or to a FLOPs target.

See docs/int8-and-tuning.md (pruning).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from pydantic import BaseModel, ConfigDict, Field

from edgekit.compiler.frontends.frontend import SourceModel
from edgekit.compiler.model_stats import model_stats
from edgekit.compiler.passes.channels import prune_model
from edgekit.compiler.passes.step import GraphPass, PassContext, PassNotes
from edgekit.errors import CompilationError, ConfigError, EdgekitError, last_line
from edgekit.progress import Progress

__all__ = ["PruneOptions", "PrunePass"]


class PruneOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ratio: float = Field(0.3, gt=0, lt=1, description="fraction of each chain's channels to remove")
    flops: float | None = Field(None, gt=0, lt=1, description="instead of ratio: the fraction of the source's MACs to keep")
    multiple: int = Field(1, ge=1, description="keep a multiple of this many channels (SIMD-friendly widths)")
    fine_tune: str | None = Field(None, description="PyTorch: 'module:function' yielding (inputs, targets) batches")
    fine_tune_steps: int = Field(100, ge=1)
    learning_rate: float = Field(1e-3, gt=0)


class PrunePass(GraphPass[PruneOptions]):
    options = PruneOptions

    def apply(
        self, source: SourceModel, options: PruneOptions, folder: Path, progress: Progress, context: PassContext, notes: PassNotes
    ) -> SourceModel:
        pruned = prune(source, options, folder, progress, notes)
        notes.counted = pruned.model
        return pruned


def prune(source: SourceModel, options: PruneOptions, folder: Path, progress: Progress, notes: PassNotes) -> SourceModel:
    """``source`` with channels removed, saved in ``folder``; ``notes.pruned`` says how many were kept where."""
    if source.module is not None and _has_torch_pruning():
        model, kept, how = _torch(source, options, progress)
    else:
        if options.fine_tune:
            raise ConfigError(
                f"prune: fine_tune needs a PyTorch model from a factory ('pkg.module:make_model') and torch-pruning; "
                f"'{source.path}' is {source.format}"
            )
        model, kept, how = _onnx(source, options, progress)
    out = folder / "model.onnx"
    onnx.save(model, str(out))
    data = out.read_bytes()
    notes.pruned = {"method": how, "ratio": options.ratio if options.flops is None else None, "flopsTarget": options.flops,
                    "channelsKept": kept}  # fmt: skip
    return replace(source, onnx_path=out, model=model, sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))


def _has_torch_pruning() -> bool:
    try:
        importlib.import_module("torch_pruning")
    except ImportError:
        return False
    return True


def _onnx(source: SourceModel, options: PruneOptions, progress: Progress) -> tuple[onnx.ModelProto, dict[str, int], str]:
    ratio = options.ratio
    if options.flops is not None:
        ratio = _ratio_for_flops(
            lambda r: prune_model(source.model, r, options.multiple, source.path)[0], source.model, options.flops
        )
    model, kept = prune_model(source.model, ratio, options.multiple, source.path)
    progress(f"prune: {ratio:.0%} of the channels of {len(kept)} layer chain(s) removed (ONNX graph rewrite)")
    return model, kept, f"onnx graph rewrite, L1 magnitude, ratio {ratio:.3f}"


def _ratio_for_flops(make: Any, model: onnx.ModelProto, target: float) -> float:
    """The smallest ratio whose pruned model keeps at most ``target`` of the source's MACs (bisection)."""
    base, _ = model_stats(model)
    if not base:
        raise ConfigError("prune: a flops target needs onnx-tool to count this model's MACs, and it can't; give a ratio")
    lo, hi = 0.0, 0.95
    for _ in range(12):
        mid = (lo + hi) / 2
        macs, _ = model_stats(make(mid))
        if macs is None or macs > target * base:
            lo = mid
        else:
            hi = mid
    return hi


def _torch(source: SourceModel, options: PruneOptions, progress: Progress) -> tuple[onnx.ModelProto, dict[str, int], str]:
    import torch
    import torch_pruning as tp

    from edgekit.compiler.frontends.torch import export_module

    module: Any = copy.deepcopy(source.module)
    module.eval()
    example = tuple(torch.from_numpy(np.zeros(s.shape, dtype=s.dtype)) for s in source.inputs)
    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))]
    if not layers:
        raise CompilationError(f"nothing to prune in '{source.path}': no Linear or Conv layer; drop the prune pass")
    ignored = [layers[-1]]  # the classifier: its outputs are the model's
    try:
        kwargs: dict[str, Any] = {"pruning_ratio": options.ratio} if options.flops is None else {"pruning_ratio": 0.9}
        pruner = tp.pruner.MagnitudePruner(
            module, example, importance=tp.importance.MagnitudeImportance(p=1), ignored_layers=ignored,
            round_to=options.multiple if options.multiple > 1 else None, iterative_steps=1 if options.flops is None else 20,
            **kwargs,
        )  # fmt: skip
        base_macs, _ = tp.utils.count_ops_and_params(module, example)
        if options.flops is None:
            pruner.step()
        else:
            for _ in range(20):
                pruner.step()
                macs, _ = tp.utils.count_ops_and_params(module, example)
                if macs <= options.flops * base_macs:
                    break
        for m in module.modules():
            if isinstance(m, torch.nn.MultiheadAttention) and hasattr(m, "embed_dim"):
                m.head_dim = m.embed_dim // m.num_heads
    except EdgekitError:
        raise
    except Exception as exc:  # torch-pruning's dependency graph can't follow every model
        raise CompilationError(f"torch-pruning cannot prune '{source.path}': {last_line(exc, 240)}; drop the prune pass") from exc
    kept = {name: int(getattr(m, "out_channels", getattr(m, "out_features", 0))) for name, m in module.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d))}  # fmt: skip
    how = f"torch-pruning {tp.__version__ if hasattr(tp, '__version__') else ''}, L1 magnitude".replace("  ", " ")
    if options.fine_tune:
        steps = _fine_tune(module, options, progress)
        how += f", fine-tuned {steps} step(s) on {options.fine_tune}"
    module.eval()
    with torch.no_grad():
        outs = module(*example)
    n_out = len(outs) if isinstance(outs, (tuple, list)) else 1
    names = [s.name for s in source.inputs]
    data = export_module(module, example, names, n_out, source.path)
    model = onnx.load_from_string(data)
    model = onnx.shape_inference.infer_shapes(model)
    progress(f"prune: {how}")
    return model, kept, how


def _fine_tune(module: Any, options: PruneOptions, progress: Progress) -> int:
    """A short fine-tune on the batches ``options.fine_tune`` yields: (inputs, targets), integer targets → cross
    entropy, float targets → mean squared error."""
    import torch

    spec = options.fine_tune or ""
    mod_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        batches = getattr(importlib.import_module(mod_name), attr)()
    except Exception as exc:
        raise ConfigError(f"prune: fine_tune '{spec}' cannot be called: {last_line(exc, 200)}") from None
    opt = torch.optim.Adam(module.parameters(), lr=options.learning_rate)
    module.train()
    steps = 0
    progress(f"prune: fine-tuning for up to {options.fine_tune_steps} step(s) on {spec}")
    try:
        while steps < options.fine_tune_steps:
            seen = 0
            for x, y in batches:
                xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
                yt = torch.as_tensor(np.asarray(y))
                out = module(xt)
                if yt.dtype.is_floating_point:
                    loss = torch.nn.functional.mse_loss(out, yt.float().reshape(out.shape))
                else:
                    loss = torch.nn.functional.cross_entropy(out, yt.long().reshape(-1))
                opt.zero_grad()
                loss.backward()  # type: ignore[no-untyped-call]
                opt.step()
                steps += 1
                seen += 1
                if steps >= options.fine_tune_steps:
                    break
            if not seen:
                raise ConfigError(f"prune: fine_tune '{spec}' yielded no batches")
            if not hasattr(batches, "__len__"):
                break  # a generator: once through is what it gives
    except EdgekitError:
        raise
    except Exception as exc:
        raise ConfigError(f"prune: fine-tuning on '{spec}' failed: {type(exc).__name__}: {last_line(exc, 200)}") from None
    module.eval()
    return steps
