"""The public API: one function per stage, the same calls the CLI makes, used directly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import APP, write_build, write_fleet

import edgekit
from edgekit.errors import DeploymentError, ResolutionError
from edgekit.fleet.deploy import LocalDeployment
from edgekit.fleet.folder import FleetFolder
from edgekit.greengrass.deployment import build_spec


def test_the_public_surface_is_small_and_import_is_cheap() -> None:
    assert {"EdgekitError", "__version__", "compile", "run", "package", "publish", "deploy", "simulate"} <= set(edgekit.__all__)
    assert len(edgekit.__all__) <= 30  # the package's exports are edgekit.api's (tests/cli/test_cli_layout.py)
    code = "import sys, edgekit; print(sorted(m for m in sys.modules if m.split('.')[0] in ('onnx', 'onnxruntime', 'tvm', 'torch', 'boto3', 'typer', 'rich', 'paho')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_publish_deploy_and_simulate_a_local_fleet(tmp_path: Path) -> None:
    state, build, fleet = tmp_path / "state", write_build(tmp_path / "gg"), write_fleet(tmp_path / "fleet.yaml")
    result = edgekit.publish(build, local=True, state_dir=state)
    published = result.components
    assert result.destination == f"local fleet {FleetFolder.at(state).root}" and not result.dry_run
    assert [(c.name, c.version, c.status) for c in published] == [(APP, "1.0.0", "published")]
    assert [a.name for a in published[0].artifacts] == ["app.bin"] and published[0].artifacts[0].size == 4 * 4096
    again = edgekit.publish(build, local=True, state_dir=state)
    assert [c.status for c in again.components] == ["unchanged"]

    lines: list[str] = []
    spec = build_spec("thinggroup/line-1", [f"{APP}=1.0.0"], rollout="100/min")
    deployed = edgekit.deploy(spec, local=True, state_dir=state, fleet=fleet, progress=lines.append)
    assert isinstance(deployed, LocalDeployment) and deployed.counts == {"QUEUED": 4} and deployed.running is None
    assert lines == ["pre-flight: 4 device(s) reached, 0 with problems"]

    run = edgekit.simulate(fleet, state_dir=state, until_done=True, duration=60, tick_s=0.2)
    assert run.final.view.deployments[0].counts == {"SUCCEEDED": 4}
    assert run.final.devices == 4 and run.state == FleetFolder.at(state).root


def test_a_failed_preflight_writes_nothing(tmp_path: Path) -> None:
    state, build, fleet = tmp_path / "state", write_build(tmp_path / "gg"), write_fleet(tmp_path / "fleet.yaml")
    edgekit.publish(build, local=True, state_dir=state)
    with pytest.raises(ResolutionError, match="NO_AVAILABLE_COMPONENT_VERSION|only 1.0.0"):
        edgekit.deploy({"targetArn": "thinggroup/line-1", "components": {APP: {"componentVersion": "2.0.0"}}},
                       local=True, state_dir=state, fleet=fleet)  # fmt: skip
    folder = FleetFolder.at(state)
    with folder.open_state() as fleet_state:
        assert fleet_state.deployments() == [] and fleet_state.things() == []


def test_the_request_builder_names_the_flag() -> None:
    with pytest.raises(DeploymentError, match="--deploy 'oops': expected NAME=VERSION"):
        build_spec("thinggroup/x", ["oops"], flag="--deploy")
    with pytest.raises(DeploymentError, match="--merge 'b={}': 'b' is not a component"):
        build_spec("thinggroup/x", ["a=1.0.0"], merge=["b={}"])
    spec = build_spec("thinggroup/x", {"a": "1.0.0"}, merge=['a={"k": "v"}'], failure_handling="DO_NOTHING", timeout_minutes=5)
    request = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert request["components"]["a"]["configurationUpdate"]["merge"] == '{"k": "v"}'
    assert request["deploymentPolicies"]["failureHandlingPolicy"] == "DO_NOTHING"
    assert request["iotJobConfiguration"]["timeoutConfig"] == {"inProgressTimeoutInMinutes": 5}
