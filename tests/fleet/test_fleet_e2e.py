"""The fleet end to end over MQTT: real mosquitto, the fleet service + HTTP API on SQLite, real device agents.

Every test runs a :class:`FleetMqttBridge` (the IoT Jobs API in the Greengrass namespace) and devices made with
:func:`run_device` against a mosquitto on a free port, deploying components packaged here by ``edgekit
package`` (a tiny ONNX model compiled for onnxruntime) and published with ``publish_local``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import onnx
import pytest
from helpers import QUICK, eventually, make_mlp, requires

import edgekit
from edgekit.device.agent_state import DeviceState
from edgekit.device.jobs_runner import DeviceMqttRunner, run_device
from edgekit.fleet import FakeClock, FleetHttpServer, FleetService, FleetState, Registry, publish_local
from edgekit.fleet.jobs_api import FleetMqttBridge
from edgekit.greengrass.package import package, runtime_component
from edgekit.mqtt import topics
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import NOT_AUTHORIZED, Backoff, MqttClient, MqttMessage, connect
from edgekit.mqtt.payloads import (
    DescribeJobExecutionResponse,
    GetPendingJobExecutionsResponse,
    JobsRejected,
    UpdateJobExecutionRequest,
    decode,
)
from edgekit.mqtt.tls import SERVICE_IDENTITY, TlsMaterial

pytestmark = requires("mosquitto")  # skipped without it; CI=true fails instead

PLATFORM = {"os": "linux", "architecture": "amd64"}
MODEL = "com.example.Classifier"
INFERENCE = f"{MODEL}.Inference"
APP = "com.example.App"
GROUP = "line"
RUNTIME_COMPONENT = runtime_component("onnxruntime")  # the ONNX Runtime artifacts below get this runtime
# settle fast, kill fast, retry downloads at once, don't fsync: the agent's defaults are for real devices
AGENT = {"settle_s": 0.2, "kill_grace_s": 0.5, "download_backoff_s": 0.0, "fsync": False, "http_timeout_s": 10.0}
RUNNER = {"request_timeout_s": 1.0, "request_attempts": 10, "retry_delay_s": 0.1, "status_debounce_s": 0.05}
FAST = {"reconnect": Backoff(initial=0.05, maximum=0.5, rng=random.Random(0))}
INFERENCE_CONFIG = {"OutputPath": "aggregates.jsonl", "MaxInferences": "3", "IntervalSeconds": "0", "WindowSeconds": "60"}


# --------------------------------------------------------------------------- components, packaged once


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``edgekit package`` of a compiled MLP; the runtime's Install makes a venv stand-in instead of pip installing."""
    root = tmp_path_factory.mktemp("packaged")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEKIT_CACHE_DIR", str(root / "cache"))
        onnx.save(make_mlp(), str(root / "mlp.onnx"))
        artifact = edgekit.compile(root / "mlp.onnx", "x86_64", root / "build", pipeline=QUICK).artifact_dir
        package([artifact], name=MODEL, version="1.0.0", output=root / "gg")
    (runtime_recipe,) = (root / "gg" / "recipes").glob(f"{RUNTIME_COMPONENT}-*.json")
    recipe = json.loads(runtime_recipe.read_text())
    recipe["Manifests"][0]["Lifecycle"]["Install"] = {
        "Script": (
            "test -f {artifacts:decompressedPath}/runtime/requirements-{configuration:/Backend}.txt && "
            "mkdir -p {work:path}/venv/bin && "
            f"printf '#!/bin/sh\\nexec {sys.executable} \"$@\"\\n' > {{work:path}}/venv/bin/python && "
            "chmod +x {work:path}/venv/bin/python"
        ),
        "Timeout": 30,
    }
    runtime_recipe.write_text(json.dumps(recipe, indent=2))
    return root / "gg"


@pytest.fixture(scope="module")
def apps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``com.example.App`` 1.0.0 (a Run that keeps running), 2.0.0 (its Install exits 1), 3.0.0 (its Install takes 1 s)."""
    build = tmp_path_factory.mktemp("apps")
    (build / "recipes").mkdir()
    versions = [
        ("1.0.0", {"Run": "exec sleep 600"}),
        ("2.0.0", {"Install": "exit 1", "Run": "exec sleep 600"}),
        ("3.0.0", {"Install": "sleep 1", "Run": "exec sleep 600"}),
    ]
    for version, lifecycle in versions:
        recipe = {
            "RecipeFormatVersion": "2020-01-25",
            "ComponentName": APP,
            "ComponentVersion": version,
            "ComponentDescription": "a long-running test service",
            "ComponentPublisher": "edgekit tests",
            "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": lifecycle}],
        }
        (build / "recipes" / f"{APP}-{version}.json").write_text(json.dumps(recipe))
    return build


# --------------------------------------------------------------------------- the fleet


class Fleet:
    """A broker, the fleet state + service + HTTP API, the bridge(s) and the devices of one test."""

    def __init__(self, root: Path, builds: list[Path], *, tls: TlsMaterial | None = None, clock: FakeClock | None = None) -> None:
        self.root = root
        self.tls = tls
        self.clock = clock
        self.broker = MosquittoBroker(root / "broker", tls=tls, acl=tls is not None)
        self.broker.start()
        self.state = FleetState(root / "fleet.db")
        self.service = FleetService(self.state, clock)
        self.http = FleetHttpServer(Registry(self.state, root / "store")).start()
        for build in builds:
            publish_local(build, self.state, root / "store")
        self.bridges: list[FleetMqttBridge] = []
        self.devices: dict[str, DeviceMqttRunner] = {}
        self.clients: list[MqttClient] = []

    def register(self, count: int, group: str = GROUP) -> list[str]:
        things = [f"dev-{i:03d}" for i in range(count)]
        with self.state.transaction():
            for thing in things:
                self.service.register_thing(thing, "x86", PLATFORM, [group])
        if self.tls is not None:
            for thing in things:
                self.tls.add_device(thing)
        return things

    async def start_bridge(self, tick_s: float = 0.1, *, connect_first: bool = True) -> FleetMqttBridge:
        """The service's bridge; with ``connect_first=False`` it subscribes before the client connects, so the requests
        the broker queued for the service's persistent session while it was away are handled too."""
        tls = self.tls.service if self.tls is not None else None
        client = MqttClient(SERVICE_IDENTITY, tls=tls, reconnect=FAST["reconnect"])
        self.clients.append(client)
        if connect_first:
            await client.connect(self.broker.service_url)
        bridge = FleetMqttBridge(self.service, client, tick_s=tick_s)
        await bridge.start()
        self.bridges.append(bridge)
        if not connect_first:
            await client.connect(self.broker.url)
        return bridge

    async def stop_bridges(self) -> None:
        for bridge in self.bridges:
            await bridge.stop()
        for client in self.clients:
            await client.disconnect()
        self.bridges.clear()
        self.clients.clear()

    async def start_device(self, thing: str, *, mode: str = "subprocess", clean_start: bool = False) -> DeviceMqttRunner:
        runner = await run_device(
            thing,
            self.root / "devices" / thing,
            PLATFORM,
            self.http.url,
            self.broker.url,
            tls=self.tls.device(thing) if self.tls is not None else None,
            groups=[GROUP],
            mode="in_process" if mode == "in_process" else "subprocess",
            clean_start=clean_start,
            agent_options=AGENT,
            client_options=FAST,
            runner_options=RUNNER,
        )
        self.devices[thing] = runner
        return runner

    async def stop_device(self, thing: str) -> None:
        await self.devices.pop(thing).stop()

    def deploy(self, components: dict[str, Any], **job: Any) -> str:
        body: dict[str, Any] = {
            "targetArn": f"thinggroup/{GROUP}",
            "components": components,
            "deploymentPolicies": {"failureHandlingPolicy": "ROLLBACK"},
        }
        if job:
            body["iotJobConfiguration"] = job
        return self.service.create_deployment(body)

    def statuses(self, job_id: str) -> dict[str, str]:
        return {e.thing: e.status for e in self.state.executions(deployment_id=job_id)}

    def details(self, job_id: str, thing: str) -> dict[str, str]:
        record = self.state.get_execution(job_id, thing)
        assert record is not None
        return record.status_details

    async def aclose(self) -> None:
        for thing in list(self.devices):
            await self.stop_device(thing)
        await self.stop_bridges()

    def close(self) -> None:
        self.http.stop()
        self.state.close()
        self.broker.stop()


@pytest.fixture
def make_fleet(tmp_path: Path, packaged: Path, apps: Path) -> Iterator[Callable[..., Fleet]]:
    made: list[Fleet] = []

    def make(*, tls: bool = False, clock: FakeClock | None = None) -> Fleet:
        material = TlsMaterial.create(tmp_path / "tls") if tls else None
        fleet = Fleet(tmp_path / "fleet", [packaged, apps], tls=material, clock=clock)
        made.append(fleet)
        return fleet

    yield make
    for fleet in made:
        fleet.close()


def run(fleet: Fleet, scenario: Callable[[], Coroutine[Any, Any, None]], timeout: float = 45.0) -> None:
    async def main() -> None:
        try:
            await scenario()
        finally:
            await fleet.aclose()

    asyncio.run(asyncio.wait_for(main(), timeout))


async def until_done(fleet: Fleet, job_id: str, things: list[str], timeout: float = 30.0) -> dict[str, str]:
    terminal = {"SUCCEEDED", "FAILED", "REJECTED", "TIMED_OUT", "CANCELED"}
    try:

        def finished() -> bool:
            statuses = fleet.statuses(job_id)
            return all(statuses.get(t) in terminal for t in things)

        await eventually(finished, timeout)
    except AssertionError:
        counts = Counter(fleet.statuses(job_id).get(t) for t in things)
        raise AssertionError(
            f"job {job_id} did not finish on {len(things)} thing(s) within {timeout} s: {dict(counts)}"
        ) from None
    return fleet.statuses(job_id)


async def ran(runners: list[DeviceMqttRunner], count: int = 1) -> None:
    """Wait until every runner heard the service accept its final update of ``count`` jobs (it lands after the commit)."""
    await eventually(lambda: all(len(r.history) >= count for r in runners), 10, f"{count} job(s) reported")


def on_disk(fleet: Fleet, thing: str) -> DeviceState:
    return DeviceState.model_validate_json((fleet.root / "devices" / thing / "config" / "state.json").read_text())


def _left_running(fleet: Fleet, thing: str) -> bool:
    """The inference component's state on disk is past RUNNING."""
    return on_disk(fleet, thing).components[INFERENCE].state != "RUNNING"


def inference(version: str = "1.0.0") -> dict[str, Any]:
    return {INFERENCE: {"componentVersion": version, "configurationUpdate": {"merge": json.dumps(INFERENCE_CONFIG)}}}


def app(version: str) -> dict[str, Any]:
    return {APP: {"componentVersion": version}}


# --------------------------------------------------------------------------- 1. a deployment end to end


def test_a_deployment_reaches_every_device_over_mqtt(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    things = fleet.register(3)

    async def scenario() -> None:
        bridge = await fleet.start_bridge()
        consumer = await connect(fleet.broker.url, "aggregates-consumer", clean_start=True)
        await consumer.subscribe("devices/+/inference", qos=1)
        runners = [await fleet.start_device(t) for t in things]
        job = fleet.deploy(inference())
        statuses = await until_done(fleet, job, things)
        assert statuses == dict.fromkeys(things, "SUCCEEDED")
        assert fleet.service.deployment(job).status == "COMPLETED"
        await ran(runners)
        for thing, runner in zip(things, runners, strict=True):
            details = fleet.details(job, thing)
            assert details["detailed-deployment-status"] == "SUCCESSFUL"
            assert details[f"component:{INFERENCE}".replace(".", "_")] in ("1.0.0 RUNNING", "1.0.0 FINISHED")
            assert [(r.job_id, r.status, r.reported) for r in runner.history] == [(job, "SUCCEEDED", True)]
            assert await runner.agent.wait_for(INFERENCE, {"FINISHED", "BROKEN"}, 20)  # 3 inferences, then it exits
            # the agent writes its state file off the loop, soon after the transition (docs/device-agent.md)
            await eventually(functools.partial(_left_running, fleet, thing), 5)
            state = on_disk(fleet, thing)
            assert {n: (c.version, c.state) for n, c in state.components.items()} == {
                RUNTIME_COMPONENT: ("0.1.0", "FINISHED"),
                MODEL: ("1.0.0", "FINISHED"),
                INFERENCE: ("1.0.0", "FINISHED"),
            }
            out = fleet.root / "devices" / thing / "work" / INFERENCE / "aggregates.jsonl"
            assert json.loads(out.read_text().splitlines()[0])["count"] == 3
        # the bridge heard every device's status: the deployment's result, then the component that finished since

        def reported(thing: str) -> bool:
            status = bridge.last_status.get(thing)
            if status is None or status.deployment is None or status.deployment.status != "SUCCEEDED":
                return False
            return {c.name: c.state for c in status.components}.get(INFERENCE) == "FINISHED"

        await eventually(lambda: all(reported(t) for t in things), 10, "device status")
        status = bridge.last_status[things[0]]
        assert status.overall_status == "HEALTHY" and status.deployment is not None
        assert status.deployment.job_id == job and status.deployment.detailed_status == "SUCCESSFUL"
        assert {c.name: c.state for c in status.components}[INFERENCE] == "FINISHED"
        assert bridge.stats.rejected == {} and bridge.stats.publish_failures == 0
        # each device's window summary went from the component (awsiotsdk PublishToIoTCore) through the agent's IPC
        # uplink spool over the device's own MQTT connection
        summaries = {}
        for _ in things:
            message = await consumer.get_message(timeout=15)
            summary = json.loads(message.payload)
            assert message.topic == f"devices/{summary['thing']}/inference"
            summaries[summary["thing"]] = summary["count"]
        assert summaries == dict.fromkeys(things, 3)
        ipcs = [runner.agent.ipc for runner in runners if runner.agent.ipc is not None]
        assert len(ipcs) == len(runners)
        await eventually(lambda: all(ipc.iot_core.pending == 0 for ipc in ipcs), 10, "the uplink spools emptied")
        await consumer.disconnect()

    run(fleet, scenario)


# --------------------------------------------------------------------------- 2. rollback


def test_a_failing_install_is_rolled_back_and_reported(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    things = fleet.register(2)

    async def scenario() -> None:
        await fleet.start_bridge()
        runners = [await fleet.start_device(t) for t in things]
        first = fleet.deploy(app("1.0.0"))
        assert await until_done(fleet, first, things) == dict.fromkeys(things, "SUCCEEDED")
        pids = {t: on_disk(fleet, t).components[APP].process_groups for t in things}
        second = fleet.deploy(app("2.0.0"))
        assert fleet.service.deployment(first).status == "INACTIVE"
        assert await until_done(fleet, second, things) == dict.fromkeys(things, "FAILED")
        await ran(runners, 2)
        for thing, runner in zip(things, runners, strict=True):
            details = fleet.details(second, thing)
            assert details["detailed-deployment-status"] == "FAILED_ROLLBACK_COMPLETE"
            assert "COMPONENT_UPDATE_ERROR" in details["deployment-error-stack"]
            assert details[f"component:{APP}".replace(".", "_")] == "1.0.0 RUNNING"
            component = runner.agent.state.components[APP]
            assert (component.version, component.state) == ("1.0.0", "RUNNING")
            assert component.process_groups and component.process_groups != pids[thing]  # stopped, then started again
            assert [r.status for r in runner.history] == ["SUCCEEDED", "FAILED"]

    run(fleet, scenario)


# --------------------------------------------------------------------------- 3. digest mismatch


def test_a_corrupted_download_fails_only_that_device(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    things = fleet.register(3)
    bad = things[1]
    fleet.http.corrupt_downloads(bad, 100)

    async def scenario() -> None:
        await fleet.start_bridge()
        for thing in things:
            await fleet.start_device(thing)
        job = fleet.deploy(inference())
        statuses = await until_done(fleet, job, things)
        assert statuses == {things[0]: "SUCCEEDED", bad: "FAILED", things[2]: "SUCCEEDED"}
        details = fleet.details(job, bad)
        assert details["deployment-error-code"] == "ARTIFACT_CHECKSUM_MISMATCH"
        assert details["detailed-deployment-status"] == "FAILED_NO_STATE_CHANGE"
        assert fleet.devices[bad].agent.state.components == {}
        assert fleet.service.deployment(job).status == "COMPLETED"

    run(fleet, scenario)


# --------------------------------------------------------------------------- 4. offline devices catch up


def test_devices_offline_during_the_rollout_catch_up_on_connect(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    online, dropped, never = fleet.register(3)

    async def scenario() -> None:
        bridge = await fleet.start_bridge()
        await fleet.start_device(online)
        # a device that was connected, without a persistent session, and went away: the broker keeps nothing for it
        await fleet.start_device(dropped, clean_start=True)
        await fleet.stop_device(dropped)
        job = fleet.deploy(app("1.0.0"))
        await until_done(fleet, job, [online])
        await eventually(lambda: bridge.stats.notifications >= 3, 30, "notifications")
        # both were notified (released) while offline, and nothing ran there
        assert fleet.statuses(job) == {online: "SUCCEEDED", dropped: "QUEUED", never: "QUEUED"}
        assert all(e.notified_at is not None for e in fleet.state.executions(deployment_id=job))
        # the online device's 'finished' notification is built in the bridge's state thread: wait until none is left
        # in flight (the count holds still) before counting what the reconnects bring
        notified = -1
        while notified != bridge.stats.notifications:  # still for a second (a loaded machine's thread may lag)
            notified = bridge.stats.notifications
            await asyncio.sleep(1.0)
        runners = [await fleet.start_device(dropped, clean_start=True), await fleet.start_device(never, clean_start=True)]
        assert await until_done(fleet, job, [dropped, never]) == dict.fromkeys([online, dropped, never], "SUCCEEDED")
        await ran(runners)
        for runner in runners:
            assert [r.job_id for r in runner.history] == [job]
            assert runner.agent.state.components[APP].state == "RUNNING"
        # they asked ($next on connect); nobody told them again before (only the 'finished' notifications since: at
        # most one a device — the bridge sends a thing one message per flush, and a flush may cover both its changes)
        assert bridge.stats.notifications - notified <= 2

    run(fleet, scenario)


def test_devices_ask_again_after_the_broker_restarts(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    things = fleet.register(2)

    async def scenario() -> None:
        await fleet.start_bridge()
        runners = [await fleet.start_device(t) for t in things]
        fleet.broker.stop()
        job = fleet.deploy(app("1.0.0"))  # released and notified while nobody can hear it
        await asyncio.sleep(0.3)
        fleet.broker.start()  # same port, same persistence: everyone reconnects
        assert await until_done(fleet, job, things) == dict.fromkeys(things, "SUCCEEDED")
        await ran(runners)
        assert all(r.client.connects == 2 for r in runners)

    run(fleet, scenario)


def test_a_device_restarted_mid_deployment_finishes_it_once(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    (thing,) = fleet.register(1)

    async def scenario() -> None:
        await fleet.start_bridge()
        await fleet.start_device(thing)
        job = fleet.deploy(app("3.0.0"))  # its Install takes 1 s
        await eventually(lambda: fleet.statuses(job)[thing] == "IN_PROGRESS", 10, "started")
        await eventually(lambda: APP in fleet.devices[thing].agent.state.components, 10, "installing")
        await fleet.stop_device(thing)  # the nucleus dies during the Install
        assert on_disk(fleet, thing).in_progress is not None
        runner = await fleet.start_device(thing)  # resumes: previous set back, the job again from the start
        assert await until_done(fleet, job, [thing]) == {thing: "SUCCEEDED"}
        await ran([runner])
        assert [(r.job_id, r.status, r.reported) for r in runner.history] == [(job, "SUCCEEDED", True)]
        component = runner.agent.state.components[APP]
        assert (component.version, component.state) == ("3.0.0", "RUNNING")

    run(fleet, scenario)


# --------------------------------------------------------------------------- 5. the service restarts mid-rollout


def test_a_restarted_service_finishes_the_rollout(make_fleet: Callable[..., Fleet]) -> None:
    clock = FakeClock(time.time())
    fleet = make_fleet(clock=clock)
    things = fleet.register(3)
    db, store, port = fleet.state.path, fleet.root / "store", fleet.http.port

    async def restart(downtime: float = 0.0) -> None:
        await fleet.stop_bridges()
        fleet.http.stop()
        fleet.state.close()
        await asyncio.sleep(downtime)
        fleet.state = FleetState(db)
        fleet.service = FleetService(fleet.state, clock)
        fleet.http = FleetHttpServer(Registry(fleet.state, store), port=port).start()
        await fleet.start_bridge(connect_first=False)

    async def scenario() -> None:
        await fleet.start_bridge()
        for thing in things:
            await fleet.start_device(thing)
        job = fleet.deploy(app("1.0.0"), jobExecutionsRolloutConfig={"maximumPerMinute": 1})
        await until_done(fleet, job, things[:1])
        await asyncio.sleep(0.5)  # ticks: the rate holds the others back
        assert fleet.statuses(job) == {things[0]: "SUCCEEDED", things[1]: "QUEUED", things[2]: "QUEUED"}

        await restart()  # between two releases
        clock.advance(61)
        await eventually(lambda: fleet.statuses(job)[things[1]] == "IN_PROGRESS", 10, "second release")
        await eventually(lambda: fleet.devices[things[1]].agent.state.components.get(APP) is not None, 10, "second device busy")
        # while the second device is applying: its final update goes unanswered (retried after 1 s), the broker keeps
        # both copies for the service's session, the new bridge answers the first and refuses the copy (TerminalStateReached)
        await restart(downtime=1.5)
        assert await until_done(fleet, job, things[1:2]) == {things[0]: "SUCCEEDED", things[1]: "SUCCEEDED", things[2]: "QUEUED"}

        clock.advance(61)
        assert await until_done(fleet, job, things) == dict.fromkeys(things, "SUCCEEDED")
        assert fleet.service.deployment(job).status == "COMPLETED"
        await ran(list(fleet.devices.values()))
        for thing in things:  # each applied exactly once
            assert [(r.status, r.reported) for r in fleet.devices[thing].history] == [("SUCCEEDED", True)]

    run(fleet, scenario)


# --------------------------------------------------------------------------- 6. abort


def test_an_aborted_rollout_never_reaches_the_devices_it_had_not_released(make_fleet: Callable[..., Fleet]) -> None:
    clock = FakeClock(time.time())
    fleet = make_fleet(clock=clock)
    things = fleet.register(5)
    failing, released, held = things[0], things[:3], things[3:]
    fleet.http.corrupt_downloads(failing, 100)

    async def scenario() -> None:
        bridge = await fleet.start_bridge()
        for thing in things:
            await fleet.start_device(thing)
        criteria = [{"failureType": "FAILED", "action": "CANCEL", "thresholdPercentage": 30, "minNumberOfExecutedThings": 1}]
        job = fleet.deploy(
            inference(), jobExecutionsRolloutConfig={"maximumPerMinute": 12}, abortConfig={"criteriaList": criteria}
        )
        await until_done(fleet, job, released)  # 12 per minute: a first burst of 3
        await eventually(lambda: fleet.service.deployment(job).status == "CANCELED", 5, "abort")
        clock.advance(600)  # the rate would have released everyone by now
        await asyncio.sleep(0.5)
        statuses = fleet.statuses(job)
        assert statuses[failing] == "FAILED"
        assert {statuses[t] for t in released[1:]} <= {"SUCCEEDED", "CANCELED"}
        assert {statuses[t] for t in held} == {"CANCELED"}
        reason = fleet.service.deployment(job).status_reason
        assert reason is not None and reason["failureType"] == "FAILED" and reason["failures"] == 1
        for thing in held:
            record = fleet.state.get_execution(job, thing)
            assert record is not None and record.notified_at is None
            runner = fleet.devices[thing]
            assert runner.history == [] and runner.agent.last_deployment is None and runner.agent.state.components == {}
        assert set(bridge.last_status) == set(things)  # everyone is connected and reporting

    run(fleet, scenario)


# --------------------------------------------------------------------------- 7. mTLS + ACL


def test_the_flow_over_mutual_tls_with_per_device_acls(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet(tls=True)
    things = fleet.register(2)

    async def scenario() -> None:
        assert fleet.broker.url.startswith("mqtts://")
        bridge = await fleet.start_bridge()
        runners = [await fleet.start_device(t) for t in things]
        job = fleet.deploy(app("1.0.0"))
        assert await until_done(fleet, job, things) == dict.fromkeys(things, "SUCCEEDED")
        await eventually(lambda: set(bridge.last_status) == set(things), 5, "device status")
        # a device can't act for another one: the broker refuses the publish (MQTT 5 PUBACK 135)
        intruder = runners[0].client
        forged = UpdateJobExecutionRequest(status="FAILED", client_token="forged")
        assert await intruder.publish(topics.update(things[1], job), forged) == NOT_AUTHORIZED
        assert fleet.statuses(job)[things[1]] == "SUCCEEDED"

    run(fleet, scenario)


# --------------------------------------------------------------------------- the Jobs API's refusals


def test_the_bridge_refuses_bad_requests_and_keeps_serving(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    (thing,) = fleet.register(1)

    async def scenario() -> None:
        bridge = await fleet.start_bridge()
        job = fleet.deploy(app("1.0.0"))
        await eventually(lambda: bridge.stats.notifications >= 1, 5, "release")
        async with await connect(fleet.broker.url, thing, clean_start=True) as device:
            await device.subscribe(f"$aws/things/{thing}/jobs/#", 1)

            async def ask_with(sender: MqttClient, topic: str, payload: bytes | str) -> tuple[str, bytes]:
                await sender.publish(topic, payload)
                while True:
                    message = await device.get_message(timeout=5)
                    if message.topic.startswith(topic + "/"):
                        return message.topic, message.payload

            async def ask(topic: str, payload: bytes | str) -> tuple[str, bytes]:
                return await ask_with(device, topic, payload)

            get = topics.get(thing)
            reply_topic, payload = await ask(get, b"{not json")
            assert reply_topic == topics.rejected(get) and decode(JobsRejected, payload).code == "InvalidJson"
            reply_topic, payload = await ask(get, b'{"schemaVersion": 1, "clientToken": "t-1", "bogus": true}')
            refused = decode(JobsRejected, payload)
            assert reply_topic == topics.rejected(get) and (refused.code, refused.client_token) == ("InvalidRequest", "t-1")
            assert "bogus" in refused.message
            # oversized: over AWS IoT Core's 128 KB (a lenient client can send it; mosquitto passes it on)
            lenient = MqttClient(f"{thing}-lenient", strict=False, clean_start=True)
            await lenient.connect(fleet.broker.url)
            try:
                reply_topic, payload = await ask_with(
                    lenient, get, b'{"schemaVersion": 1, "pad": "' + b"x" * (130 * 1024) + b'"}'
                )
            finally:
                await lenient.disconnect()
            refused = decode(JobsRejected, payload)
            assert (refused.code, refused.client_token) == ("InvalidRequest", None) and "131" in refused.message
            update = topics.update(thing, job)
            stale = UpdateJobExecutionRequest(status="IN_PROGRESS", expected_version=7, client_token="t-3")
            reply_topic, payload = await ask(update, stale.model_dump_json(by_alias=True, exclude_none=True))
            mismatch = decode(JobsRejected, payload)
            assert reply_topic == topics.rejected(update) and mismatch.code == "VersionMismatch"
            assert mismatch.execution_state is not None and mismatch.execution_state.version_number == 1
            assert mismatch.client_token == "t-3"
            reply_topic, payload = await ask(topics.get_pending(thing), b'{"schemaVersion": 1, "clientToken": "t-4"}')
            pending = decode(GetPendingJobExecutionsResponse, payload)
            assert [j.job_id for j in pending.queued_jobs] == [job] and pending.client_token == "t-4"
            reply_topic, payload = await ask(get, b'{"schemaVersion": 1, "clientToken": "t-5"}')
            described = decode(DescribeJobExecutionResponse, payload)
            assert described.execution is not None and described.execution.job_document is not None
            assert described.execution.job_document.components[APP].version == "1.0.0"
            # what a real Greengrass nucleus sends: the Jobs API's own payload, no schemaVersion
            reply_topic, payload = await ask(get, b'{"clientToken": "t-6", "includeJobDocument": true}')
            assert reply_topic == topics.accepted(get)
            assert decode(DescribeJobExecutionResponse, payload).client_token == "t-6"
        assert bridge.stats.rejected["InvalidRequest"] == 2 and bridge.stats.rejected["InvalidJson"] == 1

    run(fleet, scenario)


@pytest.mark.parametrize(
    ("hostile", "why"),
    [
        (b'{"clientToken": "evil", "x": ' + b"[" * 60_000 + b"]" * 60_000 + b"}", "nested deeper than 64 levels"),
        (b'{"clientToken": "evil", "x": ' + b"9" * 5_000 + b"}", "over the 1000-character limit"),  # issue 19 item 6
    ],
    ids=["nested", "big-int"],
)
def test_a_hostile_request_costs_only_its_own_reply(make_fleet: Callable[..., Fleet], hostile: bytes, why: str) -> None:
    fleet = make_fleet()
    attacker, victim = fleet.register(2)

    async def scenario() -> None:
        bridge = await fleet.start_bridge()
        fleet.deploy(app("1.0.0"))
        await eventually(lambda: bridge.stats.notifications >= 2, 5, "release")
        async with (
            await connect(fleet.broker.url, attacker, clean_start=True) as bad,
            await connect(fleet.broker.url, victim, clean_start=True) as good,
        ):
            await bad.subscribe(f"$aws/things/{attacker}/jobs/#", 1)
            await good.subscribe(f"$aws/things/{victim}/jobs/#", 1)
            nested = hostile
            honest = b'{"schemaVersion": 1, "clientToken": "t-1"}'
            for _ in range(3):  # sent together, so they share the bridge's batches
                await asyncio.gather(
                    bad.publish(topics.get_pending(attacker), nested), good.publish(topics.get_pending(victim), honest)
                )

            async def reply(client: MqttClient, request: str) -> MqttMessage:
                while True:  # skip the echo of the request itself (the device is subscribed to jobs/#)
                    message = await client.get_message(timeout=5)
                    if message.topic.startswith(request + "/"):
                        return message

            for _ in range(3):
                refused = await reply(bad, topics.get_pending(attacker))
                assert refused.topic == topics.rejected(topics.get_pending(attacker))
                rejection = decode(JobsRejected, refused.payload)
                assert rejection.code == "InvalidJson" and why in rejection.message
                answered = await reply(good, topics.get_pending(victim))
                assert answered.topic == topics.accepted(topics.get_pending(victim))
                assert decode(GetPendingJobExecutionsResponse, answered.payload).client_token == "t-1"
        assert bridge.stats.rejected["InvalidJson"] == 3

    run(fleet, scenario)


# --------------------------------------------------------------------------- many devices


def test_many_simulated_devices(make_fleet: Callable[..., Fleet]) -> None:
    fleet = make_fleet()
    things = fleet.register(100)

    async def scenario() -> None:
        bridge = await fleet.start_bridge(tick_s=0.2)
        await asyncio.gather(*(fleet.start_device(t, mode="in_process") for t in things))
        started = time.monotonic()
        job = fleet.deploy(inference())
        statuses = await until_done(fleet, job, things, timeout=40)
        elapsed = time.monotonic() - started
        await ran(list(fleet.devices.values()))
        assert set(statuses.values()) == {"SUCCEEDED"}
        runs = [fleet.devices[t].history[0] for t in things]
        assert all(r.reported for r in runs)
        mean = sum(r.total_s for r in runs) / len(runs)
        print(
            f"\n{len(things)} devices in {elapsed:.2f} s; per device: mean {mean:.3f} s, max {max(r.total_s for r in runs):.3f} s; "
            f"{bridge.stats.batches} batches (largest {bridge.stats.largest_batch}) for {bridge.stats.requests} requests"
        )

    run(fleet, scenario, timeout=55)
