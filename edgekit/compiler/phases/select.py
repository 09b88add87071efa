"""Phase 4, select: the accuracy gate, then the fastest (or smallest) candidate that passed it."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.compiler.evaluation import budget_problems
from edgekit.compiler.phases.measure import Measured
from edgekit.compiler.phases.outcomes import Outcomes
from edgekit.compiler.pipeline import AccuracyBudget, Pipeline
from edgekit.errors import AccuracyError
from edgekit.progress import Progress

__all__ = ["Choice", "budget_problems", "select"]


@dataclass(frozen=True)
class Choice:
    best: Measured
    budget: AccuracyBudget  # the one it met: its own, or the pipeline's


def select(measured: list[Measured], pipe: Pipeline, outcomes: Outcomes, say: Progress) -> Choice:
    """The best candidate within its accuracy budget (AccuracyError when none is); every report says why it lost."""
    passing = []
    for m in measured:
        problems = budget_problems(m.measurement.accuracy, m.candidate.budget)
        if problems:
            outcomes.report(m.candidate).reason = "outside the accuracy budget: " + "; ".join(problems)
        else:
            passing.append(m)
    if not passing:
        detail = "; ".join(f"{m.candidate.name}: {outcomes.report(m.candidate).reason}" for m in measured)
        raise AccuracyError(
            f"no candidate met the accuracy budget of pipeline '{pipe.name}' ({detail}); "
            f"loosen 'accuracy' in the pipeline file (maxAccuracyDrop with labelled samples) or pick a more exact backend"
        )

    def rank(m: Measured) -> tuple[float, ...]:
        return (m.build.size, m.latency_ms) if pipe.select == "size" else (m.latency_ms,)

    best = min(passing, key=rank)
    outcomes.report(best.candidate).status = "chosen"
    for m in passing:
        if m is best:
            continue
        if pipe.select == "size" and m.build.size > best.build.size:
            outcomes.report(m.candidate).reason = f"larger: {m.build.size / 1024:.1f} KiB vs {best.build.size / 1024:.1f} KiB"
        else:
            outcomes.report(m.candidate).reason = f"slower: {m.latency_ms:.3f} ms vs {best.latency_ms:.3f} ms"
    chosen_by = f"{best.build.size / 1024:.1f} KiB, " if pipe.select == "size" else ""
    say(f"chose {best.candidate.name} ({best.candidate.backend.name}): {chosen_by}{best.latency_ms:.3f} ms median")
    return Choice(best, best.candidate.budget)
