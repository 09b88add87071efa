"""The main job, end to end: compile → package → a cloud fallback → roll out → the fleet infers → count everything.

:func:`run_demo` is what ``edgekit demo`` (``make demo``) calls; it returns a :class:`DemoReport` and the CLI
prints it. The cloud fallback is ``edgekit serve`` started as a process (the one place this module knows it);
if it can't start, the devices get a dead endpoint instead and the report shows the fallback failing.
See README.md (the demo).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.progress import Progress, no_progress

if TYPE_CHECKING:
    from edgekit.fleet.view import GroupTelemetry

__all__ = ["DemoOptions", "DemoReport", "GroupReport", "run_demo"]

log = logging.getLogger(__name__)

COMPONENT = "com.edgekit.demo.SensorCnn"
CLOUD_MODEL = "sensor-cnn-cloud"


@dataclass
class DemoOptions:
    output: Path = Path("build/demo")
    targets: tuple[str, ...] = ("x86_64", "rasp4b")
    fleet: str = "demo"
    state: Path | None = None  # default: ./.edgekit/fleet, where `edgekit fleet status` looks
    rollout_per_min: int = 600
    seconds: float = 20.0  # how long every device infers
    outage_s: float = 5.0  # the broker is down this long, a third of the way in (0: no outage)
    interval_s: float = 0.1  # 10 readings per second per device
    window_s: float = 2.0
    min_confidence: float = 0.6
    scenario: str = "synthetic:ood=0.15,drift=0.01"
    no_fleet: bool = False  # stop after compiling and packaging
    keep: bool = False
    cloud_url: str | None = None  # an Open Inference Protocol server to use instead of starting edgekit serve


@dataclass
class GroupReport:
    group: str
    devices: int
    rollout: dict[str, int]
    produced: int = 0
    accounted: int = 0
    duplicates: int = 0
    windows_expected: int = 0
    windows_received: int = 0
    telemetry: GroupTelemetry | None = None
    """The fleet view's telemetry of the group (what ``edgekit fleet status`` and the page show)."""
    fallback_ms: dict[str, float] = field(default_factory=dict)
    crashed_runs: int = 0
    abandoned: int = 0
    """Readings in the open window of a loop a fault killed: gone with the process, as on a device; not ``lost``."""

    @property
    def lost(self) -> int:
        """Readings produced that no summary the fleet received accounts for, beyond those a killed loop held."""
        return self.produced - self.accounted - self.abandoned

    @property
    def _seen(self) -> GroupTelemetry:
        from edgekit.fleet.view import GroupTelemetry

        return self.telemetry or GroupTelemetry(group=self.group)

    @property
    def local(self) -> int:
        return self._seen.local

    @property
    def cloud(self) -> int:
        return self._seen.cloud

    @property
    def none(self) -> int:
        return self._seen.none

    @property
    def uplink_messages(self) -> int:
        return self._seen.uplink_messages

    @property
    def fallback_errors(self) -> dict[str, int]:
        return self._seen.fallback_errors

    @property
    def breakers(self) -> dict[str, int]:
        """Devices by their breaker's state in their latest window."""
        return self._seen.breakers


@dataclass
class DemoReport:
    model: Path
    artifacts: list[Any]
    manifests: list[Any]
    cached: list[bool] = field(default_factory=list)
    packaged: list[str] = field(default_factory=list)
    lint_errors: int = 0
    cloud: str = ""
    cloud_note: str = ""
    fleet: str = ""
    devices: int = 0
    state: Path | None = None
    broker: str = ""
    deployments: list[str] = field(default_factory=list)
    groups: list[GroupReport] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    seconds: float = 0.0
    setup_s: float = 0.0
    fleet_s: float = 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _cloud_endpoint(artifact: Path, say: Progress, log_path: Path) -> Any:
    """``edgekit serve`` on a free port with the float model: yields (url, note); a dead url when it can't start."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "edgekit", "serve", f"{CLOUD_MODEL}={artifact}", "--port", str(port)]
    say(f"starting the cloud fallback: edgekit serve on {url}")
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    note = ""
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            note = f"edgekit serve did not start ({tail[0][:160]}); the devices' fallback points at a dead port"
            break
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=1) as reply:
                if reply.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            note = "edgekit serve was not ready after 60 s; the devices' fallback may fail"
            break
        time.sleep(0.2)
    try:
        yield url, note
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def run_demo(
    options: DemoOptions, *, progress: Progress | None = None, on_fleet: Callable[[Any], None] | None = None
) -> DemoReport:
    """Run the demo (see the module docstring). ``on_fleet(sim)`` is called while the fleet runs (``--keep``: the
    caller waits there)."""
    from edgekit.api import compile, package
    from edgekit.demo.model import write_demo_model
    from edgekit.greengrass.lint import lint_paths

    say = progress or no_progress
    started = time.monotonic()
    out = options.output
    out.mkdir(parents=True, exist_ok=True)
    model = write_demo_model(out / "sensor_cnn.onnx")
    artifacts, manifests, cached = [], [], []
    # The default pipeline: whichever backend wins each target. Mixed backends package into one model component, and
    # a simulated device of another architecture runs its artifact's host twin (a labelled stand-in).
    for target in options.targets:
        result = compile(model, target, out, progress=lambda m, t=target: say(f"compiling for {t}: {m}"))
        artifacts.append(result.artifact_dir)
        manifests.append(result.manifest)
        cached.append(result.cache_hit)
    report = DemoReport(model, artifacts, manifests, cached=cached)
    build = out / "greengrass-build"
    packaged = package(artifacts, name=COMPONENT, version="1.0.0", output=build, progress=say)
    report.packaged = [f"{c.name} {c.version}" for c in packaged.components]
    report.lint_errors = sum(1 for f in lint_paths([build / "recipes"]) if f.severity == "error")
    if options.no_fleet:
        return report
    host = next((a for a, m in zip(artifacts, manifests, strict=True) if m.profile.name == "x86_64"), artifacts[0])
    endpoint = (
        contextlib.nullcontext((options.cloud_url, "")) if options.cloud_url else _cloud_endpoint(host, say, out / "serve.log")
    )
    with endpoint as (url, note):
        report.cloud, report.cloud_note = url, note
        asyncio.run(_fleet(options, build, url, report, say, on_fleet, started))
    return report


async def _fleet(
    options: DemoOptions,
    build: Path,
    cloud_url: str,
    report: DemoReport,
    say: Progress,
    on_fleet: Callable[[Any], None] | None,
    started: float,
) -> None:
    from edgekit.fleet.folder import DEFAULT_STATE_DIR
    from edgekit.fleet_file import load_fleet
    from edgekit.sim import Simulation

    fleet = load_fleet(options.fleet)
    state = options.state or DEFAULT_STATE_DIR
    groups = sorted({g for entry in fleet.devices for g in entry.groups} - {"canary"})
    # emulated devices (qemu-user) fall back to simulated ones where their aarch64 Python can't be had (offline)
    sim = Simulation(fleet, state_dir=state, progress=say, emulation_fallback=True)
    await sim.start()
    try:
        status = sim.status()
        report.fleet, report.devices, report.state, report.broker = fleet.name, status.devices, sim.folder.root, status.broker_url
        sim.publish(build)
        inference = f"{COMPONENT}.Inference"
        settings = {
            "InputSource": options.scenario,
            "IntervalSeconds": str(options.interval_s),
            "WindowSeconds": str(options.window_s),
            "MinConfidence": str(options.min_confidence),
            "FallbackEndpoint": cloud_url,
            "FallbackModel": CLOUD_MODEL,
        }
        ids = {}
        for group in groups:
            ids[group] = sim.deploy(
                {
                    "targetArn": f"thinggroup/{group}",
                    "deploymentName": f"demo-{group}",
                    "components": {
                        inference: {"componentVersion": "1.0.0", "configurationUpdate": {"merge": json.dumps(settings)}}
                    },
                    "iotJobConfiguration": {"jobExecutionsRolloutConfig": {"maximumPerMinute": options.rollout_per_min}},
                }
            )
        report.deployments = list(ids.values())
        say("rolling out")
        summaries = {g: await sim.wait(d, timeout=120) for g, d in ids.items()}
        await _emulated_inferring(sim, say)
        report.setup_s = time.monotonic() - started
        t0 = time.monotonic()
        say(
            f"every device infers for {options.seconds:g} s"
            + (f", the broker down for {options.outage_s:g} s" if options.outage_s else "")
        )
        if options.outage_s > 0:
            await asyncio.sleep(options.seconds / 3)
            await sim.restart_broker(options.outage_s)
        await asyncio.sleep(max(0.0, options.seconds - (time.monotonic() - t0)))
        report.seconds = time.monotonic() - t0
        say("counting: every loop closes its window; waiting for the fleet to receive every summary")
        points = await sim.inference_checkpoints()
        report.groups = await _account(sim, fleet, groups, summaries, points)
        report.faults = list(sim.status().faults)
        report.fleet_s = time.monotonic() - started
        if on_fleet is not None:
            on_fleet(sim)
        if options.keep:
            say(f"the fleet keeps running (state in {sim.folder.root}); Ctrl-C stops it")
            await asyncio.Event().wait()
    finally:
        await sim.close()


async def _emulated_inferring(sim: Any, say: Progress, timeout: float = 120.0) -> None:
    """Wait until every emulated device's inference component sent its first summary: under qemu its aarch64 Python
    takes seconds to load numpy and the runtime after the rollout says RUNNING."""
    emulated = {t for t, d in sim.devices.items() if d.process is not None and d.alive}
    if not emulated:
        return
    say(f"waiting for the emulated device(s) to infer ({', '.join(sorted(emulated))}: aarch64 under qemu-user)")
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        sim.telemetry.flush()
        if emulated <= set(sim.state.telemetry()):
            say(f"emulated device(s) inferring {time.monotonic() - t0:.1f} s after the rollout")
            return
        await asyncio.sleep(0.25)
    say(f"emulated device(s) sent no summary within {timeout:g} s; see {sim.folder.root / 'emulated'}")


async def _account(sim: Any, fleet: Any, groups: list[str], summaries: dict[str, Any], points: list[Any]) -> list[GroupReport]:
    from edgekit.fleet.telemetry import accounted

    deadline = time.monotonic() + 60
    while True:  # until every window each checkpoint covers has arrived (or a minute passed)
        sim.telemetry.flush()
        got = accounted(sim.state, points)
        if got.missing_windows <= 0 or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.25)
    members = {d.thing: d.groups for d in fleet.expand()}
    view = sim.status().view  # the fleet view: its per-group telemetry is what the report shows, not summed again here
    runs = sim.inference.runs
    out = []
    for group in groups:
        things = [t for t, gs in members.items() if group in gs]
        mine = [p for p in points if p.thing in things]
        got = accounted(sim.state, mine)
        rep = GroupReport(group, len(things), dict(summaries[group].counts), produced=sum(p.readings for p in mine),
                          abandoned=sum(p.abandoned for p in mine))  # fmt: skip
        rep.accounted, rep.duplicates = got.readings, got.duplicates
        rep.windows_expected, rep.windows_received = got.expected_windows, got.windows
        rep.telemetry = view.group_telemetry(group)
        latencies: list[float] = []
        for thing in things:
            for run in runs.get(thing, []):
                latencies += run.loop.stats.cloud_ms
                rep.crashed_runs += 1 if run.crashed else 0
        if latencies:
            arr = np.asarray(latencies)
            rep.fallback_ms = {f"p{q}": round(float(np.percentile(arr, q)), 1) for q in (50, 99)} | {"n": float(arr.size)}
        out.append(rep)
    return out
