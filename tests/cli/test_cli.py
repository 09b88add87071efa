"""The edgekit CLI: the main job, listing, running, and errors as one line with an exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgekit.cli import main
from edgekit.errors import EXIT_CODES, InputShapeError, ModelLoadError, UnknownTargetError


def test_demo_compiles_for_two_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], sysroot_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEKIT_SYSROOT_CACHE", str(sysroot_cache))  # the emulated Pi's sysroot: one per session
    out = tmp_path / "demo"
    assert main(["demo", "-o", str(out), "--state", str(tmp_path / "fleet"), "--seconds", "6", "--outage", "2"]) == 0
    text = capsys.readouterr().out
    for target, arch in (("x86_64", "amd64"), ("rasp4b", "aarch64")):
        manifest = json.loads((out / f"sensor_cnn-{target}" / "manifest.json").read_text())
        assert manifest["profile"]["greengrass"]["architecture"] == arch
        assert manifest["measured"]["accuracy"]["maxAbsError"] < 1e-4
        assert f"sensor_cnn-{target}" in text
    assert "median ms" in text and "host-proxy" in text
    # packaged, linted, published to the local fleet and rolled out to every device of both groups over MQTT;
    # then every device inferred through a broker outage and the fleet received every reading
    assert "recipe lint: OK" in text
    assert "'demo': 18 devices over MQTT" in text
    assert "SUCCEEDED 12" in text and "SUCCEEDED 6" in text
    assert ": 0 lost, 0 counted twice" in text and "broker down for 2 s" in text
    state = tmp_path / "fleet" / "fleet.db"
    import sqlite3

    with sqlite3.connect(state) as db:
        rows = db.execute("SELECT status, COUNT(*) FROM job_executions GROUP BY status").fetchall()
        windows = db.execute("SELECT COUNT(DISTINCT thing), SUM(readings) FROM telemetry_windows").fetchone()
    assert dict(rows) == {"SUCCEEDED": 18}
    assert windows[0] == 18 and windows[1] > 18 * 30  # every device inferred (10 readings/s for 6 s), the emulated Pi too
    # run again: both compiles come from the cache
    assert main(["demo", "-o", str(out), "--no-fleet"]) == 0
    assert capsys.readouterr().out.count("(cache)") == 2


def test_targets_lists_profiles(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets"]) == 0
    text = capsys.readouterr().out
    for name in ("x86_64", "ml_c5", "rasp4b", "imx8mplus", "jetson_nano"):
        assert name in text
    assert "linux/aarch64" in text and "cortex-a72" in text


def test_compile_and_run_roundtrip(mlp_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "build"
    assert main(["compile", str(mlp_onnx), "-t", "x86_64", "-o", str(out), "-b", "tvm"]) == 0
    art = out / "mlp-x86_64"
    assert (art / "manifest.json").is_file() and (out / "mlp-x86_64.tar.gz").is_file()
    capsys.readouterr()
    x = np.random.default_rng(0).standard_normal((1, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    res = tmp_path / "y.npz"
    assert main(["run", str(art), "--input", str(tmp_path / "x.npy"), "--output", str(res)]) == 0
    assert "probs float32[1, 4]" in capsys.readouterr().out
    import edgekit

    with np.load(res) as data:
        np.testing.assert_array_equal(data["probs"], edgekit.load(art).predict(x)[0])


@pytest.mark.parametrize(
    ("argv", "error", "needle"),
    [
        (["compile", "{tmp}/missing.onnx", "-t", "x86_64"], ModelLoadError, "does not exist"),
        (["compile", "{model}", "-t", "rasp9"], UnknownTargetError, "unknown target 'rasp9'"),
        (["compile", "{model}", "-t", "x86_64", "-s", "x:1,9"], InputShapeError, "fixed to 8"),
        (["compile", "{model}", "-t", "x86_64", "-s", "x:1,2a"], InputShapeError, "NAME:D1,D2"),
    ],
)
def test_errors_are_one_line_with_exit_code(
    argv: list[str],
    error: type[Exception],
    needle: str,
    mlp_onnx: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [a.format(tmp=tmp_path, model=mlp_onnx) for a in argv] + ["-o", str(tmp_path / "out")]
    code = main(args)
    err = capsys.readouterr().err
    assert code == EXIT_CODES[error]  # type: ignore[index]
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], err
    assert "Traceback" not in err
    out = tmp_path / "out"
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_console_script_runs_as_a_subprocess(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("edgekit")
    proc = subprocess.run(
        [str(exe), "compile", str(tmp_path / "nope.onnx"), "-t", "x86_64", "-o", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == EXIT_CODES[ModelLoadError]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model file")
    assert "Traceback" not in proc.stderr
