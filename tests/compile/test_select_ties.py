"""The select phase: latencies within the timing noise are ties, broken by size, then by pipeline order (issue 18)."""

from __future__ import annotations

from pathlib import Path

from edgekit.compiler.backends import Built
from edgekit.compiler.backends.onnxruntime import OnnxRuntimeBackend, OrtOptions
from edgekit.compiler.phases.build import Build
from edgekit.compiler.phases.check import PlannedCandidate
from edgekit.compiler.phases.measure import Measured
from edgekit.compiler.phases.outcomes import Outcomes
from edgekit.compiler.phases.select import noise_ms, select, ties
from edgekit.compiler.pipeline import AccuracyBudget, CandidateSpec, Pipeline
from edgekit.manifest import Accuracy, Latency, Measurement


def _candidates(*names: str) -> list[PlannedCandidate]:
    return [
        PlannedCandidate(
            index=i,
            spec=CandidateSpec(name=n, backend="onnxruntime"),
            backend=OnnxRuntimeBackend(),
            options=OrtOptions(),
            passes=[],
            budget=AccuracyBudget(),
        )
        for i, n in enumerate(names)
    ]


def _measured(candidate: PlannedCandidate, median: float, p90: float, size: int) -> Measured:
    build = Build(candidate, Built(files=["model.onnx"], entry="model.onnx"), Path("."), Path("model.onnx"), "host-proxy", size)
    accuracy = Accuracy(max_abs_error=0.0, top1_agreement=1.0, samples=1, reference="onnxruntime")
    latency = Latency(median_ms=median, p90_ms=p90, runs=30)
    return Measured(build, Measurement(on="host-proxy", host="test", latency=latency, accuracy=accuracy))


def _select(rows: list[tuple[str, float, float, int]], mode: str = "latency") -> Outcomes:
    candidates = _candidates(*(r[0] for r in rows))
    pipe = Pipeline.model_validate(
        {"name": "t", "select": mode, "candidates": [{"name": r[0], "backend": "onnxruntime"} for r in rows]}
    )
    outcomes = Outcomes(candidates, lambda _msg: None)
    measured = [_measured(c, *r[1:]) for c, r in zip(candidates, rows, strict=True)]
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
    assert ort.status == "chosen" and not ort.tied_with and not ort.reason
    assert tvm.reason == "slower: 2.000 ms vs 1.000 ms" and not tvm.tied_with


def test_select_size_breaks_an_equal_size_tie_by_pipeline_order() -> None:
    outcomes = _select([("a", 1.00, 1.10, 100), ("b", 0.98, 1.05, 100), ("c", 0.5, 0.6, 200)], mode="size")
    a, b, c = outcomes.reports
    assert a.status == "chosen" and b.tied_with == ["a"] and c.reason.startswith("larger: ")
