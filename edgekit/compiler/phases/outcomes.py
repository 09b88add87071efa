"""What happened to each candidate across the phases: its report for the manifest, and the errors that stopped it.

A candidate that can't be built or measured is skipped or failed and the others go on; with a single
candidate there is nothing to fall back on, so its error is raised as it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from edgekit.compiler.phases.check import PlannedCandidate
from edgekit.errors import CompilationError, EdgekitError, MissingDependencyError, UnsupportedOperatorError, last_line
from edgekit.manifest import CandidateReport
from edgekit.progress import Progress

__all__ = ["Outcomes", "Phase"]

Phase = Literal["prepare", "build", "measure"]
# The error raised when no candidate is left: the first failure of the earliest phase, in pipeline order.
# Building and measuring a candidate rank alike (they were one step once; the first failure stays the same).
_RANK: dict[Phase, int] = {"prepare": 0, "build": 1, "measure": 1}


class Outcomes:
    def __init__(self, candidates: Sequence[PlannedCandidate], say: Progress) -> None:
        self.reports = [
            CandidateReport(name=c.name, backend=c.backend.name, options=c.spec.options, passes=c.spec.passes, status="skipped")
            for c in candidates
        ]
        self._only_one = len(candidates) == 1
        self._failures: list[tuple[int, int, EdgekitError]] = []  # (phase rank, candidate index, error)
        self._unsupported: list[UnsupportedOperatorError] = []
        self._say = say

    def report(self, candidate: PlannedCandidate) -> CandidateReport:
        return self.reports[candidate.index]

    def skipped(self, candidate: PlannedCandidate, error: UnsupportedOperatorError | MissingDependencyError) -> None:
        """``candidate`` can't take this model here (an op its backend lacks, a backend not installed)."""
        if self._only_one:
            raise error
        if isinstance(error, UnsupportedOperatorError):
            self._unsupported.append(error)
        self.report(candidate).reason = str(error)
        self._say(f"{candidate.name}: skipped ({error})")

    def unsuited(self, candidate: PlannedCandidate, reason: str) -> None:
        """``candidate`` was tried only where it suits the model (an int8 variant of ``variants: auto``), and it doesn't."""
        self.report(candidate).reason = f"not tried: {reason}"
        self._say(f"{candidate.name}: not tried ({reason})")

    def failed(self, candidate: PlannedCandidate, error: EdgekitError, phase: Phase) -> None:
        if self._only_one:
            raise error
        self._failures.append((_RANK[phase], candidate.index, error))
        report = self.report(candidate)
        report.status = "failed"
        report.reason = str(error)
        self._say(f"{candidate.name}: failed ({error})")

    def crashed(self, candidate: PlannedCandidate, cause: Exception, phase: Phase) -> None:
        """A backend or runner raised something other than an edgekit error: the candidate fails with a CompilationError."""
        doing = "built" if phase == "build" else ("prepared" if phase == "prepare" else "measured")
        error = CompilationError(
            f"candidate '{candidate.name}' ({candidate.spec.backend}) could not be {doing}: {type(cause).__name__}: "
            f"{last_line(cause, 300)}; try another backend (--backend) or pipeline"
        )
        if self._only_one:
            raise error from cause
        self.failed(candidate, error, phase)

    def nothing_prepared(self) -> EdgekitError:
        """The error when no candidate can take the model."""
        return self._unsupported[0] if self._unsupported else CompilationError("no backend of the pipeline is available")

    def nothing_measured(self) -> EdgekitError:
        """The error when no candidate could be built and measured."""
        if self._failures:
            return min(self._failures, key=lambda f: f[:2])[2]
        if self._unsupported:
            return self._unsupported[0]
        return CompilationError("no candidate of the pipeline could be built; see the messages above")
