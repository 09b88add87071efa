"""The select phase: latencies within the timing noise are ties, broken by size, then by pipeline order (issue 18);
timed in interleaved rounds, a candidate is faster only when it was faster in (nearly) every round (issue 22)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from edgekit.compiler.backends import Built
from edgekit.compiler.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions
from edgekit.compiler.passes.quantize import QuantizeOptions
from edgekit.compiler.passes.step import PassStep
from edgekit.compiler.phases.build import Build
from edgekit.compiler.phases.check import PlannedCandidate
from edgekit.compiler.phases.measure import Measured
from edgekit.compiler.phases.outcomes import Outcomes
from edgekit.compiler.phases.select import noise_ms, rounds_won, select, ties
from edgekit.compiler.pipeline import AccuracyBudget, CandidateSpec, Pipeline
from edgekit.manifest import Accuracy, Latency, Measurement


def _candidates(*names: str) -> list[PlannedCandidate]:
    """Candidates named ``names``; a name with 'int8' in it quantizes (one graph pass), the others run the model as given."""
    return [
        PlannedCandidate(
            index=i,
            spec=CandidateSpec(name=n, backend="onnxruntime"),
            backend=OnnxRuntimeBackend(),
            options=OrtOptions(),
            passes=[PassStep("quantize", QuantizeOptions())] if "int8" in n else [],
            budget=AccuracyBudget(),
        )
        for i, n in enumerate(names)
    ]


def _measured(candidate: PlannedCandidate, median: float, p90: float, size: int, rounds: list[float] | None = None) -> Measured:
    build = Build(candidate, Built(files=["model.onnx"], entry="model.onnx"), Path("."), Path("model.onnx"), "host-proxy", size)
    accuracy = Accuracy(max_abs_error=0.0, top1_agreement=1.0, samples=1, reference="onnxruntime")
    latency = Latency(median_ms=median, p90_ms=p90, runs=30, rounds_ms=rounds)
    return Measured(build, Measurement(on="host-proxy", host="test", latency=latency, accuracy=accuracy))


Row = tuple[str, float, float, int] | tuple[str, float, float, int, list[float]]  # name, median, p90, size[, rounds]


def _select(rows: Sequence[Row], mode: str = "latency") -> Outcomes:
    candidates = _candidates(*(r[0] for r in rows))
    pipe = Pipeline.model_validate(
        {"name": "t", "select": mode, "candidates": [{"name": r[0], "backend": "onnxruntime"} for r in rows]}
    )
    outcomes = Outcomes(candidates, lambda _msg: None)
    measured = [_measured(c, r[1], r[2], r[3], r[4] if len(r) > 4 else None) for c, r in zip(candidates, rows, strict=True)]
    for m in measured:
        outcomes.report(m.candidate).measured = m.measurement
        outcomes.report(m.candidate).status = "rejected"
    select(measured, pipe, outcomes, lambda _msg: None)
    return outcomes


def test_noise_is_the_p90_median_spread_with_a_floor() -> None:
    a, b = _candidates("a", "b")
    assert noise_ms(_measured(a, 1.0, 1.2, 1)) == 1.2 - 1.0
    assert noise_ms(_measured(a, 1.0, 1.0, 1)) == 0.01  # 1 % of the median when the runs were all alike
    assert ties(_measured(a, 0.022, 0.025, 1), _measured(b, 0.0224, 0.024, 1))
    assert not ties(_measured(a, 1.0, 1.05, 1), _measured(b, 1.2, 1.25, 1))


def test_a_tie_is_reported_as_a_tie_and_goes_to_the_smaller() -> None:
    # the case: 'slower: 0.022 ms vs 0.022 ms' — the same median within the noise
    outcomes = _select([("ort", 0.0221, 0.0250, 9000), ("tvm", 0.0219, 0.0248, 5000)])
    ort, tvm = outcomes.reports
    assert tvm.status == "chosen" and tvm.tied_with == ["ort"] and tvm.reason.startswith("tie with ort")
    assert ort.status == "rejected" and ort.tied_with == ["tvm"]
    assert ort.reason.startswith("tie: 0.022 ms vs 0.022 ms, within the timing noise") and "larger" in ort.reason
    assert "slower" not in ort.reason


def test_a_tie_of_equal_sizes_goes_to_the_one_the_pipeline_lists_first() -> None:
    outcomes = _select([("ort", 0.0300, 0.0320, 5000), ("tvm", 0.0295, 0.0310, 5000)])
    ort, tvm = outcomes.reports
    assert ort.status == "chosen" and tvm.reason.endswith("the pipeline lists ort first")


def test_a_difference_beyond_the_noise_is_still_slower() -> None:
    outcomes = _select([("ort", 1.00, 1.02, 100), ("tvm", 2.00, 2.05, 10)])
    ort, tvm = outcomes.reports
    assert ort.status == "chosen" and not ort.tied_with
    assert ort.reason == "fastest within its budget: 1.000 ms vs tvm's 2.000 ms"  # the manifest says why it won
    assert tvm.reason == "slower: 2.000 ms vs 1.000 ms" and not tvm.tied_with


def test_select_size_breaks_an_equal_size_tie_by_pipeline_order() -> None:
    outcomes = _select([("a", 1.00, 1.10, 100), ("b", 0.98, 1.05, 100), ("c", 0.5, 0.6, 200)], mode="size")
    a, b, c = outcomes.reports
    assert a.status == "chosen" and b.tied_with == ["a"] and c.reason.startswith("larger: ")


# The digits MLP of issue 22: fp32 and int8 medians ~10 % apart under load, p90s far apart (p90 - median ±0.04 ms),
# which the p90 rule called a tie and gave to the smaller int8 although int8 was slower in every round.
FP32_ROUNDS = [0.050, 0.061, 0.049, 0.072, 0.052]
INT8_ROUNDS = [0.055, 0.068, 0.054, 0.079, 0.058]


def test_a_candidate_slower_in_every_interleaved_round_is_slower_though_within_the_p90_noise() -> None:
    rows = [("ort", 0.052, 0.095, 90_000, FP32_ROUNDS), ("ort-int8", 0.058, 0.098, 30_000, INT8_ROUNDS)]
    a, b = _candidates("a", "b")
    fp32, int8_ = _measured(a, 0.052, 0.095, 1, FP32_ROUNDS), _measured(b, 0.058, 0.098, 1, INT8_ROUNDS)
    assert not ties(fp32, int8_) and rounds_won(fp32, int8_) == (5, 5)
    assert ties(_measured(a, 0.052, 0.095, 1), _measured(b, 0.058, 0.098, 1))  # without rounds: the p90 noise, a tie
    ort, int8 = _select(rows).reports
    assert ort.status == "chosen" and not ort.tied_with
    assert ort.reason == "fastest within its budget: 0.052 ms vs ort-int8's 0.058 ms, faster in 5 of 5 interleaved rounds"
    assert int8.reason == "slower: 0.058 ms vs 0.052 ms, slower in 5 of 5 interleaved rounds" and not int8.tied_with


def test_one_round_against_the_faster_median_is_still_slower_two_are_a_tie() -> None:
    one = [0.055, 0.068, 0.045, 0.079, 0.058]  # faster than fp32 in round 3 only
    two = [0.045, 0.058, 0.045, 0.079, 0.058]  # faster in rounds 1 to 3, by a median 0.006 ms slower
    ort, small = _select([("ort", 0.052, 0.06, 90_000, FP32_ROUNDS), ("small", 0.058, 0.07, 30_000, one)]).reports
    assert ort.status == "chosen" and small.reason.startswith("slower: ")
    ort, small = _select([("ort", 0.052, 0.06, 90_000, FP32_ROUNDS), ("small", 0.058, 0.07, 30_000, two)]).reports
    assert small.status == "chosen" and small.tied_with == ["ort"]  # a tie of two plain candidates: the smaller ships
    assert small.reason == (
        "tie with ort within the timing noise (0.058 ms vs 0.052 ms, faster in 3 of 5 interleaved rounds); "
        "kept as the smaller (29.3 KiB vs 87.9 KiB)"
    )
    assert ort.reason.startswith("tie: 0.052 ms vs 0.058 ms, faster in 2 of 5 interleaved rounds: within the timing noise")
    assert ort.reason.endswith("larger: 87.9 KiB vs 29.3 KiB")


def test_a_tie_of_fp32_and_int8_keeps_fp32_the_model_as_given() -> None:
    # int8 is smaller but the rounds can't tell it faster: it changed the model for nothing measurable
    two = [0.045, 0.058, 0.045, 0.079, 0.058]
    ort, int8 = _select([("ort", 0.052, 0.06, 90_000, FP32_ROUNDS), ("ort-int8", 0.058, 0.07, 30_000, two)]).reports
    assert ort.status == "chosen" and ort.tied_with == ["ort-int8"]
    assert ort.reason == (
        "tie with ort-int8 within the timing noise (0.052 ms vs 0.058 ms, faster in 2 of 5 interleaved rounds); "
        "kept as the one that changes the model least (graph passes: none; ort-int8: quantize)"
    )
    assert int8.reason.endswith("changes the model more (graph passes: quantize; ort: none)"), int8.reason
    # faster in every round: int8 ships, smaller or not
    fast = [0.040, 0.050, 0.040, 0.060, 0.045]
    ort, int8 = _select([("ort", 0.052, 0.06, 90_000, FP32_ROUNDS), ("ort-int8", 0.045, 0.07, 30_000, fast)]).reports
    assert int8.status == "chosen" and ort.reason == "slower: 0.052 ms vs 0.045 ms, slower in 5 of 5 interleaved rounds"
    # with select: size the smallest ships whatever its passes
    ort, int8 = _select([("ort", 0.052, 0.06, 90_000, FP32_ROUNDS), ("ort-int8", 0.058, 0.07, 30_000, two)], "size").reports
    assert int8.status == "chosen" and ort.reason.startswith("larger: ")


def test_medians_within_one_percent_tie_whatever_the_rounds_say() -> None:
    a, b = _candidates("a", "b")
    assert ties(_measured(a, 1.000, 1.1, 1, [1.0, 1.0, 1.0]), _measured(b, 1.009, 1.1, 1, [1.01, 1.01, 1.01]))
    assert not ties(_measured(a, 1.000, 1.1, 1, [1.0, 1.0, 1.0]), _measured(b, 1.02, 1.1, 1, [1.02, 1.02, 1.02]))
    # three rounds or fewer: faster in every one of them
    assert ties(_measured(a, 1.0, 1.1, 1, [1.0, 1.0, 1.3]), _measured(b, 1.1, 1.2, 1, [1.1, 1.1, 1.2]))
    # rounds of another timing run (a different count) don't pair up: the p90 noise decides
    assert rounds_won(_measured(a, 1.0, 1.1, 1, [1.0] * 5), _measured(b, 1.1, 1.2, 1, [1.1] * 4)) is None


def test_the_chosen_candidate_says_why_it_won_under_select_size_and_alone() -> None:
    a = _select([("a", 1.00, 1.10, 100), ("b", 0.98, 1.05, 100), ("c", 0.5, 0.6, 200)], mode="size").reports[0]
    assert a.reason.startswith("tie with b within the timing noise") and a.reason.endswith("the pipeline lists first")
    (only,) = _select([("solo", 1.0, 1.1, 100)]).reports
    assert only.reason == "the only candidate within its budget"


def test_interleaved_timing_keeps_each_rounds_median_for_the_select_phase() -> None:
    from edgekit.compiler.measurement import interleaved_latency

    calls: list[str] = []

    def predictor(name: str) -> Callable[[dict[str, np.ndarray]], list[np.ndarray]]:
        def predict(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
            calls.append(name)
            return []

        return predict

    latencies = interleaved_latency([predictor("a"), predictor("b")], {}, 1, 10)
    assert [len(x.rounds_ms or []) for x in latencies] == [5, 5] and [x.runs for x in latencies] == [10, 10]
    assert calls.count("a") == calls.count("b") == 1 + 5 + 10  # warm-up, one untimed call a round, the timed runs
    (single,) = interleaved_latency([predictor("c")], {}, 0, 1)
    assert single.rounds_ms is None  # one round: nothing to pair


def test_a_candidate_tying_with_the_fastest_but_clearly_slower_than_another_does_not_ship() -> None:
    # MobileNetV2's case: fp32 and qdq each tie with the fastest (qoperator), but qdq beat fp32 in 4 of 5 rounds
    fp32 = [24.0, 25.0, 23.0, 26.0, 24.2]
    qdq = [23.0, 24.0, 22.5, 26.5, 23.4]
    qop = [21.0, 26.0, 21.7, 25.0, 24.5]
    ort, qdq_, qop_ = _select(
        [("ort", 24.2, 30, 2_700_000, fp32), ("int8-qdq", 23.4, 30, 795_000, qdq), ("int8-qop", 21.8, 30, 790_000, qop)]
    ).reports
    assert qop_.status == "chosen" and qop_.tied_with == ["int8-qdq"], (qop_.reason, ort.reason)
    assert qdq_.reason.endswith("larger: 776.4 KiB vs 771.5 KiB"), qdq_.reason
    assert ort.reason == "slower: 24.200 ms vs int8-qdq's 23.400 ms, slower in 4 of 5 interleaved rounds"
