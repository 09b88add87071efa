"""Inputs for ``edgekit run`` from files: ``.npy`` (one input), ``.npz`` (inputs by name) or JSON, and timed runs.

See docs/compile.md (running an artifact).
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import InferenceError
from edgekit.manifest import TensorSpec
from edgekit.runtime.sequences import unpack_values

__all__ = ["Timing", "random_feed", "random_inputs", "read_inputs", "time_runs"]


def random_feed(inputs: Sequence[TensorSpec], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One feed drawn from ``rng``: standard normal floats, small non-negative integers, booleans."""
    feeds: dict[str, Any] = {}
    for s in inputs:
        dt = np.dtype(s.dtype)
        if s.is_sequence:  # two elements of the element shape (size 2 where it is open)
            one = s.model_copy(update={"shape": [d if d > 0 else 2 for d in s.shape], "kind": "tensor"})
            feeds[s.name] = [random_feed([one], rng)[s.name] for _ in range(2)]
        elif dt.kind == "f":
            feeds[s.name] = rng.standard_normal(s.shape).astype(dt)
        elif dt.kind == "b":
            feeds[s.name] = rng.integers(0, 2, s.shape).astype(dt)
        else:
            feeds[s.name] = rng.integers(0, 10, s.shape).astype(dt)
    return feeds


def random_inputs(inputs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs of the specs' shapes (:func:`random_feed` from a generator seeded with ``seed``)."""
    return random_feed(inputs, np.random.default_rng(seed))


def read_inputs(specs: Sequence[str], inputs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """Arrays by input name from ``specs``: ``file.npy`` or ``NAME=file.npy`` (one input), ``file.npz`` (arrays by
    name), ``file.json`` (``{"NAME": [[...]]}``, a bare nested list for a single-input model, or an Open Inference
    Protocol request ``{"inputs": [{"name", "shape", "data"}]}``), ``NAME=file.json`` (a nested list).

    A sequence input: in JSON, a list with one nested list per element; in an ``.npz``, ``NAME/#`` (the length) and
    ``NAME/0``, ``NAME/1``, ... (what ``edgekit run --output`` writes for a sequence output)."""
    names = [s.name for s in inputs]
    dtypes = {s.name: s.dtype for s in inputs}
    sequences = {s.name for s in inputs if s.is_sequence}
    feeds: dict[str, Any] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            name, file = "", spec
        path = Path(file)
        try:
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    feeds.update(unpack_values({k: data[k] for k in data.files}))
                continue
            if path.suffix == ".json":
                feeds.update(_json_inputs(path, name, names, dtypes, sequences))
                continue
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InferenceError(f"--input {spec}: cannot read '{path}' as .npy, .npz or .json: {exc}") from exc
        feeds[name or _only(names, spec)] = arr
    return feeds


def _only(names: list[str], spec: str) -> str:
    if len(names) != 1:
        raise InferenceError(f"--input {spec}: the model has inputs {names}; pass --input NAME=FILE for each")
    return names[0]


def _json_inputs(path: Path, name: str, names: list[str], dtypes: Mapping[str, str], sequences: set[str]) -> dict[str, Any]:
    data: Any = json.loads(path.read_text(encoding="utf-8"))
    if name or isinstance(data, list):
        key = name or _only(names, str(path))
        return {key: _json_value(data, dtypes.get(key), key in sequences)}
    if not isinstance(data, dict):
        raise ValueError("expected an object of arrays by input name, a nested list, or {'inputs': [...]}")
    if isinstance(data.get("inputs"), list):  # an Open Inference Protocol (KServe v2) request body
        return {
            str(t["name"]): np.asarray(t["data"], dtype=dtypes.get(str(t["name"]))).reshape(t["shape"]) for t in data["inputs"]
        }
    return {str(k): _json_value(v, dtypes.get(str(k)), str(k) in sequences) for k, v in data.items()}


def _json_value(value: Any, dtype: str | None, sequence: bool) -> Any:
    """An array, or for a sequence input (a list with one nested list per element) a list of arrays."""
    if sequence and isinstance(value, list):
        return [np.asarray(e, dtype=dtype) for e in value]
    return np.asarray(value, dtype=dtype)


@dataclass(frozen=True)
class Timing:
    """Wall time of each run, milliseconds (tvmc's --print-time figures)."""

    runs_ms: tuple[float, ...]

    @property
    def summary(self) -> dict[str, float]:
        r = self.runs_ms
        return {
            "mean": statistics.fmean(r),
            "median": statistics.median(r),
            "max": max(r),
            "min": min(r),
            "std": statistics.pstdev(r) if len(r) > 1 else 0.0,
        }


def time_runs(
    predict: Callable[[dict[str, np.ndarray]], list[np.ndarray]], feeds: dict[str, np.ndarray], repeat: int
) -> tuple[list[np.ndarray], Timing]:
    """Run ``predict`` ``repeat`` times; the outputs of the last run and every run's time."""
    if repeat < 1:
        raise InferenceError(f"--repeat {repeat}: run at least once")
    times: list[float] = []
    outs: list[np.ndarray] = []
    for _ in range(repeat):
        start = time.perf_counter()
        outs = predict(feeds)
        times.append((time.perf_counter() - start) * 1000.0)
    return outs, Timing(tuple(times))
