"""Several models with different backends on one fleet and one device: per-backend runtime components, Greengrass
CLI style local deployments (--merge NAME=VERSION, --remove), deployment list/cancel, NEXT_PATCH from the registry."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import onnx
import pytest
from helpers import make_mlp

import edgekit
from edgekit.cli import main
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import EXIT_CODES, DeploymentError
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet_file import FleetFile
from edgekit.greengrass.package import runtime_component
from edgekit.sim import Simulation


def _pipeline(backend: str) -> Pipeline:
    return Pipeline.model_validate(
        {
            "name": backend,
            "candidates": [{"name": backend, "backend": backend}],
            "measure": {"samples": 2, "warmup": 0, "repeat": 2},
        }
    )


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Model A compiled with ONNX Runtime, model B with TVM, both for x86_64; packaged into one build folder."""
    work = tmp_path_factory.mktemp("two")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEKIT_CACHE_DIR", str(work / "cache"))
        onnx.save(make_mlp(seed=1), str(work / "a.onnx"))
        onnx.save(make_mlp(in_features=6, classes=3, seed=2), str(work / "b.onnx"))
        a = edgekit.compile(work / "a.onnx", "x86_64", work / "build", pipeline=_pipeline("onnxruntime")).artifact_dir
        b = edgekit.compile(work / "b.onnx", "x86_64", work / "build", pipeline=_pipeline("tvm")).artifact_dir
        build = work / "greengrass-build"
        edgekit.package([a], name="com.example.A", version="1.0.0", output=build, state_dir=work / "none")
        edgekit.package([b], name="com.example.B", version="1.0.0", output=build, state_dir=work / "none")
    return build, work


def _one_device() -> FleetFile:
    return FleetFile.model_validate(
        {
            "name": "one",
            "mode": "in_process",
            "tls": False,
            "devices": [{"name": "gw-01", "profile": "x86_64", "groups": ["edge"]}],
        }
    )


def test_two_backends_have_their_own_runtime(two_models: tuple[Path, Path]) -> None:
    build, _ = two_models
    recipes = {p.stem for p in (build / "recipes").glob("*.json")}
    version = edgekit.__version__
    assert {f"com.edgekit.Runtime.Onnxruntime-{version}", f"com.edgekit.Runtime.Tvm-{version}"} <= recipes
    for model, backend in (("com.example.A", "onnxruntime"), ("com.example.B", "tvm")):
        inference = json.loads((build / "recipes" / f"{model}.Inference-1.0.0.json").read_text())
        assert set(inference["ComponentDependencies"]) == {model, runtime_component(backend)}
        assert f"{{{runtime_component(backend)}:work:path}}" in inference["Manifests"][0]["Lifecycle"]["Run"]["Script"]


def test_two_models_with_different_backends_run_on_one_device(
    two_models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, _ = two_models
    state = tmp_path / "state"

    def cli(*argv: str) -> Any:
        assert main([*argv, "--state", str(state), "--json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out)

    async def scenario() -> None:
        async with Simulation(_one_device(), state_dir=state) as sim:
            published = cli("publish", "--local", "--build", str(build))
            assert {c["component"] for c in published["components"]} >= {
                runtime_component("onnxruntime"),
                runtime_component("tvm"),
            }
            first = cli("deploy", "--local", "--target", "thinggroup/edge", "-c", "com.example.A.Inference=1.0.0")
            await sim.wait(first["deploymentId"], timeout=60)
            # the Greengrass CLI's habit: --merge adds B beside what the group already runs
            second = cli("deploy", "--local", "--groupId", "edge", "--merge", "com.example.B.Inference=1.0.0")
            summary = await sim.wait(second["deploymentId"], timeout=60)
            assert summary.counts == {"SUCCEEDED": 1}
            device = sim.devices["gw-01"].agent
            assert device is not None
            states = {c.name: (c.version, c.state) for c in device.component_states()}
            assert states["com.example.A.Inference"] == ("1.0.0", "RUNNING")
            assert states["com.example.B.Inference"] == ("1.0.0", "RUNNING")
            assert {runtime_component("onnxruntime"), runtime_component("tvm")} <= states.keys()
            # the models the device downloaded load and pass their self-tests, each with its own backend
            unpacked = FleetFolder.at(state).device("gw-01") / "packages" / "artifacts-unarchived"
            for model, backend in (("com.example.A", "onnxruntime"), ("com.example.B", "tvm")):
                loaded = edgekit.load(unpacked / model / "1.0.0" / "model-x86_64")
                assert loaded.manifest.backend.name == backend and loaded.selftest().passed
            listed = cli("deployment", "list", "--local")
            assert [d["id"] for d in listed] == [second["deploymentId"], first["deploymentId"]]
            assert listed[0]["counts"] == {"SUCCEEDED": 1}
            # --remove takes A away and keeps B
            third = cli("deploy", "--local", "--target", "thinggroup/edge", "--remove", "com.example.A.Inference")
            await sim.wait(third["deploymentId"], timeout=60)
            left = {c.name: c.state for c in device.component_states()}
            assert "com.example.A.Inference" not in left and left["com.example.B.Inference"] == "RUNNING"

    asyncio.run(scenario())


def test_next_patch_counts_the_local_registry(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    build, work = two_models
    state = tmp_path / "state"
    edgekit.publish(build, local=True, state_dir=state)
    artifact = work / "build" / "a-x86_64"
    result = edgekit.package([artifact], name="com.example.A", output=tmp_path / "fresh", state_dir=state)
    assert result.component("com.example.A").version == "1.0.1"  # 1.0.0 is published, though not packaged here
    assert (
        edgekit.package([artifact], name="com.example.A", output=tmp_path / "other", state_dir=tmp_path / "none")
        .component("com.example.A")
        .version
        == "1.0.0"
    )


def test_deployment_cancel_and_its_hints(
    two_models: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    build, _ = two_models
    state = str(tmp_path / "state")
    assert main(["publish", "--local", "--build", str(build), "--state", state]) == 0
    argv = ["deploy", "--local", "--state", state, "--fleet", str(_fleet_file(tmp_path)), "--target", "thinggroup/edge"]
    assert main([*argv, "-c", "com.example.A.Inference=1.0.0", "--json"]) == 0
    capsys.readouterr()
    assert main([*argv, "-c", "com.example.A.Inference=1.0.0", "--json"]) == 0
    second = json.loads(capsys.readouterr().out)["deploymentId"]
    assert main(["deployment", "cancel", "nope", "--local", "--state", state]) == EXIT_CODES[DeploymentError]
    err = capsys.readouterr().err
    hint = f"edgekit deployment list --local --state {Path(state).absolute()}"
    assert hint in err
    assert main(hint.split()[1:]) == 0  # the hint's command works
    capsys.readouterr()
    assert main(["deployment", "cancel", second[:8], "--local", "--state", state, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"canceled": second}
    assert main(["deployment", "list", "--local", "--state", state, "--json"]) == 0
    statuses = {d["id"]: d["status"] for d in json.loads(capsys.readouterr().out)}
    assert statuses[second] == "CANCELED"


def _fleet_file(tmp_path: Path) -> Path:
    path = tmp_path / "one.yaml"
    path.write_text("schemaVersion: 1\nname: one\ndevices:\n  - {name: gw-01, profile: x86_64, groups: [edge]}\n")
    return path
