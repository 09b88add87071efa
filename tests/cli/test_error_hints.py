"""Where an error names a command as its fix, that command works as written (item 9 of issue 13)."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest
from helpers import QUICK, make_mlp

import edgekit
from edgekit.cli import main
from edgekit.errors import EXIT_CODES, ConfigError, InferenceError, PublishError, UnknownTargetError, VerificationError


def _hint(err: str) -> list[str]:
    """The command a one-line error names: the first 'edgekit ...' in quotes."""
    found = re.search(r"'(edgekit [^']+)'", err)
    assert found is not None, err
    return found.group(1).split()[1:]


def test_unknown_target_hint(mlp_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compile", str(mlp_onnx), "-t", "rasp9", "-o", str(tmp_path)]) == EXIT_CODES[UnknownTargetError]
    assert main(_hint(capsys.readouterr().err)) == 0
    assert "rasp4b" in capsys.readouterr().out


def test_no_local_fleet_hint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _save(tmp_path / "m.onnx")
    art = edgekit.compile(tmp_path / "m.onnx", "x86_64", tmp_path / "b", pipeline=QUICK)
    edgekit.package([art.artifact_dir], name="com.example.M", output=tmp_path / "greengrass-build", state_dir=tmp_path / "none")
    monkeypatch.chdir(tmp_path)  # where the build folder is, as in the README
    state = tmp_path / "fleet"
    assert main(["fleet", "status", "--state", str(state)]) == EXIT_CODES[ConfigError]
    err = capsys.readouterr().err
    publish = re.search(r"'(edgekit publish [^']+)'", err)
    assert publish is not None, err
    assert main(publish.group(1).split()[1:]) == 0
    capsys.readouterr()
    assert main(["fleet", "status", "--state", str(state)]) == 0
    # a device that is not there: the hint lists the fleet's devices
    assert main(["fleet", "logs", "gw-9", "--state", str(state)]) == EXIT_CODES[ConfigError]
    assert main(_hint(capsys.readouterr().err)) == 0


def test_republishing_a_changed_version_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The issue's loop: a changed model under a published version; the hint's NEXT_PATCH must clear it."""
    _save(tmp_path / "m.onnx")
    art = edgekit.compile(tmp_path / "m.onnx", "x86_64", tmp_path / "b", pipeline=QUICK).artifact_dir
    state = tmp_path / "fleet"
    build = tmp_path / "gg"
    edgekit.package([art], name="com.example.M", version="1.0.0", output=build)
    edgekit.publish(build, local=True, state_dir=state)
    _save(tmp_path / "m.onnx", seed=5)  # retrained
    art = edgekit.compile(tmp_path / "m.onnx", "x86_64", tmp_path / "b", pipeline=QUICK).artifact_dir
    fresh = tmp_path / "fresh"
    assert main(["package", str(art), "--name", "com.example.M", "--version", "1.0.0", "-o", str(fresh)]) == 0
    assert main(["publish", "--local", "--state", str(state), "--build", str(fresh)]) == EXIT_CODES[PublishError]
    err = capsys.readouterr().err
    assert "--version NEXT_PATCH --state" in err
    hint = re.search(r"'edgekit package \.\.\. (--version NEXT_PATCH --state \S+)'", err)
    assert hint is not None, err
    again = tmp_path / "again"
    assert main(["package", str(art), "--name", "com.example.M", "-o", str(again), *hint.group(1).split()]) == 0
    assert (again / "recipes" / "com.example.M-1.0.1.json").is_file()
    assert main(["publish", "--local", "--state", str(state), "--build", str(again)]) == 0
    capsys.readouterr()


def test_input_shape_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    onnx.save(make_mlp(batch="N"), str(tmp_path / "dyn.onnx"))
    out = tmp_path / "b"
    assert main(["compile", str(tmp_path / "dyn.onnx"), "-t", "x86_64", "-o", str(out), "-b", "onnxruntime", "-s", "x:1,8"]) == 0
    import numpy as np

    np.save(tmp_path / "x.npy", np.zeros((3, 8), dtype=np.float32))
    assert main(["run", str(out / "dyn-x86_64"), "-i", str(tmp_path / "x.npy")]) == EXIT_CODES[InferenceError]
    err = capsys.readouterr().err
    flag = re.search(r"recompile with (--input-shape \S+)", err)
    assert flag is not None, err
    argv = ["compile", str(tmp_path / "dyn.onnx"), "-t", "x86_64", "-o", str(out), "-b", "onnxruntime", "--name", "dyn3"]
    assert main([*argv, *flag.group(1).split()]) == 0
    assert main(["run", str(out / "dyn3"), "-i", str(tmp_path / "x.npy")]) == 0
    assert "probs float32[3, 4]" in capsys.readouterr().out


def test_verify_of_a_host_artifact_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _save(tmp_path / "m.onnx")
    art = edgekit.compile(tmp_path / "m.onnx", "x86_64", tmp_path / "b", pipeline=QUICK).artifact_dir
    assert main(["verify", str(art)]) == EXIT_CODES[VerificationError]
    err = capsys.readouterr().err
    found = re.search(r"(edgekit run \S+ --random)", err)
    assert found is not None, err
    assert main(found.group(1).split()[1:]) == 0


def _save(path: Path, seed: int = 0) -> bool:
    onnx.save(make_mlp(seed=seed), str(path))
    return True


def test_fleet_logs_prints_and_follows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`edgekit fleet logs THING [COMPONENT] [--follow]` over a device folder's logs (what its lifecycle steps wrote)."""
    import subprocess
    import sys
    import time

    from edgekit.fleet.state import FleetState

    state = tmp_path / "fleet"
    FleetState(state / "fleet.db").close()
    logs = state / "devices" / "gw-01" / "logs"
    logs.mkdir(parents=True)
    (logs / "com.example.A.log").write_text("a1\na2\na3\n")
    (logs / "com.example.B.log").write_text("b1\n")
    assert main(["fleet", "logs", "gw-01", "--state", str(state)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "com.example.A: a1",
        "com.example.A: a2",
        "com.example.A: a3",
        "com.example.B: b1",
    ]
    assert main(["fleet", "logs", "gw-01", "com.example.A", "-n", "1", "--state", str(state)]) == 0
    assert capsys.readouterr().out.splitlines() == ["a3"]
    assert main(["fleet", "logs", "gw-01", "com.example.C", "--state", str(state)]) == EXIT_CODES[ConfigError]
    assert "logs: com.example.A, com.example.B" in capsys.readouterr().err

    exe = Path(sys.executable).with_name("edgekit")
    proc = subprocess.Popen(
        [str(exe), "fleet", "logs", "gw-01", "com.example.B", "--follow", "--state", str(state)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "b1\n"
        time.sleep(0.3)
        with (logs / "com.example.B.log").open("a") as f:
            f.write("b2 written later\n")
        assert proc.stdout.readline() == "b2 written later\n"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()
