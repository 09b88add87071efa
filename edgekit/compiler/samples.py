"""The user's own data for a compile (``--samples`` / ``samples=``): inputs, and labels or expected outputs.

Accepted forms (see docs/compile.md, "Samples"):

- an ``.npz`` with one array per input name, samples stacked on a new first axis (or, for a batch-1
  input, along its batch axis), optionally ``labels`` (class ids, one row per sample) or one array per
  output name (expected values);
- a folder of ``.npy`` files named the same way (``<input>.npy``, ``labels.npy``, ``<output>.npy``);
- ``module:function`` returning (or yielding) one dict per sample, arrays in the model's own shapes;
- from Python, a mapping of arrays like the ``.npz``.

A sequence input or output (ONNX ``seq(tensor)``) is given from Python: in a mapping, as a list with one entry per
sample, each a list of arrays (``{"parts": [[a, b], [c], []]}``: three samples); from ``module:function``, as a
list of arrays in the sample's dict.

Samples fix dynamic input dimensions, feed the reference check and the timing, calibrate int8 (a part
kept apart from the evaluation) and, with labels or expected outputs, drive the accuracy gate.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import SamplesError, last_line
from edgekit.manifest import TensorSpec

__all__ = ["LABELS", "SampleSet", "Samples", "SamplesSource", "load_samples"]

LABELS = "labels"
SamplesSource = str | Path | Mapping[str, Any]
Feed = dict[str, np.ndarray]
_FUNCTION = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_MAX_SAMPLES = 100_000


@dataclass(frozen=True)
class SampleSet:
    """Samples split for a model: per-sample feeds and, when given, what each should give."""

    feeds: list[Feed]
    labels: list[np.ndarray] | None  # per sample: the class ids, flattened
    expected: list[dict[str, np.ndarray]] | None  # per sample: output name -> expected value

    def __len__(self) -> int:
        return len(self.feeds)

    def part(self, start: int, stop: int | None = None) -> SampleSet:
        cut = slice(start, stop)
        return SampleSet(
            self.feeds[cut],
            self.labels[cut] if self.labels is not None else None,
            self.expected[cut] if self.expected is not None else None,
        )


@dataclass(frozen=True)
class Samples:
    """Samples as the user gave them (``where`` names them in errors), not yet matched to a model.

    ``stacked`` holds arrays with the samples on the first axis (``.npz``, folder, mapping);
    ``listed`` one dict per sample (``module:function``).
    """

    where: str
    stacked: dict[str, np.ndarray] | None
    listed: list[dict[str, np.ndarray]] | None
    sequences: dict[str, list[list[np.ndarray]]] = field(default_factory=dict)
    """Sequence inputs or outputs given in a mapping: per name, one list of arrays per sample."""

    @property
    def names(self) -> list[str]:
        if self.stacked is not None:
            return [*self.stacked, *self.sequences]
        return list(dict.fromkeys(k for d in self.listed or [] for k in d))

    def fingerprint(self) -> str:
        """SHA-256 of the arrays (names, dtypes, shapes, bytes): part of the artifact cache key."""
        h = hashlib.sha256()
        items = [sorted(self.stacked.items())] if self.stacked is not None else [sorted(d.items()) for d in self.listed or []]
        items += [
            [(f"{name}/{j}/{k}", e) for j, seq in enumerate(seqs) for k, e in enumerate(seq)]
            for name, seqs in sorted(self.sequences.items())
        ]
        for group in items:
            for name, value in group:
                for i, arr in enumerate(value if isinstance(value, list) else [value]):  # a listed sample's sequence
                    a = np.ascontiguousarray(arr)  # 1-d for a 0-d array: the shape comes from arr
                    h.update(f"{name}|{i if isinstance(value, list) else ''}|{a.dtype.str}|{np.shape(arr)}|".encode())
                    h.update(a.tobytes())
            h.update(b"/")
        return h.hexdigest()

    def shapes(self, ranks: Mapping[str, int | None], fixed: Mapping[str, list[int]]) -> dict[str, list[int]]:
        """One sample's shape per input the samples hold (``ranks``: the model's input ranks, None when unknown)."""
        out: dict[str, list[int]] = {}
        for name, rank in ranks.items():
            if name in fixed:
                continue
            arrs = self._arrays(name)
            if arrs is None or isinstance(arrs[0], list):  # a sequence: no tensor shape to fix
                continue
            out[name] = list(arrs[0].shape) if self.listed is not None else self._one_shape(name, arrs[0], rank)
        return out

    def examples(self, names: Iterable[str], fixed: Mapping[str, list[int]]) -> dict[str, list[np.ndarray]]:
        """Per input of ``names``, one input's worth of the samples in each way they can be read, the likelier first.

        For a model whose input ranks are unknown (PyTorch): a stacked array ``[N, d1, ...]`` is either ``N`` samples
        along a batch axis (``[1, d1, ...]``) or on a new axis (``[d1, ...]``). The batch axis is tried first, unless
        ``d1`` is 1 and there are more axes (``[N, 1, 28, 28]``: each sample already has its batch axis of 1).
        ``fixed`` (``--input-shape``) keeps only the reading of that shape.
        """
        out: dict[str, list[np.ndarray]] = {}
        for name in names:
            arrs = self._arrays(name)
            if not arrs or isinstance(arrs[0], list):
                continue
            arr = np.asarray(arrs[0])
            if self.listed is not None:
                readings = [arr]
            elif arr.ndim == 0 or arr.shape[0] == 0:
                continue
            else:
                batch, new = arr[:1], arr[0]
                readings = [new, batch] if arr.ndim >= 3 and arr.shape[1] == 1 else [batch, new]
            if name in fixed:  # that shape, with the samples' dtype even when they don't fit it (checked later)
                want = fixed[name]
                fits = [
                    r for r in readings if r.ndim == len(want) and all(w in (-1, d) for w, d in zip(want, r.shape, strict=True))
                ]
                readings = fits or [np.zeros([max(d, 1) for d in want], arr.dtype)]
            out[name] = [np.ascontiguousarray(r) for r in readings]
        return out

    def _arrays(self, name: str) -> list[np.ndarray] | None:
        if self.stacked is not None:
            return [self.stacked[name]] if name in self.stacked else None
        found = [d[name] for d in self.listed or [] if name in d]
        return found or None

    def _one_shape(self, name: str, arr: np.ndarray, rank: int | None) -> list[int]:
        if rank is None or arr.ndim == rank + 1:
            return list(arr.shape[1:])
        if arr.ndim == rank and rank >= 1:
            return [1, *arr.shape[1:]]
        raise SamplesError(
            f"samples {self.where}: array '{name}' has shape {list(arr.shape)}, but input '{name}' has rank {rank}; "
            f"stack the samples on a new first axis ([samples, ...], rank {rank + 1})"
        )

    def for_model(self, inputs: list[TensorSpec], outputs: list[str]) -> SampleSet:
        """The samples matched to the model's inputs (names, dtypes, shapes checked) and outputs."""
        input_names = [s.name for s in inputs]
        unknown = [n for n in self.names if n not in input_names and n not in outputs and n != LABELS]
        if unknown:
            raise SamplesError(
                f"samples {self.where}: '{unknown[0]}' is not an input of the model (inputs: {', '.join(input_names)}), "
                f"not '{LABELS}' and not an output (outputs: {', '.join(outputs)}); rename or drop it"
            )
        missing = [n for n in input_names if n not in self.names]
        if missing:
            raise SamplesError(
                f"samples {self.where}: no array for input '{missing[0]}' (expected shape {inputs[input_names.index(missing[0])].shape}); "
                f"the samples hold: {', '.join(self.names) or 'nothing'}"
            )
        feeds = self._split_inputs([s for s in inputs if not s.is_sequence])
        feeds = self._with_sequences(feeds, [s for s in inputs if s.is_sequence])
        count = len(feeds)
        labels = self._split_extra(LABELS, count) if LABELS in self.names else None
        given = [o for o in outputs if o in self.names]
        expected = None
        if given:
            per_output = {o: self._split_extra(o, count) for o in given}
            expected = [{o: per_output[o][j] for o in given} for j in range(count)]
        if labels is not None:
            labels = [np.asarray(lab).reshape(-1) for lab in labels]
            for lab in labels:
                if lab.dtype.kind not in "iub" and not (lab.dtype.kind == "f" and np.all(np.mod(lab, 1) == 0)):
                    raise SamplesError(
                        f"samples {self.where}: '{LABELS}' must hold integer class ids, got {lab.dtype}; "
                        "for regression give expected outputs named after the model's outputs instead"
                    )
            labels = [lab.astype(np.int64) for lab in labels]
        return SampleSet(feeds, labels, expected)

    def _with_sequences(self, feeds: list[Feed], specs: list[TensorSpec]) -> list[Feed]:
        """``feeds`` (the tensor inputs' per sample) with each sequence input's list of arrays added."""
        for s in specs:
            per_sample = self._split_extra(s.name, len(feeds)) if feeds else self._sequences_of(s.name)
            if not feeds:
                feeds = [{} for _ in per_sample]
            for j, (feed, value) in enumerate(zip(feeds, per_sample, strict=True)):
                if isinstance(value, np.ndarray) and value.shape == (0,) and self.listed is not None:
                    value = []  # module:function's [] (an empty sequence), read as an empty array
                if not isinstance(value, list):
                    raise SamplesError(
                        f"samples {self.where}: sample {j} input '{s.name}' is {type(value).__name__}, and the input is "
                        f"a sequence ({s.declared()} {s.dtype}); give a list of arrays for each sample"
                    )
                feed[s.name] = [self._cast(s, np.asarray(e)) for e in value]  # type: ignore[assignment]  # a list
        if not feeds:
            raise SamplesError(f"samples {self.where}: no samples")
        return feeds

    def _sequences_of(self, name: str) -> list[Any]:
        if self.listed is not None:
            return [d.get(name) for d in self.listed]
        if name not in self.sequences:
            raise SamplesError(f"samples {self.where}: '{name}' is a sequence: give a list with one list of arrays per sample")
        return list(self.sequences[name])

    def _split_inputs(self, inputs: list[TensorSpec]) -> list[Feed]:
        if self.listed is not None:
            feeds = [{s.name: self._cast(s, np.asarray(d[s.name])) for s in inputs} for d in self.listed]
            for j, feed in enumerate(feeds):
                for s in inputs:
                    if not s.accepts(feed[s.name].shape):
                        raise SamplesError(
                            f"samples {self.where}: sample {j} input '{s.name}' has shape {list(feed[s.name].shape)}; "
                            f"the model takes {s.shape}"
                        )
            return feeds
        assert self.stacked is not None
        per_input: dict[str, list[np.ndarray]] = {}
        for s in inputs:
            arr = self._cast(s, self.stacked[s.name])
            if s.accepts(arr.shape[1:]):
                per_input[s.name] = [arr[j, ...] for j in range(arr.shape[0])]  # 0-d arrays, not numpy or str scalars
            elif s.shape and s.shape[0] == 1 and s.accepts([1, *arr.shape[1:]]):
                per_input[s.name] = [arr[j : j + 1] for j in range(arr.shape[0])]  # along the batch axis
            else:
                dims = ", ".join(str(d) for d in s.shape)
                also = f" or [samples, {', '.join(str(d) for d in s.shape[1:])}]" if s.shape and s.shape[0] == 1 else ""
                raise SamplesError(
                    f"samples {self.where}: array '{s.name}' has shape {list(arr.shape)}; input '{s.name}' takes "
                    f"{s.shape}, so expected [samples, {dims}]{also}"
                )
        if not inputs:  # no tensor inputs: as many samples as the outputs or labels hold (or the sequences)
            first = next(iter(self.stacked.values()), None)
            return [{} for _ in range(len(first))] if first is not None else []
        counts = {n: len(v) for n, v in per_input.items()}
        if len(set(counts.values())) > 1:
            raise SamplesError(
                f"samples {self.where}: the inputs hold different numbers of samples: {counts}; give each the same"
            )
        count = next(iter(counts.values()), 0)
        if count == 0:
            raise SamplesError(f"samples {self.where}: no samples (the arrays' first axis is empty)")
        return [{n: v[j] for n, v in per_input.items()} for j in range(count)]

    def _cast(self, spec: TensorSpec, arr: np.ndarray) -> np.ndarray:
        want = np.dtype(spec.dtype)
        if arr.dtype == want:
            return arr
        if want.kind == "O" and arr.dtype.kind in "USO":  # ONNX string tensors
            return arr.astype(object)
        same_kind = arr.dtype.kind == want.kind or (arr.dtype.kind in "iu" and want.kind in "iu")
        if not same_kind and not (arr.dtype.kind in "iub" and want.kind == "f"):
            raise SamplesError(
                f"samples {self.where}: input '{spec.name}' takes {spec.dtype}, but the samples hold {arr.dtype}; "
                f"convert them (e.g. x.astype(np.{spec.dtype}))"
            )
        return arr.astype(want)

    def _split_extra(self, name: str, count: int) -> list[np.ndarray]:
        if self.listed is not None:
            got = [d.get(name) for d in self.listed]
            if any(g is None for g in got):
                raise SamplesError(f"samples {self.where}: '{name}' is missing from some samples; give it in every one or none")
            return [g if isinstance(g, list) else np.asarray(g) for g in got]  # a sequence: its list of arrays
        if name in self.sequences:
            seqs = self.sequences[name]
            if len(seqs) != count:
                raise SamplesError(
                    f"samples {self.where}: sequence '{name}' holds {len(seqs)} sample(s); the others hold {count}"
                )
            return list(seqs)  # type: ignore[arg-type]  # one list of arrays per sample
        assert self.stacked is not None
        arr = self.stacked[name]
        if arr.ndim == 0 or arr.shape[0] != count:
            raise SamplesError(
                f"samples {self.where}: '{name}' has shape {list(arr.shape)}; expected its first axis to be the "
                f"{count} samples of the inputs"
            )
        return [arr[j, ...] for j in range(count)]  # a 0-d array per sample for 0-d outputs and labels


def load_samples(source: SamplesSource) -> Samples:
    """Read samples from an ``.npz``, a folder of ``.npy``, ``module:function`` or a mapping (SamplesError when unreadable)."""
    if isinstance(source, Mapping):
        where = "(given as a mapping)"
        sequences = _sequences(dict(source), where)
        tensors = {k: v for k, v in source.items() if k not in sequences}
        return Samples(where, _arrays(tensors, where) if tensors or not sequences else {}, None, sequences)
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise SamplesError(f"samples '{path}': expected an .npz file, a folder of .npy files or 'module:function'")
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {k: data[k] for k in data.files}
        except Exception as exc:  # zipfile, pickle refusal, truncated data: all "not a readable .npz"
            raise SamplesError(
                f"samples '{path}' is not a readable .npz ({last_line(exc, 200)}); save it with np.savez"
            ) from None
        return Samples(f"'{path}'", _arrays(arrays, f"'{path}'"), None)
    if _FUNCTION.match(text):
        return _function(text)
    raise SamplesError(f"samples '{text}' does not exist; give an .npz file, a folder of .npy files or 'module:function'")


def _sequences(arrays: dict[str, Any], where: str) -> dict[str, list[list[np.ndarray]]]:
    """The entries of a mapping that are sequences: a list with one list (or tuple) of arrays per sample."""
    out: dict[str, list[list[np.ndarray]]] = {}
    for name, value in arrays.items():
        if isinstance(value, (list, tuple)) and value and all(isinstance(v, (list, tuple)) for v in value):
            if not all(isinstance(e, np.ndarray) for v in value for e in v):
                continue  # nested lists of numbers: a tensor, read as one below
            out[str(name)] = [[np.asarray(e) for e in v] for v in value]
    return out


def _arrays(arrays: dict[str, Any], where: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        try:
            arr = np.asarray(value)
        except ValueError:  # a ragged list (a sequence of tensors): edgekit compiles tensor inputs
            raise SamplesError(f"samples {where}: '{name}' is not an array (a ragged list?); give numpy arrays") from None
        if arr.dtype == object and not all(isinstance(v, (str, bytes)) for v in arr.reshape(-1)):
            raise SamplesError(f"samples {where}: '{name}' is neither numbers nor strings; give numpy arrays")
        if arr.ndim == 0:
            raise SamplesError(f"samples {where}: '{name}' is a scalar; stack the samples on a new first axis")
        out[str(name)] = arr
    if not out:
        raise SamplesError(f"samples {where} hold no arrays")
    return out


def _listed_value(value: Any) -> Any:
    """One sample's value from ``module:function``: a list of arrays is a sequence (kept a list), anything else an array."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, np.ndarray) for v in value):
        return list(value)
    return np.asarray(value)


def _folder(path: Path) -> Samples:
    files = sorted(path.glob("*.npy"))
    if not files:
        raise SamplesError(f"samples folder '{path}' has no .npy files; give one per input name (and labels.npy)")
    arrays = {}
    for f in files:
        try:
            arrays[f.stem] = np.load(f, allow_pickle=False)
        except Exception as exc:
            raise SamplesError(f"samples '{f}' is not a readable .npy ({last_line(exc, 200)})") from None
    return Samples(f"'{path}'", _arrays(arrays, f"'{path}'"), None)


def _function(spec: str) -> Samples:
    mod_name, _, attr = spec.partition(":")
    if "" not in sys.path and str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))
    try:
        fn: Callable[[], Iterable[Mapping[str, Any]]] = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise SamplesError(f"samples '{spec}': cannot import it ({exc})") from None
    listed: list[dict[str, np.ndarray]] = []
    try:
        for item in fn():
            if not isinstance(item, Mapping):
                raise SamplesError(f"samples '{spec}' yielded a {type(item).__name__}; yield one dict of arrays per sample")
            listed.append({str(k): _listed_value(v) for k, v in item.items()})
            if len(listed) > _MAX_SAMPLES:
                raise SamplesError(f"samples '{spec}' yielded more than {_MAX_SAMPLES} samples; give fewer")
    except SamplesError:
        raise
    except Exception as exc:  # the user's own function
        raise SamplesError(f"samples '{spec}' raised {type(exc).__name__}: {last_line(exc, 200)}") from None
    if not listed:
        raise SamplesError(f"samples '{spec}' yielded no samples")
    return Samples(f"'{spec}'", None, listed)
