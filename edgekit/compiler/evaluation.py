"""Accuracy against the user's truth: top-1 against labels, or mean abs error against expected outputs.

The source model is scored the same way, so every candidate's figure stands beside the source's and
the budget (``maxAccuracyDrop``, ``maxErrorIncrease``) is a drop from it. See docs/compile.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from edgekit.compiler.pipeline import AccuracyBudget
from edgekit.compiler.samples import LABELS, SampleSet
from edgekit.errors import SamplesError
from edgekit.manifest import Accuracy
from edgekit.runtime.sequences import flat_values, is_sequence

__all__ = ["Score", "Truth", "budget_problems", "budget_words", "percent", "too_few_to_judge", "truth_for"]


@dataclass(frozen=True)
class Score:
    top1: float | None = None  # fraction of labels matched
    error: float | None = None  # mean |output - expected|


@dataclass(frozen=True)
class Truth:
    """What the evaluation samples should give: ``labels`` scored on output ``class_output``, or ``expected`` outputs."""

    labels: list[np.ndarray] | None
    expected: list[dict[str, np.ndarray]] | None
    output_names: list[str]
    class_output: int = 0
    by: Literal["argmax", "value"] = "argmax"

    @property
    def kind(self) -> str:
        return "labels" if self.labels is not None else "expected outputs"

    @property
    def scored(self) -> int:
        """How many labels a top-1 is counted over (a sample may carry several); 0 with expected outputs."""
        return sum(int(lab.size) for lab in self.labels) if self.labels is not None else 0

    def score(self, outputs: Sequence[Sequence[np.ndarray]]) -> Score:
        """The score of per-sample ``outputs`` (model output order)."""
        if self.labels is not None:
            hit = total = 0
            for outs, lab in zip(outputs, self.labels, strict=True):
                pred = self._classes(np.asarray(outs[self.class_output]))
                hit += int(np.sum(pred.reshape(-1) == lab))
                total += lab.size
            return Score(top1=hit / total if total else None)
        assert self.expected is not None
        err = 0.0
        count = 0
        for outs, want in zip(outputs, self.expected, strict=True):
            for name, value in want.items():
                got = flat_values(outs[self.output_names.index(name)])  # a sequence: its elements one after another
                exp = flat_values(value)
                if got.size != exp.size or (is_sequence(value) and len(outs[self.output_names.index(name)]) != len(value)):
                    raise SamplesError(
                        f"samples: expected output '{name}' has {exp.size} values per sample, the model gives {got.size}"
                    )
                if got.dtype.kind not in "biufc" or exp.dtype.kind not in "biufc":  # strings: the share that differs
                    diff = (got != exp).astype(np.float64)
                else:
                    g, e = got.astype(np.float64), exp.astype(np.float64)
                    with np.errstate(invalid="ignore"):
                        diff = np.abs(g - e)
                    diff = np.where((np.isnan(g) & np.isnan(e)) | (g == e), 0.0, diff)  # NaN vs NaN, inf vs inf
                    # What the output's own dtype can't resolve is no error: two of its epsilons of the expected
                    # value (float16: ~2e-3 relative, as ONNX's runner's rtol 1e-3 passes; float32: ~2.4e-7).
                    eps = max((float(np.finfo(a.dtype).eps) for a in (got, exp) if a.dtype.kind == "f"), default=0.0)
                    with np.errstate(invalid="ignore"):
                        diff = np.where(diff <= 2 * eps * np.abs(e), 0.0, diff)
                err += float(np.sum(diff))
                count += diff.size
        return Score(error=err / count if count else 0.0)

    def _classes(self, out: np.ndarray) -> np.ndarray:
        return out if self.by == "value" else np.argmax(out, axis=-1)


def truth_for(samples: SampleSet, output_names: list[str], first_outputs: Sequence[np.ndarray], where: str) -> Truth | None:
    """The truth the samples carry (None without labels or expected outputs); checks labels fit an output."""
    if samples.labels is None:
        if samples.expected is None:
            return None
        return Truth(None, samples.expected, output_names)
    size = samples.labels[0].size
    if any(lab.size != size for lab in samples.labels):
        raise SamplesError(f"samples {where}: '{LABELS}' holds a different number of labels per sample; give the same for each")
    tensors = [(i, np.asarray(out)) for i, out in enumerate(first_outputs) if not is_sequence(out)]  # labels: tensors
    for i, out in tensors:
        if out.dtype.kind in "iu" and out.size == size:
            return Truth(samples.labels, None, output_names, i, "value")
    for i, out in tensors:
        if out.dtype.kind == "f" and out.ndim >= 2 and out.shape[-1] > 1 and out.size // out.shape[-1] == size:
            classes = out.shape[-1]
            top = max(int(lab.max()) for lab in samples.labels)
            low = min(int(lab.min()) for lab in samples.labels)
            if low < 0 or top >= classes:
                bad = low if low < 0 else top
                raise SamplesError(
                    f"samples {where}: '{LABELS}' holds {bad}, but output '{output_names[i]}' scores {classes} classes "
                    f"(ids 0..{classes - 1}); fix the labels"
                )
            return Truth(samples.labels, None, output_names, i, "argmax")
    shapes = ", ".join(f"'{output_names[i]}' {list(o.shape)}" for i, o in tensors)
    raise SamplesError(
        f"samples {where}: '{LABELS}' gives {size} class id(s) per sample, but no output gives that many classes "
        f"(outputs: {shapes}); for regression give expected outputs named after the outputs instead"
    )


def budget_problems(accuracy: Accuracy, budget: AccuracyBudget) -> list[str]:
    """Why ``accuracy`` is outside ``budget``; empty when it is within.

    With labelled samples the gate is accuracy: the top-1 drop from the source model's, in points.
    With expected outputs: the candidate's mean error against them may exceed the source's by
    ``maxErrorIncrease`` (relative) plus ``maxAbsError``. Otherwise: agreement with the source model.
    """
    if accuracy.top1_accuracy is not None and accuracy.source_top1_accuracy is not None:
        drop = (accuracy.source_top1_accuracy - accuracy.top1_accuracy) * 100
        if drop > budget.max_accuracy_drop + 1e-9:
            return [
                f"top-1 accuracy {accuracy.top1_accuracy:.2%} vs the source's {accuracy.source_top1_accuracy:.2%}: "
                f"{drop:.2f} points lost > {budget.max_accuracy_drop:g}"
            ]
        return []
    if accuracy.expected_error is not None and accuracy.source_expected_error is not None:
        allowed = accuracy.source_expected_error * (1 + budget.max_error_increase) + budget.max_abs_error
        if not accuracy.expected_error <= allowed:  # NaN fails too
            return [
                f"mean error against the expected outputs {accuracy.expected_error:.3g} vs the source's "
                f"{accuracy.source_expected_error:.3g} (allowed {allowed:.3g})"
            ]
        return []
    problems = []
    if accuracy.max_abs_error > budget.max_abs_error:
        problems.append(f"max abs error {accuracy.max_abs_error:.3g} > {budget.max_abs_error:.3g}")
    if accuracy.top1_agreement is not None and accuracy.top1_agreement < budget.min_top1_agreement:
        problems.append(f"top-1 agreement {percent(accuracy.top1_agreement)} < {percent(budget.min_top1_agreement)}")
    return problems


def percent(fraction: float) -> str:
    """``0.998`` -> ``'99.80 %'``: two decimals, more where rounding would show a fraction below 1 as 100 %."""
    digits = 2
    while digits < 8 and fraction < 1 and float(f"{fraction * 100:.{digits}f}") >= 100:
        digits += 1
    return f"{fraction * 100:.{digits}f} %"


def _points(value: float) -> str:
    return f"{value:g} point" + ("" if value == 1 else "s")


def budget_words(accuracy: Accuracy, budget: AccuracyBudget) -> str:
    """The budget ``accuracy`` was judged by, in words: ``top-1 ≤ 1 point below the source's 92.86 %``."""
    if accuracy.top1_accuracy is not None and accuracy.source_top1_accuracy is not None:
        return f"top-1 ≤ {_points(budget.max_accuracy_drop)} below the source's {percent(accuracy.source_top1_accuracy)}"
    if accuracy.expected_error is not None and accuracy.source_expected_error is not None:
        allowed = accuracy.source_expected_error * (1 + budget.max_error_increase) + budget.max_abs_error
        return (
            f"mean error against the expected outputs ≤ {allowed:.3g} (the source's {accuracy.source_expected_error:.3g} "
            f"+ {budget.max_error_increase:.0%} + {budget.max_abs_error:g})"
        )
    words = f"max abs error ≤ {budget.max_abs_error:g} from the source's outputs"
    if accuracy.top1_agreement is not None:
        words += f", top-1 agreement with the source ≥ {percent(budget.min_top1_agreement)}"
    return words


def too_few_to_judge(truth: Truth | None, max_accuracy_drop: float) -> str | None:
    """A warning when labelled samples are too few for a top-1 budget of ``max_accuracy_drop`` points to mean anything.

    One sample more or less right moves top-1 by 100/n points over n labels: when that step is larger than the
    budget, the budget can't tell a candidate that lost one sample from one that lost many more than the budget
    allows would — every change is a rejection. None with enough labels, with expected outputs, or a budget of 0.
    """
    if truth is None or truth.labels is None or max_accuracy_drop <= 0:
        return None
    n = truth.scored
    step = 100 / n if n else math.inf
    if step <= max_accuracy_drop:
        return None
    need = math.ceil(100 / max_accuracy_drop - 1e-9)
    return (
        f"only {n} labelled evaluation sample(s): one of them moves top-1 by {step:.3g} points, more than the "
        f"budget of {_points(max_accuracy_drop)}, so the budget can't be judged; give at least {need} "
        "(more in --samples, or fewer set aside to calibrate int8)"
    )
