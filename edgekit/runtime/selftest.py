"""Golden-vector self-test of an artifact (``selftest.npz``), usable on any host or device.

See docs/artifact.md (self-test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.manifest import TensorSpec
from edgekit.runtime.sequences import is_sequence, unpack_values

__all__ = ["SelfTestResult", "compare_outputs", "read_selftest"]


@dataclass
class SelfTestResult:
    samples: int
    max_abs_error: float
    mismatched_labels: int
    tolerance: float

    @property
    def passed(self) -> bool:
        return self.max_abs_error <= self.tolerance and self.mismatched_labels == 0


def read_selftest(
    path: Path, inputs: Sequence[TensorSpec] = (), outputs: Sequence[TensorSpec] = ()
) -> list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]:
    """[(inputs by name, expected outputs by name)] from a ``selftest.npz``. ``.npz`` keeps bfloat16 and float8 arrays
    (ml_dtypes) as raw bytes (``|V2``): the manifest's ``inputs``/``outputs`` give them their dtype back."""
    cases: dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {}
    dtypes = {"in": {s.name: s.dtype for s in inputs}, "out": {s.name: s.dtype for s in outputs}}
    sequences = {s.name for s in [*inputs, *outputs] if s.is_sequence}
    with np.load(path, allow_pickle=False) as data:
        raw = {k: data[k] for k in data.files}
    for key, arr in raw.items():
        _, kind, name = key.split("/", 2)
        base = name.rsplit("/", 1)[0]
        name = base if base in sequences and base != name else name  # a sequence's element (NAME/0): NAME's dtype
        want = dtypes["in" if kind == "in" else "out"].get(name)
        if arr.dtype.kind == "V" and want is not None and np.dtype(want).itemsize == arr.dtype.itemsize:
            raw[key] = arr.view(np.dtype(want))
    for key, value in unpack_values(raw).items():  # a sequence (NAME/#, NAME/0, ...) as the list of its elements
        idx, kind, name = key.split("/", 2)
        feeds, expected = cases.setdefault(int(idx), ({}, {}))
        (feeds if kind == "in" else expected)[name] = value
    return [cases[i] for i in sorted(cases)]


def compare_outputs(
    run: Callable[[dict[str, np.ndarray]], list[np.ndarray]],
    cases: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
    output_names: list[str],
    tolerance: float,
) -> SelfTestResult:
    max_err = 0.0
    mismatched = 0
    for feeds, expected in cases:
        got = run(feeds)
        pairs: list[tuple[object, object]] = list(zip(got, (expected[n] for n in output_names), strict=True))
        while pairs:
            arr, want = pairs.pop(0)
            if is_sequence(want) or is_sequence(arr):  # a sequence: element by element, and the lengths must match
                if not (is_sequence(want) and is_sequence(arr)) or len(arr) != len(want):  # type: ignore[arg-type]
                    mismatched += 1
                    continue
                pairs.extend(zip(arr, want, strict=True))  # type: ignore[call-overload]
                continue
            want = np.asarray(want)
            arr = np.asarray(arr)
            if arr.size != want.size:  # a data-dependent output (NonZero, Unique) of another size: wrong
                if want.dtype.kind == "f":
                    max_err = float("inf")
                else:
                    mismatched += max(arr.size, want.size)
                continue
            arr = arr.reshape(want.shape)
            if want.dtype.kind == "f":
                max_err = max(max_err, float(np.max(np.abs(arr.astype(np.float64) - want.astype(np.float64)), initial=0.0)))
            else:
                mismatched += int(np.sum(arr != want))
    return SelfTestResult(samples=len(cases), max_abs_error=max_err, mismatched_labels=mismatched, tolerance=tolerance)
