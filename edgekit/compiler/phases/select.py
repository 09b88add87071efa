"""Phase 4, select: the accuracy gate, then the fastest (or smallest) candidate that passed it.

Latencies within the timing noise of each other are a tie, not a ranking (see :func:`noise_ms`): a tie goes to the
smaller artifact, then to the candidate the pipeline lists first (the default pipeline lists ONNX Runtime first).
See docs/compile.md (ties)."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.compiler.evaluation import budget_problems, budget_words
from edgekit.compiler.phases.measure import Measured
from edgekit.compiler.phases.outcomes import Outcomes
from edgekit.compiler.pipeline import AccuracyBudget, Pipeline
from edgekit.errors import AccuracyError
from edgekit.progress import Progress

__all__ = ["Choice", "budget_problems", "noise_ms", "select", "ties"]


@dataclass(frozen=True)
class Choice:
    best: Measured
    budget: AccuracyBudget  # the one it met: its own, or the pipeline's


def select(measured: list[Measured], pipe: Pipeline, outcomes: Outcomes, say: Progress) -> Choice:
    """The best candidate within its accuracy budget (AccuracyError when none is); every report says why it lost."""
    passing = []
    for m in measured:
        outcomes.report(m.candidate).budget = budget_words(m.measurement.accuracy, m.candidate.budget)
        problems = budget_problems(m.measurement.accuracy, m.candidate.budget)
        if problems:
            report = outcomes.report(m.candidate)
            report.reason = "outside the accuracy budget: " + "; ".join(problems)
            if report.pruned and report.pruned.get("notFineTuned"):
                report.reason += f"; pruned without fine-tuning: {report.pruned['notFineTuned']}"
        else:
            passing.append(m)
    if not passing:
        detail = "; ".join(f"{m.candidate.name}: {outcomes.report(m.candidate).reason}" for m in measured)
        raise AccuracyError(
            f"no candidate met the accuracy budget of pipeline '{pipe.name}' ({detail}); "
            f"loosen 'accuracy' in the pipeline file (maxAccuracyDrop with labelled samples) or pick a more exact backend"
        )

    best, tied = _rank(passing, pipe)
    outcomes.report(best.candidate).status = "chosen"
    outcomes.report(best.candidate).tied_with = [m.candidate.name for m in tied]
    if tied:
        outcomes.report(best.candidate).reason = (
            f"tie with {', '.join(m.candidate.name for m in tied)} within the timing noise; kept as the smaller, "
            "or the one the pipeline lists first"
        )
    for m in passing:
        if m is best:
            continue
        report = outcomes.report(m.candidate)
        if any(t is m for t in tied):
            report.tied_with = [best.candidate.name]
            report.reason = _tie_reason(m, best, pipe)
        elif pipe.select == "size" and m.build.size > best.build.size:
            report.reason = f"larger: {m.build.size / 1024:.1f} KiB vs {best.build.size / 1024:.1f} KiB"
        else:
            report.reason = f"slower: {m.latency_ms:.3f} ms vs {best.latency_ms:.3f} ms"
    chosen_by = f"{best.build.size / 1024:.1f} KiB, " if pipe.select == "size" else ""
    tie = f"; tied within the timing noise with {', '.join(m.candidate.name for m in tied)}" if tied else ""
    say(f"chose {best.candidate.name} ({best.candidate.backend.name}): {chosen_by}{best.latency_ms:.3f} ms median{tie}")
    return Choice(best, best.candidate.budget)


def noise_ms(m: Measured) -> float:
    """The timing noise of a candidate: the spread of its slow half, p90 - median of its timed runs, and at least
    1 % of its median (a clock's resolution and a quiet machine give a zero spread)."""
    latency = m.measurement.latency
    return max(latency.p90_ms - latency.median_ms, 0.01 * latency.median_ms)


def ties(a: Measured, b: Measured) -> bool:
    """Whether two medians differ by no more than the larger of the two candidates' noise: no ranking between them."""
    return abs(a.latency_ms - b.latency_ms) <= max(noise_ms(a), noise_ms(b))


def _rank(passing: list[Measured], pipe: Pipeline) -> tuple[Measured, list[Measured]]:
    """(the chosen one, the others it tied with). ``select: latency``: the fastest, and every candidate tying with it
    competes on size, then on its place in the pipeline. ``select: size``: the smallest; among equal sizes the
    fastest, a tie again going to the one the pipeline lists first."""
    if pipe.select == "size":
        smallest = min(m.build.size for m in passing)
        pool = [m for m in passing if m.build.size == smallest]
        fastest = min(pool, key=lambda m: m.latency_ms)
        group = [m for m in pool if ties(m, fastest)]
        best = min(group, key=lambda m: m.candidate.index)
    else:
        fastest = min(passing, key=lambda m: m.latency_ms)
        group = [m for m in passing if ties(m, fastest)]
        best = min(group, key=lambda m: (m.build.size, m.candidate.index))
    return best, [m for m in group if m is not best]


def _tie_reason(m: Measured, best: Measured, pipe: Pipeline) -> str:
    noise = max(noise_ms(m), noise_ms(best))
    why = (
        f"larger: {m.build.size / 1024:.1f} KiB vs {best.build.size / 1024:.1f} KiB"
        if m.build.size > best.build.size
        else f"the pipeline lists {best.candidate.name} first"
    )
    return (
        f"tie: {m.latency_ms:.3f} ms vs {best.latency_ms:.3f} ms, within the timing noise (±{noise:.3f} ms); "
        f"broken by size, then pipeline order — {why}"
    )
