"""What every graph pass shares: the parsed step, what a pass may read besides the model, what it reports, and the
:class:`GraphPass` a pass implements. See docs/int8-and-tuning.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import onnx
from pydantic import BaseModel

from edgekit.compiler.evaluation import Score, Truth, budget_problems
from edgekit.compiler.frontends.frontend import SourceModel
from edgekit.compiler.measurement import agreement
from edgekit.compiler.pipeline import AccuracyBudget
from edgekit.progress import Progress

__all__ = ["Feed", "GraphPass", "PassContext", "PassNotes", "PassStep"]

Feed = dict[str, np.ndarray]
O = TypeVar("O", bound=BaseModel)  # noqa: E741


@dataclass(frozen=True)
class PassStep:
    """One step of a candidate's ``passes:``, its options checked."""

    name: str
    options: BaseModel


@dataclass(frozen=True)
class PassContext:
    """What passes may read besides the model: the user's calibration samples (and their labels, when given), and
    the evaluation (the reference's samples, the source's outputs on them, the truth and the source's score) with
    the budget."""

    calibration: list[Feed] | None = None
    calibration_labels: list[np.ndarray] | None = None  # per calibration sample: its class ids, flattened
    eval_feeds: list[Feed] = field(default_factory=list)
    eval_expected: list[list[np.ndarray]] = field(default_factory=list)
    truth: Truth | None = None
    source_score: Score | None = None
    budget: AccuracyBudget = field(default_factory=AccuracyBudget)

    def problems(self, outputs: list[list[np.ndarray]]) -> list[str]:
        """Why per-sample ``outputs`` (of the evaluation feeds) miss the budget; empty when they meet it."""
        acc = agreement(outputs, self.eval_expected, "source")
        if self.truth is not None and self.source_score is not None:
            score = self.truth.score(outputs)
            acc.top1_accuracy, acc.source_top1_accuracy = score.top1, self.source_score.top1
            acc.expected_error, acc.source_expected_error = score.error, self.source_score.error
        return budget_problems(acc, self.budget)


@dataclass
class PassNotes:
    """What passes did, for the candidate's report."""

    kept_float: list[str] = field(default_factory=list)
    pruned: dict[str, Any] | None = None
    quantization: dict[str, Any] | None = None  # int8: mode, format, granularity, calibration
    counted: onnx.ModelProto | None = None  # the graph whose MACs count: before int8 (Q/DQ steps are no MACs)


class GraphPass(ABC, Generic[O]):
    """A step of ``passes:``: its typed options (checked before anything is loaded) and what it does to a model.

    Register a new pass with one line in :data:`edgekit.compiler.passes.PASSES`."""

    options: ClassVar[type[BaseModel]]

    def check(self, options: O, where: str) -> None:
        """Refuse options that are well-typed but can't work (a file that doesn't exist), before compiling."""

    def calibrates_from_samples(self, options: O) -> bool:
        """Whether the step reads the calibration part of ``--samples`` (then it is kept apart from evaluation)."""
        return False

    def files_read(self, options: O) -> list[Path]:
        """Files the step reads, whose contents belong in the artifact cache key."""
        return []

    def variants(self, options: O) -> list[tuple[str, O]]:
        """When the options name several variants of the step (int8 formats): (name, options) for each, and the
        candidate becomes one candidate per variant, named ``<candidate>-<name>``; [] for a single step."""
        return []

    def unsuited(self, source: SourceModel, options: O) -> str | None:
        """Why the candidate is skipped for this model (cheap: before the step runs), or None to go on."""
        return None

    @abstractmethod
    def apply(
        self, source: SourceModel, options: O, folder: Path, progress: Progress, context: PassContext, notes: PassNotes
    ) -> SourceModel:
        """``source`` with the step applied, written under ``folder``; ``source`` itself unchanged."""
