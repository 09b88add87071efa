"""What one window summary costs, part by part, in microseconds of CPU: built and encoded on the edge, read and
stored by the fleet service.

    python -m bench.summary_cost [--rounds 7] [--json]

The summary is the one a simulated device sends at 1 reading/s and 5 s windows (``bench.fleet --ten-k``): 5
readings, 3 classes, no cloud fallback. Each part runs ``--number`` times per round; the figure is the best round's
mean (the least disturbed on a shared machine). The fleet's read is measured both ways it can go:
``read_summary`` (pydantic's one pass, what a well-formed summary takes) and the checked read every refused or odd
payload takes (``edgekit.parsing.loads_json`` and the model: what every summary took before). The store is
``FleetState.record_telemetry`` in batches of 64 distinct things on a fresh SQLite file in the temp folder.
See docs/scale.md (what a window summary's CPU is made of) and docs/benchmarks.md (telemetry ingest).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import timeit
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgekit.edge.windows import LOCAL, Window, summarize
from edgekit.fleet.state import FleetState
from edgekit.fleet.telemetry import _window_row
from edgekit.wire.summary import UplinkCounts, WindowSummary, _read_checked, encode_summary, read_summary

THING = "d-00042"
COMPONENT = "com.example.Mlp.Inference"


def _window(seq: int = 7) -> Window:
    w = Window(1_765_080_000.123)
    for i in range(5):
        w.record(LOCAL, i % 3, 0.9 + i * 0.01, 0.2 + i * 0.03)
    w.end, w.seq = w.start + 5.0, seq
    return w


def _summary(window: Window) -> WindowSummary:
    uplink = UplinkCounts(sent=12, pending=0, failures=0, unanswered_messages=0)
    return summarize(window, run="a1b2c3d4", thing=THING, component=COMPONENT, model="mlp", uplink=uplink)


def _us(part: Callable[[], Any], number: int, rounds: int) -> float:
    return min(timeit.repeat(part, number=number, repeat=rounds)) / number * 1e6


def _store_us(rounds: int, batches: int = 40, size: int = 64) -> float:
    """``record_telemetry`` per row: batches of ``size`` new windows of ``size`` things (one flush's worth)."""
    best = float("inf")
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-summary-") as tmp:
        state = FleetState(Path(tmp) / "fleet.db")
        seq = 0
        try:
            for _ in range(rounds):
                work = []
                for _ in range(batches):
                    rows, things = [], {}
                    for i in range(size):
                        seq += 1
                        thing = f"d-{i:05d}"
                        rows.append(_window_row(thing, _summary(_window(seq)), 1.0))
                        things[thing] = Counter(messages=1)
                    work.append((rows, things))
                t0 = time.perf_counter()
                for rows, things in work:
                    state.record_telemetry(rows, things, 1.0)
                best = min(best, (time.perf_counter() - t0) / (batches * size) * 1e6)
        finally:
            state.close()
    return best


def measure(number: int, rounds: int) -> dict[str, float]:
    window = _window()
    summary = _summary(window)
    wire = encode_summary(summary).encode()
    assert read_summary(wire) == summary == _read_checked(wire)
    return {
        "bytes": float(len(wire)),
        "summarize_us": _us(lambda: _summary(window), number, rounds),
        "encode_us": _us(lambda: encode_summary(summary), number, rounds),
        "read_one_pass_us": _us(lambda: read_summary(wire), number, rounds),
        "read_checked_us": _us(lambda: _read_checked(wire), number, rounds),
        "window_row_us": _us(lambda: _window_row(THING, summary, 1.0), number, rounds),
        "store_row_us": _store_us(rounds),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=7, help="rounds per part (the best one counts)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure(args.number, args.rounds)
    if args.json:
        print(json.dumps(figures, indent=2))
        return 0
    print(f"one window summary ({figures['bytes']:.0f} bytes of JSON), microseconds of CPU, best of {args.rounds} rounds")
    names = {
        "summarize_us": "edge: summarize (build + validate)",
        "encode_us": "edge: encode_summary",
        "read_one_pass_us": "fleet: read_summary (one pass)",
        "read_checked_us": "fleet: the checked read (refusals)",
        "window_row_us": "fleet: its row",
        "store_row_us": "fleet: record_telemetry, per row",
    }
    for key, name in names.items():
        print(f"  {name:38} {figures[key]:8.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
