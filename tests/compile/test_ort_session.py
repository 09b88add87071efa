"""ONNX Runtime tuned per device profile: threads, execution mode and memory pattern from the profile, applied when
candidates are measured and when the artifact loads, recorded in the manifest."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from helpers import QUICK, make_mlp

import edgekit
from edgekit.compiler import measurement
from edgekit.compiler.measurement import fewer_threads
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import ArtifactError, ConfigError
from edgekit.profiles import load_profile
from edgekit.runtime.ort_runner import OrtRunner


def _profile(tmp_path: Path, session: str, cores: str = "") -> Path:
    """A copy of the x86_64 profile with its ONNX Runtime section (and cores) replaced."""
    base = [
        line
        for line in (Path(load_profile("x86_64").source)).read_text().splitlines()
        if not line.startswith(("name:", "cores:", "onnxruntime:"))
    ]
    path = tmp_path / "one_core_box.yaml"
    path.write_text("\n".join([*base, "name: one_core_box", cores, f"onnxruntime: {session}", ""]))
    return path


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp(), str(path))
    return path


def test_profiles_differ_and_the_manifest_records_the_targets_session(mlp: Path, tmp_path: Path) -> None:
    pi, gateway = load_profile("rasp4b"), load_profile("x86_64")
    assert pi.onnxruntime.resolved(pi.cores)["intraOpThreads"] == 4  # a 4-core Pi
    assert gateway.onnxruntime.resolved(gateway.cores)["intraOpThreads"] == 2  # is not a 2-core gateway
    result = edgekit.compile(mlp, "rasp4b", tmp_path / "build", pipeline=QUICK, use_cache=False)
    session = result.manifest.backend.options["session"]
    assert session == {"intraOpThreads": 4, "interOpThreads": 1, "executionMode": "sequential", "memoryPattern": True}
    on_disk = json.loads((result.artifact_dir / "manifest.json").read_text())
    assert on_disk["backend"]["options"]["session"] == session


def test_the_runtime_applies_the_profiles_session_options(mlp: Path, tmp_path: Path) -> None:
    profile = _profile(tmp_path, "{intraOpThreads: 1, interOpThreads: 2, executionMode: parallel, memoryPattern: false}")
    result = edgekit.compile(mlp, profile, tmp_path / "build", pipeline=QUICK, use_cache=False)
    assert result.manifest.backend.options["session"]["intraOpThreads"] == 1
    model = edgekit.load(result.artifact_dir)
    assert isinstance(model.runner, OrtRunner)
    applied = model.runner.session.get_session_options()  # read back from ONNX Runtime itself
    assert applied.intra_op_num_threads == 1 and applied.inter_op_num_threads == 2
    assert applied.execution_mode == ort.ExecutionMode.ORT_PARALLEL
    assert applied.enable_mem_pattern is False
    assert model.selftest().passed
    # an explicit thread count (edgekit run --threads, load(threads=...)) wins over the profile's
    three = edgekit.load(result.artifact_dir, threads=3)
    assert isinstance(three.runner, OrtRunner)
    assert three.runner.session.get_session_options().intra_op_num_threads == 3


def test_cores_fill_in_the_threads(mlp: Path, tmp_path: Path) -> None:
    profile = _profile(tmp_path, "{executionMode: sequential}", cores="cores: 1")
    result = edgekit.compile(mlp, profile, tmp_path / "build", pipeline=QUICK, use_cache=False)
    model = edgekit.load(result.artifact_dir)
    assert isinstance(model.runner, OrtRunner)
    applied = model.runner.session.get_session_options()
    assert applied.intra_op_num_threads == 1 and applied.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL


def test_a_bad_session_field_is_named(mlp: Path, tmp_path: Path) -> None:
    profile = _profile(tmp_path, "{executionMode: fast}")
    with pytest.raises(
        ConfigError, match=r"one_core_box.yaml: field 'onnxruntime.executionMode': Input should be 'sequential' or 'parallel'"
    ):
        edgekit.compile(mlp, profile, tmp_path / "build", pipeline=QUICK, use_cache=False)


def test_a_tampered_manifest_session_is_one_line(mlp: Path, tmp_path: Path) -> None:
    result = edgekit.compile(mlp, "x86_64", tmp_path / "build", pipeline=QUICK, use_cache=False)
    with pytest.raises(ArtifactError, match=r"session.intraOpThreads must be 0-256 threads, not -1"):
        OrtRunner(
            result.artifact_dir / "model.onnx",
            result.manifest.inputs,
            result.manifest.outputs,
            session={"intraOpThreads": -1},
        )


HERE = len(os.sched_getaffinity(0))


def _pipeline(**options: str) -> Pipeline:
    return QUICK.model_copy(update={"candidates": [QUICK.candidates[0].model_copy(update={"options": options})]})


def test_threads_are_timed_where_this_host_is_the_profiles_cpu(mlp: Path, tmp_path: Path) -> None:
    profile = _profile(tmp_path, "{executionMode: sequential}", cores=f"cores: {HERE}")
    result = edgekit.compile(mlp, profile, tmp_path / "build", pipeline=QUICK, use_cache=False)
    options = result.manifest.backend.options
    if HERE == 1:  # one core here: one thread is all there is, nothing to time
        assert "threadTiming" not in options and options["session"]["intraOpThreads"] == 1
        return
    timed = options["threadTiming"]
    assert set(timed["medianMs"]) == {"1", str(HERE)} and all(ms > 0 for ms in timed["medianMs"].values())
    assert timed["chosen"] in (1, HERE) and options["session"]["intraOpThreads"] == timed["chosen"]
    assert "another CPU may differ" in timed["note"]
    model = edgekit.load(result.artifact_dir)  # the device applies what was chosen
    assert isinstance(model.runner, OrtRunner)
    assert model.runner.session.get_session_options().intra_op_num_threads == timed["chosen"]
    assert model.selftest().passed


def test_threads_are_not_timed_for_another_cpu_or_core_count(mlp: Path, tmp_path: Path) -> None:
    pi = edgekit.compile(mlp, "rasp4b", tmp_path / "pi", pipeline=QUICK, use_cache=False).manifest.backend.options
    assert "threadTiming" not in pi  # the Pi's profile sets its threads itself: nothing to time, nothing to say
    profile = _profile(tmp_path, "{executionMode: sequential}", cores=f"cores: {HERE + 1}")
    options = edgekit.compile(mlp, profile, tmp_path / "more", pipeline=QUICK, use_cache=False).manifest.backend.options
    assert options["session"]["intraOpThreads"] == HERE + 1
    assert options["threadTiming"] == {
        "chosen": HERE + 1,
        "notMeasured": f"this host has {HERE} cores, the profile {HERE + 1}: its threads, untimed",
    }
    fixed = edgekit.compile(mlp, "x86_64", tmp_path / "fixed", pipeline=_pipeline(threads="profile"), use_cache=False)
    assert "threadTiming" not in fixed.manifest.backend.options
    assert fixed.manifest.backend.options["session"]["intraOpThreads"] == 2


def test_a_bad_threads_option_is_one_line(mlp: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"onnxruntime option 'threads' must be one of \['measure', 'profile'\], got 'fast'"):
        edgekit.compile(mlp, "x86_64", tmp_path / "build", pipeline=_pipeline(threads="fast"), use_cache=False)


def _spin(seconds: float) -> list[np.ndarray]:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return []


def test_fewer_threads_win_only_when_faster() -> None:
    feed = {"x": np.zeros((1, 8), np.float32)}
    chosen, figures = fewer_threads({2: lambda _f: _spin(5e-4), 1: lambda _f: _spin(0.0)}, feed, budget_s=0.1)
    assert chosen == 1 and figures["chosen"] == 1
    medians = figures["medianMs"]
    assert isinstance(medians, dict) and medians["2"] > medians["1"]
    chosen, _ = fewer_threads({2: lambda _f: _spin(0.0), 1: lambda _f: _spin(5e-4)}, feed, budget_s=0.1)
    assert chosen == 2  # the profile's count stays unless one thread is clearly faster


def test_a_win_for_fewer_threads_is_timed_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The profile's thread count is slow only through the first timing (the other core busy for a while): the
    second timing doesn't confirm one thread, so the profile's count stays and the figures say why."""
    timings: list[int] = []
    real = measurement.interleaved_latency

    def counted(*args: Any, **kwargs: Any) -> Any:
        timings.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(measurement, "interleaved_latency", counted)
    feed = {"x": np.zeros((1, 8), np.float32)}
    busy_once = {2: lambda _f: _spin(5e-4 if len(timings) < 2 else 0.0), 1: lambda _f: _spin(1e-4)}
    chosen, figures = fewer_threads(busy_once, feed, budget_s=0.1)
    assert len(timings) == 2 and chosen == 2 and figures["chosen"] == 2
    assert figures["medianMs"]["1"] < figures["medianMs"]["2"]  # type: ignore[index]  # the first timing's verdict
    assert figures["againMs"]["2"] < figures["againMs"]["1"]  # type: ignore[index]  # not the second's
    assert "not the second" in str(figures["unconfirmed"])
    timings.clear()
    chosen, figures = fewer_threads({2: lambda _f: _spin(5e-4), 1: lambda _f: _spin(0.0)}, feed, budget_s=0.1)
    assert len(timings) == 2 and chosen == 1 and "unconfirmed" not in figures  # confirmed: one thread it is


def _native_spin(seconds: float) -> None:
    """Busy outside the GIL, as a backend's workers are: matrix products (numpy releases the GIL for them)."""
    a = np.ones((200, 200))
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        a.dot(a)


def test_settle_waits_while_other_threads_run() -> None:
    """The timing waits out threads still running in this process (a backend's spinning workers) — up to a limit."""
    spinning = threading.Thread(target=_native_spin, args=(0.3,))
    spinning.start()
    try:
        assert 0.25 <= measurement.settle(limit_s=2.0) < 2.0  # it waited for the spinner to stop, not for the limit
    finally:
        spinning.join()
    forever = threading.Event()

    def busy_until_set() -> None:
        while not forever.is_set():
            _native_spin(0.01)

    busy = threading.Thread(target=busy_until_set)
    busy.start()
    try:
        assert 0.15 <= measurement.settle(limit_s=0.15) < 1.5  # a thread that never stops: the limit ends the wait
        # and a timing beside it waits once, not before each of its 15 blocks (0.5 s each)
        calls: list[float] = []
        real = measurement.settle

        def counted() -> float:
            calls.append(real())
            return calls[-1]

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(measurement, "settle", counted)
            measurement.interleaved_latency([lambda _f: []] * 3, {}, warmup=1, repeat=10, rounds=5)
        assert len(calls) == 1 and calls[0] >= 0.5
    finally:
        forever.set()
        busy.join()
