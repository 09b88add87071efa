"""The Greengrass commands end to end through the CLI: package, lint, publish --dry-run, deploy with pre-flight."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import QUICK

import edgekit
from edgekit.cli import main
from edgekit.errors import EXIT_CODES, DeploymentError, RecipeError, ResolutionError


@pytest.fixture
def build(mlp_onnx: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    arts = [edgekit.compile(mlp_onnx, t, tmp_path / "b", pipeline=QUICK).artifact_dir for t in ("x86_64", "rasp4b")]
    out = tmp_path / "greengrass-build"
    assert main(["package", *map(str, arts), "--name", "com.example.Mlp", "-o", str(out)]) == 0
    assert "com.example.Mlp.Inference" in capsys.readouterr().out
    return out


def test_lint_packaged_and_broken_recipes(build: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipe", "lint", str(build / "recipes")]) == 0
    assert "recipes OK" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("RecipeFormatVersion: '2020-01-25'\nComponentName: com.x.Y\nComponentVersoin: 1.0.0\n")
    assert main(["recipe", "lint", str(bad)]) == EXIT_CODES[RecipeError]
    captured = capsys.readouterr()
    assert "ComponentVersoin" in captured.out and "ComponentVersion" in captured.out
    assert captured.err.strip().startswith("error:")


def test_publish_dry_run_plans_every_component(build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["publish", "--build", str(build), "--bucket", "my-bucket", "--region", "eu-west-1", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0, out
    for name in ("com.edgekit.Runtime.Onnxruntime", "com.example.Mlp", "com.example.Mlp.Inference"):
        assert name in out
    assert "planned" in out


def test_deploy_dry_run_prints_the_request_after_preflight(build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["deploy", "--target", "thinggroup/line-1", "-c", "com.example.Mlp.Inference=1.0.0", "--rollout", "50/min",
            "--abort-failed", "10%", "--fleet", "demo", "--recipes", str(build / "recipes"), "--region", "eu-west-1",
            "--account", "123456789012", "--dry-run"]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "pre-flight: 12 device(s) reached, 0 with problems" in captured.err  # progress on stderr, the request alone on stdout
    request = json.loads(captured.out)
    assert request["targetArn"] == "arn:aws:iot:eu-west-1:123456789012:thinggroup/line-1"
    assert request["iotJobConfiguration"]["jobExecutionsRolloutConfig"]["maximumPerMinute"] == 50
    assert request["iotJobConfiguration"]["abortConfig"]["criteriaList"][0]["thresholdPercentage"] == 10


def test_deploy_stops_before_any_call_when_preflight_fails(build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["deploy", "--target", "thinggroup/line-2", "-c", "com.example.Mlp.Inference=2.0.0", "--fleet", "demo",
            "--recipes", str(build / "recipes"), "--region", "eu-west-1", "--dry-run"]  # fmt: skip
    assert main(argv) == EXIT_CODES[ResolutionError]
    err = capsys.readouterr().err
    assert "NO_AVAILABLE_COMPONENT_VERSION" in err and "nothing was deployed" in err


def test_deploy_bad_options(build: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deploy", "--target", "thinggroup/x", "--region", "eu-west-1", "--dry-run"]) == EXIT_CODES[DeploymentError]
    assert "at least one --component" in capsys.readouterr().err
    argv = ["deploy", "--target", "thinggroup/x", "-c", "a=1.0.0", "--rollout", "5000/min", "--region", "eu-west-1", "--dry-run"]
    assert main(argv) == EXIT_CODES[DeploymentError]
    assert "maximumPerMinute" in capsys.readouterr().err
