"""Phase 2, build: each candidate's passes and operator check (:func:`prepare`), then its backend's compile (:func:`build`)."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np

from edgekit.compiler.backends import Built
from edgekit.compiler.frontends import SourceModel
from edgekit.compiler.model_stats import model_stats
from edgekit.compiler.passes import PassContext, apply_passes, get_pass
from edgekit.compiler.phases.check import Plan, PlannedCandidate
from edgekit.compiler.phases.outcomes import Outcomes
from edgekit.compiler.phases.reference import Reference
from edgekit.compiler.samples import SampleSet
from edgekit.errors import (
    CompilationError,
    ConfigError,
    EdgekitError,
    InferenceError,
    MissingDependencyError,
    UnsupportedOperatorError,
)
from edgekit.profiles import DeviceProfile
from edgekit.progress import Progress

__all__ = ["Build", "Prepared", "build", "prepare", "screen"]


@dataclass(frozen=True)
class Prepared:
    """A candidate whose backend can take its model (the source after the candidate's passes)."""

    candidate: PlannedCandidate
    model: SourceModel


@dataclass(frozen=True)
class Build:
    """A compiled candidate: the artifact's files in ``folder``, and the file to measure here."""

    candidate: PlannedCandidate
    built: Built
    folder: Path
    entry: Path  # the artifact's own entry, or that of a host stand-in when the target's code can't run here
    on: Literal["target", "host-proxy"]
    size: int
    host: tuple[Path, Built] | None = None
    """The host stand-in (its folder and files) when one was built: the artifact ships it as its host twin."""


def screen(plan: Plan, source: SourceModel, outcomes: Outcomes, say: Progress) -> list[PlannedCandidate]:
    """The candidates whose backend can import the source model's ops (fast: before the reference runs)."""
    ready = []
    for candidate in plan.candidates:
        try:
            say(f"{candidate.name}: checking operators for {candidate.backend.name}")
            bad = candidate.backend.unsupported_ops(source, plan.profile)
            if bad:
                raise UnsupportedOperatorError(candidate.backend.name, bad)
            ready.append(candidate)
        except (UnsupportedOperatorError, MissingDependencyError) as exc:
            outcomes.skipped(candidate, exc)
        except EdgekitError as exc:
            outcomes.failed(candidate, exc, "prepare")
        except Exception as exc:  # a backend's support check raised something of its own
            outcomes.crashed(candidate, exc, "prepare")
    if not ready:
        raise outcomes.nothing_prepared()
    return ready


def prepare(
    plan: Plan,
    source: SourceModel,
    work: Path,
    outcomes: Outcomes,
    say: Progress,
    reference: Reference | None = None,
    calibration: SampleSet | None = None,
    screened: list[PlannedCandidate] | None = None,
) -> list[Prepared]:
    """The candidates that can take this model at all (fast, before any compiling): each one's passes applied
    (int8 calibrating on ``calibration``, a pruned PyTorch model fine-tuned on its labels, checked against ``reference``'s evaluation samples). Candidates
    ``screened`` already had the source's operators checked: only a model their passes changed is checked again."""
    candidates = plan.candidates if screened is None else screened
    ready = [
        p
        for c in candidates
        if (p := _prepare_one(c, source, plan.profile, work, outcomes, say, reference, calibration, screened))
    ]
    if not ready:
        raise outcomes.nothing_prepared()
    return ready


def _prepare_one(
    candidate: PlannedCandidate,
    source: SourceModel,
    profile: DeviceProfile,
    work: Path,
    outcomes: Outcomes,
    say: Progress,
    reference: Reference | None,
    calibration: SampleSet | None,
    screened: list[PlannedCandidate] | None,
) -> Prepared | None:
    backend = candidate.backend
    report = outcomes.report(candidate)
    try:
        model = source
        for step in candidate.passes:
            if (why := get_pass(step.name).unsuited(source, step.options)) is not None:
                outcomes.unsuited(candidate, why)
                return None
        if candidate.passes:
            context = PassContext(
                calibration=calibration.feeds if calibration is not None else None,
                calibration_labels=calibration.labels if calibration is not None else None,
                eval_feeds=reference.samples if reference else [],
                eval_expected=reference.expected if reference else [],
                truth=reference.truth if reference else None,
                source_score=reference.source_score if reference else None,
                budget=candidate.budget,
            )
            model, notes = apply_passes(source, candidate.passes, work / f"passes-{candidate.name}", say, context)
            report.kept_float, report.pruned, report.quantization = notes.kept_float, notes.pruned, notes.quantization
            report.flops, report.params = model_stats(notes.counted or model.model)
            if _tunes(candidate) and context.eval_feeds and (problems := _gate_before_tuning(model, context)):
                report.status = "rejected"
                report.reason = (
                    f"outside the accuracy budget: {'; '.join(problems)} (its model, run by ONNX Runtime before "
                    "tuning; not tuned)"
                )
                say(f"{candidate.name}: not tuned: {report.reason}")
                return None
        if model is not source or screened is None:
            say(f"{candidate.name}: checking operators for {backend.name}")
            bad = backend.unsupported_ops(model, profile)
            if bad:
                raise UnsupportedOperatorError(backend.name, bad)
        return Prepared(candidate, model)
    except (UnsupportedOperatorError, MissingDependencyError) as exc:
        outcomes.skipped(candidate, exc)
    except (CompilationError, InferenceError) as exc:  # a pass that failed: this candidate fails, the others go on
        outcomes.failed(candidate, exc, "prepare")
    except ConfigError:
        raise  # the user's option (a pruning ratio that leaves no channels): no candidate would do better
    except EdgekitError as exc:
        outcomes.failed(candidate, exc, "prepare")
    except Exception as exc:  # a backend's support check or a pass raised something of its own
        outcomes.crashed(candidate, exc, "prepare")
    return None


def _tunes(candidate: PlannedCandidate) -> bool:
    """Whether ``candidate``'s backend tunes it (TVM with ``tune``): minutes of building and timing schedules."""
    return getattr(candidate.options, "tune", None) is not None


def _gate_before_tuning(model: SourceModel, context: PassContext) -> list[str]:
    """Why the model a tuned candidate's passes made (a pruned one) misses its accuracy budget, run by ONNX Runtime on
    the evaluation samples; empty when it meets it. Tuning doesn't change what a model computes, so one the gate
    would reject is not worth minutes of tuning (the ONNX Runtime candidate with the same passes shows the same)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(model.model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return context.problems([[np.asarray(o) for o in session.run(names, feed)] for feed in context.eval_feeds])


def build(prepared: list[Prepared], profile: DeviceProfile, work: Path, outcomes: Outcomes, say: Progress) -> list[Build]:
    """Each prepared candidate compiled for ``profile`` (and for this host, where its code can't run here).

    Tuned candidates with a time budget share it: a compile's ``--tune-minutes M`` is its tuning's budget, so each of
    its ``n`` tuned candidates (optimize's tvm-tuned and tvm-tuned-pruned-*) tunes for ``M / n`` minutes. An even,
    fixed share: the next compile with the same budget finds each task tuned under the same minutes and reuses it."""
    timed = [i for i, p in enumerate(prepared) if _time_budget(p.candidate)]
    if len(timed) > 1:
        say(f"tuning: {len(timed)} tuned candidates share the time budget, 1/{len(timed)} of it each")
        prepared = [_share_budget(p, len(timed)) if i in timed else p for i, p in enumerate(prepared)]
    return [b for p in prepared if (b := _build_one(p, profile, work, outcomes, say))]


def _time_budget(candidate: PlannedCandidate) -> float | None:
    """The minutes a tuned candidate may tune for (None: it doesn't tune, or has no time budget)."""
    minutes = getattr(getattr(candidate.options, "tune", None), "minutes", None)
    return float(minutes) if minutes else None


def _share_budget(prepared: Prepared, shares: int) -> Prepared:
    options = prepared.candidate.options
    tune = getattr(options, "tune", None)
    assert tune is not None and tune.minutes  # _time_budget found one
    shared = options.model_copy(update={"tune": tune.model_copy(update={"minutes": round(tune.minutes / shares, 4)})})
    return replace(prepared, candidate=replace(prepared.candidate, options=shared))


def _build_one(prepared: Prepared, profile: DeviceProfile, work: Path, outcomes: Outcomes, say: Progress) -> Build | None:
    candidate, backend = prepared.candidate, prepared.candidate.backend
    report = outcomes.report(candidate)
    try:
        t0 = time.perf_counter()
        folder = work / f"candidate-{candidate.name}"
        say(f"{candidate.name}: compiling with {backend.name} for {profile.name}")
        built = backend.compile(prepared.model, profile, candidate.options, folder, say)
        report.compile_seconds = round(time.perf_counter() - t0, 3)
        report.size_bytes = size = sum((folder / f).stat().st_size for f in built.files)
        if isinstance(built.details.get("tuning"), dict):  # chosen or not, what its tuning did is on record
            report.tuning = built.details["tuning"]
        entry = folder / built.entry
        host: tuple[Path, Built] | None = None
        if backend.needs_host_stand_in(profile):
            say(f"{candidate.name}: {profile.name} code can't run here; building a host stand-in to measure")
            stand_in = work / f"candidate-{candidate.name}-host"
            host = (stand_in, backend.compile(prepared.model, profile, candidate.options, stand_in, say, for_host=True))
            entry = stand_in / host[1].entry
        on: Literal["target", "host-proxy"] = "target" if profile.runs_on_host() else "host-proxy"
        return Build(candidate, built, folder, entry, on, size, host)
    except EdgekitError as exc:
        outcomes.failed(candidate, exc, "build")
    except Exception as exc:  # whatever a backend raises (TVM's errors, ORT's Fail): the others go on
        outcomes.crashed(candidate, exc, "build")
    return None
