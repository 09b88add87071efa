"""Compiling with bad or hostile input: pickles need trust, factories that raise, absurd shapes, unwritable caches,
failed and interrupted compiles leave nothing behind."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import joblib
import numpy as np
import onnx
import pytest
import skops.io as sio
from helpers import make_mlp
from sklearn.linear_model import LogisticRegression

import edgekit
from edgekit.compiler.artifact import WORK_PREFIX
from edgekit.compiler.cache import ArtifactCache
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import InputShapeError, ModelLoadError

ORT_ONLY = Pipeline.model_validate({"name": "ort", "candidates": [{"name": "ort", "backend": "onnxruntime"}],
                                    "measure": {"samples": 2, "warmup": 1, "repeat": 3}})  # fmt: skip


@pytest.fixture(scope="module")
def logreg() -> LogisticRegression:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    return LogisticRegression(max_iter=300).fit(x, (x[:, 0] > 0).astype(int))


class Evil:  # a pickle payload that would run code when loaded
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_a_pickle_is_loaded_only_when_trusted(
    logreg: LogisticRegression, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.joblib"
    joblib.dump(Evil(), evil)
    with pytest.raises(
        ModelLoadError,
        match=r"is a pickle: its types can.t be checked and loading it runs whatever code it holds; pass --trust-unknown-types",
    ):
        edgekit.compile(evil, "x86_64", tmp_path / "out", pipeline=ORT_ONLY, input_shapes={"input": [1, 4]})
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "out").exists()
    good = tmp_path / "good.joblib"
    joblib.dump(logreg, good)
    result = edgekit.compile(
        good, "x86_64", tmp_path / "out", pipeline=ORT_ONLY, input_shapes={"input": [1, 4]}, trust_unknown_types=True
    )
    assert result.manifest.source.format == "sklearn"


def test_skops_files_need_no_trust_for_sklearn_types(logreg: LogisticRegression, tmp_path: Path) -> None:
    path = tmp_path / "model.skops"
    sio.dump(logreg, path)
    result = edgekit.compile(path, "x86_64", tmp_path / "out", pipeline=ORT_ONLY, input_shapes={"input": [1, 4]})
    x = np.ones((1, 4), np.float32)
    assert int(np.argmax(edgekit.load(result.artifact_dir).predict({"input": x})[-1])) == int(logreg.predict(x)[0])
    (tmp_path / "bad.skops").write_bytes(b"not a zip")
    with pytest.raises(ModelLoadError, match=r"bad.skops' is not a readable .skops model"):
        edgekit.compile(tmp_path / "bad.skops", "x86_64", tmp_path / "out2", pipeline=ORT_ONLY, input_shapes={"input": [1, 4]})


def test_a_factory_module_that_raises_at_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "badmodels.py").write_text("raise RuntimeError('no GPU found, giving up')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        ModelLoadError, match=r"cannot import the model factory 'badmodels:make': RuntimeError: no GPU found"
    ) as exc:
        edgekit.compile("badmodels:make", "x86_64", tmp_path / "out", input_shapes={"input": [1, 4]})
    assert "\n" not in str(exc.value) and not (tmp_path / "out").exists()


def test_absurd_input_shapes_are_refused_before_anything_is_allocated(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(
        InputShapeError, match=r"input 'input' with shape \[100000, 100000, 1000\] needs .* more than rasp4b's 4096 MiB"
    ):
        edgekit.compile(mlp_onnx, "rasp4b", out, input_shapes={"input": [100_000, 100_000, 1000]})
    assert not out.exists()  # a failed compile leaves no empty output folder


def test_an_unwritable_cache_is_a_warning(mlp_onnx: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocked = tmp_path / "cache"
    blocked.write_text("a file where the cache folder should be")  # mkdir fails even as root
    with caplog.at_level(logging.WARNING, logger="edgekit.compiler.cache"):
        result = edgekit.compile(
            mlp_onnx, "x86_64", tmp_path / "out", pipeline=ORT_ONLY, cache=ArtifactCache(blocked / "artifacts")
        )
    assert result.artifact_dir.is_dir() and edgekit.load(result.artifact_dir).selftest().passed
    assert "the compile cache" in caplog.text and "can't be written" in caplog.text


def test_scratch_folders_of_killed_compiles_are_swept(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True)
    stale = out / f"{WORK_PREFIX}{dead.stdout.strip()}-abc"
    (stale / "source").mkdir(parents=True)
    mine = out / f"{WORK_PREFIX}{os.getpid()}-live"  # a compile still running in this process: kept
    mine.mkdir()
    edgekit.compile(mlp_onnx, "x86_64", out, pipeline=ORT_ONLY)
    assert not stale.exists() and mine.exists()


def _default_signals() -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["sigterm", "sigint"])
def test_an_interrupted_compile_leaves_nothing(tmp_path: Path, sig: signal.Signals) -> None:
    (tmp_path / "slowmodels.py").write_text(
        textwrap.dedent("""
        import time, torch
        class Net(torch.nn.Module):
            def forward(self, x):
                return torch.relu(x)
        def make():
            time.sleep(60)  # the compile is interrupted while loading the model
            return Net()
    """)
    )
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    argv = [
        sys.executable,
        "-m",
        "edgekit",
        "compile",
        "slowmodels:make",
        "-t",
        "x86_64",
        "-o",
        str(out),
        "-s",
        "x:1,4",
        "--no-cache",
    ]
    # A terminal's child: SIGINT and SIGTERM at their defaults and unblocked, whatever this test process inherited
    # or set (in a full run the interrupt was once not delivered within 60 s; alone it always was — not root-caused).
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_default_signals)
    try:
        deadline = time.monotonic() + 120  # only catches a hang
        while not list(out.glob(f"{WORK_PREFIX}*")):
            assert proc.poll() is None and time.monotonic() < deadline, "the compile never started"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:  # never left behind to fail a later test's setup with a ResourceWarning
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert not out.exists(), list(out.rglob("*"))


def test_compile_report_is_one_self_contained_page(mlp_onnx: Path, tmp_path: Path) -> None:
    both = Pipeline.model_validate({"name": "both", "candidates": [{"name": "ort", "backend": "onnxruntime"}, {"name": "tvm", "backend": "tvm"}],
                                    "measure": {"samples": 2, "warmup": 1, "repeat": 3}})  # fmt: skip
    report = tmp_path / "report.html"
    result = edgekit.compile(mlp_onnx, "x86_64", tmp_path / "out", pipeline=both, report=report)
    page = report.read_text()
    for c in result.manifest.candidates:
        assert f"<td>{c.name}</td>" in page and (c.status in page)
        if c.measured is not None:
            assert f"{c.measured.latency.median_ms:.3f}" in page
    assert page.count("<svg") == 1 and "ONNX Runtime" in page
    assert "src=" not in page and "href=" not in page  # nothing fetched: one file


def test_a_compile_too_big_for_this_host_is_refused_before_allocating(tmp_path: Path) -> None:
    """Issue 19: 1.6 GB of input was OOM-killed at 23.8 GB. Inputs under the device's memory (3.5 GB of the
    x86_64 profile's 4 GiB) but far over what this host can give a compile are refused in one line, and the
    refusing process stays small (its peak RSS is measured by the parent that waited for it)."""
    onnx.save(make_mlp(batch="N"), str(tmp_path / "wide.onnx"))
    argv = [sys.executable, "-m", "edgekit", "compile", str(tmp_path / "wide.onnx"), "-t", "x86_64", "-s", "x:110000000,8",
            "-o", str(tmp_path / "out")]  # fmt: skip
    probe = textwrap.dedent(f"""
        import resource, subprocess, sys
        r = subprocess.run({argv!r}, capture_output=True, text=True)
        print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
        print(r.stderr, end="")
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    head, _, stderr = out.stdout.partition("\n")
    code, peak_kib = (int(v) for v in head.split())
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1 and "would take this host" in lines[0] and "GiB are available" in lines[0], stderr
    assert peak_kib < 1024 * 1024  # under 1 GiB: refused before the inputs (3.5 GB) were allocated
    assert not (tmp_path / "out").exists()  # nothing left behind
