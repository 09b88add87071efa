"""bench/fleet --inference: N in-process devices each infer R readings/s for S seconds, then a broker outage.

    python -m bench.fleet --inference [--devices 1000] [--readings 10] [--seconds 60] [--outage-devices 100]
                                      [--outage 30] [--shards N] [--tls] [--window 5] [--json out.json]
    python -m bench.fleet --ten-k [--devices 10000] [--shards N]    # issue 23's goal: mTLS, 1 reading/s, 60 s
    python -m bench.fleet --ten-k --connect-only                     # its start path only: connect, count, stop

(a) N devices × R readings/s for S s, in ``--shards`` processes (default 1; ``--ten-k``: one per core): time to
connect them all and to deploy to all, readings/s achieved, CPU % and RSS of the device processes (this one and its
shards) and of the broker, uplink messages the fleet received — and every reading accounted for. ``--connect-only``:
connect them all, count what they hold (open files per process, local ports, memory), stop. (b) ``--outage-devices`` devices (1,000 readings/s in all
by default) through a ``--outage`` s broker outage: readings lost and counted twice after the replay.
See docs/benchmarks.md (fleet: inference).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import edgekit
from edgekit.fleet.telemetry import accounted
from edgekit.fleet_file import FleetFile
from edgekit.greengrass.package import package
from edgekit.mqtt import topics
from edgekit.mqtt.client import MqttClient, MqttMessage
from edgekit.mqtt.payloads import GetPendingJobExecutionsRequest
from edgekit.sim import Simulation, SimulationTimeoutError

MODEL = "com.example.Mlp"
INFERENCE = f"{MODEL}.Inference"
SETTLE_S = 12.0
MAX_SETTLE_S = 300.0  # after the timed part, how long missing windows are waited for
PROBE_THING = "bench-jobs-probe"
PROBE_EVERY_S = 1.0


@dataclass
class Run:
    devices: int
    readings_per_s: float
    shards: int = 1
    tls: bool = False
    window_s: float = 5.0
    connect_s: float = 0.0
    deploy_s: float = 0.0
    deploy_counts: dict[str, int] = field(default_factory=dict)
    connected_after_deploy: int = 0
    deploy_cpu_ms_per_device: float = 0.0  # this process + shards + mosquitto over the deployment, / devices (ms)
    release_s: float = 0.0  # first to last execution released (the rollout's rate: 1,000 a minute at most)
    tail_s: float = 0.0  # the last release to the last execution done
    notified_to_done_s: tuple[float, float] = (0.0, 0.0)  # one device's release to its final status: median, p95
    rss_mib: float = 0.0  # this process and its shards at the end of the timed part
    rss_parent_mib: float = 0.0  # this process alone (the fleet server, and the compile stack of the bench's build)
    rss_shards_mib: list[float] = field(default_factory=list)  # each shard (a shard's own base: ~86 MiB)
    broker_rss_per_device_kb: float = 0.0
    shard_cpu_percent: float = 0.0  # the shard processes together (the parent's is cpu_percent)
    broker_cpu_percent: float = 0.0  # mosquitto over the timed part
    seconds: float = 0.0
    produced: int = 0
    accounted: int = 0
    missing_windows: int = 0
    broker_dropped_for: list[str] = field(default_factory=list)  # clients mosquitto dropped messages for (its log)
    # a Jobs request to the fleet service every second (_JobsProbe), request -> reply in ms: median, p95, max; and
    # how many were sent and not answered by the end of the phase, during the deployment and during the timed part
    ingest_limit: float = 0.0  # --ingest-limit: summaries/s the fleet service stored at most (0: no limit)
    jobs_deploy_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    jobs_deploy_sent: int = 0
    jobs_deploy_unanswered: int = 0
    jobs_timed_ms: tuple[float, float, float] = (0.0, 0.0, 0.0)
    jobs_timed_sent: int = 0
    jobs_timed_unanswered: int = 0
    duplicates: int = 0
    achieved_per_s: float = 0.0
    cpu_percent: float = 0.0
    rss_per_device_kb: float = 0.0
    uplink_messages: int = 0
    outage_s: float = 0.0
    outage_at_s: float = 0.0  # when the broker went down, seconds into the timed part
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (s, readings produced, uplink messages received)
    settle_s: float = 0.0
    folder_mib: float = 0.0  # the fleet's folder (state, every device's folder) at the end: RAM too when on tmpfs
    shard_ms_per_device_s: float = 0.0  # the shards' CPU per device per second (ms): what a device costs its shard
    all_ms_per_device_s: float = 0.0  # this process + the shards + mosquitto, per device per second (ms)
    connect_only: bool = False
    fds_parent: int = 0  # open files once connected: this process, each shard, mosquitto
    fds_shards: list[int] = field(default_factory=list)
    fds_broker: int = 0
    fd_limit: int = 0  # the hard limit (shards and mosquitto raise their soft limit to it)
    tcp_ports: int = 0  # local TCP ports on 127.0.0.1 in use once connected (listening or connected)
    port_range: int = 0  # the ephemeral range's size (net.ipv4.ip_local_port_range)


def _rss(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # gone
        return 0


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(") ", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _folder_bytes(folder: Path) -> int:
    """Bytes of the files under ``folder`` (allocated blocks: what a tmpfs holds in memory)."""
    total = 0
    for root, _dirs, files in os.walk(folder):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
            except OSError:
                continue
    return total


def _fds(pid: int | str = "self") -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def _local_ports() -> int:
    """Distinct local TCP ports of this machine's sockets (all of them: every process, every state but TIME_WAIT)."""
    ports: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as handle:
            next(handle, None)
            for line in handle:
                fields = line.split()
                if len(fields) > 3 and fields[3] != "06":  # 06: TIME_WAIT
                    ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return len(ports)


def _port_range() -> int:
    try:
        low, high = (int(n) for n in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return 0
    return high - low + 1


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _build(work: Path) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import onnx
    from conftest import make_mlp

    from bench.fleet import QUICK_PIPELINE

    onnx.save(make_mlp(), str(work / "mlp.onnx"))
    artifact = edgekit.compile(work / "mlp.onnx", "x86_64", work / "compiled", pipeline=QUICK_PIPELINE).artifact_dir
    package([artifact], name=MODEL, version="1.0.0", output=work / "build")
    return work / "build"


class _JobsProbe:
    """A Jobs request (GetPendingJobExecutions of a thing of its own) to the fleet service every second, timed from
    its publish to its reply: how long a device's Jobs request waits for the service — the broker's queue and in-flight
    window for the service's session, the bridge's batch and database thread, the reply. Through the broker's service
    listener (the service's certificate: its ACL allows every topic), so no simulated device is disturbed."""

    def __init__(self, sim: Simulation) -> None:
        assert sim.broker is not None
        material = sim.material
        self.url = sim.broker.service_url
        self.client = MqttClient("bench-jobs-probe", tls=material.service if material is not None else None, clean_start=True)
        self.sent: dict[str, float] = {}
        self.rtt_ms: list[float] = []
        self._task: asyncio.Task[None] | None = None
        self._count = 0
        self._count_at = 0

    async def start(self) -> None:
        await self.client.subscribe(f"{topics.get_pending(PROBE_THING)}/+", 1, self._on_reply)
        await self.client.connect(self.url)
        self._task = asyncio.get_running_loop().create_task(self._ask())

    async def _ask(self) -> None:
        while True:
            self._count += 1
            token = f"probe-{self._count}"
            self.sent[token] = time.monotonic()
            with contextlib.suppress(Exception):  # the broker's PUBACK; the reply is timed by _on_reply
                await self.client.publish(topics.get_pending(PROBE_THING), GetPendingJobExecutionsRequest(client_token=token))
            await asyncio.sleep(PROBE_EVERY_S)

    def _on_reply(self, message: MqttMessage) -> None:  # accepted or rejected: an answer either way
        try:
            token = json.loads(message.payload).get("clientToken")
        except (ValueError, AttributeError):
            return
        sent = self.sent.pop(token, None) if isinstance(token, str) else None
        if sent is not None:
            self.rtt_ms.append(1000.0 * (time.monotonic() - sent))

    def phase(self) -> tuple[tuple[float, float, float], int, int]:
        """Since the last call: (median, p95, max) ms of the replies, requests sent, requests still unanswered."""
        rtt, self.rtt_ms = sorted(self.rtt_ms), []
        sent, self._count_at = self._count - self._count_at, self._count
        if not rtt:
            return (0.0, 0.0, 0.0), sent, len(self.sent)
        figures = (round(statistics.median(rtt), 1), round(rtt[int(0.95 * (len(rtt) - 1))], 1), round(rtt[-1], 1))
        return figures, sent, len(self.sent)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.disconnect()


def _limit_ingest(sim: Simulation, per_s: float) -> Callable[[], None]:
    """``--ingest-limit``: the fleet service's telemetry ingest stores at most ``per_s`` summaries a second (each batch's
    write takes at least its share of a second) — a service that falls behind the devices, as the starved one of the
    10,000-device run did, on a machine that can't run 10,000: the broker queues the rest for its session. Returns
    what lifts the limit (before the settle: the backlog is then stored at full speed)."""
    ingest = sim.telemetry
    assert ingest is not None
    write = ingest._write

    def slowed(batch: list[Any]) -> int:
        started = time.monotonic()
        new = write(batch)
        time.sleep(max(0.0, len(batch) / per_s - (time.monotonic() - started)))
        return new

    ingest._write = slowed  # type: ignore[method-assign]

    def lift() -> None:
        ingest._write = write  # type: ignore[method-assign]

    return lift


async def _run(
    build: Path,
    state: Path,
    devices: int,
    per_s: float,
    seconds: float,
    outage_s: float,
    say: Callable[[str], None],
    *,
    shards: int = 1,
    tls: bool = False,
    window_s: float = 5.0,
    connect_only: bool = False,
    ingest_limit: float = 0.0,
) -> Run:
    fleet = FleetFile.model_validate(
        {
            "name": "bench",
            "mode": "in_process",
            "devices": [{"prefix": "d", "count": devices, "profile": "x86_64", "groups": ["all"]}],
        }
    )
    figures = Run(devices, per_s, shards=shards, tls=tls, window_s=window_s, outage_s=outage_s, connect_only=connect_only)
    async with Simulation(fleet, state_dir=state, tls=tls, progress=say, shards=shards) as sim:
        figures.connect_s = sim.connect_s or 0.0
        if connect_only:
            _count_connected(sim, figures)
            return figures
        lift = _limit_ingest(sim, ingest_limit) if ingest_limit > 0 else (lambda: None)
        figures.ingest_limit = ingest_limit
        sim.publish(build)
        settings = {"IntervalSeconds": str(1.0 / per_s), "WindowSeconds": f"{window_s:g}", "InputSource": "synthetic:ood=0.1"}
        spec = {"componentVersion": "1.0.0", "configurationUpdate": {"merge": json.dumps(settings)}}
        deployment = sim.deploy({"targetArn": "thinggroup/all", "components": {INFERENCE: spec},
                                 "iotJobConfiguration": {"jobExecutionsRolloutConfig": {"maximumPerMinute": 1000}}})  # fmt: skip
        say(f"deploying to {devices} devices")
        probe = _JobsProbe(sim)
        await probe.start()
        deploy_pids = [p for p in (sim.shard_set.pids() if sim.shard_set is not None else [])]
        deploy_pids += [sim.broker.pid] if sim.broker is not None and sim.broker.pid else []
        deploy_cpu0 = _cpu() + sum(_cpu_of(p) for p in deploy_pids)
        deployed0 = time.monotonic()
        try:
            summary = await sim.wait(deployment, timeout=max(300.0, 0.1 * devices))
        except SimulationTimeoutError as exc:  # some devices never finished: say so, time the rest
            say(str(exc))
            summary = sim.server.deployment(deployment)
        figures.deploy_s, figures.deploy_counts = time.monotonic() - deployed0, dict(summary.counts)
        deploy_cpu = _cpu() + sum(_cpu_of(p) for p in deploy_pids) - deploy_cpu0
        figures.deploy_cpu_ms_per_device = 1000.0 * deploy_cpu / devices
        figures.jobs_deploy_ms, figures.jobs_deploy_sent, figures.jobs_deploy_unanswered = probe.phase()
        assert sim.state is not None
        executions = sim.state.executions(deployment_id=deployment)
        notified = sorted(e.notified_at for e in executions if e.notified_at is not None)
        spans = sorted(e.updated_at - e.notified_at for e in executions if e.notified_at is not None)
        if notified and spans:
            figures.release_s = notified[-1] - notified[0]
            figures.tail_s = max(e.updated_at for e in executions) - notified[-1]
            figures.notified_to_done_s = (statistics.median(spans), spans[int(0.95 * (len(spans) - 1))])
        figures.connected_after_deploy = sim.status().connected
        say(f"deployed in {figures.deploy_s:.1f} s: {summary.counts}; {figures.connected_after_deploy} connected")
        # the timed part starts once the shards have frozen their settled objects (edgekit.sim.shard.GcFreeze: the
        # same devices and loops for 10 s): what follows is the steady state; the freeze's one full collection is
        # the deployment's
        await asyncio.sleep(SETTLE_S if shards > 1 else 1.0)
        before = await sim.inference_checkpoints()
        pids = sim.shard_set.pids() if sim.shard_set is not None else []
        shard_cpu0 = sum(_cpu_of(p) for p in pids)
        broker_pid = sim.broker.pid if sim.broker is not None else None
        broker_cpu0 = _cpu_of(broker_pid) if broker_pid else 0.0
        probe.phase()  # the timed part's requests from here
        rss0, cpu0, t0 = _rss(), _cpu(), time.monotonic()
        say(
            f"{devices} devices infer {per_s:g} readings/s each for {seconds:g} s"
            + (f", broker down {outage_s:g} s" if outage_s else "")
        )

        async def sample() -> None:  # readings produced vs uplink messages the fleet received, once a second
            while True:
                produced = sum(run.loop.readings for runs in sim.inference.runs.values() for run in runs)
                produced += sim.shard_set.readings() if sim.shard_set is not None else 0
                received = sim.telemetry.stats.messages if sim.telemetry is not None else 0
                figures.timeline.append((round(time.monotonic() - t0, 2), produced, received))
                await asyncio.sleep(1.0)

        sampler = asyncio.get_running_loop().create_task(sample())
        if outage_s:
            await asyncio.sleep(min(5.0, seconds / 4))
            figures.outage_at_s = time.monotonic() - t0
            await sim.restart_broker(outage_s)
        await asyncio.sleep(max(0.0, seconds - (time.monotonic() - t0)))
        sampler.cancel()
        figures.jobs_timed_ms, figures.jobs_timed_sent, figures.jobs_timed_unanswered = probe.phase()
        await probe.stop()
        lift()
        points = await sim.inference_checkpoints()
        wall, cpu = time.monotonic() - t0, _cpu() - cpu0
        figures.shard_cpu_percent = 100.0 * (sum(_cpu_of(p) for p in pids) - shard_cpu0) / wall
        figures.broker_cpu_percent = 100.0 * ((_cpu_of(broker_pid) if broker_pid else 0.0) - broker_cpu0) / wall
        figures.rss_parent_mib = max(_rss(), rss0) / (1 << 20)
        figures.rss_shards_mib = [round(_rss(p) / (1 << 20), 1) for p in pids]
        rss_all = max(_rss(), rss0) + sum(_rss(p) for p in pids)
        figures.rss_mib = rss_all / (1 << 20)
        figures.broker_rss_per_device_kb = (_rss(broker_pid) if broker_pid else 0) / devices / 1024
        figures.seconds = wall
        start = {(p.thing, p.run): p.readings for p in before}
        figures.achieved_per_s = sum(p.readings - start.get((p.thing, p.run), 0) for p in points) / wall
        figures.cpu_percent = 100.0 * cpu / wall
        figures.shard_ms_per_device_s = 10.0 * figures.shard_cpu_percent / devices  # 1 % of a core = 10 ms a second
        figures.all_ms_per_device_s = (
            10.0 * (figures.cpu_percent + figures.shard_cpu_percent + figures.broker_cpu_percent) / devices
        )
        figures.rss_per_device_kb = rss_all / devices / 1024
        figures.produced = sum(p.readings for p in points)
        settle0 = time.monotonic()
        assert sim.state is not None and sim.telemetry is not None
        while True:
            sim.telemetry.flush()
            got = accounted(sim.state, points)
            if got.missing_windows <= 0 or time.monotonic() - settle0 > MAX_SETTLE_S:
                break
            await asyncio.sleep(0.5)
        figures.settle_s = time.monotonic() - settle0
        figures.accounted, figures.missing_windows, figures.duplicates = got.readings, got.missing_windows, got.duplicates
        figures.uplink_messages = sim.telemetry.stats.messages
        figures.broker_dropped_for = _dropped_for(sim.broker.log_path) if sim.broker is not None else []
        figures.folder_mib = _folder_bytes(state) / (1 << 20)
    return figures


def _dropped_for(log: Path) -> list[str]:
    """The clients mosquitto dropped messages for (past ``max_queued_messages``; said once per episode in its log):
    acknowledged to the publisher, never delivered — the fleet service's id there means lost telemetry."""
    marker = "Outgoing messages are being dropped for client "
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return []
    return [line.split(marker, 1)[1].rstrip(".") for line in lines if marker in line]


def _count_connected(sim: Simulation, figures: Run) -> None:
    """What the connected fleet holds: open files per process, local ports, memory (``--connect-only``)."""
    import resource

    pids = sim.shard_set.pids() if sim.shard_set is not None else []
    broker_pid = sim.broker.pid if sim.broker is not None else None
    figures.connected_after_deploy = sim.status().connected
    figures.fds_parent, figures.fds_shards = _fds(), [_fds(p) for p in pids]
    figures.fds_broker = _fds(broker_pid) if broker_pid else 0
    figures.fd_limit = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    figures.tcp_ports, figures.port_range = _local_ports(), _port_range()
    figures.rss_parent_mib = _rss() / (1 << 20)
    figures.rss_shards_mib = [round(_rss(p) / (1 << 20), 1) for p in pids]
    figures.rss_mib = figures.rss_parent_mib + sum(figures.rss_shards_mib)
    figures.rss_per_device_kb = figures.rss_mib * 1024 / figures.devices
    figures.broker_rss_per_device_kb = (_rss(broker_pid) if broker_pid else 0) / figures.devices / 1024


def run_inference(args: Any, say: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-infer-", dir=getattr(args, "work", None)) as tmp:
        work = Path(tmp)
        build = _build(work)
        results: dict[str, Any] = {}
        for shards in args.shards:  # several counts: side by side in this one run (same build, same machine)
            results["scale" if len(args.shards) == 1 else f"scale, {shards} shard(s)"] = asyncio.run(
                _run(build, work / f"scale-{shards}", args.devices, args.readings, args.seconds, 0.0, say,
                     shards=shards, tls=args.tls, window_s=args.window, connect_only=args.connect_only,
                     ingest_limit=getattr(args, "ingest_limit", 0.0))
            )  # fmt: skip
        outage = None
        if args.outage > 0 and not args.connect_only:
            per_s = 1000.0 / args.outage_devices
            outage = asyncio.run(_run(build, work / "outage", args.outage_devices, per_s, args.outage + 20.0, args.outage, say))
    return {**results, "outage": outage}


def render(results: dict[str, Any]) -> None:
    for name, r in results.items():
        if r is None:
            continue
        lost = r.produced - r.accounted
        print(f"({name}) {r.devices} devices x {r.readings_per_s:g} readings/s for {r.seconds:.0f} s"
              + (f", broker down {r.outage_s:g} s" if r.outage_s else "")
              + f"; {r.shards} shard process(es){', mTLS' if r.tls else ''}; {r.window_s:g} s windows"
              + (f"; the service stores at most {r.ingest_limit:g} summaries/s (--ingest-limit)" if r.ingest_limit else ""))  # fmt: skip
        print(f"  connected in             {r.connect_s:10.1f} s")
        if r.connect_only:
            _render_connected(r)
            continue
        if r.deploy_s:
            print(
                f"  deployed to all in       {r.deploy_s:10.1f} s   {r.deploy_counts}, {r.connected_after_deploy} connected then"
            )
            median, p95 = r.notified_to_done_s
            print(f"    released over          {r.release_s:10.1f} s   (the rollout: 1,000 a minute at most), the last done "
                  f"{r.tail_s:.1f} s after the last release; a device's release to done: median {median:.1f} s, p95 "
                  f"{p95:.1f} s; CPU {r.deploy_cpu_ms_per_device:.1f} ms per device (all processes)")  # fmt: skip
        for phase, ms, sent, unanswered in (
            ("deployment", r.jobs_deploy_ms, r.jobs_deploy_sent, r.jobs_deploy_unanswered),
            ("timed part", r.jobs_timed_ms, r.jobs_timed_sent, r.jobs_timed_unanswered),
        ):
            if sent:
                print(f"  Jobs request -> reply    {ms[0]:10.1f} ms  median over the {phase} (p95 {ms[1]:.1f}, max {ms[2]:.1f}; "
                      f"{sent} sent, one a second, {unanswered} unanswered at its end)")  # fmt: skip
        print(f"  readings/s achieved      {r.achieved_per_s:10,.0f}   (asked {r.devices * r.readings_per_s:,.0f})")
        print(
            f"  CPU of this process      {r.cpu_percent:9.0f} %   (2 cores = 200 %); of the shards {r.shard_cpu_percent:.0f} %; "
            f"of mosquitto {r.broker_cpu_percent:.0f} %"
        )
        if r.shards > 1:  # one shard: the devices run in this process (its CPU is in the all-in figure)
            print(f"  shard CPU per device-s   {r.shard_ms_per_device_s:10.3f} ms   (all in: {r.all_ms_per_device_s:.3f} ms; "
                  f"10,000 devices: {r.shard_ms_per_device_s * 10:.1f} cores of shards, {r.all_ms_per_device_s * 10:.1f} all in)")  # fmt: skip
        else:
            print(f"  CPU per device-s, all in {r.all_ms_per_device_s:10.3f} ms   "
                  f"(10,000 devices: {r.all_ms_per_device_s * 10:.1f} cores)")  # fmt: skip
        print(
            f"  RSS per device           {r.rss_per_device_kb:9.0f} KiB ({r.rss_mib:,.0f} MiB: this process + shards, / devices)"
        )
        if r.rss_shards_mib:
            per = [f"{m:,.0f}" for m in r.rss_shards_mib]
            print(f"  RSS by process           {r.rss_parent_mib:9,.0f} MiB this process; shards {', '.join(per)} MiB")
        print(f"  broker RSS per device    {r.broker_rss_per_device_kb:9.1f} KiB")
        print(f"  fleet folder             {r.folder_mib:9,.0f} MiB   (state + the devices' folders; in RAM on a tmpfs)")
        print(f"  uplink messages received {r.uplink_messages:10,}   ({r.uplink_messages / max(1, r.produced):.4f} per reading)")
        print(f"  readings produced        {r.produced:10,}   accounted {r.accounted:,}: lost {lost}, counted twice 0 "
              f"({r.duplicates} redelivered summaries ignored; settled {r.settle_s:.1f} s after the end)")  # fmt: skip
        if r.broker_dropped_for:  # mosquitto's queue for a client was full: what it dropped was acknowledged, and lost
            clients = sorted(set(r.broker_dropped_for))
            print(f"  mosquitto dropped        {len(r.broker_dropped_for):10,}   episode(s) of messages for a full queue "
                  f"(max_queued_messages), for {', '.join(clients[:5])}{' ...' if len(clients) > 5 else ''}")  # fmt: skip


def _render_connected(r: Run) -> None:
    per = (sum(r.fds_shards) or r.fds_parent) / r.devices
    print(f"  connected then           {r.connected_after_deploy:10,}   of {r.devices:,}")
    print(f"  open files               {r.fds_parent:10,}   this process; shards {', '.join(f'{n:,}' for n in r.fds_shards)} "
          f"({per:.1f} per device); mosquitto {r.fds_broker:,}; hard limit {r.fd_limit:,} a process")  # fmt: skip
    print(f"  local TCP ports in use   {r.tcp_ports:10,}   (the machine's, all processes; ephemeral range {r.port_range:,}: "
          f"each device takes ~2 — its link's listener and the link's connection to the broker)")  # fmt: skip
    print(f"  RSS per device           {r.rss_per_device_kb:9.0f} KiB ({r.rss_mib:,.0f} MiB: this process + shards, / devices; "
          f"connected, nothing deployed)")  # fmt: skip
    if r.rss_shards_mib:
        print(f"  RSS by process           {r.rss_parent_mib:9,.0f} MiB this process; shards "
              f"{', '.join(f'{m:,.0f}' for m in r.rss_shards_mib)} MiB")  # fmt: skip
    print(f"  broker RSS per device    {r.broker_rss_per_device_kb:9.1f} KiB")
