"""Answer each reading locally, ask the cloud when the local model can't, and lose no reading.

See docs/edge-runtime.md (cloud fallback and circuit breaker).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.edge.aggregate import Aggregator, Answer
from edgekit.edge.errors import EdgeError
from edgekit.edge.fallback import CloudFallback
from edgekit.edge.spool import Spool
from edgekit.errors import EdgekitError

__all__ = ["EdgeInference", "Result", "confidence_of"]


def confidence_of(output: np.ndarray) -> tuple[int, float] | None:
    """(top class, its probability) of a classifier's first output row; None when it isn't a class vector."""
    arr = np.asarray(output, dtype=np.float64)
    if arr.ndim == 0 or arr.size < 2:
        return None
    row = arr.reshape(-1, arr.shape[-1])[0] if arr.ndim > 1 else arr
    if not (np.all(row >= 0) and abs(float(row.sum()) - 1.0) < 1e-3):
        shifted = np.exp(row - row.max())
        row = shifted / shifted.sum()
    label = int(row.argmax())
    return label, float(row[label])


@dataclass
class Result:
    outputs: list[np.ndarray] | None
    answer: Answer
    local_error: str = ""
    fallback_error: str = ""


class EdgeInference:
    def __init__(
        self,
        predict: Any,
        *,
        aggregator: Aggregator,
        spool: Spool,
        aggregate_topic: str,
        unanswered_topic: str,
        min_confidence: float = 0.0,
        fallback: CloudFallback | None = None,
    ) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise EdgeError(f"min_confidence must be within [0, 1], got {min_confidence}")
        self.predict = predict
        self.aggregator = aggregator
        self.spool = spool
        self.aggregate_topic = aggregate_topic
        self.unanswered_topic = unanswered_topic
        self.min_confidence = min_confidence
        self.fallback = fallback
        self.counts = {"local": 0, "cloud": 0, "none": 0}

    def infer(self, inputs: Mapping[str, np.ndarray]) -> Result:
        started = time.perf_counter()
        outputs: list[np.ndarray] | None = None
        local_error = fallback_error = ""
        top: tuple[int, float] | None = None
        try:
            outputs = self.predict(dict(inputs))
            top = confidence_of(outputs[0]) if outputs else None
        except EdgekitError as exc:
            local_error = str(exc)
        source = "local"
        if outputs is None or (top is not None and top[1] < self.min_confidence):
            if self.fallback is not None:
                try:
                    outputs = self.fallback.infer(inputs)
                    top = confidence_of(outputs[0])
                    source = "cloud"
                except EdgeError as exc:
                    fallback_error = str(exc)
            if outputs is None:
                source = "none"
        answer = Answer(
            label=top[0] if top and source != "none" else None,
            confidence=top[1] if top and source != "none" else None,
            latency_ms=(time.perf_counter() - started) * 1e3,
            source=source,  # type: ignore[arg-type]
        )
        self.counts[source] += 1
        if source == "none":
            self.spool.put(self.unanswered_topic, _npz(inputs, {"local": local_error, "fallback": fallback_error}))
        closed = self.aggregator.add(answer)
        if closed is not None:
            self._spool_summary(closed)
        return Result(outputs if source != "none" else None, answer, local_error, fallback_error)

    def flush(self) -> None:
        """Close the current window now (at shutdown) and spool its summary."""
        closed = self.aggregator.flush()
        if closed is not None:
            self._spool_summary(closed)

    def _spool_summary(self, summary: dict[str, Any]) -> None:
        self.spool.put(self.aggregate_topic, json.dumps(summary, sort_keys=True).encode())


def _npz(inputs: Mapping[str, np.ndarray], errors: Mapping[str, str]) -> bytes:
    arrays: dict[str, Any] = {k: np.asarray(v) for k, v in inputs.items()}
    arrays["__errors__"] = np.array(json.dumps(dict(errors)))
    arrays["__time__"] = np.array(time.time())
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()
