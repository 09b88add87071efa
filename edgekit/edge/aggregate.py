"""Local aggregation: a device sends one summary per window, not one message per inference.

See docs/edge-runtime.md (windows).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from edgekit.clock import SYSTEM_CLOCK, Clock

__all__ = ["Aggregator", "Answer"]

Source = Literal["local", "cloud", "none"]


@dataclass
class Answer:
    """One inference as the aggregator sees it."""

    label: int | None
    confidence: float | None
    latency_ms: float
    source: Source  # who answered: the local model, the cloud fallback, or nobody


@dataclass
class _Window:
    start: float
    answers: list[Answer] = field(default_factory=list)


class Aggregator:
    """Tumbling windows of ``window_s`` seconds; :meth:`add` returns the summary of a window that just closed."""

    def __init__(self, window_s: float, clock: Clock = SYSTEM_CLOCK) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be positive, got {window_s}")
        self.window_s = window_s
        self._clock = clock.now
        self._window = _Window(start=self._clock())
        self.windows = 0

    def add(self, answer: Answer) -> dict[str, Any] | None:
        closed = self.flush_if_due()
        self._window.answers.append(answer)
        return closed

    def flush_if_due(self) -> dict[str, Any] | None:
        """The summary of the current window if it has ended (then a new window starts), else None."""
        now = self._clock()
        if now - self._window.start < self.window_s:
            return None
        return self.flush(now)

    def flush(self, now: float | None = None) -> dict[str, Any] | None:
        """Close the current window now (None when it saw nothing)."""
        end = self._clock() if now is None else now
        window, self._window = self._window, _Window(start=end)
        if not window.answers:
            return None
        self.windows += 1
        return summarize(window.answers, window.start, end)


def summarize(answers: list[Answer], start: float, end: float) -> dict[str, Any]:
    labels = Counter(a.label for a in answers if a.label is not None)
    confidences = np.array([a.confidence for a in answers if a.confidence is not None], dtype=np.float64)
    latencies = np.array([a.latency_ms for a in answers], dtype=np.float64)
    sources = Counter(a.source for a in answers)
    summary: dict[str, Any] = {
        "windowStart": round(start, 3),
        "windowEnd": round(end, 3),
        "count": len(answers),
        "classes": {str(k): v for k, v in sorted(labels.items())},
        "answeredBy": {"local": sources.get("local", 0), "cloud": sources.get("cloud", 0), "none": sources.get("none", 0)},
        "latencyMs": {
            "p50": round(float(np.percentile(latencies, 50)), 3),
            "p90": round(float(np.percentile(latencies, 90)), 3),
            "max": round(float(latencies.max()), 3),
        },
    }
    if confidences.size:
        summary["confidence"] = {
            "mean": round(float(confidences.mean()), 4),
            "min": round(float(confidences.min()), 4),
            "max": round(float(confidences.max()), 4),
        }
    return summary
