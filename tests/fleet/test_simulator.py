"""The fleet simulator end to end: real mosquitto, the fleet service over MQTT, device agents, faults injected for real."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from helpers import QUICK, eventually, make_mlp, zip_bytes

import edgekit
from edgekit.device.executor import StepSpec
from edgekit.errors import ConfigError
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet_file import Fault, FleetFile, load_fleet
from edgekit.greengrass.package import package, runtime_component
from edgekit.sim import SimulatedExecutor, Simulation

RUNTIME_COMPONENT = runtime_component("onnxruntime")  # the ONNX Runtime artifacts below get this runtime
MODEL = "com.example.Mlp"
APP = "com.example.App"


# --------------------------------------------------------------------------- inputs


def write_component(
    build: Path, lifecycle: dict[str, Any], name: str = APP, version: str = "1.0.0", files: dict[str, bytes] | None = None
) -> Path:
    """A build folder as `edgekit package` writes it, with one hand-made component for every linux device."""
    files = files if files is not None else {"app.zip": zip_bytes({"app.txt": b"hello " * 1000})}
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentDescription": "a simulator test component",
        "ComponentPublisher": "edgekit tests",
        "Manifests": [
            {
                "Platform": {"os": "linux"},
                "Lifecycle": lifecycle,
                "Artifacts": [
                    {"URI": f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{f}", "Unarchive": "ZIP"} for f in files
                ],
            }
        ],
    }
    (build / "recipes").mkdir(parents=True, exist_ok=True)
    (build / "recipes" / f"{name}-{version}.json").write_text(json.dumps(recipe, indent=1))
    folder = build / "artifacts" / name / version
    folder.mkdir(parents=True, exist_ok=True)
    for file, data in files.items():
        (folder / file).write_bytes(data)
    return build


def fleet(n: int, *, mode: str = "in_process", tls: bool = False, faults: list[dict[str, Any]] | None = None) -> FleetFile:
    half = max(1, n // 2)
    devices: list[dict[str, Any]] = [{"prefix": "pi-", "count": half, "profile": "rasp4b", "groups": ["line-1"]}]
    if n - half:
        devices.append({"prefix": "gw-", "count": n - half, "profile": "x86_64", "groups": ["line-1"]})
    return FleetFile.model_validate({"name": "test", "mode": mode, "tls": tls, "devices": devices, "faults": faults or []})


def spec(component: str = APP, version: str = "1.0.0", **job: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"targetArn": "thinggroup/line-1", "components": {component: {"componentVersion": version}}}
    if job:
        data["iotJobConfiguration"] = job
    return data


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


def outcomes(sim: Simulation, deployment_id: str) -> dict[str, tuple[str, dict[str, str]]]:
    assert sim.state is not None
    return {e.thing: (e.status, e.status_details) for e in sim.state.executions(deployment_id=deployment_id)}


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`edgekit compile` for x86_64 and rasp4b, then `edgekit package`: runtime, model and inference components."""
    import onnx

    work = tmp_path_factory.mktemp("packaged")
    onnx.save(make_mlp(), str(work / "mlp.onnx"))
    arts = [
        edgekit.compile(work / "mlp.onnx", t, work / "compiled", pipeline=QUICK, use_cache=False).artifact_dir
        for t in ("x86_64", "rasp4b")
    ]
    package(arts, name=MODEL, version="1.0.0", output=work / "greengrass-build")
    return work / "greengrass-build"


# --------------------------------------------------------------------------- the happy path


def test_a_packaged_model_reaches_20_devices_over_mtls(packaged: Path, tmp_path: Path) -> None:
    inference = f"{MODEL}.Inference"

    async def scenario() -> None:
        async with Simulation(fleet(20, tls=True), state_dir=tmp_path / "state") as sim:
            assert sim.broker_url.startswith("mqtts://")
            assert sim.status().connected == 20
            published = {(p.name, p.status) for p in sim.publish(packaged)}
            assert published == {(RUNTIME_COMPONENT, "published"), (MODEL, "published"), (inference, "published")}
            deployment = sim.deploy(spec(inference))
            summary = await sim.wait(deployment, timeout=60)
            assert summary.status == "COMPLETED" and summary.counts == {"SUCCEEDED": 20}
            status = sim.status()
            assert status.group_counts() == {"line-1": {"devices": 20, "SUCCEEDED": 20}}
            assert status.failures == [] and status.alive == 20
            for thing, (_, details) in outcomes(sim, deployment).items():
                assert details["detailed-deployment-status"] == "SUCCESSFUL", thing
                assert details["component:com_example_Mlp_Inference"] == "1.0.0 RUNNING"  # "." is not allowed in a key

            def reported() -> bool:
                return sim.bridge is not None and len(sim.bridge.last_status) == 20

            await eventually(reported, 10, "the devices' debounced status reports")
            assert sim.bridge is not None
            assert {c.name for c in sim.bridge.last_status["pi-01"].components} == {RUNTIME_COMPONENT, MODEL, inference}

    run(scenario())
    folder = FleetFolder.at(tmp_path / "state")
    # each device unpacked the manifest of its own platform
    assert (folder.device("pi-01") / "packages/artifacts-unarchived" / MODEL / "1.0.0/model-rasp4b/manifest.json").is_file()
    assert (folder.device("gw-01") / "packages/artifacts-unarchived" / MODEL / "1.0.0/model-x86_64/manifest.json").is_file()
    assert not folder.running_file.exists()


def test_subprocess_mode_runs_the_recipe_scripts(tmp_path: Path) -> None:
    build = write_component(
        tmp_path / "build",
        {
            "Install": "echo {iot:thingName} > {work:path}/installed",
            "Run": "exec sleep 600",
            "Shutdown": "echo stopped > {work:path}/stopped",
        },
    )

    async def scenario() -> None:
        async with Simulation(fleet(2, mode="subprocess"), state_dir=tmp_path / "state") as sim:
            assert sim.mode == "subprocess"
            sim.publish(build)
            summary = await sim.wait(sim.deploy(spec()), timeout=30)
            assert summary.counts == {"SUCCEEDED": 2}
            for dev in sim.devices.values():
                assert dev.agent is not None and dev.agent.state.components[APP].state == "RUNNING"

    run(scenario())
    for thing in ("pi-01", "gw-01"):
        work = FleetFolder.at(tmp_path / "state").device(thing) / "work" / APP
        assert (work / "installed").read_text().strip() == thing
        assert (work / "stopped").read_text().strip() == "stopped"  # a clean close runs Shutdown


# --------------------------------------------------------------------------- faults


def test_a_device_cut_off_during_a_rollout_catches_up(tmp_path: Path) -> None:
    build = write_component(tmp_path / "build", {"Install": "sleep 0.2"})

    async def scenario() -> None:
        async with Simulation(fleet(4), state_dir=tmp_path / "state", tick_s=0.2) as sim:
            sim.publish(build)
            victim = sim.devices["pi-02"]
            assert victim.client is not None
            connects = victim.client.connects
            await sim.cut_network("pi-02", 2.0)
            cut_at = time.monotonic()
            deployment = sim.deploy(spec())
            await eventually(lambda: victim.client is not None and not victim.client.connected, 10, "pi-02 offline")
            assert sim.status().connected == 3
            summary = await sim.wait(deployment, timeout=30)
            assert summary.counts == {"SUCCEEDED": 4}
            assert time.monotonic() - cut_at >= 2.0  # pi-02 finished only once it was back
            assert victim.client.connected and victim.client.connects == connects + 1
            assert any("network of pi-02 cut" in f for f in sim.status().faults)

    run(scenario())


def test_the_broker_restarts_mid_rollout_and_the_rollout_completes(tmp_path: Path) -> None:
    build = write_component(tmp_path / "build", {"Install": "sleep 0.5"})

    async def scenario() -> None:
        async with Simulation(fleet(8, tls=True), state_dir=tmp_path / "state", tick_s=0.2) as sim:
            sim.publish(build)
            deployment = sim.deploy(spec(jobExecutionsRolloutConfig={"maximumPerMinute": 60}))  # 11 at once, then 1/s
            await asyncio.sleep(0.4)  # jobs are being installed now
            assert sim.broker is not None
            pid = sim.broker.pid
            await sim.restart_broker()
            assert sim.broker.pid != pid and sim.broker_url.startswith("mqtts://")
            summary = await sim.wait(deployment, timeout=45)
            assert summary.counts == {"SUCCEEDED": 8}
            await eventually(lambda: sim.status().connected == 8, 30, "all 8 connected again")

    run(scenario())


def test_a_killed_device_resumes_from_its_folder(tmp_path: Path) -> None:
    build = write_component(tmp_path / "build", {"Install": "sleep 4"})

    async def scenario() -> None:
        async with Simulation(fleet(3), state_dir=tmp_path / "state", tick_s=0.2) as sim:
            sim.publish(build)
            deployment = sim.deploy(spec())
            assert sim.state is not None
            state = sim.state

            def installing() -> bool:
                execution = state.get_execution(deployment, "pi-01")
                return execution is not None and execution.status == "IN_PROGRESS"

            await eventually(installing, 30, "pi-01 installing")  # its Install runs for 4 s: the kill lands in it
            await sim.kill_device("pi-01")
            assert sim.status().alive == 2
            for _ in range(100):  # the two others finish; pi-01's job stays IN_PROGRESS: nobody finishes it for it
                if sim.state.status_counts(deployment) == {"SUCCEEDED": 2, "IN_PROGRESS": 1}:
                    break
                await asyncio.sleep(0.1)
            assert sim.state.status_counts(deployment) == {"SUCCEEDED": 2, "IN_PROGRESS": 1}
            await sim.restart_device("pi-01")
            summary = await sim.wait(deployment, timeout=30)
            assert summary.counts == {"SUCCEEDED": 3}
            dev = sim.devices["pi-01"]
            assert dev.restarts == 1 and dev.agent is not None and dev.agent.state.components[APP].state == "FINISHED"

    run(scenario())


def test_corrupted_downloads_fail_only_that_device_and_faults_run_on_schedule(tmp_path: Path) -> None:
    build = write_component(tmp_path / "build", {"Install": "true"})
    faults = [{"at": 0, "fault": "corrupt_downloads", "things": ["gw-02"], "count": 10}]

    async def scenario() -> None:
        async with Simulation(fleet(4, faults=faults), state_dir=tmp_path / "state", tick_s=0.2) as sim:
            sim.publish(build)
            await asyncio.sleep(0.1)  # the schedule applies the fault at t+0
            summary = await sim.wait(sim.deploy(spec()), timeout=30)
            assert summary.counts == {"SUCCEEDED": 3, "FAILED": 1}
            status, details = outcomes(sim, summary.id)["gw-02"]
            assert status == "FAILED"
            assert details["deployment-error-code"] == "ARTIFACT_CHECKSUM_MISMATCH"
            assert details["detailed-deployment-status"] == "FAILED_NO_STATE_CHANGE"
            [failure] = sim.status().failures
            assert (failure.thing, failure.error_code) == ("gw-02", "ARTIFACT_CHECKSUM_MISMATCH")
            assert sim.http is not None and sim.http.pending_corruptions() == 0

    run(scenario())


def test_failing_and_hanging_steps_are_modelled_by_the_recipe_in_process(tmp_path: Path) -> None:
    build = write_component(tmp_path / "build", {"Install": "exit {configuration:/FailInstall}"}, files={})
    recipe_path = build / "recipes" / f"{APP}-1.0.0.json"
    recipe = json.loads(recipe_path.read_text())
    recipe["ComponentConfiguration"] = {"DefaultConfiguration": {"FailInstall": "0"}}
    recipe_path.write_text(json.dumps(recipe))
    write_component(build, {"Install": {"Script": "sleep 30", "Timeout": 1}}, name="com.example.Hang", files={})

    async def scenario() -> None:
        async with Simulation(fleet(2), state_dir=tmp_path / "state", tick_s=0.2) as sim:
            sim.publish(build)
            failing = spec()  # Install runs once per version: the first deployment decides whether it fails
            failing["components"][APP]["configurationUpdate"] = {"merge": '{"FailInstall": "3"}'}
            broken = await sim.wait(sim.deploy(failing), timeout=20)
            assert broken.counts == {"FAILED": 2}
            _, details = outcomes(sim, broken.id)["pi-01"]
            assert details["detailed-deployment-status"] == "FAILED_ROLLBACK_COMPLETE"
            assert "COMPONENT_BROKEN" in details["deployment-error-stack"]
            ok = await sim.wait(sim.deploy(spec()), timeout=20)  # the default configuration: exit 0
            assert ok.counts == {"SUCCEEDED": 2}
            hang = await sim.wait(sim.deploy(spec("com.example.Hang")), timeout=30)
            assert hang.counts == {"FAILED": 2}
            _, details = outcomes(sim, hang.id)["gw-01"]
            assert "timed out" in details["deployment-failure-cause"]

    run(scenario())


# --------------------------------------------------------------------------- units


def test_the_simulated_executor_models_exit_sleep_and_sequences(tmp_path: Path) -> None:
    executor = SimulatedExecutor()

    def step(script: str) -> StepSpec:
        return StepSpec("c", "Install", script, {}, tmp_path, tmp_path / "log")

    async def scenario() -> None:
        assert (await executor.run(step("exit 3"), None)).exit_code == 3
        assert (await executor.run(step("pip install -r x.txt"), None)).exit_code == 0
        assert (await executor.run(step("false || exit 4"), None)).exit_code == 4
        assert (await executor.run(step("false && exit 4"), None)).exit_code == 1
        assert (await executor.run(step("sleep 0.01; true"), None)).exit_code == 0
        hung = await executor.run(step("sleep 5"), 0.05)
        assert hung.timed_out and not hung.ok
        finite = await executor.start(step("sleep 0.01; exit 2"))
        assert await finite.wait() == 2
        forever = await executor.start(step("python3 main.py"))
        await asyncio.sleep(0.02)
        await forever.stop(0)
        assert await forever.wait() < 0

    run(scenario())


def test_fleet_files_scale_and_validate_their_faults() -> None:
    demo = load_fleet("demo")
    assert demo.size == 18 and demo.mode == "in_process" and demo.tls
    big = demo.scaled(1000)
    assert big.size == 1000 and len(big.expand()) == 1000 and big.run_mode() == "in_process"
    assert "canary-pi-01" in {d.thing for d in big.expand()}
    assert [d.thing for d in big.expand() if d.emulated] == ["emu-pi-01"]  # named devices are kept, the emulated one too
    assert (
        FleetFile.model_validate({"name": "x", "devices": [{"prefix": "d-", "count": 3, "profile": "x86_64"}]}).run_mode()
        == "subprocess"
    )
    with pytest.raises(ConfigError):
        demo.scaled(2)
    with pytest.raises(ValueError, match="needs 'seconds'"):
        Fault.model_validate({"fault": "cut_network", "things": ["a"]})
    with pytest.raises(ValueError, match="not both"):
        Fault.model_validate({"fault": "kill_device", "things": ["a"], "fraction": 0.5})
    with pytest.raises(ValueError, match="broker"):
        Fault.model_validate({"fault": "restart_broker", "fraction": 0.5})


def test_a_fleet_server_runs_without_a_simulation_and_a_real_device_joins_it(tmp_path: Path) -> None:
    """The fleet server alone (what a simulation starts before its devices): a device agent of its own connects to
    its broker and HTTP server as a device on a real network would, and the fleet view follows."""
    from edgekit.device.agent import DeviceAgent
    from edgekit.device.jobs_runner import DeviceMqttRunner
    from edgekit.fleet.errors import FleetError
    from edgekit.fleet.fleet_server import FleetServer
    from edgekit.mqtt.client import Backoff, MqttClient

    build = write_component(tmp_path / "build", {"Install": "true"})
    devices = fleet(2).expand()
    folder = FleetFolder.at(tmp_path / "state")

    async def scenario() -> None:
        async with FleetServer(folder, devices=devices, name="test", tls=False, tick_s=0.2) as server:
            running = folder.running()
            assert running is not None and running["broker"] == server.broker_url and running["http"] == server.http_url
            with pytest.raises(FleetError, match="already runs"):
                await FleetServer(folder).start()
            server.publish(build)
            deployment = server.deploy(spec())
            device = devices[0]
            agent = DeviceAgent(
                device.thing, tmp_path / "device", device.platform, server.http_url, device.groups, fsync=False, settle_s=0.2
            )
            client = MqttClient(device.thing, reconnect=Backoff(initial=0.2, maximum=1.0))
            runner = DeviceMqttRunner(agent, client, owns_client=True)
            await runner.start()
            try:
                await client.connect(server.broker_url)
                deadline = time.monotonic() + 30
                while server.deployment(deployment).counts.get("SUCCEEDED") != 1:
                    assert time.monotonic() < deadline, server.deployment(deployment).counts
                    await asyncio.sleep(0.1)
            finally:
                await runner.stop()
                await agent.stop()
            view = server.view()
            assert view.device(device.thing).state == "succeeded" and view.device(device.thing).last_seen is not None
            assert view.device(devices[1].thing).state == "queued"  # the other device never came
            assert view.deployments[0].counts == {"SUCCEEDED": 1, "QUEUED": 1}
        assert folder.running() is None

    run(scenario())
