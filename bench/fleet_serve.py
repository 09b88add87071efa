"""Real devices on a local fleet: 'edgekit fleet serve' + N 'edgekit agent' processes on this machine.

    python -m bench.fleet_serve [--agents 10] [--json out.json | --json -]

Starts the fleet in a process of its own (loopback, free ports), adds N devices (a bundle each), starts N agent
processes, and measures: the time until all N are connected (what their presence messages say), one deployment of a
small component to all of them (publish, then deploy to SUCCEEDED on every device), each agent's memory (RSS), and
the time a SIGTERM takes to stop them all cleanly. See docs/benchmarks.md (real devices).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import edgekit
from edgekit.fleet.folder import FleetFolder

APP = "com.example.BenchApp"


@dataclass
class Figures:
    agents: int
    serve_up_s: float = 0.0
    add_device_s: float = 0.0
    """All N bundles (a certificate each), one after the other."""
    connected_s: float = 0.0
    """From starting N agent processes to all N connected."""
    connected: int = 0
    deploy_s: float = 0.0
    """From deploy --local to SUCCEEDED on every device."""
    counts: dict[str, int] = field(default_factory=dict)
    agent_rss_mb: float = 0.0
    """Median resident memory of one agent process after the deployment."""
    stop_s: float = 0.0
    """SIGTERM to every agent until all exited."""
    exit_codes: list[int] = field(default_factory=list)


def _build(root: Path) -> Path:
    recipe = {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": APP,
        "ComponentVersion": "1.0.0",
        "ComponentPublisher": "edgekit bench",
        "Manifests": [
            {
                "Platform": {"os": "linux"},
                "Lifecycle": {"Install": "test -s {artifacts:path}/app.bin", "Run": "sleep 3600"},
                "Artifacts": [{"URI": "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/app.bin"}],
            }
        ],
    }
    (root / "recipes").mkdir(parents=True)
    (root / "recipes" / f"{APP}-1.0.0.json").write_text(json.dumps(recipe))
    artifacts = root / "artifacts" / APP / "1.0.0"
    artifacts.mkdir(parents=True)
    (artifacts / "app.bin").write_bytes(os.urandom(256 * 1024))
    return root


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _wait(check: Any, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise SystemExit(f"bench: {what} not reached within {timeout:.0f} s")
        time.sleep(0.1)


def run(agents: int) -> Figures:
    figures = Figures(agents)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-serve-") as tmp:
        root = Path(tmp)
        state, folder = root / "fleet", FleetFolder.at(root / "fleet")
        procs: list[subprocess.Popen[bytes]] = []
        log = (root / "serve.log").open("wb")
        try:
            started = time.monotonic()
            serve = subprocess.Popen(
                [sys.executable, "-m", "edgekit", "fleet", "serve", "--state", str(state), "--port", "0", "--http-port", "0",
                 "--tick", "0.2"], stdout=log, stderr=log, env=env,
            )  # fmt: skip
            procs.append(serve)
            _wait(lambda: folder.running() is not None, 60, "fleet serve up")
            figures.serve_up_s = time.monotonic() - started

            started = time.monotonic()
            bundles = [
                edgekit.add_device(f"dev-{i:03d}", groups=["bench"], platform="linux/amd64", state_dir=state, create_groups=True)
                for i in range(agents)
            ]
            figures.add_device_s = time.monotonic() - started

            started = time.monotonic()
            agent_procs = []
            for added in bundles:
                out = (root / f"{added.thing}.log").open("wb")
                cmd = [sys.executable, "-m", "edgekit", "agent", "--config", str(added.config)]
                agent_procs.append(subprocess.Popen(cmd, stdout=out, stderr=out, env=env))
            procs += agent_procs

            def connected() -> int:
                return sum(1 for d in edgekit.fleet_status(state_dir=state).view.devices if d.connected)

            _wait(lambda: connected() == agents, 120, f"{agents} agents connected")
            figures.connected_s = time.monotonic() - started
            figures.connected = connected()

            edgekit.publish(_build(root / "build"), local=True, state_dir=state)
            started = time.monotonic()
            deployed = edgekit.deploy(
                {"targetArn": "thinggroup/bench", "components": {APP: {"componentVersion": "1.0.0"}}}, local=True, state_dir=state
            )
            deployment_id = getattr(deployed, "deployment_id", "")

            def counts() -> dict[str, int]:
                for d in edgekit.fleet_status(state_dir=state).view.deployments:
                    if d.id == deployment_id:
                        return dict(d.counts)
                return {}

            _wait(lambda: counts().get("SUCCEEDED", 0) + counts().get("FAILED", 0) == agents, 300, "the deployment done")
            figures.deploy_s = time.monotonic() - started
            figures.counts = counts()
            rss = sorted(_rss_mb(p.pid) for p in agent_procs)
            figures.agent_rss_mb = rss[len(rss) // 2]

            started = time.monotonic()
            for p in agent_procs:
                p.send_signal(signal.SIGTERM)
            figures.exit_codes = [p.wait(120) for p in agent_procs]
            figures.stop_s = time.monotonic() - started
        finally:
            for p in reversed(procs):
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(30)
                    except subprocess.TimeoutExpired:
                        p.kill()
            log.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=10, help="agent processes (default 10)")
    parser.add_argument("--json", help="write the figures as JSON to this file ('-': stdout)")
    args = parser.parse_args(argv)
    figures = run(args.agents)
    data = asdict(figures)
    if args.json == "-":
        print(json.dumps(data, indent=1))
    else:
        if args.json:
            Path(args.json).write_text(json.dumps(data, indent=1))
        print(f"fleet serve up in {figures.serve_up_s:.2f} s; {args.agents} bundles in {figures.add_device_s:.2f} s")
        print(f"{figures.connected}/{args.agents} agent processes connected in {figures.connected_s:.2f} s")
        print(f"one deployment to all: {figures.counts} in {figures.deploy_s:.2f} s")
        print(
            f"agent RSS (median) {figures.agent_rss_mb:.0f} MB; SIGTERM to all stopped in {figures.stop_s:.2f} s, exit codes {sorted(set(figures.exit_codes))}"
        )
    return 0 if figures.counts.get("SUCCEEDED") == args.agents else 1


if __name__ == "__main__":
    sys.exit(main())
