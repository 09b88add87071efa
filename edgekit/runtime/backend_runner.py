"""The one interface every backend's runner implements. See docs/architecture.md (seams)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from edgekit.errors import InferenceError
from edgekit.manifest import TensorSpec
from edgekit.runtime.sequences import check_sequence

__all__ = ["Runner"]


class Runner(ABC):
    """Runs one compiled model file. ``predict`` checks inputs against the manifest's specs."""

    backend: str = ""

    def __init__(self, entry: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
        self.entry = entry
        self.inputs = list(inputs)
        self.outputs = list(outputs)

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Run the model; ``inputs`` by name (or one array for a single-input model). Outputs in manifest order.

        A sequence input (``kind: sequence`` in the manifest) takes a list of arrays, and a sequence output comes back
        as a list of arrays (see :mod:`edgekit.runtime.sequences`)."""
        return self.run(self._check(inputs))

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run feeds the caller has already checked against the specs (names, shapes, dtypes): ``predict`` without the
        check, for a server that validated the request itself. Backend failures still raise InferenceError."""
        try:
            return self._run(feeds)
        except InferenceError:
            raise
        except Exception as exc:  # backend-specific runtime failures
            flat = " ".join(str(exc).split())  # one line: ORT and TVM put the cause on several
            raise InferenceError(f"{self.backend} failed running {self.entry.name}: {flat[:600]}") from exc

    def _check(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(inputs, (list, tuple)) and len(self.inputs) == 1 and self.inputs[0].is_sequence:
            inputs = {self.inputs[0].name: inputs}  # the one input's sequence
        if isinstance(inputs, (np.ndarray, list, tuple)):
            if len(self.inputs) != 1:
                names = [s.name for s in self.inputs]
                raise InferenceError(f"the model has inputs {names}; pass a dict of arrays by name")
            inputs = {self.inputs[0].name: inputs}
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            if spec.name not in inputs:
                raise InferenceError(f"missing input '{spec.name}' (expects shape {spec.declared()} {spec.dtype})")
            if spec.is_sequence:
                feeds[spec.name] = check_sequence(spec, inputs[spec.name])  # type: ignore[assignment]  # a list
                continue
            arr = np.asarray(inputs[spec.name])
            if not spec.accepts(arr.shape):
                dynamic = ", any size on the named dimensions" if spec.dynamic_dims else ""
                raise InferenceError(
                    f"input '{spec.name}' expects shape {spec.declared()} {spec.dtype}{dynamic}, got {list(arr.shape)}; "
                    f"recompile with --input-shape {spec.name}:{','.join(map(str, arr.shape))} for another shape"
                    + ("" if spec.dynamic_dims else f" (or {spec.name}:-1,... for a dynamic dimension)")
                )
            if arr.dtype != np.dtype(spec.dtype):
                if not np.can_cast(arr.dtype, spec.dtype, casting="same_kind"):
                    raise InferenceError(f"input '{spec.name}' expects dtype {spec.dtype}, got {arr.dtype}")
                arr = arr.astype(spec.dtype)
            feeds[spec.name] = arr
        extra = sorted(set(inputs) - {s.name for s in self.inputs})
        if extra:
            raise InferenceError(f"unknown input(s) {extra}; the model's inputs are {[s.name for s in self.inputs]}")
        return feeds

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...
