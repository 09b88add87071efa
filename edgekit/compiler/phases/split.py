"""The user's samples matched to the loaded model and split: a calibration part kept apart from the evaluation part."""

from __future__ import annotations

import numpy as np

from edgekit.compiler.frontends import SourceModel
from edgekit.compiler.phases.check import Plan
from edgekit.compiler.samples import SampleSet
from edgekit.errors import SamplesError
from edgekit.progress import Progress

__all__ = ["split_samples"]

Feed = dict[str, np.ndarray]


def split_samples(plan: Plan, source: SourceModel, say: Progress) -> tuple[SampleSet | None, SampleSet | None]:
    """(calibration samples, evaluation samples); both None without samples. When a candidate calibrates int8 (or
    fine-tunes a pruned model) on the samples, the first ``min(calibrationSamples, half)`` calibrate and the rest evaluate — never the same ones."""
    if plan.samples is None:
        return None, None
    outputs = [o.name for o in source.model.graph.output]
    matched = plan.samples.for_model(source.inputs, outputs)
    if not plan.calibrates:
        say(f"samples: {len(matched)} to evaluate")
        return None, matched
    if len(matched) < 2:
        raise SamplesError(
            f"samples {plan.samples.where} hold {len(matched)} sample; int8 calibration and the accuracy check need at least 2, "
            "kept apart: give more samples"
        )
    count = min(plan.pipeline.measure.calibration, len(matched) // 2)
    say(f"samples: {count} to calibrate (int8, fine-tuning), {len(matched) - count} to evaluate (kept apart)")
    return matched.part(0, count), matched.part(count)
