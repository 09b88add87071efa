"""Phase 1, check: everything that can be checked before the model is loaded, as a :class:`Plan`.

The device profile, the pipeline (with ``--tune`` and ``--backend`` applied), each candidate's backend
options and passes, the output folder and the model's format; and what the cache key is made of.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compiler.artifact import check_writable
from edgekit.compiler.backends import Backend, BackendOptions, get_backend
from edgekit.compiler.cache import cache_key
from edgekit.compiler.frontends import SourceModel, input_shapes_from, source_format
from edgekit.compiler.passes import PassStep, calibrates_from_samples, file_inputs, get_pass, parse_passes
from edgekit.compiler.pipeline import AccuracyBudget, CandidateSpec, Pipeline, load_pipeline
from edgekit.compiler.samples import LABELS, Samples, SamplesSource, load_samples
from edgekit.errors import ConfigError
from edgekit.profiles import DeviceProfile, load_profile

__all__ = ["Plan", "PlannedCandidate", "check"]


@dataclass(frozen=True)
class PlannedCandidate:
    """A candidate of the pipeline with its backend found and its options and passes checked."""

    index: int  # its place in the pipeline
    spec: CandidateSpec
    backend: Backend[Any]
    options: BackendOptions
    passes: list[PassStep]
    budget: AccuracyBudget  # its own, or the pipeline's

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class Plan:
    model: str | Path
    format: str
    profile: DeviceProfile
    pipeline: Pipeline
    candidates: list[PlannedCandidate]
    shapes: dict[str, list[int]]
    out: Path
    name: str | None
    key_parts: dict[str, Any]  # what the cache key hashes, but the source model
    samples: Samples | None = None
    examples: dict[str, list[np.ndarray]] | None = None  # PyTorch: per input, the samples' readings to trace with

    @property
    def calibrates(self) -> bool:
        """Whether a candidate calibrates on the user's samples (a part of them is then kept apart)."""
        return any(calibrates_from_samples(c.passes) for c in self.candidates)

    def cache_key(self, source: str) -> str:
        """The artifact cache key for a source model whose fingerprint is ``source``."""
        return cache_key(source=source, **self.key_parts)

    def artifact_name(self, source: SourceModel) -> str:
        return self.name or f"{source.stem}-{self.profile.name}"


def check(
    model: str | Path,
    target: str | Path | DeviceProfile,
    output_dir: str | Path,
    *,
    pipeline: str | Path | Pipeline,
    backend: str | None,
    input_shapes: Mapping[str, Sequence[int | str]] | None,
    name: str | None,
    tune: int | None,
    samples: SamplesSource | None = None,
    tune_minutes: float | None = None,
    tuning_records: str | Path | None = None,
) -> Plan:
    """The plan of a compile, or the first problem found (ConfigError, OutputError, ModelLoadError)."""
    profile = load_profile(target)
    pipe = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    if tune is not None or tune_minutes is not None or tuning_records is not None:
        pipe = pipe.with_tuning(tune, tune_minutes, tuning_records)
    else:  # a candidate tuned on request is none without tuning (optimize's tvm-tuned-pruned: minutes of it)
        pipe = pipe.without_tuning_on_request()
    if backend:
        pipe = pipe.only_backend(get_backend(backend).name)
    candidates = _candidates(pipe, profile)
    shapes = input_shapes_from(input_shapes) or {}  # names and -1 -> DYNAMIC; strings as --input-shape takes them
    out = Path(output_dir)
    check_writable(out)
    fmt = source_format(model)
    given = load_samples(samples) if samples is not None else None
    examples = None
    if given is not None:
        if fmt == "torch":  # its input ranks are unknown: the frontend tries each reading of the samples in turn
            inputs = [n for n in given.names if n != LABELS and not n.startswith("output")]
            examples = given.examples(inputs, shapes)
        shapes = {**_sample_shapes(model, fmt, given, shapes, examples), **shapes}
    parts = _key_parts(shapes, profile, pipe, name, candidates)
    if given is not None:
        parts["samples"] = given.fingerprint()
    return Plan(model, fmt, profile, pipe, candidates, shapes, out, name, parts, given, examples)


def _sample_shapes(
    model: str | Path,
    fmt: str,
    samples: Samples,
    fixed: dict[str, list[int]],
    examples: dict[str, list[np.ndarray]] | None,
) -> dict[str, list[int]]:
    """Input shapes the samples give (they fix dynamic dimensions): for ONNX files, of the inputs with dynamic ones."""
    ranks: dict[str, int | None]
    if fmt == "onnx":
        ranks = _onnx_ranks(Path(model))
    elif fmt in ("sklearn", "xgboost", "lightgbm"):
        ranks = {"input": 2}
    elif (
        fmt == "torch"
    ):  # the arrays that are neither labels nor outputs, in their likelier reading (the frontend tries the other)
        return {n: list(readings[0].shape) for n, readings in (examples or {}).items() if readings and n not in fixed}
    else:  # TFLite, Keras, SavedModel: the inputs are the arrays that are neither labels nor outputs, each stacked on a new axis
        ranks = {n: len(fixed[n]) if n in fixed else None for n in samples.names if n != LABELS and not n.startswith("output")}
    return samples.shapes(ranks, fixed)


def _onnx_ranks(path: Path) -> dict[str, int | None]:
    import onnx

    from edgekit.compiler.frontends.frontend import input_tensor_type, sequence_element_type

    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:  # the frontend names what is wrong with the file
        return {}
    inits = {i.name for i in m.graph.initializer}
    ranks: dict[str, int | None] = {}
    for i in m.graph.input:
        t = input_tensor_type(i)
        if i.name in inits or sequence_element_type(i) is not None:  # a sequence has no tensor shape to fix
            continue
        if not t.HasField("shape"):
            ranks[i.name] = None
        elif any(not (d.HasField("dim_value") and d.dim_value > 0) for d in t.shape.dim):
            ranks[i.name] = len(t.shape.dim)  # only dynamic inputs take their shape from the samples
    return ranks


def _candidates(pipe: Pipeline, profile: DeviceProfile) -> list[PlannedCandidate]:
    """The pipeline's candidates, checked; one whose pass lists variants (int8 formats) becomes one per variant."""
    planned: list[PlannedCandidate] = []
    for spec in pipe.candidates:
        try:
            found = get_backend(spec.backend)
            options = found.parse_options(spec.options, profile)
            passes = parse_passes(spec.passes, "passes")
        except ConfigError as exc:
            raise ConfigError(f"{pipe.where}, candidate '{spec.name}': {exc}") from None
        for variant_spec, variant_passes in _variants(spec, passes):
            if variant_spec is not spec and any(c.name == variant_spec.name for c in planned):
                raise ConfigError(
                    f"{pipe.where}: two candidates are called '{variant_spec.name}' (a variant's name is "
                    "<candidate>-<variant>); rename one"
                )
            budget = spec.accuracy or pipe.accuracy
            planned.append(PlannedCandidate(len(planned), variant_spec, found, options, variant_passes, budget))
    return planned


def _variants(spec: CandidateSpec, passes: list[PassStep]) -> list[tuple[CandidateSpec, list[PassStep]]]:
    """``spec`` once, or once per combination of the variants of the steps that list them (named
    ``<name>-<variant>[-<variant>...]``: ``prune: {ratios: [..]}`` × ``quantize: {variants: [..]}`` is every pair)."""
    choices: list[list[tuple[str | None, PassStep, Any]]] = []
    for step in passes:
        variants = get_pass(step.name).variants(step.options)
        if variants:
            choices.append([(name, PassStep(step.name, options), options) for name, options in variants])
        else:
            choices.append([(None, step, None)])
    if all(len(c) == 1 and c[0][0] is None for c in choices):
        return [(spec, passes)]
    out = []
    for combo in itertools.product(*choices):
        names = [name for name, _, _ in combo if name is not None]
        raw = [
            {step.name: options.model_dump(mode="json", exclude_none=True)} if options is not None else spec.passes[i]
            for i, (_, step, options) in enumerate(combo)
        ]
        steps = [step for _, step, _ in combo]
        out.append((spec.model_copy(update={"name": "-".join([spec.name, *names]), "passes": raw}), steps))
    return out


def _key_parts(
    shapes: dict[str, list[int]], profile: DeviceProfile, pipe: Pipeline, name: str | None, candidates: list[PlannedCandidate]
) -> dict[str, Any]:
    parts: dict[str, Any] = {"shapes": shapes, "profile": profile.fingerprint(), "pipeline": pipe.fingerprint(), "name": name}
    # State outside the pipeline that a candidate's backend reads (TVM: its tuning database). The key is
    # called "tuning" after the first such state; renaming it would invalidate every cached artifact.
    states = {c.name: s for c in candidates if (s := c.backend.cache_state(c.options, profile)) is not None}
    if states:
        parts["tuning"] = states
    pass_files = [h for c in candidates for h in file_inputs(c.passes)]
    if pass_files:
        parts["pass_files"] = pass_files
    return parts
