"""The device agent end to end: real HTTP over loopback, real subprocesses, real files.

The registry fixture (tests/device_registry.py) serves the fleet service's contract from memory (``/v1/components/...``,
``/v1/artifacts/...``), adding each artifact's absolute URI, Digest and Algorithm the way the service does.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from device_registry import Registry, job, recipe  # and the registry fixture (a plugin: conftest.py)
from helpers import QUICK, eventually, zip_bytes
from pydantic import TypeAdapter

import edgekit
from edgekit.clock import FakeClock
from edgekit.device import DeploymentOutcome, DeviceAgent, InProcessExecutor, StepSpec
from edgekit.device.agent_state import DeviceState
from edgekit.device.executor import process_stamp
from edgekit.greengrass.package import package, runtime_component
from edgekit.greengrass.recipe import load_recipe
from edgekit.mqtt.payloads import StatusDetails

PLATFORM = {"os": "linux", "architecture": "amd64"}

# --------------------------------------------------------------------------- helpers


Transitions = list[tuple[str, str, str, str]]


def make_agent(root: Path, registry: Registry, events: Transitions | None = None, **kw: Any) -> DeviceAgent:
    def report(component: str, old: str, new: str, detail: str) -> None:
        if events is not None:
            events.append((component, old, new, detail))

    options: dict[str, Any] = {"settle_s": 0.2, "kill_grace_s": 0.5, "download_backoff_s": 0.0, "fsync": False}
    options.update(kw)
    return DeviceAgent("dev-1", root, PLATFORM, registry.base, groups=["line", "canary"], report=report, **options)


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 60))


def alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"


def _first_number(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


async def number_in(path: Path, timeout: float = 20.0) -> int:
    """The first number a step writes to ``path``, once it is written: a shell creates the file on ``>`` before its
    ``echo`` writes, so a file that exists can still read empty."""
    await eventually(lambda: _first_number(path) is not None, timeout, f"a number in {path.name}")
    number = _first_number(path)
    assert number is not None
    return number


def saved(root: Path) -> DeviceState:
    return DeviceState.model_validate_json((root / "config" / "state.json").read_text())


def states(outcome: DeploymentOutcome) -> dict[str, tuple[str, str]]:
    return {n: (c.version, c.state) for n, c in outcome.components.items()}


SLEEPER = "exec sleep 600"

# --------------------------------------------------------------------------- the real components


RUNTIME_COMPONENT = runtime_component("onnxruntime")  # the ONNX Runtime artifacts below get this runtime
MODEL = "com.example.Classifier"


def publish_packaged(registry: Registry, build: Path) -> None:
    """Publish ``edgekit package`` output; the runtime's Install makes a venv stand-in instead of pip installing."""
    for path in sorted((build / "recipes").glob("*.json")):
        r = load_recipe(path)
        name, version = r["ComponentName"], r["ComponentVersion"]
        files = {p.name: p.read_bytes() for p in (build / "artifacts" / name / version).iterdir()}
        if name == RUNTIME_COMPONENT:
            # the real recipe pip installs the backend into {work:path}/venv; here the venv's python is this one
            r["Manifests"][0]["Lifecycle"]["Install"] = {
                "Script": (
                    "test -f {artifacts:decompressedPath}/runtime/requirements-{configuration:/Backend}.txt && "
                    "mkdir -p {work:path}/venv/bin && "
                    f"printf '#!/bin/sh\\nexec {sys.executable} \"$@\"\\n' > {{work:path}}/venv/bin/python && "
                    "chmod +x {work:path}/venv/bin/python"
                ),
                "Timeout": 30,
            }
        registry.publish(r, files)


def test_the_packaged_inference_pipeline_runs_and_finishes(mlp_onnx: Path, tmp_path: Path, registry: Registry) -> None:
    artifact = edgekit.compile(mlp_onnx, "x86_64", tmp_path / "build", pipeline=QUICK).artifact_dir
    package([artifact], name=MODEL, version="1.0.0", output=tmp_path / "gg")
    publish_packaged(registry, tmp_path / "gg")
    out = tmp_path / "aggregates.jsonl"
    root = tmp_path / "device"
    events: Transitions = []
    inference = f"{MODEL}.Inference"
    update = {"merge": {"OutputPath": str(out), "MaxInferences": "3", "IntervalSeconds": "0", "WindowSeconds": "60"}}

    async def scenario() -> None:
        agent = make_agent(root, registry, events)
        try:
            outcome = await agent.apply(job("d-1", {inference: {"version": "1.0.0", "configurationUpdate": update}}))
            assert outcome.succeeded, outcome.message
            assert outcome.result == "SUCCESSFUL" and outcome.error_code is None
            assert set(outcome.components) == {RUNTIME_COMPONENT, MODEL, inference}
            assert await agent.wait_for(inference, {"FINISHED", "BROKEN"}, 60)
            assert agent.state.components[inference].state == "FINISHED", (root / "logs" / f"{inference}.log").read_text()
        finally:
            await agent.stop()

    run(scenario)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["count"] == 3 and sum(lines[0]["classes"].values()) == 3
    log = (root / "logs" / f"{inference}.log").read_text()
    assert "self-test passed" in log
    # dependencies first: runtime and model were FINISHED before the inference component started
    order = [(c, new) for c, _, new, _ in events]
    assert order.index((RUNTIME_COMPONENT, "FINISHED")) < order.index((inference, "STARTING"))
    assert order.index((MODEL, "FINISHED")) < order.index((inference, "STARTING"))
    assert (root / "packages" / "artifacts-unarchived" / MODEL / "1.0.0" / "model-x86_64" / "manifest.json").is_file()
    assert (root / "work" / RUNTIME_COMPONENT / "venv" / "bin" / "python").is_file()
    assert registry.requests and all(thing == "dev-1" for _, thing in registry.requests)


# --------------------------------------------------------------------------- rollback and BROKEN


def _app(version: str, install: str | None = None) -> dict[str, Any]:
    lifecycle: dict[str, Any] = {
        "Run": "echo '{configuration:/Message}' > {work:path}/message; echo $$ >> {work:path}/pids; " + SLEEPER,
        "Recover": "echo recovered >> {work:path}/recovers",
    }
    if install is not None:
        lifecycle["Install"] = install
    return recipe("com.example.App", version, lifecycle, config={"Message": "default"})


def test_a_failing_install_rolls_back_to_the_previous_version_and_configuration(tmp_path: Path, registry: Registry) -> None:
    registry.publish(_app("1.0.0"))
    registry.publish(_app("2.0.0", install="echo attempt >> {work:path}/installs; exit 1"))
    root = tmp_path / "device"
    events: Transitions = []
    app = "com.example.App"
    work = root / "work" / app

    async def scenario() -> None:
        agent = make_agent(root, registry, events)
        try:
            first = await agent.apply(
                job("d-1", {app: {"version": "1.0.0", "configurationUpdate": {"merge": {"Message": "one"}}}})
            )
            assert first.succeeded and states(first) == {app: ("1.0.0", "RUNNING")}
            await eventually(lambda: (work / "message").is_file())
            first_pid = await number_in(work / "pids")
            update = {"merge": {"Message": "two"}}
            second = await agent.apply(job("d-2", {app: {"version": "2.0.0", "configurationUpdate": update}}))
            assert second.status == "FAILED" and second.result == "FAILED_ROLLBACK_COMPLETE"
            assert second.error_code == "COMPONENT_BROKEN"
            assert second.error_stack == ["DEPLOYMENT_FAILURE", "COMPONENT_UPDATE_ERROR", "COMPONENT_BROKEN"]
            assert "INSTALL_ERRORED" in second.message and "restored" in second.message
            assert states(second) == {app: ("1.0.0", "RUNNING")}
            assert agent.state.components[app].configuration == {"Message": "one"}
            assert agent.state.targets["thinggroup/line"].deployment_id == "d-1"
            await eventually(lambda: len((work / "pids").read_text().split()) == 2)
            assert (work / "message").read_text().strip() == "one"
            assert not alive(first_pid)  # stopped for the update, started again by the rollback
            details = second.status_details()
            TypeAdapter(StatusDetails).validate_python(details)
            assert details["detailed-deployment-status"] == "FAILED_ROLLBACK_COMPLETE"
            assert json.loads(details["deployment-error-stack"])[-1] == "COMPONENT_BROKEN"
            assert details["component:com_example_App"] == "1.0.0 RUNNING"
            info = second.deployment_info(job_id="job-2")
            assert info.status == "FAILED" and info.detailed_status == "FAILED_ROLLBACK_COMPLETE"
        finally:
            await agent.stop()

    run(scenario)
    assert (work / "installs").read_text().split() == ["attempt"] * 3  # three tries, then BROKEN
    assert (work / "recovers").read_text().split() == ["recovered"] * 2  # Recover on the two ERRORED, not on BROKEN
    v2 = [(old, new, detail) for c, old, new, detail in events if c == app and detail.startswith("Install")]
    assert [(old, new) for old, new, _ in v2] == [("NEW", "ERRORED"), ("NEW", "ERRORED"), ("NEW", "BROKEN")]
    assert not (root / "packages" / "artifacts" / app / "2.0.0").exists()
    on_disk = saved(root)
    assert on_disk.in_progress is None and on_disk.components[app].version == "1.0.0"
    assert on_disk.components[app].configuration == {"Message": "one"}
    assert on_disk.last_deployment is not None and on_disk.last_deployment.result == "FAILED_ROLLBACK_COMPLETE"


def test_do_nothing_leaves_the_broken_version_until_a_new_deployment(tmp_path: Path, registry: Registry) -> None:
    registry.publish(_app("1.0.0"))
    registry.publish(_app("2.0.0", install="exit 3"))
    root = tmp_path / "device"
    app = "com.example.App"

    async def scenario() -> None:
        agent = make_agent(root, registry)
        try:
            assert (await agent.apply(job("d-1", {app: "1.0.0"}))).succeeded
            failed = await agent.apply(job("d-2", {app: "2.0.0"}, policy="DO_NOTHING"))
            assert failed.result == "FAILED_ROLLBACK_NOT_REQUESTED" and failed.error_code == "COMPONENT_BROKEN"
            assert states(failed) == {app: ("2.0.0", "BROKEN")}
            assert failed.components[app].status_codes == ["INSTALL_ERRORED"]
            assert failed.components[app].status_reason == "Install exited with code 3"
            fixed = await agent.apply(job("d-3", {app: "1.0.0"}))
            assert fixed.succeeded and states(fixed) == {app: ("1.0.0", "RUNNING")}
        finally:
            await agent.stop()

    run(scenario)


def test_three_errors_in_an_hour_make_a_component_broken(tmp_path: Path, registry: Registry) -> None:
    registry.publish(recipe("com.example.Crash", lifecycle={"Run": "exit 1", "Recover": "echo r >> {work:path}/recovers"}))
    root = tmp_path / "device"
    events: Transitions = []
    name = "com.example.Crash"

    async def scenario() -> None:
        agent = make_agent(root, registry, events, clock=FakeClock())
        try:
            outcome = await agent.apply(job("d-1", {name: "1.0.0"}, policy="DO_NOTHING"))
            assert outcome.result == "FAILED_ROLLBACK_NOT_REQUESTED" and outcome.error_code == "COMPONENT_BROKEN"
            assert outcome.components[name].state == "BROKEN" and outcome.components[name].status_codes == ["RUN_ERRORED"]
        finally:
            await agent.stop()

    run(scenario)
    moves = [(old, new) for c, old, new, _ in events if c == name and new in ("ERRORED", "BROKEN")]
    assert moves == [("RUNNING", "ERRORED"), ("RUNNING", "ERRORED"), ("RUNNING", "BROKEN")]
    assert (root / "work" / name / "recovers").read_text().split() == ["r", "r"]


def test_errors_an_hour_apart_never_break_a_component(tmp_path: Path, registry: Registry) -> None:
    registry.publish(recipe("com.example.Crash", lifecycle={"Run": "exit 1"}))
    clock = FakeClock()
    errors: list[float] = []
    name = "com.example.Crash"

    def later(component: str, old: str, new: str, detail: str) -> None:
        if new == "ERRORED":
            errors.append(clock.now())
            clock.advance(3601)  # each error comes more than an hour after the one before

    async def scenario() -> None:
        agent = DeviceAgent(
            "dev-1", tmp_path / "device", PLATFORM, registry.base, ["line"], clock=clock, report=later,
            settle_s=0.2, deployment_timeout_s=1.0, kill_grace_s=0.5, fsync=False,
        )  # fmt: skip
        try:
            outcome = await agent.apply(job("d-1", {name: "1.0.0"}, policy="DO_NOTHING"))
            assert outcome.status == "FAILED" and outcome.error_code == "COMPONENT_UPDATE_ERROR"  # never settled
            # it keeps crashing after the deployment gave up (a slow fork may have fit few crashes in its 1 s)
            await eventually(lambda: len(errors) > 3, 30, "more than 3 errors")
            assert agent.state.components[name].state != "BROKEN"
        finally:
            await agent.stop()

    run(scenario)


def test_a_step_past_its_timeout_is_killed_with_its_process_group(tmp_path: Path, registry: Registry) -> None:
    install = {"Script": "sleep 60 & echo $! >> {work:path}/children; sleep 60", "Timeout": 0.3}
    registry.publish(recipe("com.example.Slow", lifecycle={"Install": install, "Run": SLEEPER}))
    root = tmp_path / "device"
    name = "com.example.Slow"

    async def scenario() -> None:
        agent = make_agent(root, registry)
        try:
            started = time.monotonic()
            outcome = await agent.apply(job("d-1", {name: "1.0.0"}, policy="DO_NOTHING"))
            assert time.monotonic() - started < 10
            assert outcome.components[name].state == "BROKEN"
            assert outcome.components[name].status_codes == ["INSTALL_TIMEOUT"]
        finally:
            await agent.stop()

    run(scenario)
    children = [int(p) for p in (root / "work" / name / "children").read_text().split()]
    assert len(children) == 3 and not any(alive(pid) for pid in children)


def test_skipif_onpath_and_exists(tmp_path: Path, registry: Registry) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    cases = {
        "com.example.OnPath": "onpath sh",  # skipped
        "com.example.NotOnPath": "onpath no-such-command-xyz",  # runs
        "com.example.Exists": "exists {kernel:rootPath}",  # skipped (interpolated first)
        "com.example.Missing": "exists not-there-yet",  # runs (relative to the work folder)
        "com.example.Negated": "! exists {kernel:rootPath}",  # runs
    }
    for name, skipif in cases.items():
        registry.publish(recipe(name, lifecycle={"Install": {"Script": f"touch {marks}/{name}", "Skipif": skipif}}))
    run_skipped = {"Script": f"touch {marks}/run; {SLEEPER}", "Skipif": "onpath sh"}
    registry.publish(recipe("com.example.SkippedRun", lifecycle={"Run": run_skipped}))

    async def scenario() -> None:
        agent = make_agent(tmp_path / "device", registry)
        try:
            outcome = await agent.apply(job("d-1", {**dict.fromkeys(cases, "1.0.0"), "com.example.SkippedRun": "1.0.0"}))
            assert outcome.succeeded, outcome.message
            assert {n: c.state for n, c in outcome.components.items()} == dict.fromkeys(
                [*cases, "com.example.SkippedRun"], "FINISHED"
            )
        finally:
            await agent.stop()

    run(scenario)
    assert sorted(p.name for p in marks.iterdir()) == ["com.example.Missing", "com.example.Negated", "com.example.NotOnPath"]


# --------------------------------------------------------------------------- artifacts


def _with_blob(registry: Registry, version: str = "1.0.0") -> bytes:
    blob = os.urandom(4096)
    lifecycle = {"Run": f"cmp {{artifacts:path}}/blob.bin {{artifacts:path}}/blob.bin && {SLEEPER}"}
    registry.publish(recipe("com.example.Blob", version, lifecycle, artifacts=[{"URI": "s3://b/blob.bin"}]), {"blob.bin": blob})
    return blob


def test_a_corrupted_download_is_deleted_and_fetched_again(tmp_path: Path, registry: Registry) -> None:
    blob = _with_blob(registry)
    registry.corrupt["blob.bin"] = 2
    root = tmp_path / "device"

    async def scenario() -> None:
        agent = make_agent(root, registry)
        try:
            outcome = await agent.apply(job("d-1", {"com.example.Blob": "1.0.0"}))
            assert outcome.succeeded, outcome.message
        finally:
            await agent.stop()

    run(scenario)
    assert registry.downloads("blob.bin") == 3
    assert (root / "packages" / "artifacts" / "com.example.Blob" / "1.0.0" / "blob.bin").read_bytes() == blob
    assert [p.name for p in (root / "packages" / "cache").iterdir()] == [hashlib.sha256(blob).hexdigest()]


def test_a_download_that_never_matches_fails_with_nothing_installed(tmp_path: Path, registry: Registry) -> None:
    registry.publish(recipe("com.example.Keep", lifecycle={"Run": "echo $$ > {work:path}/pid; " + SLEEPER}))
    _with_blob(registry)
    registry.corrupt["blob.bin"] = -1
    root = tmp_path / "device"

    async def scenario() -> None:
        agent = make_agent(root, registry)
        try:
            assert (await agent.apply(job("d-1", {"com.example.Keep": "1.0.0"}))).succeeded
            pid = await number_in(root / "work" / "com.example.Keep" / "pid")
            outcome = await agent.apply(job("d-2", {"com.example.Keep": "1.0.0", "com.example.Blob": "1.0.0"}))
            assert outcome.status == "FAILED" and outcome.result == "FAILED_NO_STATE_CHANGE"
            assert outcome.error_code == "ARTIFACT_CHECKSUM_MISMATCH"
            assert outcome.error_stack == ["DEPLOYMENT_FAILURE", "ARTIFACT_DOWNLOAD_ERROR", "ARTIFACT_CHECKSUM_MISMATCH"]
            assert states(outcome) == {"com.example.Keep": ("1.0.0", "RUNNING")}
            assert alive(pid)  # nothing running was touched
        finally:
            await agent.stop()

    run(scenario)
    assert registry.downloads("blob.bin") == 10
    assert not (root / "packages" / "artifacts" / "com.example.Blob").exists()
    assert not (root / "work" / "com.example.Blob").exists()
    assert list((root / "packages" / "cache").iterdir()) == []


def test_an_archive_escaping_its_folder_is_refused_whole(tmp_path: Path, registry: Registry) -> None:
    evil = zip_bytes({"ok.txt": b"fine", "../../../../evil": b"pwned"})
    registry.publish(
        recipe("com.example.Zip", artifacts=[{"URI": "s3://b/bundle.zip", "Unarchive": "ZIP"}], lifecycle={"Run": "true"}),
        {"bundle.zip": evil},
    )
    root = tmp_path / "device"

    async def scenario() -> None:
        agent = make_agent(root, registry)
        try:
            outcome = await agent.apply(job("d-1", {"com.example.Zip": "1.0.0"}))
            assert outcome.result == "FAILED_NO_STATE_CHANGE" and outcome.error_code == "IO_UNZIP_ERROR"
            assert "'..'" in outcome.message and outcome.components == {}
        finally:
            await agent.stop()

    run(scenario)
    assert not (root / "packages" / "artifacts-unarchived" / "com.example.Zip").exists()
    assert not (root / "packages" / "artifacts" / "com.example.Zip").exists()
    assert not any(p.name == "evil" for p in tmp_path.rglob("evil"))


def test_gc_keeps_hidden_artifacts_the_recipe_declares_and_removes_staging(tmp_path: Path, registry: Registry) -> None:
    """Issue 19 item 7: `.env` and `.assets.zip` (unarchived to `.assets`) are artifacts, not leftovers."""
    env, assets = b"KEY=1\n", zip_bytes({"a.txt": b"asset"})
    artifacts = [{"URI": "s3://b/.env"}, {"URI": "s3://b/.assets.zip", "Unarchive": "ZIP"}]
    lifecycle = {"Run": f"test -f {{artifacts:path}}/.env && {SLEEPER}"}
    registry.publish(recipe("com.example.Hidden", lifecycle=lifecycle, artifacts=artifacts), {".env": env, ".assets.zip": assets})
    root = tmp_path / "device"
    art = root / "packages" / "artifacts" / "com.example.Hidden" / "1.0.0"
    dec = root / "packages" / "artifacts-unarchived" / "com.example.Hidden" / "1.0.0"

    async def scenario() -> None:
        agent = make_agent(root, registry)
        try:
            assert (await agent.apply(job("d-1", {"com.example.Hidden": "1.0.0"}))).succeeded
            (art / ".env.0123abcd").write_bytes(b"partial")  # what a killed place() leaves
            (art / ".odd name").write_bytes(b"not ours")  # no staging name: left alone
            outcome = await agent.apply(job("d-2", {"com.example.Hidden": "1.0.0"}))
            assert outcome.succeeded, outcome.message
        finally:
            await agent.stop()

    run(scenario)
    assert (art / ".env").read_bytes() == env
    assert (art / ".assets.zip").read_bytes() == assets
    assert (dec / ".assets" / "a.txt").read_bytes() == b"asset"
    assert not (art / ".env.0123abcd").exists()
    assert (art / ".odd name").exists()


# --------------------------------------------------------------------------- variables, dependencies, targets


def test_recipe_variables_reach_the_scripts(tmp_path: Path, registry: Registry) -> None:
    base = recipe(
        "com.example.Base",
        lifecycle={"Run": SLEEPER},
        config={"Port": 8080, "Nested": {"a": [1, 2]}, "Name": "base"},
        artifacts=[{"URI": "s3://b/base.zip", "Unarchive": "ZIP"}],
    )
    registry.publish(base, {"base.zip": zip_bytes({"lib/base.txt": b"base"})})
    registry.publish(recipe("com.example.Other", lifecycle={"Run": SLEEPER}))
    script = (
        "printf '%s\\n' {artifacts:path} {artifacts:decompressedPath} {work:path} {kernel:rootPath} {iot:thingName} "
        "'{configuration:/Greeting}' '{configuration:/Num}' '{configuration:/Obj}' '{configuration:/Missing}' "
        "{com.example.Base:artifacts:path} {com.example.Base:artifacts:decompressedPath} {com.example.Base:work:path} "
        "'{com.example.Base:configuration:/Port}' '{com.example.Base:configuration:/Nested/a}' '{com.example.Other:work:path}' "
        '"$GLOBAL_VAR" "$STEP_VAR" "$AWS_IOT_THING_NAME" "$(pwd)" '
        "$(cat {com.example.Base:artifacts:decompressedPath}/base/lib/base.txt) > {work:path}/vars.txt"
    )
    app = recipe(
        "com.example.App",
        lifecycle={
            "Setenv": {"GLOBAL_VAR": "{configuration:/Greeting}-global"},
            "Install": {"Script": script, "Setenv": {"STEP_VAR": "{com.example.Base:configuration:/Name}"}},
        },
        deps={"com.example.Base": "^1.0.0"},
        config={"Greeting": "hello", "Num": 3, "Obj": {"k": "v"}},
    )
    registry.publish(app)
    root = tmp_path / "device"

    async def scenario() -> None:
        agent = make_agent(root, registry)
        try:
            outcome = await agent.apply(job("d-1", {"com.example.App": "1.0.0", "com.example.Other": "1.0.0"}))
            assert outcome.succeeded, outcome.message
            assert states(outcome)["com.example.Base"] == ("1.0.0", "RUNNING")  # a dependency, resolved from the registry
        finally:
            await agent.stop()

    run(scenario)
    r = root.absolute()
    lines = (r / "work" / "com.example.App" / "vars.txt").read_text().splitlines()
    assert lines == [
        f"{r}/packages/artifacts/com.example.App/1.0.0",
        f"{r}/packages/artifacts-unarchived/com.example.App/1.0.0",
        f"{r}/work/com.example.App",
        str(r),
        "dev-1",
        "hello",
        "3",
        '{"k":"v"}',
        "{configuration:/Missing}",
        f"{r}/packages/artifacts/com.example.Base/1.0.0",
        f"{r}/packages/artifacts-unarchived/com.example.Base/1.0.0",
        f"{r}/work/com.example.Base",
        "8080",
        "[1,2]",
        "{com.example.Other:work:path}",  # not a dependency: left as is
        "hello-global",
        "base",
        "dev-1",
        f"{r}/work/com.example.App",
        "base",
    ]


def test_hard_dependents_restart_when_their_dependency_crashes_or_changes(tmp_path: Path, registry: Registry) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    flaky = f"if [ -e {marks}/crashed ]; then {SLEEPER}; fi; touch {marks}/crashed; sleep 0.5; exit 1"
    registry.publish(recipe("com.example.Base", "1.0.0", lifecycle={"Run": flaky}))
    registry.publish(recipe("com.example.Base", "1.1.0", lifecycle={"Run": SLEEPER}))
    app_run = f"echo start >> {marks}/app-starts; {SLEEPER}"
    registry.publish(recipe("com.example.App", lifecycle={"Run": app_run}, deps={"com.example.Base": "^1.0.0"}))
    events: Transitions = []

    def starts() -> int:
        return len((marks / "app-starts").read_text().split()) if (marks / "app-starts").is_file() else 0

    async def scenario() -> None:
        agent = make_agent(tmp_path / "device", registry, events)
        try:
            first = await agent.apply(job("d-1", {"com.example.App": "1.0.0", "com.example.Base": "1.0.0"}))
            assert first.succeeded, first.message
            await eventually(lambda: starts() == 2)  # Base crashed once: App was restarted after it came back
            assert await agent.wait_for("com.example.App", {"RUNNING"}, 5)
            assert agent.state.components["com.example.Base"].state == "RUNNING"
            # a new version of Base: App (HARD dependent, unchanged) is stopped before and started after it
            mark = len(events)
            second = await agent.apply(job("d-2", {"com.example.App": "1.0.0", "com.example.Base": "1.1.0"}))
            assert second.succeeded and states(second)["com.example.Base"] == ("1.1.0", "RUNNING")
            assert starts() == 3
            moves = [(c, new) for c, _, new, _ in events[mark:]]
            assert [c for c, new in moves if new == "STOPPING"] == ["com.example.App", "com.example.Base"]
            assert moves.index(("com.example.Base", "RUNNING")) < moves.index(("com.example.App", "STARTING"))
        finally:
            await agent.stop()

    run(scenario)
    stops = [c for c, _, new, _ in events if new == "STOPPING"]
    assert stops[-2:] == ["com.example.App", "com.example.Base"]  # agent.stop(): dependents first


def test_a_startup_service_runs_in_the_background_until_shutdown(tmp_path: Path, registry: Registry) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    lifecycle = {
        "Startup": f"sleep 600 & echo $! > {marks}/service.pid",
        "Shutdown": f"echo down >> {marks}/shutdowns",
    }
    registry.publish(recipe("com.example.Service", lifecycle=lifecycle))
    registry.publish(recipe("com.example.BadStart", lifecycle={"Startup": "exit 2"}))

    async def scenario() -> None:
        agent = make_agent(tmp_path / "device", registry)
        try:
            outcome = await agent.apply(job("d-1", {"com.example.Service": "1.0.0"}))
            assert outcome.succeeded and states(outcome) == {"com.example.Service": ("1.0.0", "RUNNING")}
            pid = await number_in(marks / "service.pid")
            assert alive(pid)
            removed = await agent.apply(job("d-2", {}))
            assert removed.succeeded and removed.components == {}
            assert (marks / "shutdowns").read_text().split() == ["down"]
            await eventually(lambda: not alive(pid))  # its process group was ended after Shutdown
            bad = await agent.apply(job("d-3", {"com.example.BadStart": "1.0.0"}, policy="DO_NOTHING"))
            assert bad.components["com.example.BadStart"].state == "BROKEN"
            assert bad.components["com.example.BadStart"].status_codes == ["STARTUP_ERRORED"]
        finally:
            await agent.stop()

    run(scenario)


def test_a_device_runs_the_union_of_its_targets(tmp_path: Path, registry: Registry) -> None:
    for name in ("com.example.A", "com.example.B"):
        registry.publish(
            recipe(
                name,
                lifecycle={"Run": "echo $$ > {work:path}/pid; " + SLEEPER, "Shutdown": "touch {work:path}/../shutdown-" + name},
            )
        )
    root = tmp_path / "device"

    async def scenario() -> None:
        agent = make_agent(root, registry)
        try:
            assert (await agent.apply(job("line-1", {"com.example.A": "1.0.0"}, created=100))).succeeded
            both = await agent.apply(
                job("canary-1", {"com.example.B": "1.0.0"}, target="arn:aws:iot:eu-west-1:1:thinggroup/canary")
            )
            assert states(both) == {"com.example.A": ("1.0.0", "RUNNING"), "com.example.B": ("1.0.0", "RUNNING")}
            b_pid = await number_in(root / "work" / "com.example.B" / "pid")
            # a new deployment to thinggroup/line without A removes A; B (of thinggroup/canary) keeps running
            emptied = await agent.apply(job("line-2", {}, created=200))
            assert emptied.succeeded and states(emptied) == {"com.example.B": ("1.0.0", "RUNNING")}
            assert alive(b_pid) and (root / "work" / "shutdown-com.example.A").is_file()
            assert not (root / "work" / "com.example.A").exists()
            # an older deployment of the same target is refused; a redelivered one answers what it did
            stale = await agent.apply(job("line-0", {"com.example.A": "1.0.0"}, created=50))
            assert stale.status == "REJECTED" and stale.error_code == "REJECTED_STALE_DEPLOYMENT"
            requests = len(registry.requests)
            again = await agent.apply(job("canary-1", {"com.example.B": "1.0.0"}, target="thinggroup/canary"))
            assert again == both and len(registry.requests) == requests
            unknown = await agent.apply(job("line-3", {"com.example.Nope": "1.0.0"}))
            assert unknown.result == "FAILED_NO_STATE_CHANGE" and unknown.error_code == "NO_AVAILABLE_COMPONENT_VERSION"
        finally:
            await agent.stop()

    run(scenario)


# --------------------------------------------------------------------------- restart


@pytest.mark.parametrize("redo", [True, False], ids=["redo", "report-interrupted"])
def test_an_agent_killed_mid_deployment_resumes_consistently(tmp_path: Path, registry: Registry, redo: bool) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    svc = {"Install": f"echo i >> {marks}/svc-installs", "Run": f"echo $$ > {marks}/svc.pid; {SLEEPER}"}
    registry.publish(recipe("com.example.Svc", lifecycle=svc))
    slow_install = f"if [ -e {marks}/once ]; then exit 0; fi; touch {marks}/once; sleep 60"
    registry.publish(
        recipe("com.example.Slow", lifecycle={"Install": slow_install}, artifacts=[{"URI": "s3://b/s.bin"}]), {"s.bin": b"s"}
    )
    root = tmp_path / "device"

    async def scenario() -> None:
        first = make_agent(root, registry)
        assert (await first.apply(job("d-1", {"com.example.Svc": "1.0.0"}))).succeeded
        old_pid = await number_in(marks / "svc.pid")
        task = asyncio.create_task(first.apply(job("d-2", {"com.example.Svc": "1.0.0", "com.example.Slow": "1.0.0"})))
        await eventually(lambda: (marks / "once").is_file())
        await first.kill(leave_processes=True)  # the agent dies; its Run process lives on, as after a SIGKILL
        assert task.cancelled() and alive(old_pid)
        assert saved(root).in_progress is not None

        second = make_agent(root, registry)
        try:
            outcome = await second.resume(redo_interrupted=redo)
            assert outcome is not None and outcome.deployment_id == "d-2"
            await eventually(lambda: not alive(old_pid))  # the leftover process group was killed
            await eventually(lambda: (marks / "svc.pid").read_text().strip() != str(old_pid))
            if redo:
                assert outcome.succeeded, outcome.message
                assert states(outcome) == {"com.example.Svc": ("1.0.0", "RUNNING"), "com.example.Slow": ("1.0.0", "FINISHED")}
            else:
                assert outcome.result == "FAILED_ROLLBACK_COMPLETE" and outcome.error_code == "DEPLOYMENT_INTERRUPTED"
                assert states(outcome) == {"com.example.Svc": ("1.0.0", "RUNNING")}
                assert not (root / "packages" / "artifacts" / "com.example.Slow").exists()
            on_disk = saved(root)
            assert on_disk.in_progress is None and set(on_disk.outcomes) == {"d-1", "d-2"}
            assert set(on_disk.components) == set(outcome.components)
            await second.stop()  # a clean stop keeps "what ran" on disk
            assert saved(root).components["com.example.Svc"].state == "RUNNING"
            third = make_agent(root, registry)
            assert await third.resume() is None
            assert third.state.components["com.example.Svc"].state == "RUNNING"
            await third.stop()
        finally:
            await second.stop()

    run(scenario)
    assert (marks / "svc-installs").read_text().split() == ["i"]  # Install runs once per version


def test_resume_leaves_a_recycled_pid_alone(tmp_path: Path, registry: Registry) -> None:
    """A recorded process group is killed only while its leader is the process the agent started (boot id + start time)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    registry.publish(recipe("com.example.Svc", lifecycle={"Run": f"echo $$ > {marks}/svc.pid; {SLEEPER}"}))
    root = tmp_path / "device"
    bystander = subprocess.Popen(["sleep", "600"], start_new_session=True)  # a daemon: its own session and group
    # A start time of its own: start times count 10 ms clock ticks, and a warm agent can start the Run process within
    # the bystander's tick — then the two are indistinguishable, which a real recycled pid (a wrap-around later) is not.
    time.sleep(0.05)
    try:

        async def scenario() -> None:
            first = make_agent(root, registry)
            assert (await first.apply(job("d-1", {"com.example.Svc": "1.0.0"}))).succeeded
            old_pid = await number_in(marks / "svc.pid")
            await first.kill(leave_processes=True)
            os.killpg(old_pid, signal.SIGKILL)  # the Run process died meanwhile ...
            await eventually(lambda: not alive(old_pid))
            # ... and its pid went to an unrelated process: state.json names the bystander's group
            data = json.loads((root / "config" / "state.json").read_text())
            comp = data["components"]["com.example.Svc"]
            assert comp["process_groups"] == [old_pid]
            comp["process_groups"] = [bystander.pid]
            if "process_stamps" in comp:  # the premise: the bystander is another process, by its stamp too
                assert process_stamp(bystander.pid) != comp["process_stamps"][str(old_pid)]
                comp["process_stamps"] = {str(bystander.pid): comp["process_stamps"][str(old_pid)]}
            (root / "config" / "state.json").write_text(json.dumps(data))
            second = make_agent(root, registry)
            try:
                await second.resume()
                assert second.state.components["com.example.Svc"].state == "RUNNING"
                await asyncio.sleep(0.2)
                assert bystander.poll() is None, "the agent killed a process it did not start"
            finally:
                await second.stop()
            assert bystander.poll() is None

        run(scenario)
    finally:
        bystander.kill()
        bystander.wait()


_AGENT_SCRIPT = """
import asyncio, json, sys
from edgekit.device import DeviceAgent
from edgekit.mqtt.payloads import JobDocument
root, base, doc = sys.argv[1], sys.argv[2], sys.argv[3]
async def main() -> None:
    agent = DeviceAgent("dev-1", root, {"os": "linux", "architecture": "amd64"}, base, groups=["line", "canary"], settle_s=0.2,
                        kill_grace_s=0.5, download_backoff_s=0.0, fsync=False)
    await agent.apply(JobDocument.model_validate_json(doc))
asyncio.run(main())
"""


def test_an_install_interrupted_by_kill_9_is_killed_not_run_twice(tmp_path: Path, registry: Registry) -> None:
    """kill -9 of the agent's process during Install: the restarted agent kills the old Install before running its own."""
    marks = tmp_path / "marks"
    marks.mkdir()
    install = (
        f"for p in $(cat {marks}/installs 2>/dev/null); do grep -qv ') Z' /proc/$p/stat 2>/dev/null && echo $p >> {marks}/beside; done; "
        f"echo $$ >> {marks}/installs; [ -e {marks}/go ] && exit 0; exec sleep 600"
    )
    registry.publish(recipe("com.example.Slow", lifecycle={"Install": install}))
    root = tmp_path / "device"
    doc = job("d-1", {"com.example.Slow": "1.0.0"}).model_dump_json(by_alias=True, exclude_none=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(edgekit.__file__).parents[1]), *sys.path])}
    agent = subprocess.Popen([sys.executable, "-c", _AGENT_SCRIPT, str(root), registry.base, doc], env=env)
    try:
        deadline = time.monotonic() + 30
        while _first_number(marks / "installs") is None and time.monotonic() < deadline:
            assert agent.poll() is None, "the agent process ended early"
            time.sleep(0.05)
        first_install = int((marks / "installs").read_text())
    finally:
        agent.kill()  # kill -9: no cancellation, no cleanup
        agent.wait()
    assert alive(first_install)  # the old Install lives on, as after a real crash
    (marks / "go").touch()

    async def scenario() -> None:
        second = make_agent(root, registry)
        try:
            outcome = await second.resume()
            assert outcome is not None and outcome.succeeded, outcome
        finally:
            await second.stop()

    try:
        run(scenario)
        assert not (marks / "beside").exists(), "the restarted agent ran Install beside the old one"
        assert not alive(first_install)
        assert len((marks / "installs").read_text().split()) == 2
    finally:
        if alive(first_install):
            os.kill(first_install, signal.SIGKILL)


def test_in_process_mode_runs_no_scripts(tmp_path: Path, registry: Registry) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    lifecycle = {"Install": f"touch {marks}/install", "Run": f"touch {marks}/run; {SLEEPER}"}
    registry.publish(
        recipe("com.example.Sim", lifecycle=lifecycle, artifacts=[{"URI": "s3://b/p.zip", "Unarchive": "ZIP"}]),
        {"p.zip": zip_bytes({"x.txt": b"x"})},
    )
    registry.publish(recipe("com.example.Faulty", lifecycle={"Install": "true"}))
    seen: list[StepSpec] = []

    def fail(spec: StepSpec) -> int | None:
        seen.append(spec)
        return 1 if spec.component == "com.example.Faulty" and spec.step == "Install" else None

    async def scenario() -> None:
        agent = make_agent(tmp_path / "device", registry, executor=InProcessExecutor(fail))
        try:
            outcome = await agent.apply(job("d-1", {"com.example.Sim": "1.0.0"}))
            assert outcome.succeeded and states(outcome) == {"com.example.Sim": ("1.0.0", "RUNNING")}
            broken = await agent.apply(
                job("d-2", {"com.example.Sim": "1.0.0", "com.example.Faulty": "1.0.0"}, policy="DO_NOTHING")
            )
            assert broken.components["com.example.Faulty"].state == "BROKEN"
        finally:
            await agent.stop()

    run(scenario)
    assert list(marks.iterdir()) == []  # no script ran
    assert (tmp_path / "device" / "packages" / "artifacts-unarchived" / "com.example.Sim" / "1.0.0" / "p" / "x.txt").is_file()
    assert [s.script for s in seen if s.component == "com.example.Sim"] == [
        f"touch {marks}/install",
        f"touch {marks}/run; {SLEEPER}",
    ]


def test_a_component_name_that_would_leave_its_folder_is_refused(tmp_path: Path, registry: Registry) -> None:
    registry.publish(recipe("../../escape", lifecycle={"Install": f"touch {tmp_path}/ran"}))
    root = tmp_path / "device"

    async def scenario() -> None:
        agent = make_agent(root, registry)
        try:
            outcome = await agent.apply(job("d-1", {"../../escape": "1.0.0"}))
            assert outcome.result == "FAILED_NO_STATE_CHANGE"
            assert outcome.error_code == "COMPONENT_METADATA_NOT_VALID_IN_DEPLOYMENT"
        finally:
            await agent.stop()

    run(scenario)
    assert not (tmp_path / "ran").exists() and not (tmp_path / "escape").exists()


def _patched_zip(kind: str) -> bytes:
    """A zip Python can't inflate: Deflate64 (method 9), encrypted (flag bit 0), or a corrupt deflate stream."""
    import struct

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("model.bin", bytes(range(256)) * 64)
    data = bytearray(buffer.getvalue())
    local, central = data.find(b"PK\x03\x04"), data.find(b"PK\x01\x02")
    if kind == "deflate64":
        struct.pack_into("<H", data, local + 8, 9)
        struct.pack_into("<H", data, central + 10, 9)
    elif kind == "encrypted":
        for offset in (local + 6, central + 8):
            struct.pack_into("<H", data, offset, struct.unpack_from("<H", data, offset)[0] | 1)
    else:  # the compressed bytes themselves damaged (the artifact's digest is computed over the damage)
        start = local + 30 + struct.unpack_from("<H", data, local + 26)[0] + struct.unpack_from("<H", data, local + 28)[0]
        data[start : start + 16] = b"\xff" * 16
    return bytes(data)


@pytest.mark.parametrize("kind", ["deflate64", "encrypted", "corrupt-stream"])
def test_an_archive_python_cannot_inflate_fails_the_deployment_and_the_next_job_runs(
    kind: str, tmp_path: Path, registry: Registry
) -> None:
    registry.publish(
        recipe("com.example.Zip", artifacts=[{"URI": "s3://b/bundle.zip", "Unarchive": "ZIP"}], lifecycle={"Run": "true"}),
        {"bundle.zip": _patched_zip(kind)},
    )
    registry.publish(recipe("com.example.Ok", lifecycle={"Run": "true"}), {})
    root = tmp_path / "device"

    async def scenario() -> None:
        agent = make_agent(root, registry)
        try:
            outcome = await agent.apply(job("d-1", {"com.example.Zip": "1.0.0"}))
            assert outcome.status == "FAILED" and outcome.error_code == "IO_UNZIP_ERROR", outcome
            assert "can't be unpacked" in outcome.message and outcome.components == {}
            after = await agent.apply(job("d-2", {"com.example.Ok": "1.0.0"}))
            assert after.status == "SUCCEEDED", after
        finally:
            await agent.stop()

    run(scenario)
    assert not (root / "packages" / "artifacts-unarchived" / "com.example.Zip").exists()
