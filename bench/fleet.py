"""The local fleet at scale: connect, deploy, memory, rollout rate and abort latency, side by side.

    python -m bench.fleet [--devices 1000] [--rate 100] [--quick] [--no-tls] [--json out.json | --json -]

See docs/benchmarks.md (fleet).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import edgekit
from edgekit.compiler.measurement import host_description
from edgekit.compiler.pipeline import Pipeline
from edgekit.fleet_file import FleetFile
from edgekit.greengrass.deployment import parse_abort
from edgekit.greengrass.package import package
from edgekit.sim import Simulation

MODEL = "com.example.Model"
MODEL_B = "com.example.ModelB"
PARTS = 10
FAILING = "com.example.Failing"
PROBE = "com.example.Probe"
PAD_BYTES = 1 << 20
QUICK_PIPELINE = Pipeline.model_validate(
    {
        "name": "bench",
        "candidates": [{"name": "ort", "backend": "onnxruntime"}],
        "measure": {"samples": 2, "warmup": 0, "repeat": 2},
    }
)


@dataclass
class Figures:
    devices: int
    tls: bool
    tick_s: float
    connect_s: float = 0.0
    connected: int = 0
    artifact_bytes: int = 0
    deploy_s: float = 0.0
    deploy_counts: dict[str, int] = field(default_factory=dict)
    devices_lost: int = 0
    last_release_s: float = 0.0
    burst_deploy_s: float = 0.0
    burst_counts: dict[str, int] = field(default_factory=dict)
    job_p50_s: float = 0.0
    job_p95_s: float = 0.0
    rss_per_device_connected_mb: float = 0.0
    rss_per_device_deployed_mb: float = 0.0
    broker_rss_per_device_mb: float | None = None
    rollout_devices: int = 0
    rollout_window_s: float = 0.0
    rollout_rate: int = 0
    rollout_released_per_min: float = 0.0
    rollout_started_per_min: float = 0.0
    rollout_max_in_any_minute: int = 0
    rollout_released_s: list[float] = field(default_factory=list)  # each device's release, seconds after the deployment
    rollout_started_s: list[float] = field(default_factory=list)  # each device's job start
    abort_devices: int = 0
    abort_latency_ms: float | None = None
    abort_failed: int = 0
    abort_canceled: int = 0
    abort_reason: str = ""
    status_debounce_s: float = 0.25
    total_s: float = 0.0


# --------------------------------------------------------------------------- inputs


def _rss(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _model_build(work: Path) -> tuple[Path, int]:
    """A real packaged model component whose zip is ~1 MB (the compiled artifact + 1 MiB of random bytes)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import onnx
    from conftest import make_mlp  # the tests' tiny MLP, generated in code

    onnx.save(make_mlp(), str(work / "mlp.onnx"))
    artifact = edgekit.compile(work / "mlp.onnx", "x86_64", work / "compiled", pipeline=QUICK_PIPELINE).artifact_dir
    (artifact / "padding.bin").write_bytes(os.urandom(PAD_BYTES))
    build = work / "greengrass-build"
    result = package([artifact], name=MODEL, version="1.0.0", output=build)
    size = sum(p.stat().st_size for p in result.component(MODEL).artifacts)
    (artifact / "padding.bin").write_bytes(os.urandom(PAD_BYTES))
    package([artifact], name=MODEL_B, version="1.0.0", output=build)
    for name, lifecycle in ((FAILING, {"Install": "exit 1"}), (PROBE, {"Run": "python3 -m probe"})):
        recipe = {
            "RecipeFormatVersion": "2020-01-25",
            "ComponentName": name,
            "ComponentVersion": "1.0.0",
            "ComponentDescription": "edgekit fleet benchmark",
            "ComponentPublisher": "edgekit",
            "Manifests": [{"Platform": {"os": "linux"}, "Lifecycle": lifecycle}],
        }
        (build / "recipes" / f"{name}-1.0.0.json").write_text(json.dumps(recipe, indent=1))
    return build, size


def _fleet(devices: int, wave: int, abort: int) -> FleetFile:
    """``devices`` in group ``all``, split in :data:`PARTS` groups ``part-k``; the first ``wave`` also in ``wave``,
    the last ``abort`` also in ``abort`` (part boundaries are respected: each entry of the file is one part or a piece)."""
    size = -(-devices // PARTS)
    bounds = sorted({0, devices, wave, devices - abort, *range(0, devices, size)})
    entries: list[dict[str, Any]] = []
    for start, end in itertools.pairwise(bounds):
        groups = ["all", f"part-{start // size}"]
        if end <= wave:
            groups.append("wave")
        if start >= devices - abort:
            groups.append("abort")
        entries.append({"prefix": f"d{start:04d}-", "count": end - start, "profile": "x86_64", "groups": groups})
    return FleetFile.model_validate({"name": "bench", "mode": "in_process", "devices": entries})


def _spec(target: str, component: str, rate: int | None = None, abort: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"targetArn": target, "components": {component: {"componentVersion": "1.0.0"}}}
    job: dict[str, Any] = {}
    if rate is not None:
        job["jobExecutionsRolloutConfig"] = {"maximumPerMinute": rate}
    if abort is not None:
        job["abortConfig"] = parse_abort(abort).model_dump(by_alias=True, exclude_none=True)
    if job:
        spec["iotJobConfiguration"] = job
    return spec


# --------------------------------------------------------------------------- the measurements


async def measure(args: argparse.Namespace, say: Callable[[str], None]) -> Figures:
    devices = args.devices
    if args.quick:
        wave = devices // 2
        abort_n = devices - wave
    else:
        abort_n = min(100, max(10, devices // 4))
        wave = min(300, devices - abort_n)
    fig = Figures(devices=devices, tls=not args.no_tls, tick_s=1.0)
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=16, thread_name_prefix="bench-io"))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-fleet-") as tmp:
        work = Path(tmp)
        say("packaging a model component padded to ~1 MB")
        build, fig.artifact_bytes = _model_build(work)
        fleet = _fleet(devices, wave, abort_n)
        rss0 = _rss()
        async with Simulation(fleet, state_dir=work / "state", tls=not args.no_tls, tick_s=fig.tick_s, progress=say) as sim:
            assert sim.state is not None and sim.broker is not None
            fig.connect_s = sim.connect_s or 0.0
            fig.connected = sim.status().connected
            fig.rss_per_device_connected_mb = (_rss() - rss0) / devices / 2**20
            if sim.broker.pid is not None:
                fig.broker_rss_per_device_mb = _rss(sim.broker.pid) / devices / 2**20
            sim.publish(build)

            # (b) 1 MB component to every device
            say(f"(b) deploying {MODEL} (~{fig.artifact_bytes / 2**20:.2f} MiB) to {devices} devices")
            t0, wall0 = time.monotonic(), time.time()
            deployment = sim.deploy(_spec("thinggroup/all", MODEL))
            summary = await sim.wait(deployment, timeout=600)
            fig.deploy_s = time.monotonic() - t0
            fig.deploy_counts = dict(summary.counts)
            status = sim.status()
            fig.devices_lost = devices - summary.counts.get("SUCCEEDED", 0) + (devices - status.connected)
            released = [e.notified_at for e in sim.state.executions(deployment_id=deployment) if e.notified_at is not None]
            fig.last_release_s = max(released) - wall0 if released else 0.0
            jobs = [
                run.total_s
                for d in sim.devices.values()
                if d.runner is not None
                for run in d.runner.history
                if run.job_id == deployment
            ]
            if jobs:
                fig.job_p50_s = statistics.median(jobs)
                fig.job_p95_s = sorted(jobs)[max(0, int(len(jobs) * 0.95) - 1)]
            fig.rss_per_device_deployed_mb = (_rss() - rss0) / devices / 2**20

            # (b') the same size, released at once: 10 deployments of 100 devices
            parts = sorted({g for d in fleet.expand() for g in d.groups if g.startswith("part-")})
            say(f"(b') deploying {MODEL_B} to {devices} devices as {len(parts)} deployments, each released at once")
            t0 = time.monotonic()
            ids = [sim.deploy(_spec(f"thinggroup/{part}", MODEL_B)) for part in parts]
            counts: dict[str, int] = {}
            for deployment_id in ids:
                for key, n in (await sim.wait(deployment_id, timeout=600)).counts.items():
                    counts[key] = counts.get(key, 0) + n
            fig.burst_deploy_s = time.monotonic() - t0
            fig.burst_counts = counts
            fig.devices_lost = max(fig.devices_lost, devices - counts.get("SUCCEEDED", 0))

            # (d) rollout rate
            window = 20.0 if args.quick else 120.0
            fig.rollout_devices, fig.rollout_window_s, fig.rollout_rate = wave, window, args.rate
            say(f"(d) rollout at {args.rate}/min to {wave} devices, measured over {window:.0f} s")
            wall0 = time.time()
            t0 = loop.time()
            rollout = sim.deploy(_spec("thinggroup/wave", PROBE, rate=args.rate))
            await asyncio.sleep(window + 2 * fig.tick_s)
            notified = sorted(
                e.notified_at - wall0 for e in sim.state.executions(deployment_id=rollout) if e.notified_at is not None
            )
            starts = sorted(
                run.started - t0
                for d in sim.devices.values()
                if d.runner is not None
                for run in d.runner.history
                if run.job_id == rollout
            )
            fig.rollout_released_s, fig.rollout_started_s = list(notified), list(starts)
            if notified:
                first = notified[0]
                fig.rollout_released_per_min = sum(1 for t in notified if t - first <= window) * 60.0 / window
                fig.rollout_max_in_any_minute = max(sum(1 for u in notified if t <= u < t + 60.0) for t in notified)
            if starts:
                first = starts[0]
                fig.rollout_started_per_min = sum(1 for t in starts if t - first <= window) * 60.0 / window
            assert sim.service is not None
            sim.service.cancel_deployment(rollout)

            # (e) abort latency
            fig.abort_devices = abort_n
            say(f"(e) a deployment failing everywhere to {abort_n} devices, abort at 10% (min 10 executed), {args.rate}/min")
            aborting = sim.deploy(_spec("thinggroup/abort", FAILING, rate=args.rate, abort="10%"))
            try:
                final = await sim.wait(aborting, timeout=120)
            except TimeoutError:
                final = None
            for _ in range(300):  # executions already in progress run to their end
                if not sim.state.executions(deployment_id=aborting, statuses=("IN_PROGRESS",)):
                    break
                await asyncio.sleep(0.1)
            record = sim.state.get_deployment(aborting)
            assert record is not None
            fig.abort_failed = sum(
                1 for e in sim.state.executions(deployment_id=aborting) if e.status in ("FAILED", "TIMED_OUT", "REJECTED")
            )
            fig.abort_canceled = sum(1 for e in sim.state.executions(deployment_id=aborting) if e.status == "CANCELED")
            if final is not None and final.status == "CANCELED" and record.status_reason:
                fig.abort_reason = str(record.status_reason.get("reason", ""))
                executed = int(record.status_reason.get("executed", 0))
                finished = sorted(
                    d.agent.state.outcomes[aborting].finished_at
                    for d in sim.devices.values()
                    if d.agent is not None and aborting in d.agent.state.outcomes
                )
                if len(finished) >= executed > 0:
                    fig.abort_latency_ms = (record.updated_at - finished[executed - 1]) * 1000.0
    fig.total_s = time.monotonic() - started
    return fig


# --------------------------------------------------------------------------- report


def render(fig: Figures, quick: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 130))
    console.print(
        f"host: {host_description()} | {os.cpu_count()} CPUs | edgekit {edgekit.__version__} | mosquitto, "
        f"{'mTLS' if fig.tls else 'plain TCP'}, in_process agents | bridge tick {fig.tick_s:g} s"
        + (" | --quick" if quick else "")
    )
    table = Table(title="Local fleet, one process + mosquitto")
    for col in ("measure", "result", "goal", "notes"):
        table.add_column(col, justify="right" if col in ("result", "goal") else "left")
    ok = "[green]ok[/green]"
    miss = "[red]missed[/red]"

    def verdict(good: bool) -> str:
        return ok if good else miss

    table.add_row(
        "(a) connect", f"{fig.connect_s:.2f} s", "-", f"{fig.connected}/{fig.devices} devices connected, one MQTT session each"
    )
    table.add_row(
        "(b) deploy ~1 MB to all",
        f"{fig.deploy_s:.1f} s",
        f"≤ 60 s {verdict(fig.deploy_s <= 60)}",
        f"artifact {fig.artifact_bytes / 2**20:.2f} MiB; last execution released at {fig.last_release_s:.1f} s "
        f"(the rollout's 1000/min cap); device job p50 {fig.job_p50_s:.2f} s, p95 {fig.job_p95_s:.2f} s; {fig.deploy_counts}",
    )
    table.add_row(
        "(b') same, 10 deployments",
        f"{fig.burst_deploy_s:.1f} s",
        "-",
        f"a second ~1 MB component, one deployment per tenth of the fleet: every execution released at once; {fig.burst_counts}",
    )
    table.add_row(
        "(b) devices lost",
        str(fig.devices_lost),
        f"0 {verdict(fig.devices_lost == 0)}",
        "not SUCCEEDED in (b) or (b'), or disconnected at the end of (b)",
    )
    broker = f"; mosquitto {fig.broker_rss_per_device_mb:.3f} MiB/device" if fig.broker_rss_per_device_mb is not None else ""
    table.add_row(
        "(c) RSS per device",
        f"{fig.rss_per_device_deployed_mb:.3f} MiB",
        f"≤ 3 MB {verdict(fig.rss_per_device_deployed_mb <= 3)}",
        f"{fig.rss_per_device_connected_mb:.3f} MiB once connected, after the deployment as shown{broker}",
    )
    within = abs(fig.rollout_started_per_min - fig.rollout_rate) <= 0.05 * fig.rollout_rate
    table.add_row(
        f"(d) rollout {fig.rollout_rate}/min",
        f"{fig.rollout_started_per_min:.1f}/min",
        f"±5% {verdict(within)}",
        f"jobs started on devices over {fig.rollout_window_s:.0f} s ({fig.rollout_devices} devices); released by the service "
        f"{fig.rollout_released_per_min:.1f}/min; most in any 60 s: {fig.rollout_max_in_any_minute}",
    )
    latency = f"{fig.abort_latency_ms:.0f} ms" if fig.abort_latency_ms is not None else "n/a"
    table.add_row(
        "(e) abort 10%/min 10",
        latency,
        f"vs tick {fig.tick_s * 1000:.0f} ms",
        f"threshold-crossing failure on the device → CANCELED; {fig.abort_failed} failed, {fig.abort_canceled} canceled "
        f"of {fig.abort_devices}; status debounce {fig.status_debounce_s * 1000:.0f} ms",
    )
    console.print(table)
    console.print(f"total {fig.total_s:.1f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/fleet", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, help="simulated devices (default 1000; 100 with --quick)")
    parser.add_argument("--rate", type=int, default=100, help="rollout rate for (d) and (e), devices per minute (default 100)")
    parser.add_argument("--quick", action="store_true", help="100 devices, short windows: under a minute")
    parser.add_argument("--no-tls", action="store_true", help="plain TCP instead of mTLS with a certificate per device")
    parser.add_argument("--json", help="also write the figures as JSON to this file ('-': standard output)")
    parser.add_argument("--quiet", action="store_true", help="no progress messages")
    parser.add_argument("--charts", default="build/bench", help="folder for the charts (PNG; default build/bench)")
    parser.add_argument("--inference", action="store_true", help="instead: every device infers (bench/fleet_inference.py)")
    parser.add_argument("--readings", type=float, default=10.0, help="--inference: readings/s per device")
    parser.add_argument("--seconds", type=float, default=60.0, help="--inference: how long they infer")
    parser.add_argument("--outage", type=float, default=30.0, help="--inference: broker outage, seconds (0: skip)")
    parser.add_argument("--outage-devices", type=int, default=100, help="--inference: devices sharing 1,000 readings/s")
    parser.add_argument(
        "--shards",
        type=lambda text: [int(n) for n in text.split(",")],
        help="--inference: processes for the devices (default 1; --ten-k: the cores); 1,2 runs both, side by side",
    )
    parser.add_argument("--tls", action="store_true", help="--inference: mutual TLS, a certificate per device")
    parser.add_argument("--window", type=float, default=5.0, help="--inference: window seconds (default 5)")
    parser.add_argument(
        "--ingest-limit",
        type=float,
        default=0.0,
        help="--inference: the fleet service stores at most this many summaries/s (a service that falls behind; 0: no limit)",
    )
    parser.add_argument(
        "--ten-k", action="store_true", help="--inference with issue 23's goal: 10,000 devices, mTLS, 1 reading/s, 60 s"
    )
    parser.add_argument(
        "--connect-only",
        action="store_true",
        help="--inference: connect the devices, count their open files, ports and memory, and stop (no deployment)",
    )
    parser.add_argument(
        "--work",
        help="--inference: folder for the fleet's state and the devices' folders (default: the temp folder); "
        "/dev/shm puts the simulated disks in memory (faster deployments on a busy disk; ~1 MiB of RAM per device)",
    )
    args = parser.parse_args(argv)
    if args.ten_k:
        from edgekit.sim.shards import default_shards

        args.inference, args.tls, args.readings, args.outage = True, True, 1.0, 0.0
        args.devices = args.devices or 10_000
        args.shards = args.shards or [default_shards(args.devices)]  # more than the cores past the open-file limit
    args.devices = args.devices or (100 if args.quick else 1000)
    args.shards = args.shards or [1]
    if min(args.shards) < 1:
        parser.error("--shards must be 1 or more")
    if args.inference:
        from bench.fleet_inference import render as render_inference
        from bench.fleet_inference import run_inference

        logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
        results = run_inference(args, lambda m: None if args.quiet else print(m, file=sys.stderr, flush=True))
        render_inference(results)
        outage = results.get("outage")
        if outage is not None and outage.timeline:
            from bench.charts import series_over_time

            start, stop = outage.outage_at_s, outage.outage_at_s + outage.outage_s
            chart = series_over_time(
                {"readings produced": [(t, r) for t, r, _ in outage.timeline],
                 "uplink messages received (× 100)": [(t, 100 * m) for t, _, m in outage.timeline]},
                Path(args.charts) / "fleet-outage.png", "count", shade=(start, stop),
            )  # fmt: skip
            print(f"chart: {chart}")
        if args.json:
            text = json.dumps({"host": host_description(), **{k: asdict(v) if v else None for k, v in results.items()}}, indent=2)
            sys.stdout.write(text + "\n") if args.json == "-" else Path(args.json).write_text(text + "\n")
        return 0
    if args.devices < 20:
        parser.error("--devices must be at least 20")
    if not 1 <= args.rate <= 1000:
        parser.error("--rate must be 1-1000 (AWS IoT's maximumPerMinute)")

    def say(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    # the devices' own warnings (the failing Install of (e), ...) are expected here: keep the output to the figures
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    figures = asyncio.run(measure(args, say))
    render(figures, args.quick)
    if figures.rollout_released_s or figures.rollout_started_s:
        from bench.charts import rollout_progress

        chart = rollout_progress(
            figures.rollout_released_s, figures.rollout_started_s, figures.rollout_rate, Path(args.charts) / "fleet-rollout.png"
        )
        print(f"chart: {chart}")
    if args.json:
        payload = {"host": host_description(), "edgekit": edgekit.__version__, "quick": args.quick, **asdict(figures)}
        text = json.dumps(payload, indent=2) + "\n"
        if args.json == "-":
            sys.stdout.write(text)
        else:
            Path(args.json).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
