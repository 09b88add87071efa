"""Phase 3, measure: each build's agreement with the reference, then the latency of those that ran, timed in turns."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edgekit.compiler.measurement import agreement, host_description, interleaved_latency
from edgekit.compiler.phases.build import Build
from edgekit.compiler.phases.check import PlannedCandidate
from edgekit.compiler.phases.outcomes import Outcomes
from edgekit.compiler.phases.reference import Reference
from edgekit.compiler.pipeline import MeasureSpec
from edgekit.errors import EdgekitError
from edgekit.manifest import Accuracy, Measurement
from edgekit.progress import Progress
from edgekit.runtime import Runner, runner_for

__all__ = ["Measured", "measure"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measured:
    build: Build
    measurement: Measurement

    @property
    def candidate(self) -> PlannedCandidate:
        return self.build.candidate

    @property
    def latency_ms(self) -> float:
        return self.measurement.latency.median_ms


@dataclass(frozen=True)
class _Agreed:
    build: Build
    runner: Runner
    accuracy: Accuracy


def measure(builds: list[Build], reference: Reference, spec: MeasureSpec, outcomes: Outcomes, say: Progress) -> list[Measured]:
    """The builds that ran, each with its measurement (also put in its report).

    The runners (and the libraries they loaded) go with this call, before the work folder does.
    """
    host = host_description()
    agreed = [a for b in builds if (a := _agree(b, reference, outcomes, say))]
    measured: list[Measured] = []
    if agreed:
        # Timed in turns, so that noise on this machine hits them alike.
        say(f"timing {len(agreed)} candidate(s) on {host}")
        latencies = interleaved_latency([a.runner.predict for a in agreed], reference.samples[0], spec.warmup, spec.repeat)
        for a, latency in zip(agreed, latencies, strict=True):
            measurement = Measurement(on=a.build.on, host=host, latency=latency, accuracy=a.accuracy)
            report = outcomes.report(a.build.candidate)
            report.measured = measurement
            report.status = "rejected"  # until chosen
            log.info("%s: %.3f ms, max err %.2e", a.build.candidate.name, latency.median_ms, a.accuracy.max_abs_error)
            measured.append(Measured(a.build, measurement))
    if not measured:
        raise outcomes.nothing_measured()
    return measured


def _agree(build: Build, reference: Reference, outcomes: Outcomes, say: Progress) -> _Agreed | None:
    candidate = build.candidate
    try:
        say(f"{candidate.name}: checking agreement with the source model")
        runner = runner_for(candidate.backend.name, build.entry, reference.inputs, reference.outputs, options=build.built.details)
        outputs = [runner.predict(feed) for feed in reference.samples]
        accuracy = agreement(outputs, reference.expected, reference.name)
        if reference.other_sizes:  # dynamic dimensions: the candidate must also agree at other sizes
            others = [runner.predict(feed) for feed, _ in reference.other_sizes]
            at_sizes = agreement(others, [want for _, want in reference.other_sizes], reference.name)
            accuracy.max_abs_error = max(accuracy.max_abs_error, at_sizes.max_abs_error)
        accuracy.inputs = "synthesized" if reference.synthesized else "samples"
        if reference.truth is not None and reference.source_score is not None:
            score = reference.truth.score(outputs)
            accuracy.top1_accuracy, accuracy.source_top1_accuracy = score.top1, reference.source_score.top1
            accuracy.expected_error, accuracy.source_expected_error = score.error, reference.source_score.error
        return _Agreed(build, runner, accuracy)
    except EdgekitError as exc:
        outcomes.failed(candidate, exc, "measure")
    except Exception as exc:  # whatever a backend's runtime raises (ORT's Fail is no RuntimeError)
        outcomes.crashed(candidate, exc, "measure")
    return None
