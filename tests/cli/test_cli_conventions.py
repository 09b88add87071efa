"""What every command shares: help, -v/-q, --json with the tables' facts, --version, completion, project defaults."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import QUICK

import edgekit
from edgekit.cli import command, main
from edgekit.errors import EXIT_CODES, ConfigError, DeploymentError, InferenceError, OutputError, PublishError

TYPE_METAVAR = re.compile(r"<(str|int|float|bool|path|list\[[^>]*\]|[a-z]+ range)>")


def _nodes(cmd: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every group and command of the tree, by path (the root's is ())."""
    subs = getattr(cmd, "commands", None) or {}
    return [(path, cmd), *(node for name, sub in sorted(subs.items()) for node in _nodes(sub, (*path, name)))]


LEAVES = [(path, cmd) for path, cmd in _nodes(command()) if getattr(cmd, "commands", None) is None]


def test_the_tree_has_every_command() -> None:
    names = {" ".join(p) for p, _ in LEAVES}
    assert {"compile", "run", "targets", "package", "publish", "deploy", "recipe lint", "fleet status", "fleet logs",
            "deployment list", "deployment cancel", "simulate", "verify", "demo"} <= names  # fmt: skip


@pytest.mark.parametrize("path", [p for p, _ in LEAVES], ids=[" ".join(p) for p, _ in LEAVES])
def test_help_has_no_type_metavars_and_a_line_for_every_option(path: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*path, "--help"]) == 0
    text = capsys.readouterr().out
    assert not TYPE_METAVAR.search(text), TYPE_METAVAR.search(text)
    cmd = dict(LEAVES)[path]
    for param in cmd.params:
        if getattr(param, "hidden", False):  # a deprecated alias, kept out of --help on purpose
            continue
        assert (param.help or "").strip(), f"{' '.join(path)}: {param.opts or param.name} has no help"
    for flag in ("--verbose", "--quiet", "-v", "-q"):
        assert flag in text


def test_every_help_text_reads_as_written() -> None:
    """Typer reads help as Rich markup: a lowercase word in brackets is a tag and vanishes ('Needs TVM
    (edgekit[tvm])' printed 'Needs TVM (edgekit)'). Every group's, command's and option's help renders to what it
    says, brackets escaped where it means them."""
    from rich.markup import render

    checked = 0
    for path, cmd in _nodes(command()):
        where = " ".join(path) or "edgekit"
        texts = [(where, t) for t in (cmd.help, cmd.short_help, cmd.epilog)]
        texts += [(f"{where} {'/'.join(param.opts) or param.name}", getattr(param, "help", None)) for param in cmd.params]
        for place, text in texts:
            if text:
                shown = render(text).plain
                assert shown == text.replace("\\[", "["), f"{place}: {text!r} shows as {shown!r}"
                checked += 1
    assert checked > 100  # every command was walked


def test_root_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert not TYPE_METAVAR.search(text) and "--install-completion" in text
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"edgekit {edgekit.__version__}"


def test_verbose_and_quiet_work_after_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["targets", "-v"]) == 0
    assert logging.getLogger().level == logging.INFO
    assert main(["targets", "-vv"]) == 0
    assert logging.getLogger().level == logging.DEBUG
    assert main(["targets", "-q"]) == 0
    assert logging.getLogger().level == logging.ERROR
    assert main(["-v", "targets"]) == 0
    assert logging.getLogger().level == logging.INFO
    assert main(["targets"]) == 0  # each call starts from the defaults
    assert logging.getLogger().level == logging.WARNING
    capsys.readouterr()


def test_shell_completion_completes_commands() -> None:
    exe = Path(sys.executable).with_name("edgekit")
    env = {**os.environ, "_EDGEKIT_COMPLETE": "complete_bash", "COMP_WORDS": "edgekit dep", "COMP_CWORD": "1"}
    proc = subprocess.run([str(exe)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert set(proc.stdout.split()) == {"deploy", "deployment"}
    shown = subprocess.run([str(exe), "--show-completion", "bash"], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "SHELL": "/bin/bash",  # typer's switch: take the shell named instead of
                                "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})  # detecting the parent process's  # fmt: skip
    assert "_EDGEKIT_COMPLETE" in shown.stdout


def _json(capsys: pytest.CaptureFixture[str], argv: list[str]) -> Any:
    assert main([*argv, "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_targets_json_carries_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    rows = _json(capsys, ["targets"])
    assert main(["targets"]) == 0
    table = capsys.readouterr().out
    for row in rows:
        assert row["name"] in table and row["tvmTarget"] in table and row["greengrass"] in table
    assert {r["name"]: r["runsHere"] for r in rows}["x86_64"] is True


def test_compile_run_package_lint_publish_json(mlp_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "build"
    facts = _json(capsys, ["compile", str(mlp_onnx), "-t", "x86_64", "-o", str(out), "-b", "onnxruntime"])
    assert facts["artifact"] == str(out / "mlp-x86_64") and facts["chosen"]["backend"] == "onnxruntime"
    assert [c["status"] for c in facts["candidates"]] == ["chosen"]
    assert main(["compile", str(mlp_onnx), "-t", "x86_64", "-o", str(out), "-b", "onnxruntime"]) == 0
    table = capsys.readouterr().out
    assert facts["chosen"]["artifact"] in table and f"{facts['chosen']['medianMs']:.3f}" in table

    art = out / "mlp-x86_64"
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    (tmp_path / "x.json").write_text(json.dumps({"x": x.tolist()}))
    ran = _json(capsys, ["run", str(art), "-i", str(tmp_path / "x.json"), "--repeat", "3", "--print-time"])
    np.testing.assert_allclose(ran["outputs"]["probs"]["data"], edgekit.load(art).predict(x)[0], rtol=1e-6)
    assert ran["timeMs"]["runs"] == 3 and ran["timeMs"]["min"] <= ran["timeMs"]["median"] <= ran["timeMs"]["max"]

    build = tmp_path / "gg"
    packaged = _json(
        capsys, ["package", str(art), "--name", "com.example.Mlp", "-o", str(build), "--state", str(tmp_path / "no")]
    )
    assert {c["component"] for c in packaged["components"]} == {"com.edgekit.Runtime.Onnxruntime", "com.example.Mlp",
                                                                  "com.example.Mlp.Inference"}  # fmt: skip
    linted = _json(capsys, ["recipe", "lint", str(build / "recipes")])
    assert linted["ok"] is True and all(f["severity"] == "warning" for f in linted["findings"])
    planned = _json(capsys, ["publish", "--build", str(build), "--bucket", "b", "--region", "eu-west-1", "--dry-run"])
    assert planned["dryRun"] and {c["status"] for c in planned["components"]} == {"planned"}
    local = _json(capsys, ["publish", "--local", "--build", str(build), "--state", str(tmp_path / "fleet")])
    assert {c["status"] for c in local["components"]} == {"published"}


@pytest.mark.parametrize(
    ("name", "contents"),
    [("x.npy", None), ("x.npz", None), ("x.json", "list"), ("x.json", "v2")],
)
def test_run_reads_npy_npz_and_json(name: str, contents: str | None, mlp_onnx: Path, tmp_path: Path) -> None:
    art = edgekit.compile(mlp_onnx, "x86_64", tmp_path / "b", pipeline=QUICK).artifact_dir
    x = np.random.default_rng(2).standard_normal((1, 8)).astype(np.float32)
    path = tmp_path / name
    if name.endswith(".npy"):
        np.save(path, x)
    elif name.endswith(".npz"):
        np.savez(path, x=x)
    elif contents == "list":
        path.write_text(json.dumps(x.tolist()))
    else:
        path.write_text(json.dumps({"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}))
    from edgekit.manifest import read_manifest
    from edgekit.runtime.inputs import read_inputs

    result = edgekit.api.run(art, read_inputs([str(path)], read_manifest(art).inputs), repeat=2)
    np.testing.assert_allclose(result.outputs["probs"], edgekit.load(art).predict(x)[0], rtol=1e-6)
    assert len(result.timing.runs_ms) == 2


def test_run_without_inputs_says_how(mlp_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    art = edgekit.compile(mlp_onnx, "x86_64", tmp_path / "b", pipeline=QUICK).artifact_dir
    assert main(["run", str(art)]) == EXIT_CODES[InferenceError]
    assert "--input FILE" in capsys.readouterr().err
    assert main(["run", str(art), "--random", "--repeat", "2", "--print-time"]) == 0
    assert "execution time summary (2 run(s))" in capsys.readouterr().out


def test_compile_refuses_to_overwrite_another_sources_artifact(
    mlp_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "build"
    edgekit.compile(mlp_onnx, "x86_64", out, pipeline=QUICK)
    other = tmp_path / "other"
    other.mkdir()
    (other / "mlp.onnx").write_bytes(mlp_onnx.read_bytes())
    edgekit.compile(other / "mlp.onnx", "x86_64", out, pipeline=QUICK)  # same file name: a rebuild of the same model
    renamed = tmp_path / "mlp.pt"  # another source that maps to the same artifact name
    renamed.write_bytes(b"not read: refused first")
    before = (out / "mlp-x86_64" / "manifest.json").read_bytes()
    assert main(["compile", str(renamed), "-t", "x86_64", "-o", str(out)]) == EXIT_CODES[OutputError]
    err = capsys.readouterr().err
    assert "was built from" in err and "--force" in err and "--name" in err
    assert (out / "mlp-x86_64" / "manifest.json").read_bytes() == before
    # the hint works: --name puts it beside, --force replaces (here with a model of the same name, as a .onnx)
    assert main(["compile", str(mlp_onnx), "-t", "x86_64", "-o", str(out), "-b", "onnxruntime", "--name", "mlp2"]) == 0
    (tmp_path / "x").mkdir()
    src = tmp_path / "x" / "mlp.pt"
    src.write_bytes(b"")
    with pytest.raises(OutputError):
        edgekit.compile(src, "x86_64", out)
    capsys.readouterr()


def test_project_file_gives_defaults_that_flags_override(
    mlp_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "proj"
    (project / "sub").mkdir(parents=True)
    (project / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.edgekit]\ntarget = "x86_64"\nbackend = "onnxruntime"\nartifacts = "out"\n'
        'component = "com.example.Proj"\nbuild = "gg"\nstate = "fleet"\n'
    )
    monkeypatch.chdir(project / "sub")  # found from a folder below
    monkeypatch.delenv("EDGEKIT_PROJECT", raising=False)
    assert main(["compile", str(mlp_onnx)]) == 0
    art = project / "out" / "mlp-x86_64"
    assert (art / "manifest.json").is_file()
    assert main(["package", str(art)]) == 0
    assert (project / "gg" / "recipes" / "com.example.Proj-1.0.0.json").is_file()
    assert main(["publish", "--local"]) == 0
    assert (project / "fleet" / "fleet.db").is_file()
    assert main(["package", str(art), "--name", "com.example.Flag", "-o", str(tmp_path / "flag")]) == 0  # flags win
    assert (tmp_path / "flag" / "recipes" / "com.example.Flag-1.0.0.json").is_file()
    capsys.readouterr()

    (project / "edgekit.toml").write_text('regoin = "eu-west-1"\n')  # edgekit.toml wins over pyproject.toml
    assert main(["targets"]) == EXIT_CODES[ConfigError]
    err = capsys.readouterr().err
    assert "edgekit.toml" in err and "'regoin' is not a setting" in err and "region" in err
    monkeypatch.setenv("EDGEKIT_PROJECT", "")  # no project file
    assert main(["targets"]) == 0
    capsys.readouterr()


def test_region_and_profile_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    build = tmp_path / "gg"
    (build / "recipes").mkdir(parents=True)
    (build / "recipes" / "com.example.A-1.0.0.yaml").write_text(
        "RecipeFormatVersion: '2020-01-25'\nComponentName: com.example.A\nComponentVersion: 1.0.0\n"
        "Manifests:\n  - Platform: {os: linux}\n    Lifecycle: {Run: 'true'}\n"
    )
    for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE", "AWS_CONFIG_FILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("EDGEKIT_PROJECT", "")
    argv = ["publish", "--build", str(build), "--bucket", "b", "--dry-run", "--json"]
    assert main(argv) == EXIT_CODES[PublishError]
    assert "AWS_REGION" in capsys.readouterr().err
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["destination"] == "s3://b (eu-central-1)"
    # a profile's region, from the config file the standard chain reads
    config = tmp_path / "config"
    config.write_text("[profile edge]\nregion = ap-south-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.delenv("AWS_REGION")
    monkeypatch.setenv("AWS_PROFILE", "edge")
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["destination"] == "s3://b (ap-south-1)"
    # deploy --dry-run: the region too; a short target's account from --account when there are no credentials
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    dargv = ["deploy", "--target", "thinggroup/g", "-c", "com.example.A=1.0.0", "--dry-run", "--json"]
    assert main(dargv) == EXIT_CODES[DeploymentError]
    err = capsys.readouterr().err
    assert "--account" in err
    assert main([*dargv, "--account", "123456789012"]) == 0
    request = json.loads(capsys.readouterr().out)["request"]
    assert request["targetArn"] == "arn:aws:iot:ap-south-1:123456789012:thinggroup/g"
