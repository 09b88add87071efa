"""Acknowledged means committed: telemetry windows the broker acknowledged vs those the fleet service stored, across
repeated ``kill -9`` of the fleet service.

A real mosquitto; the fleet service's telemetry ingest (:class:`edgekit.fleet.telemetry.TelemetryIngest` on its
persistent MQTT session, the fleet's SQLite state) in a subprocess; a device publishing window summaries at QoS 1
and counting those the broker acknowledged (PUBACK 0). Every ``period`` seconds the service gets SIGKILL and is
started again. At the end: acknowledged, stored, acknowledged but lost, stored more than once.

    python -m bench.telemetry_crash --kills 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from edgekit.fleet.state import FleetState
from edgekit.fleet.telemetry import TelemetryIngest
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import MqttClient, connect
from edgekit.wire.summary import AnsweredBy, WindowSummary, encode_summary

THING = "dev-1"
COMPONENT = "com.example.Inference"
SERVICE_ID = "edgekit-fleet-service"


@dataclass(frozen=True)
class CrashFigures:
    kills: int
    acknowledged: int
    stored: int
    lost: int  # acknowledged but never stored
    stored_twice: int  # rows for one window beyond the first (the table's key forbids it)
    redelivered: int  # deliveries beyond the first of a stored window (de-duplicated)

    def line(self) -> str:
        return (
            f"{self.kills} kill -9s of the fleet service: {self.acknowledged} windows acknowledged by the broker, "
            f"{self.stored} stored, {self.lost} acknowledged but lost, {self.stored_twice} stored twice "
            f"({self.redelivered} redeliveries de-duplicated)"
        )


def _summary(window: int) -> str:
    return encode_summary(
        WindowSummary(
            thing=THING,
            component=COMPONENT,
            model="mlp",
            run="crash",
            window=window,
            window_start=float(window),
            window_end=float(window + 1),
            count=1,
            classes={"0": 1},
            answered_by=AnsweredBy(local=1, cloud=0, none=0),
        )
    )


async def _serve(url: str, database: str) -> None:
    """The fleet service's telemetry side, until it is killed."""
    state = FleetState(database)
    client = MqttClient(SERVICE_ID)
    ingest = TelemetryIngest(state, client)
    await ingest.start()
    await client.connect(url)
    print("ready", flush=True)
    await asyncio.Event().wait()


def _start_service(url: str, database: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.telemetry_crash", "--serve", url, str(database)], env=env, stdout=subprocess.PIPE
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        _kill(proc)
        raise RuntimeError(f"the fleet service did not start: {line!r}")
    return proc


def _kill(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGKILL)  # kill -9: nothing flushed, nothing acknowledged on the way out
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _stored(database: Path) -> tuple[set[int], int, int]:
    db = sqlite3.connect(database)
    try:
        rows = db.execute("SELECT window, deliveries FROM telemetry_windows WHERE thing = ?", (THING,)).fetchall()
    finally:
        db.close()
    windows = [int(w.rsplit("/", 1)[1]) if isinstance(w, str) else int(w) for w, _ in rows]
    return set(windows), len(windows) - len(set(windows)), sum(int(d) - 1 for _, d in rows)


async def measure(kills: int = 10, period: float = 1.5, folder: Path | None = None) -> CrashFigures:
    """Publish windows while the fleet service is killed ``kills`` times; compare acknowledged with stored."""
    with tempfile.TemporaryDirectory(prefix="edgekit-crash-") as tmp:
        root = folder or Path(tmp)
        database = root / "fleet.db"
        FleetState(database).close()
        broker = MosquittoBroker(root / "broker")
        await asyncio.to_thread(broker.start)
        service = await asyncio.to_thread(_start_service, broker.url, database)
        acknowledged: set[int] = set()
        stop = asyncio.Event()
        try:
            device = await connect(broker.url, "crash-device", max_inflight=50)

            async def one(window: int) -> None:
                code = await device.publish(f"devices/{THING}/inference", _summary(window), qos=1, timeout=None)
                if code == 0:
                    acknowledged.add(window)

            async def publish() -> None:
                window = 0
                pending: set[asyncio.Task[None]] = set()
                while not stop.is_set():
                    window += 1
                    task = asyncio.create_task(one(window))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    await asyncio.sleep(0.002)
                await asyncio.gather(*pending)

            publisher = asyncio.create_task(publish())
            for _ in range(kills):
                await asyncio.sleep(period)
                await asyncio.to_thread(_kill, service)
                await asyncio.sleep(0.2)
                service = await asyncio.to_thread(_start_service, broker.url, database)
            await asyncio.sleep(period)
            stop.set()
            await publisher
            await device.disconnect()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:  # the service drains what the broker queued for it
                stored, twice, redelivered = _stored(database)
                if acknowledged <= stored:
                    break
                await asyncio.sleep(0.5)
            await asyncio.sleep(0.5)
            stored, twice, redelivered = _stored(database)
        finally:
            _kill(service)
            await asyncio.to_thread(broker.stop)
        return CrashFigures(kills, len(acknowledged), len(stored), len(acknowledged - stored), twice, redelivered)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--period", type=float, default=1.5, help="seconds between kills")
    parser.add_argument("--serve", nargs=2, metavar=("URL", "DATABASE"), help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.serve:
        asyncio.run(_serve(*args.serve))
        return 0
    figures = asyncio.run(measure(args.kills, args.period))
    print(json.dumps(figures.__dict__) if args.json else figures.line())
    return 0 if figures.lost == 0 and figures.stored_twice == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
