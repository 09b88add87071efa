"""Graph passes a candidate applies to the ONNX model before its backend compiles it.

``passes:`` in a pipeline candidate is a list of one-key mappings, applied in order::

    passes:
      - prune: {ratio: 0.3}                            # remove 30 % of the channels of every prunable chain
      - quantize: {mode: static}                       # int8 weights and activations (QDQ), calibrated on --samples
      - quantize: {mode: dynamic}                      # int8 weights, activations quantized at run time

One module per pass (:mod:`~edgekit.compiler.passes.quantize`, :mod:`~edgekit.compiler.passes.prune`), each a
:class:`~edgekit.compiler.passes.step.GraphPass` registered by one line in :data:`PASSES`. Pruned and quantized
candidates are measured against the *float* source model like every other, so the accuracy budget decides whether
they are acceptable. See docs/int8-and-tuning.md.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from edgekit.compiler.frontends.frontend import SourceModel
from edgekit.compiler.passes.step import GraphPass, PassContext, PassNotes, PassStep
from edgekit.digests import file_sha256
from edgekit.errors import ConfigError, did_you_mean, first_problem, reject_unknown_keys
from edgekit.progress import Progress

__all__ = [
    "PASSES",
    "GraphPass",
    "PassContext",
    "PassNotes",
    "PassStep",
    "apply_passes",
    "calibrates_from_samples",
    "file_inputs",
    "get_pass",
    "parse_passes",
]

PASSES: dict[str, str] = {
    "quantize": "edgekit.compiler.passes.quantize:QuantizePass",
    "prune": "edgekit.compiler.passes.prune:PrunePass",
}


def get_pass(name: str) -> GraphPass[Any]:
    """The registered pass called ``name`` (its module imported now)."""
    module, _, cls = PASSES[name].partition(":")
    graph_pass: GraphPass[Any] = getattr(importlib.import_module(module), cls)()
    return graph_pass


def _parse(step: Any, where: str) -> PassStep:
    if not isinstance(step, dict) or len(step) != 1:
        raise ConfigError(f"{where}: each pass is a one-key mapping like {{quantize: {{mode: static}}}}, got {step!r}")
    ((name, options),) = step.items()
    if name not in PASSES:
        raise ConfigError(f"{where}: unknown pass '{name}'; {did_you_mean(str(name), PASSES)}known passes: {', '.join(PASSES)}")
    graph_pass = get_pass(name)
    model = graph_pass.options
    reject_unknown_keys(options or {}, model.model_fields, f"{where}: pass '{name}'")
    try:
        parsed = PassStep(name, model.model_validate(options or {}))
    except ValidationError as exc:
        raise ConfigError(f"{where}: pass '{name}': {first_problem(exc)}") from None
    graph_pass.check(parsed.options, f"{where}: pass '{name}'")
    return parsed


def parse_passes(passes: list[dict[str, Any]], where: str) -> list[PassStep]:
    """The checked steps, or ConfigError for a pass or option that doesn't exist, before anything is loaded."""
    return [_parse(step, where) for step in passes]


def calibrates_from_samples(steps: Sequence[PassStep]) -> bool:
    """Whether a step calibrates on the user's samples (then a part of them is kept apart from the evaluation)."""
    return any(get_pass(s.name).calibrates_from_samples(s.options) for s in steps)


def apply_passes(
    source: SourceModel, steps: Sequence[PassStep], work: Path, progress: Progress, context: PassContext | None = None
) -> tuple[SourceModel, PassNotes]:
    """``source`` with every step applied, written under ``work``; the source itself is unchanged."""
    context = context or PassContext()
    current = source
    notes = PassNotes(counted=source.model)
    for i, step in enumerate(steps):
        folder = work / f"pass-{i}-{step.name}"
        folder.mkdir(parents=True, exist_ok=True)
        current = get_pass(step.name).apply(current, step.options, folder, progress, context, notes)
    return current, notes


def file_inputs(steps: Sequence[PassStep]) -> list[str]:
    """SHA-256 of the files the steps read (calibration data): part of the artifact cache key."""
    return [file_sha256(path) for s in steps for path in get_pass(s.name).files_read(s.options)]
