"""Phase 4, select: the accuracy gate, then the fastest (or smallest) candidate that passed it.

A candidate is faster than another only when the timing says so beyond its noise (see :func:`ties`): timed in turns,
it was faster in all the interleaved rounds but at most one, by more than 1 % of the median; otherwise the two tie.
A tie goes to the candidate that changes the model least (fewest graph passes: fp32 over int8 or pruned, which gained
nothing measurable for what they changed), then to the smaller artifact, then to the candidate the pipeline lists
first (the default pipeline lists ONNX Runtime first). The chosen candidate's reason says why it won. See
docs/compile.md (ties)."""

from __future__ import annotations

from dataclasses import dataclass

from edgekit.compiler.evaluation import budget_problems, budget_words
from edgekit.compiler.phases.measure import Measured
from edgekit.compiler.phases.outcomes import Outcomes
from edgekit.compiler.pipeline import AccuracyBudget, Pipeline
from edgekit.errors import AccuracyError
from edgekit.progress import Progress

__all__ = ["Choice", "budget_problems", "noise_ms", "rounds_won", "select", "ties"]


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
    outcomes.report(best.candidate).reason = _won_reason(best, tied, passing, pipe)
    for m in passing:
        if m is best:
            continue
        report = outcomes.report(m.candidate)
        if any(t is m for t in tied):
            report.tied_with = [best.candidate.name]
            report.reason = _tie_reason(m, best, pipe)
        elif pipe.select == "size" and m.build.size > best.build.size:
            report.reason = f"larger: {m.build.size / 1024:.1f} KiB vs {best.build.size / 1024:.1f} KiB"
        elif pipe.select == "latency" and ties(m, best):  # it tied with the fastest but lost clearly to another
            by = min((o for o in passing if o.latency_ms < m.latency_ms and not ties(m, o)), key=lambda o: o.latency_ms)
            report.reason = (
                f"slower: {m.latency_ms:.3f} ms vs {by.candidate.name}'s {by.latency_ms:.3f} ms{_rounds_words(by, m, 'slower')}"
            )
        else:
            report.reason = f"slower: {m.latency_ms:.3f} ms vs {best.latency_ms:.3f} ms{_rounds_words(best, m, 'slower')}"
    chosen_by = f"{best.build.size / 1024:.1f} KiB, " if pipe.select == "size" else ""
    tie = f"; tied within the timing noise with {', '.join(m.candidate.name for m in tied)}" if tied else ""
    say(f"chose {best.candidate.name} ({best.candidate.backend.name}): {chosen_by}{best.latency_ms:.3f} ms median{tie}")
    return Choice(best, best.candidate.budget)


def noise_ms(m: Measured) -> float:
    """The timing noise of a candidate: the spread of its slow half, p90 - median of its timed runs, and at least
    1 % of its median (a clock's resolution and a quiet machine give a zero spread)."""
    latency = m.measurement.latency
    return max(latency.p90_ms - latency.median_ms, 0.01 * latency.median_ms)


def rounds_won(a: Measured, b: Measured) -> tuple[int, int] | None:
    """(rounds ``a`` was faster in, rounds of the timing) when both were timed in the same interleaved rounds (each
    round: the median of a block of runs, the candidates one after the other); None without such rounds."""
    ra, rb = a.measurement.latency.rounds_ms, b.measurement.latency.rounds_ms
    if not ra or not rb or len(ra) != len(rb) or len(ra) < 2:
        return None
    return sum(x < y for x, y in zip(ra, rb, strict=True)), len(ra)


def ties(a: Measured, b: Measured) -> bool:
    """Whether the timing ranks neither of two candidates above the other.

    Medians within 1 % of each other always tie. Timed in the same interleaved rounds, the one with the lower median
    is faster only when it was faster in every round but at most one (in every round, with three rounds or fewer):
    rounds pair the candidates under the same load, so a real difference shows in (nearly) every one of them, and
    one that flips from round to round is noise. Without rounds (timings of a device), the medians must differ by
    more than the larger of the two candidates' :func:`noise_ms`."""
    gap = abs(a.latency_ms - b.latency_ms)
    if gap <= 0.01 * max(a.latency_ms, b.latency_ms):
        return True
    faster, slower = (a, b) if a.latency_ms < b.latency_ms else (b, a)
    split = rounds_won(faster, slower)
    if split is not None:
        won, rounds = split
        return won < (rounds - 1 if rounds > 3 else rounds)
    return gap <= max(noise_ms(a), noise_ms(b))


def _rank(passing: list[Measured], pipe: Pipeline) -> tuple[Measured, list[Measured]]:
    """(the chosen one, the others it tied with). ``select: latency``: the fastest, and every candidate tying with it
    competes on its graph passes (fewest first), then size, then its place in the pipeline. ``select: size``: the
    smallest; among equal sizes the fastest, a tie again going to the one the pipeline lists first."""
    if pipe.select == "size":
        smallest = min(m.build.size for m in passing)
        pool = [m for m in passing if m.build.size == smallest]
        fastest = min(pool, key=lambda m: m.latency_ms)
        group = [m for m in pool if ties(m, fastest)]
        best = min(group, key=lambda m: m.candidate.index)
    else:
        fastest = min(passing, key=lambda m: m.latency_ms)
        group = [m for m in passing if ties(m, fastest)]
        # ties aren't transitive: one that ties with the fastest may still lose clearly to another that does
        group = [m for m in group if not any(o.latency_ms < m.latency_ms and not ties(m, o) for o in group)]
        best = min(group, key=lambda m: (len(m.candidate.passes), m.build.size, m.candidate.index))
    return best, [m for m in group if m is not best]


def _rounds_words(a: Measured, b: Measured, verb: str = "faster") -> str:
    """', faster in 4 of 5 interleaved rounds' (the rounds ``a`` was faster than ``b`` in), or '' without rounds."""
    split = rounds_won(a, b)
    return f", {verb} in {split[0]} of {split[1]} interleaved rounds" if split else ""


def _won_reason(best: Measured, tied: list[Measured], passing: list[Measured], pipe: Pipeline) -> str:
    """Why the chosen candidate won, for its report: fastest (or smallest), or how a tie was broken."""
    others = [m for m in passing if m is not best]
    if tied:
        runner = min(tied, key=lambda m: m.latency_ms)
        return (
            f"tie with {', '.join(m.candidate.name for m in tied)} within the timing noise ({best.latency_ms:.3f} ms vs "
            f"{runner.latency_ms:.3f} ms{_rounds_words(best, runner)}); {_tie_break(best, runner, pipe)}"
        )
    if pipe.select == "size":
        return f"smallest within its budget: {best.build.size / 1024:.1f} KiB"
    if not others:
        return "the only candidate within its budget"
    runner = min(others, key=lambda m: m.latency_ms)
    return (
        f"fastest within its budget: {best.latency_ms:.3f} ms vs {runner.candidate.name}'s {runner.latency_ms:.3f} ms"
        f"{_rounds_words(best, runner)}"
    )


def _tie_break(best: Measured, other: Measured, pipe: Pipeline) -> str:
    """How ``best`` won its tie with ``other``: 'kept as ...'."""
    if pipe.select == "latency" and len(best.candidate.passes) < len(other.candidate.passes):
        steps = ", ".join(step.name for step in other.candidate.passes)
        mine = ", ".join(step.name for step in best.candidate.passes) or "none"
        return f"kept as the one that changes the model least (graph passes: {mine}; {other.candidate.name}: {steps})"
    if best.build.size < other.build.size:
        return f"kept as the smaller ({best.build.size / 1024:.1f} KiB vs {other.build.size / 1024:.1f} KiB)"
    return "kept as the one the pipeline lists first"


def _tie_reason(m: Measured, best: Measured, pipe: Pipeline) -> str:
    split = rounds_won(m, best)
    if split is not None:
        within = f"faster in {split[0]} of {split[1]} interleaved rounds: within the timing noise"
    else:
        within = f"within the timing noise (±{max(noise_ms(m), noise_ms(best)):.3f} ms)"
    if pipe.select == "latency" and len(best.candidate.passes) < len(m.candidate.passes):
        mine = ", ".join(step.name for step in m.candidate.passes)
        theirs = ", ".join(step.name for step in best.candidate.passes) or "none"
        why = f"changes the model more (graph passes: {mine}; {best.candidate.name}: {theirs})"
    elif m.build.size > best.build.size:
        why = f"larger: {m.build.size / 1024:.1f} KiB vs {best.build.size / 1024:.1f} KiB"
    else:
        why = f"the pipeline lists {best.candidate.name} first"
    order = "graph passes, then size, then pipeline order" if pipe.select == "latency" else "pipeline order"
    return f"tie: {m.latency_ms:.3f} ms vs {best.latency_ms:.3f} ms, {within}; broken by {order} — {why}"
