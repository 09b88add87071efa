"""The one interface every backend's runner implements. See docs/architecture.md (seams)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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
        # What a call checks, worked out once (no pydantic attribute, dtype parse or f-string per call): each input's
        # numpy dtype and, where every input is a tensor of fixed shape, (name, shape, dtype) for the fast path.
        self._dtypes = [_known_dtype(s.dtype) for s in self.inputs]
        self._known = frozenset(s.name for s in self.inputs)
        tensors = not any(s.is_sequence for s in self.inputs) and None not in self._dtypes
        self._exact: list[tuple[str, tuple[int, ...], np.dtype[Any]]] | None = (
            [
                (s.name, tuple(s.shape), d)
                for s, d in zip(self.inputs, self._dtypes, strict=True)
                if d is not None and not s.dynamic_dims
            ]
            if tensors
            else None
        )
        if self._exact is not None and len(self._exact) != len(self.inputs):
            self._exact = None  # a dynamic dimension: every call takes the full check
        self._single = self._exact[0] if self._exact is not None and len(self._exact) == 1 else None

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        """Run the model; ``inputs`` by name (or one array for a single-input model). Outputs in manifest order.

        A sequence input (``kind: sequence`` in the manifest) takes a list of arrays, and a sequence output comes back
        as a list of arrays (see :mod:`edgekit.runtime.sequences`)."""
        feeds = self._fast_check(inputs)
        return self.run(self._check(inputs) if feeds is None else feeds)

    def _fast_check(self, inputs: object) -> dict[str, np.ndarray] | None:
        """The feeds when every input is a plain ndarray of exactly its spec's shape and dtype (the usual call), as the
        full check would pass them on; None for anything else, which :meth:`_check` then checks (and casts or refuses)."""
        single = self._single
        if single is not None and type(inputs) is np.ndarray:
            name, shape, dtype = single
            return {name: inputs} if inputs.shape == shape and inputs.dtype == dtype else None
        exact = self._exact
        if exact is None or type(inputs) is not dict or len(inputs) != len(exact):
            return None
        feeds: dict[str, np.ndarray] = {}
        for name, shape, dtype in exact:
            arr = inputs.get(name)
            if type(arr) is not np.ndarray or arr.shape != shape or arr.dtype != dtype:
                return None
            feeds[name] = arr
        return feeds  # as many names as inputs, each found: no unknown ones

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
        for spec, known in zip(self.inputs, self._dtypes, strict=True):
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
            # None: a dtype numpy learns later (bfloat16, once ml_dtypes is imported)
            want = np.dtype(spec.dtype) if known is None else known
            if arr.dtype != want:
                if not np.can_cast(arr.dtype, want, casting="same_kind"):
                    raise InferenceError(f"input '{spec.name}' expects dtype {spec.dtype}, got {arr.dtype}")
                arr = arr.astype(want)
            feeds[spec.name] = arr
        extra = sorted(set(inputs) - self._known)
        if extra:
            raise InferenceError(f"unknown input(s) {extra}; the model's inputs are {[s.name for s in self.inputs]}")
        return feeds

    @abstractmethod
    def _run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]: ...


def _known_dtype(name: str) -> np.dtype[Any] | None:
    """numpy's dtype ``name``, or None while numpy doesn't know it yet (bfloat16 before ml_dtypes is imported)."""
    try:
        return np.dtype(name)
    except TypeError:
        return None
