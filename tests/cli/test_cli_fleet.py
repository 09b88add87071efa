"""The local fleet through the CLI: publish --local, deploy --local (pre-flight first), fleet status, simulate."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import APP, wait_until, write_build, write_fleet

from edgekit.cli import main
from edgekit.errors import EXIT_CODES, ConfigError, PublishError, ResolutionError
from edgekit.fleet import FleetState
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet_file import FleetFile
from edgekit.sim import Simulation, SimulationError


def test_publish_and_deploy_local_then_fleet_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, build, fleet = tmp_path / "state", write_build(tmp_path / "gg"), write_fleet(tmp_path / "fleet.yaml")
    assert main(["publish", "--local", "--state", str(state), "--build", str(build)]) == 0
    out = capsys.readouterr().out
    assert APP in out and "published" in out and "app.bin" in out
    assert main(["publish", "--local", "--state", str(state), "--build", str(build)]) == 0
    assert "unchanged" in capsys.readouterr().out

    argv = ["deploy", "--local", "--state", str(state), "--target", "thinggroup/line-1", "-c", f"{APP}=1.0.0",
            "--rollout", "100/min", "--abort-failed", "10%", "--fleet", str(fleet)]  # fmt: skip
    assert main(argv) == 0
    captured = capsys.readouterr()  # the result on stdout, progress and what to do next on stderr
    assert "pre-flight: 4 device(s) reached, 0 with problems" in captured.err
    assert "4 execution(s) QUEUED" in captured.out and "no simulation runs" in captured.err
    with FleetState(FleetFolder.at(state).database) as fleet_state:
        [deployment] = fleet_state.deployments()
    assert deployment.target == "thinggroup/line-1" and deployment.status == "ACTIVE"
    job = deployment.spec["iotJobConfiguration"]
    assert job["jobExecutionsRolloutConfig"]["maximumPerMinute"] == 100
    assert job["abortConfig"]["criteriaList"][0]["thresholdPercentage"] == 10

    assert main(["fleet", "status", "--state", str(state)]) == 0
    out = capsys.readouterr().out
    assert "4 device(s), 2 group(s); no simulation running" in out
    assert re.search(r"line-1\s*│\s*4\s*│\s*\w+ ACTIVE\s*│\s*4\s*│", out), out  # group, devices, deployment, QUEUED
    assert re.search(r"gateways\s*│\s*2\s*│\s*-", out), out
    assert deployment.id in out and "pi-01" in out and "gw-02" in out


def test_a_failed_preflight_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, build, fleet = tmp_path / "state", write_build(tmp_path / "gg"), write_fleet(tmp_path / "fleet.yaml")
    assert main(["publish", "--local", "--state", str(state), "--build", str(build)]) == 0
    capsys.readouterr()
    argv = [
        "deploy",
        "--local",
        "--state",
        str(state),
        "--target",
        "thinggroup/line-1",
        "-c",
        f"{APP}=2.0.0",
        "--fleet",
        str(fleet),
    ]
    assert main(argv) == EXIT_CODES[ResolutionError]
    captured = capsys.readouterr()
    assert "NO_AVAILABLE_COMPONENT_VERSION" in captured.err and captured.err.splitlines()[-1].startswith("error:")
    listed = [line.split(":")[0].strip() for line in captured.err.splitlines() if line.startswith("  ")]
    assert sorted(listed) == ["gw-01", "gw-02", "pi-01", "pi-02"]  # one line per device and reason, before the error
    with FleetState(FleetFolder.at(state).database) as fleet_state:
        assert fleet_state.deployments() == [] and fleet_state.things() == []  # not even the fleet's devices


def test_fleet_status_without_a_fleet_says_how_to_make_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "status", "--state", str(tmp_path / "nothing")]) == EXIT_CODES[ConfigError]
    assert "edgekit simulate" in capsys.readouterr().err
    assert not (tmp_path / "nothing").exists()
    assert main(["deploy", "--local", "--state", str(tmp_path / "nothing"), "--target", "thinggroup/x", "-c", "a=1.0.0"]) == 2


def test_publish_needs_a_bucket_unless_local(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["publish", "--build", str(tmp_path), "--region", "eu-west-1"]) == 2
    assert "--bucket" in capsys.readouterr().err
    state = tmp_path / "state"
    assert main(["publish", "--local", "--state", str(state), "--build", str(tmp_path / "nothing")]) == EXIT_CODES[PublishError]
    assert "package the components first" in capsys.readouterr().err and not state.exists()


def test_simulate_until_done_shows_the_groups(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, build, fleet = tmp_path / "state", write_build(tmp_path / "gg"), write_fleet(tmp_path / "fleet.yaml")
    argv = ["simulate", "--fleet", str(fleet), "--state", str(state), "--build", str(build), "--deploy", f"{APP}=1.0.0",
            "--target", "thinggroup/line-1", "--until-done", "--duration", "60", "--interval", "0.5", "--tick", "0.2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "connected 4/4" in out  # a status line (not a terminal)
    assert "fleet 'clitest': 4 device(s), 4 connected at the end" in out
    assert re.search(r"line-1\s*│\s*4\s*│\s*\w+ COMPLETED\s*│\s*0\s*│\s*0\s*│\s*4\s*│", out), out  # SUCCEEDED 4
    assert not FleetFolder.at(state).running_file.exists()


def test_deploy_local_reaches_a_running_simulation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state, build = tmp_path / "state", write_build(tmp_path / "gg")
    fleet = FleetFile.model_validate(json.loads(write_fleet(tmp_path / "fleet.yaml").read_text()))

    async def scenario() -> None:
        async with Simulation(fleet, state_dir=state, tick_s=0.2) as sim:
            assert await asyncio.to_thread(main, ["publish", "--local", "--state", str(state), "--build", str(build)]) == 0
            argv = ["deploy", "--local", "--state", str(state), "--target", "thinggroup/gateways", "-c", f"{APP}=1.0.0"]
            assert await asyncio.to_thread(main, argv) == 0
            out = capsys.readouterr().out
            assert "the simulation running here" in out
            deployment = re.search(r"deployment (\S+) created", out)
            assert deployment is not None
            summary = await sim.wait(deployment.group(1), timeout=30)
            assert summary.counts == {"SUCCEEDED": 2}
            assert await asyncio.to_thread(main, ["fleet", "status", "--state", str(state)]) == 0
            assert "simulation running (pid" in capsys.readouterr().out
            with pytest.raises(SimulationError, match="already runs"):
                await Simulation(fleet, state_dir=state).start()

    asyncio.run(scenario())


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_the_broker_does_not_outlive_simulate(tmp_path: Path, sig: signal.Signals) -> None:
    state, fleet = tmp_path / "state", write_fleet(tmp_path / "fleet.yaml")
    folder = FleetFolder.at(state)
    argv = [sys.executable, "-m", "edgekit", "simulate", "--fleet", str(fleet), "--state", str(state), "--duration", "600"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pidfile = folder.broker / "mosquitto.pid"
        wait_until(lambda: folder.running() is not None and pidfile.exists(), 60, "the simulation to start")
        broker = int(pidfile.read_text().split()[0])
        assert _alive(broker)
        proc.send_signal(sig)
        proc.wait(timeout=60)
        wait_until(lambda: not _alive(broker), 60, "mosquitto to stop")  # the kernel's parent-death signal, or a clean close
        if sig == signal.SIGTERM:
            assert proc.returncode == 130 and not pidfile.exists() and folder.running() is None
    finally:
        proc.kill()
        proc.wait()


def test_a_broker_left_running_is_stopped_at_the_next_start(tmp_path: Path) -> None:
    from edgekit.mqtt.broker import MosquittoBroker

    old = MosquittoBroker(tmp_path / "broker")
    old.start()
    proc, old._proc = old._proc, None  # forget it, as a process killed with -9 would: its pidfile stays
    assert proc is not None
    try:
        with MosquittoBroker(tmp_path / "broker") as new:
            assert new.pid != proc.pid and proc.wait(timeout=30) is not None  # the new start stopped the old one
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def test_fleet_status_shows_device_text_as_written_and_sets_inactive_failures_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgekit.fleet import FleetService

    folder = FleetFolder.at(tmp_path / "state")
    with FleetState(folder.database) as fleet_state:
        svc = FleetService(fleet_state)
        for thing in ("pi-01", "pi-02"):
            svc.register_thing(thing, "rasp4b", {"os": "linux", "architecture": "aarch64"}, ["line-1"])
        spec = {"targetArn": "thinggroup/line-1", "components": {APP: {"componentVersion": "1.0.0"}}}
        old = svc.create_deployment(spec, require_published=False)
        svc.notify_due()
        hostile = {"deployment-error-code": "[bold]CODE", "deployment-failure-cause": "it said [/red] and [link=x]"}
        svc.update_execution("pi-01", old, "FAILED", hostile)  # what a device reports is its own text
        new = svc.create_deployment({**spec, "deploymentName": "again"}, require_published=False)
        svc.notify_due()
        svc.update_execution("pi-02", new, "FAILED", {"deployment-failure-cause": "[/]"})

    assert main(["fleet", "status", "--state", str(folder.root)]) == 0
    out = capsys.readouterr().out
    assert "it said [/red] and [link=x]" in out and "[bold]CODE" in out and "[/]" in out  # shown as written
    assert "failures of inactive deployments" in out

    assert main(["fleet", "status", "--state", str(folder.root), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert {"deployments", "groups", "devices", "failures", "inactiveFailures", "telemetry"} <= set(view)
    assert [(f["thing"], f["deploymentId"]) for f in view["failures"]] == [("pi-02", new)]
    assert [(f["thing"], f["deploymentId"], f["deploymentStatus"]) for f in view["inactiveFailures"]] == [
        ("pi-01", old, "INACTIVE")
    ]
    assert view["inactiveFailures"][0]["cause"] == "it said [/red] and [link=x]"
    deployment = next(d for d in view["deployments"] if d["id"] == new)
    assert deployment["name"] == "again" and deployment["components"] == [{"name": APP, "version": "1.0.0"}]
    assert "createdAt" in deployment and "created_at" not in json.dumps(view)
    device = next(d for d in view["devices"] if d["thing"] == "pi-01")
    assert device["platform"] == {"os": "linux", "architecture": "aarch64"} and device["groups"] == ["line-1"]
    assert {"lastSeen", "lastTelemetryAt", "connected", "state"} <= set(device)
    assert "componentPending" in device["telemetry"]


def test_device_and_file_text_is_never_markup_in_any_printer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Markup in what devices report, and in faults, pushed through each printer: shown as written, nothing parsed."""
    from rich.console import Console

    from edgekit.cli import fleet_cmd
    from edgekit.cli.output import plain, rows_table
    from edgekit.fleet import FleetService
    from edgekit.fleet.view import fleet_view
    from edgekit.sim.simulation import SimulationStatus

    hostile = ["[/red]", "[link=https://evil.example]click[/link]", "[white on white]hidden[/]", "\\[x]"]
    with FleetState(tmp_path / "fleet.db") as fleet_state:
        svc = FleetService(fleet_state)
        svc.register_thing("pi-01", "rasp4b", {"os": "linux", "architecture": "aarch64"}, ["line-1"])
        spec = {"targetArn": "thinggroup/line-1", "components": {APP: {"componentVersion": "1.0.0"}}}
        deployment = svc.create_deployment(spec, require_published=False)
        svc.notify_due()
        cause = " ".join(hostile)
        svc.update_execution(
            "pi-01", deployment, "FAILED", {"deployment-error-code": hostile[0], "deployment-failure-cause": cause}
        )
        view = fleet_view(fleet_state)
    status = SimulationStatus(elapsed_s=3.0, devices=1, alive=1, faults=[cause], broker_url="mqtt://[red]h:1", view=view)

    def shown(*items: object) -> str:
        out = Console(record=True, width=400, color_system=None, file=open(tmp_path / "out.txt", "w"))  # noqa: SIM115
        for item in items:
            out.print(item, soft_wrap=True) if not isinstance(item, str) else out.print(item, soft_wrap=True, markup=False)
        text = out.export_text()
        out.file.close()
        return text

    printers = {
        "failures": shown(fleet_cmd.failures_table(view.failures)),
        "live view": shown(fleet_cmd._live_view(status)),
        "rows": shown(rows_table("t", [{"a": cause}], {"a": "a"})),
        "plain": shown(plain(cause)),
    }
    for name, text in printers.items():
        flat = " ".join(text.split())
        assert cause in flat or all(h in flat for h in hostile), f"{name}: {flat!r}"
    assert "[red]h:1" in shown(fleet_cmd._live_view(status))
    # the status line is printed with markup=False: the names as written, no escaping backslashes
    line = shown(fleet_cmd._status_line(status))
    assert "line-1[1]" in line and "\\[" not in line.replace("\\[x]", "")
    for table in (fleet_cmd.deployments_table(view), fleet_cmd.groups_table(view), fleet_cmd.devices_table(view)):
        shown(table)  # no MarkupError
    # the error line: a path (or a device's text) in an error's message
    odd = tmp_path / "[/red][link=x]"
    capsys.readouterr()
    assert main(["fleet", "status", "--state", str(odd)]) == EXIT_CODES[ConfigError]
    assert "[/red][link=x]" in capsys.readouterr().err  # printed as written, not a MarkupError
