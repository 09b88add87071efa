"""The live fleet page with many devices: how long it takes to load, and from a device's change to its tile changing.

    python -m bench.page [--devices 1000] [--changes 10]

A real mosquitto and N in-process simulated devices; Debian's chromium driven by Playwright. Load time: from
navigation to every tile drawn. Tile latency: from cutting a device's network (the fleet's presence changes at
once) to its tile showing ``offline``, for ``--changes`` devices one after another. See docs/benchmarks.md (fleet page).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from edgekit.fleet_file import FleetFile
from edgekit.sim import Simulation


async def _run(devices: int, changes: int) -> dict[str, float]:
    from playwright.async_api import async_playwright

    fleet = FleetFile.model_validate(
        {"name": "page", "mode": "in_process", "tls": False,
         "devices": [{"prefix": f"g{g}-", "count": devices // 10, "profile": "x86_64", "groups": [f"group-{g}"]} for g in range(10)]}
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        async with Simulation(fleet, state_dir=Path(tmp) / "state") as sim, async_playwright() as pw:
            assert sim.http is not None
            browser = await pw.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
            page = await browser.new_page()
            start = time.perf_counter()
            await page.goto(f"{sim.http.url}/ui")
            await page.wait_for_function(f"document.querySelectorAll('.tile[data-thing]').length === {devices}", timeout=120_000)
            load_s = time.perf_counter() - start
            await page.wait_for_selector('#live[data-live="true"]')
            latencies = []
            for i in range(changes):
                thing = f"g{i % 10}-{i // 10 + 1:0{len(str(devices // 10))}d}"
                start = time.perf_counter()
                await sim.cut_network(thing, 600)
                await page.wait_for_selector(f'.tile[data-thing="{thing}"][data-state="offline"]', timeout=60_000)
                latencies.append(time.perf_counter() - start)
            snapshot_ms = []
            for _ in range(5):
                start = time.perf_counter()
                await asyncio.to_thread(sim.http.snapshots.snapshot)
                snapshot_ms.append((time.perf_counter() - start) * 1000)
            await browser.close()
    return {
        "devices": devices,
        "load_s": load_s,
        "tile_latency_median_s": statistics.median(latencies),
        "tile_latency_max_s": max(latencies),
        "snapshot_ms": statistics.median(snapshot_ms),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=10)
    args = parser.parse_args()
    r = asyncio.run(_run(args.devices, args.changes))
    print(f"fleet page with {r['devices']} devices (server-sent events every 0.5 s):")
    print(f"  page load to every tile drawn: {r['load_s']:.2f} s")
    print(f"  device change to tile change: median {r['tile_latency_median_s']:.2f} s, max {r['tile_latency_max_s']:.2f} s")
    print(f"  one fleet snapshot (SQLite → JSON): {r['snapshot_ms']:.0f} ms")


if __name__ == "__main__":
    main()
