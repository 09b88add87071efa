"""Phase 1, check: everything that can be checked before the model is loaded, as a :class:`Plan`.

The device profile, the pipeline (with ``--tune`` and ``--backend`` applied), each candidate's backend
options and passes, the output folder and the model's format; and what the cache key is made of.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.compiler.artifact import check_writable
from edgekit.compiler.backends import Backend, BackendOptions, get_backend
from edgekit.compiler.cache import cache_key
from edgekit.compiler.frontends import SourceModel, source_format
from edgekit.compiler.passes import PassStep, file_inputs, parse_passes
from edgekit.compiler.pipeline import AccuracyBudget, CandidateSpec, Pipeline, load_pipeline
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
    input_shapes: dict[str, list[int]] | None,
    name: str | None,
    tune: int | None,
) -> Plan:
    """The plan of a compile, or the first problem found (ConfigError, OutputError, ModelLoadError)."""
    profile = load_profile(target)
    pipe = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    if tune is not None:
        pipe = pipe.with_tuning(tune)
    if backend:
        pipe = pipe.only_backend(get_backend(backend).name)
    candidates = [_candidate(i, spec, pipe, profile) for i, spec in enumerate(pipe.candidates)]
    shapes = {k: list(v) for k, v in (input_shapes or {}).items()}
    out = Path(output_dir)
    check_writable(out)
    fmt = source_format(model)
    parts = _key_parts(shapes, profile, pipe, name, candidates)
    return Plan(model, fmt, profile, pipe, candidates, shapes, out, name, parts)


def _candidate(index: int, spec: CandidateSpec, pipe: Pipeline, profile: DeviceProfile) -> PlannedCandidate:
    try:
        found = get_backend(spec.backend)
        options = found.parse_options(spec.options, profile)
        passes = parse_passes(spec.passes, "passes")
    except ConfigError as exc:
        raise ConfigError(f"pipeline '{pipe.name}', candidate '{spec.name}': {exc}") from None
    return PlannedCandidate(index, spec, found, options, passes, spec.accuracy or pipe.accuracy)


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
