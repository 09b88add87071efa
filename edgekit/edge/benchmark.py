"""Timing an artifact on the device itself: what a device does for ``edgekit compile --measure-on THING``.

The archive (``<artifact>.tar.gz``, already downloaded and checked against its digest) is unpacked into a fresh
folder, refused when its profile names another architecture than this device's (even a portable build: its timing
here would not be the target's), loaded with its self-test (:func:`edgekit.runtime.load`: digests, CPU features, golden vectors), and its
``predict`` is timed on the artifact's first golden input: ``warmup`` untimed calls, then ``repeat`` timed ones.
Everything that goes wrong is a one-line reason, never an exception: the compile side reports it per candidate.
"""

from __future__ import annotations

import platform
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.machines import machine_of
from edgekit.manifest import read_manifest
from edgekit.runtime import load
from edgekit.runtime.selftest import read_selftest

__all__ = ["DeviceBenchmark", "time_archive"]

_MAX_REPEAT = 10_000


@dataclass(frozen=True)
class DeviceBenchmark:
    median_ms: float = 0.0
    p90_ms: float = 0.0
    runs: int = 0
    error: str = ""


def time_archive(archive: Path, warmup: int, repeat: int) -> DeviceBenchmark:
    """The artifact's latency here, or why it could not be timed (``error``, one line)."""
    repeat = max(1, min(int(repeat), _MAX_REPEAT))
    warmup = max(0, min(int(warmup), _MAX_REPEAT))
    try:
        with tempfile.TemporaryDirectory(prefix="edgekit-bench-") as tmp:
            folder = Path(tmp) / "artifact"
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(folder, filter="data")
            manifest = read_manifest(folder)
            arch = str(manifest.profile.greengrass.get("architecture"))
            machine = machine_of(arch)
            if machine != platform.machine():  # a portable build would run, but its timing would not be the target's
                return DeviceBenchmark(
                    error=f"built for {machine} ('{manifest.profile.name}'), and this device is {platform.machine()}"
                )
            model = load(folder, self_test=True)
            selftest = model.manifest.selftest
            if selftest is None:
                return DeviceBenchmark(error="the artifact has no golden inputs (selftest) to time")
            feed = read_selftest(folder / selftest.file, model.manifest.inputs, model.manifest.outputs)[0][0]
            for _ in range(warmup):
                model.predict(feed)
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                model.predict(feed)
                times.append((time.perf_counter() - t0) * 1e3)
    except Exception as exc:  # a device reports what went wrong; the compile side decides
        return DeviceBenchmark(error=" ".join(f"{type(exc).__name__}: {exc}".split())[:300])
    return DeviceBenchmark(  # numpy's median and p90, as the compiling host measures (compiler/measurement.py)
        median_ms=round(float(np.median(times)), 4), p90_ms=round(float(np.percentile(times, 90)), 4), runs=len(times)
    )
