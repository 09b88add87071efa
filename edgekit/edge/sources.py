"""Where an inference component's readings come from: a generated scenario, a file, or MQTT messages.

``synthetic[:classes=4,noise=0.3,drift=0.02,ood=0.1,amplitude=3,seed=0]``, ``file:<path.npy|.npz>``,
``mqtt:<topic>`` (see :func:`parse_source`). Randomness comes from the seed, time from the caller. Without a
``seed``, a synthetic stream is seeded by the device's thing name (:func:`thing_seed`: a stable hash), so every
device of a fleet sends its own stream, and the same one on every run.
See docs/edge-runtime.md (input sources).
"""

from __future__ import annotations

import collections
import hashlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edgekit.edge.errors import EdgeError
from edgekit.manifest import TensorSpec

__all__ = [
    "FileSource",
    "InputSource",
    "MqttSource",
    "Reading",
    "Scenario",
    "SyntheticSource",
    "decode_reading",
    "encode_reading",
    "parse_source",
    "thing_seed",
]

Reading = dict[str, np.ndarray]
_BLOCK = 256


class InputSource(Protocol):
    """A stream of readings shaped as the model's inputs."""

    produced: int
    """Readings handed out so far."""

    def take(self, now: float) -> Reading | None:
        """The next reading (``now``: seconds since the stream started), or None when none is waiting."""


@dataclass(frozen=True)
class Scenario:
    """A generated sensor stream: ``classes`` clusters of readings (centres ``amplitude`` apart, Gaussian ``noise``),
    drifting ``drift`` per second, with a share ``ood`` of out-of-distribution readings (low-amplitude noise the
    local model is unsure about)."""

    classes: int = 4
    noise: float = 0.3
    drift: float = 0.0
    ood: float = 0.0
    amplitude: float = 3.0
    seed: int | None = None
    """None: the device's own (:func:`thing_seed` of its thing name; 0 without one)."""

    @classmethod
    def parse(cls, text: str, what: str = "") -> Scenario:
        """``classes=4,noise=0.3,...`` (any subset; empty: the defaults; a key given twice: the last one). ``what``
        names the text in errors (default: ``input source 'synthetic:<text>'``)."""
        what = what or f"input source 'synthetic:{text}'"
        known = {f.name: f.type for f in fields(cls)}
        values: dict[str, Any] = {}
        for item in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = item.partition("=")
            if not sep or key not in known:
                raise EdgeError(f"{what}: '{item}' is not KEY=VALUE with KEY one of {sorted(known)}")
            try:
                values[key] = int(value) if key in ("classes", "seed") else float(value)
            except ValueError:
                raise EdgeError(f"{what}: {key}={value!r} is not a number") from None
        scenario = cls(**values)
        if scenario.classes < 1 or not 0.0 <= scenario.ood <= 1.0 or scenario.noise < 0 or (scenario.seed or 0) < 0:
            raise EdgeError(f"{what}: need classes >= 1, 0 <= ood <= 1, noise >= 0, seed >= 0")
        return scenario


def _sample_shape(spec: TensorSpec) -> tuple[int, ...]:
    shape = tuple(int(d) for d in spec.shape)
    return shape[1:] if shape and shape[0] == 1 else shape


def thing_seed(thing: str) -> int:
    """The seed of ``thing``'s synthetic stream: a stable 63-bit hash of its name (BLAKE2b — not Python's ``hash()``,
    which is salted per process), so one device's stream is the same on every run and two devices' differ."""
    return int.from_bytes(hashlib.blake2b(thing.encode(), digest_size=8).digest(), "big") >> 1


class SyntheticSource:
    """Readings generated from a :class:`Scenario`, in blocks (one NumPy call per 256 readings).

    The scenario's ``seed``, or else the one of ``thing`` (:func:`thing_seed`; 0 without a thing), is :attr:`seed`."""

    def __init__(self, specs: Sequence[TensorSpec], scenario: Scenario | None = None, *, thing: str = "") -> None:
        self.scenario = scenario or Scenario()
        self.specs = list(specs)
        self.produced = 0
        given = self.scenario.seed
        self.seed = given if given is not None else (thing_seed(thing) if thing else 0)
        self.rng = np.random.default_rng(self.seed)
        s = self.scenario
        self._centres = {
            spec.name: self.rng.standard_normal((s.classes, *_sample_shape(spec))) * s.amplitude for spec in self.specs
        }
        self._drift_dir = {name: self.rng.standard_normal(c.shape) for name, c in self._centres.items()}
        self._block: dict[str, np.ndarray] = {}
        self._labels: np.ndarray = np.zeros(0, np.int64)
        self._next = 0

    def _refill(self, now: float) -> None:
        s, rng = self.scenario, self.rng
        labels = rng.integers(0, s.classes, _BLOCK)
        ood = rng.random(_BLOCK) < s.ood
        self._block = {}
        for spec in self.specs:
            centres = self._centres[spec.name] + self._drift_dir[spec.name] * (s.drift * now)
            data = centres[labels] + rng.standard_normal((_BLOCK, *centres.shape[1:])) * s.noise
            if ood.any():
                data[ood] = rng.standard_normal((int(ood.sum()), *centres.shape[1:])) * 0.05
            self._block[spec.name] = data.astype(spec.dtype).reshape(_BLOCK, *spec.shape)
        self._labels = np.where(ood, -1, labels)
        self._next = 0

    def take(self, now: float) -> Reading | None:
        if self._next >= _BLOCK or not self._block:
            self._refill(now)
        i = self._next
        self._next = i + 1
        self.produced += 1
        return {name: block[i] for name, block in self._block.items()}


class FileSource:
    """Readings from a ``.npy`` (one input) or ``.npz`` (by input name) file: one reading, or one per row; cycled."""

    def __init__(self, path: str | Path, specs: Sequence[TensorSpec]) -> None:
        self.path = Path(path)
        self.produced = 0
        try:
            if self.path.suffix == ".npz":
                with np.load(self.path, allow_pickle=False) as data:
                    raw = {s.name: np.asarray(data[s.name]) for s in specs}
            else:
                if len(specs) != 1:
                    raise EdgeError(f"input source file:{self.path}: the model has {len(specs)} inputs; use an .npz by name")
                raw = {specs[0].name: np.load(self.path, allow_pickle=False)}
        except (OSError, ValueError, KeyError) as exc:
            raise EdgeError(
                f"input source file:{self.path} can't be read ({exc}); give an .npy or an .npz of the model's inputs"
            ) from None
        self._rows: dict[str, np.ndarray] = {}
        count = None
        for spec in specs:
            arr = raw[spec.name].astype(spec.dtype, copy=False)
            shape = tuple(spec.shape)
            if arr.shape == shape:
                arr = arr[None]
            elif arr.shape[1:] == shape or (shape and shape[0] == 1 and arr.shape[1:] == shape[1:]):
                arr = arr.reshape(arr.shape[0], *shape)
            else:
                raise EdgeError(
                    f"input source file:{self.path}: '{spec.name}' has shape {list(arr.shape)}, the model takes {list(shape)} (or rows of it)"
                )
            count = arr.shape[0] if count is None else min(count, arr.shape[0])
            self._rows[spec.name] = arr
        self._count = max(1, count or 1)

    def take(self, now: float) -> Reading | None:
        i = self.produced % self._count
        self.produced += 1
        return {name: rows[i] for name, rows in self._rows.items()}


def encode_reading(reading: Mapping[str, np.ndarray]) -> bytes:
    """A reading as ``.npz`` bytes (what :class:`MqttSource` takes, and unanswered readings are sent as)."""
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in reading.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def decode_reading(payload: bytes, specs: Sequence[TensorSpec]) -> Reading:
    """``.npz`` (by input name) or JSON (``{"<input>": [...]}`` or a bare list for one input) → a reading."""
    try:
        if payload[:2] == b"PK":
            with np.load(io.BytesIO(payload), allow_pickle=False) as data:
                raw: dict[str, Any] = {s.name: data[s.name] for s in specs}
        else:
            body = json.loads(payload)
            raw = body if isinstance(body, dict) else {specs[0].name: body}
        return {s.name: np.asarray(raw[s.name], dtype=s.dtype).reshape(s.shape) for s in specs}
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise EdgeError(f"a reading is not .npz or JSON of the model's inputs ({exc})") from None


class MqttSource:
    """Readings a sensor publishes to ``topic``; the component subscribes (IPC SubscribeToIoTCore) and :meth:`put`
    hands each message in. Up to ``max_waiting`` wait; beyond, the oldest is dropped and counted (``dropped``)."""

    def __init__(self, topic: str, specs: Sequence[TensorSpec], max_waiting: int = 10_000) -> None:
        self.topic = topic
        self.specs = list(specs)
        self.produced = 0
        self.dropped = 0
        self.malformed = 0
        self._waiting: collections.deque[Reading] = collections.deque()
        self.max_waiting = max_waiting

    def put(self, payload: bytes) -> None:
        try:
            reading = decode_reading(payload, self.specs)
        except EdgeError:
            self.malformed += 1
            return
        if len(self._waiting) >= self.max_waiting:
            self._waiting.popleft()
            self.dropped += 1
        self._waiting.append(reading)

    def take(self, now: float) -> Reading | None:
        if not self._waiting:
            return None
        self.produced += 1
        return self._waiting.popleft()


def parse_source(text: str, specs: Sequence[TensorSpec], *, thing: str = "") -> InputSource:
    """The source an ``--input-source`` / ``InputSource`` string names (see the module docstring); a synthetic one
    without a ``seed`` is seeded by ``thing`` (the device's thing name). Readings are tensors: a model with a
    sequence input is refused in one line naming it."""
    for spec in specs:
        if spec.is_sequence:
            raise EdgeError(
                f"input '{spec.name}' is a sequence ({spec.declared()} {spec.dtype}), and input source '{text}' makes "
                "tensors only; give the model tensor inputs (build the sequence inside the graph, e.g. with SplitToSequence)"
            )
    kind, _, rest = text.partition(":")
    if kind == "synthetic":
        return SyntheticSource(specs, Scenario.parse(rest), thing=thing)
    if kind == "file" and rest:
        return FileSource(rest, specs)
    if kind == "mqtt" and rest:
        return MqttSource(rest, specs)
    raise EdgeError(
        f"input source '{text}' is not synthetic[:key=value,...], file:<path.npy|.npz> or mqtt:<topic>; see docs/edge-runtime.md"
    )
