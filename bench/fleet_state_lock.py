"""Does the Jobs bridge's database work wait on the telemetry ingest's writes? (one fleet state, one lock)

    python -m bench.fleet_state_lock [--things 2000] [--rate 1000] [--batch 64] [--rounds 4] [--seconds 8]

The bridge's batches (8 GetPendingJobExecutions in one transaction, every 20 ms, as the bridge's state thread runs
them) timed with and without a thread writing window summaries as the ingest does (``record_telemetry``, ``--batch``
rows a transaction, ``--rate`` summaries/s: 1,000 is the 10,000-device fleet's at 10 s windows), interleaved rounds;
the wait for the state's lock and the whole batch, in ms. SQLite in a temporary folder (``--work``, default /dev/shm).
See docs/local-fleet.md (the service's connections).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

from edgekit.fleet.service import FleetService
from edgekit.fleet.state import FleetState
from edgekit.fleet.telemetry import _window_row
from edgekit.wire.summary import AnsweredBy, WindowSummary


def _summary(window: int) -> WindowSummary:
    return WindowSummary(
        thing="x", component="c", model="m", run="r", window=window, window_start=float(window),
        window_end=float(window + 1), count=10, classes={"0": 10}, answered_by=AnsweredBy(local=10, cloud=0, none=0),
    )  # fmt: skip


def _q(values: list[float], p: float) -> float:
    return values[int(p * (len(values) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/fleet_state_lock", description=__doc__.split("\n\n")[0])
    parser.add_argument("--things", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=1000.0, help="summaries/s the ingest thread writes")
    parser.add_argument("--batch", type=int, default=64, help="summaries per ingest transaction (the ingest's FLUSH_AT)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=8.0, help="per round and mode")
    parser.add_argument("--work", default="/dev/shm" if Path("/dev/shm").is_dir() else None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        state = FleetState(Path(tmp) / "fleet.db")
        service = FleetService(state)
        things = [f"d{i}" for i in range(args.things)]
        with state.transaction():
            for thing in things:
                service.register_thing(thing, "x86", {"os": "linux", "architecture": "amd64"}, ["all"])
        written = [0]

        def ingest(stop: threading.Event, took: list[float]) -> None:
            due = time.monotonic()
            while not stop.is_set():
                start = written[0]
                written[0] += args.batch
                rows = [_window_row(things[n % args.things], _summary(n + 1), time.time()) for n in range(start, written[0])]
                counts = {row[0]: {"messages": 1} for row in rows}
                began = time.perf_counter()
                state.record_telemetry(rows, counts, time.time())
                took.append(1000 * (time.perf_counter() - began))
                due += args.batch / args.rate
                time.sleep(max(0.0, due - time.monotonic()))

        results: dict[str, dict[str, list[float]]] = {}
        for _ in range(args.rounds):
            for mode in ("without the ingest", "with the ingest"):
                figures = results.setdefault(mode, {"wait": [], "batch": [], "ingest": []})
                stop = threading.Event()
                writer = threading.Thread(target=ingest, args=(stop, figures["ingest"])) if mode == "with the ingest" else None
                if writer is not None:
                    writer.start()
                end, k = time.monotonic() + args.seconds, 0
                while time.monotonic() < end:
                    began = time.perf_counter()
                    with state._lock:  # what the bridge's transaction waits for
                        locked = time.perf_counter()
                        with state.transaction():
                            for j in range(8):
                                service.pending_jobs(things[(8 * k + j) % args.things])
                    figures["wait"].append(1000 * (locked - began))
                    figures["batch"].append(1000 * (time.perf_counter() - began))
                    k += 1
                    time.sleep(0.02)
                stop.set()
                if writer is not None:
                    writer.join()
        for mode, figures in results.items():
            wait, batch = sorted(figures["wait"]), sorted(figures["batch"])
            line = (f"{mode}: {len(batch)} bridge batches; lock wait median {_q(wait, .5):.2f}, p95 {_q(wait, .95):.2f}, "
                    f"p99 {_q(wait, .99):.2f}, max {wait[-1]:.1f} ms; batch median {_q(batch, .5):.2f}, p95 "
                    f"{_q(batch, .95):.2f}, p99 {_q(batch, .99):.2f} ms")  # fmt: skip
            if figures["ingest"]:
                took = sorted(figures["ingest"])
                line += (f"; an ingest transaction ({args.batch} rows) median {statistics.median(took):.2f}, p95 "
                         f"{_q(took, .95):.2f} ms ({len(took)})")  # fmt: skip
            print(line)
        state.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
