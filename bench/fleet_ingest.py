"""Telemetry ingest: window summaries stored per second, SQLite vs PostgreSQL, and two fleet service processes vs one
on PostgreSQL — side by side in one run.

Each case: a real mosquitto, fleet service processes (``python -m edgekit.fleet.scale_out --no-jobs``: the telemetry
ingest in the shared subscription group) on a fresh state, and one publisher sending ``--summaries`` distinct window
summaries (QoS 1, 64 things). The service processes are paused (SIGSTOP) while the publisher sends, so the broker
holds a backlog (one publisher on a busy 2-core machine is slower than the ingest: a live rate measures the
publisher); then they go on (SIGCONT) and the rate is the backlog over the time until the last summary is stored
(counted in the database). Also the writers alone
(``FleetState.record_telemetry`` in batches of 64, no MQTT, no validation): the database's own limit. The PostgreSQL
server is the benchmark's own (Debian's ``postgresql``, fsync on, on this machine).

    python -m bench.fleet_ingest                 # make bench-ingest
    python -m bench.fleet_ingest --summaries 5000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgekit.fleet.state import WINDOW_COLUMNS, FleetState
from edgekit.fleet.state_pg import LocalPostgres
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import connect
from edgekit.wire.summary import AnsweredBy, WindowSummary, encode_summary

THINGS = 64
COMPONENT = "com.example.Inference"


@dataclass(frozen=True)
class Case:
    name: str
    database: str
    processes: int
    summaries: int
    seconds: float
    stored: int
    published_s: float  # how long the publisher took to have every summary acknowledged by the broker (the backlog)
    per_process: list[int]

    @property
    def rate(self) -> float:
        return self.stored / self.seconds if self.seconds else 0.0


def _summary(thing: int, window: int) -> str:
    return encode_summary(
        WindowSummary(
            thing=f"dev-{thing:03d}", component=COMPONENT, model="mlp", run="bench", window=window,
            window_start=float(window), window_end=float(window + 1), count=10, classes={"0": 10},
            answered_by=AnsweredBy(local=9, cloud=1, none=0),
        )
    )  # fmt: skip


def _stored(state: FleetState) -> int:
    """Windows stored (one cheap count on an open connection: polling must not load the database it measures)."""
    with state.transaction(exclusive=False) as db:
        return int(db.execute("SELECT count(*) FROM telemetry_windows").fetchone()[0])


def _start(database: str, broker_url: str, client_id: str) -> subprocess.Popen[str]:
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.fleet.scale_out", "--database", database, "--broker", broker_url,
         "--client-id", client_id, "--no-jobs"],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"fleet service {client_id} did not start")
    return proc


def _stop(proc: subprocess.Popen[str]) -> dict[str, Any]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    return dict(json.loads(out.strip().splitlines()[-1]))


async def _case(name: str, database: str | Path, processes: int, summaries: int, work: Path) -> Case:
    FleetState(database).close()
    broker = MosquittoBroker(work / f"broker-{name}", max_queued_messages=summaries + 1000)
    await asyncio.to_thread(broker.start)
    procs = [await asyncio.to_thread(_start, str(database), broker.url, f"{name}-{i}") for i in range(processes)]
    try:
        device = await connect(broker.url, f"publisher-{name}", max_inflight=200)
        payloads = [(f"devices/dev-{i % THINGS:03d}/inference", _summary(i % THINGS, i // THINGS + 1)) for i in range(summaries)]
        for p in procs:
            p.send_signal(signal.SIGSTOP)  # the backlog: the broker queues what they don't take
        start = time.perf_counter()
        window = asyncio.Semaphore(400)

        async def one(topic: str, payload: str) -> None:
            async with window:
                await device.publish(topic, payload, qos=1, timeout=None)

        await asyncio.gather(*(one(t, p) for t, p in payloads))
        published = time.perf_counter() - start
        await asyncio.sleep(0.5)
        start = time.perf_counter()
        for p in procs:
            p.send_signal(signal.SIGCONT)
        stored = 0
        deadline = time.monotonic() + 600
        with FleetState(database) as state:
            while time.monotonic() < deadline:
                stored = await asyncio.to_thread(_stored, state)
                if stored >= summaries:
                    break
                await asyncio.sleep(0.05)
        seconds = time.perf_counter() - start
        await device.disconnect()
    finally:
        stats = [await asyncio.to_thread(_stop, p) for p in procs]
        await asyncio.to_thread(broker.stop)
    kind = "PostgreSQL" if isinstance(database, str) else "SQLite"
    return Case(name, kind, processes, summaries, seconds, stored, published, [int(s["windows"]) for s in stats])


def _writer(database: str | Path, rows: int) -> float:
    """Rows/s through record_telemetry alone (batches of 64, as the ingest flushes at most)."""
    with FleetState(database) as state:
        batch: list[tuple[Any, ...]] = []
        start = time.perf_counter()
        for i in range(rows):
            row = dict.fromkeys(WINDOW_COLUMNS, 0)
            row.update(thing=f"dev-{i % THINGS:03d}", component=COMPONENT, window=f"w/{i}", run="w", seq=i + 1,
                       readings=10, local=9, cloud=1, fallback_errors="{}", fallback_ms="{}", breaker="closed")  # fmt: skip
            batch.append(tuple(row[c] for c in WINDOW_COLUMNS))
            if len(batch) == 64:
                state.record_telemetry(batch, {}, 0.0)
                batch = []
        if batch:
            state.record_telemetry(batch, {}, 0.0)
        return rows / (time.perf_counter() - start)


async def measure(summaries: int, work: Path, server: LocalPostgres) -> dict[str, Any]:
    writers = {
        "sqlite": await asyncio.to_thread(_writer, work / "writer.db", summaries),
        "postgresql": await asyncio.to_thread(_writer, server.create_database("writer"), summaries),
    }
    cases = [
        await _case("sqlite-1", work / "ingest.db", 1, summaries, work),
        await _case("pg-1", server.create_database("ingest_one"), 1, summaries, work),
        await _case("pg-2", server.create_database("ingest_two"), 2, summaries, work),
    ]
    return {"writers": writers, "cases": cases}


def render(result: dict[str, Any], as_json: bool) -> None:
    cases: list[Case] = result["cases"]
    if as_json:
        out = {
            "writersRowsPerS": {k: round(v) for k, v in result["writers"].items()},
            "cases": [{**asdict(c), "rate": round(c.rate)} for c in cases],
        }
        print(json.dumps(out, indent=1))
        return
    print(f"cpus: {os.cpu_count()} (other work on the machine counts: figures from a busy machine vary)")
    w = result["writers"]
    print(
        f"writer alone (record_telemetry, batches of 64): SQLite {w['sqlite']:,.0f} rows/s, PostgreSQL {w['postgresql']:,.0f} rows/s"
    )
    for c in cases:
        print(
            f"{c.name:9s} {c.database:10s} {c.processes} process(es): {c.stored:,}/{c.summaries:,} stored in {c.seconds:.2f} s = "
            f"{c.rate:,.0f} summaries/s from a backlog (published in {c.published_s:.2f} s; per process {c.per_process})"
        )
    by = {c.name: c for c in cases}
    print(
        f"PostgreSQL vs SQLite, one process: {by['pg-1'].rate / by['sqlite-1'].rate:.2f}x; "
        f"two processes vs one on PostgreSQL: {by['pg-2'].rate / by['pg-1'].rate:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--summaries", type=int, default=20_000, help="window summaries per case")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgekit-ingest-") as tmp:
        pg = Path(tempfile.mkdtemp(prefix="edgekit-bench-pg-"))  # outside root's private tmp: the server may run as postgres
        try:
            with LocalPostgres(pg) as server:
                result = asyncio.run(measure(args.summaries, Path(tmp), server))
        finally:
            shutil.rmtree(pg, ignore_errors=True)
    render(result, args.json)
    return 0 if all(c.stored == c.summaries for c in result["cases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
