"""The live fleet page in a real headless Chromium (Debian's, driven by Playwright), and /metrics parsed by Prometheus'
own parser, against a running simulated fleet."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import urllib.request
from pathlib import Path

from helpers import APP, requires, write_build, write_fleet
from prometheus_client.parser import text_string_to_metric_families

from edgekit.fleet_file import load_fleet
from edgekit.sim import Simulation

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = requires("chromium")  # skipped without it; CI=true fails instead


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        return bytes(response.read())


def test_the_page_shows_every_device_and_follows_the_fleet_live(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    fleet = load_fleet(write_fleet(tmp_path / "fleet.yaml", devices=6))
    build = write_build(tmp_path / "gg")

    async def scenario() -> None:
        async with Simulation(fleet, state_dir=tmp_path / "state", tick_s=0.2) as sim, async_playwright() as pw:
            assert sim.http is not None
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = await browser.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            # the first paint comes with the page: with the event stream refused, every device is drawn all the same
            await page.route("**/api/events", lambda route: route.abort())
            await page.goto(f"{sim.http.url}/ui")
            tiles = page.locator(".tile[data-thing]")
            assert await tiles.count() == 6 + 3  # 6 devices, the 3 gw- devices shown in both of their groups
            assert await page.locator("body").get_attribute("data-first-paint") == "inline"
            assert await page.locator('#live[data-live="true"]').count() == 0  # ... without the stream
            assert await page.locator('.tile[data-state="idle"]').count() == 9
            assert await page.locator('.tile[data-thing="gw-01"]').first.inner_text() == "gw-01"  # names on the tiles
            assert await page.locator("#legend [data-legend]").count() == 10  # each state its own colour
            colours = await page.eval_on_selector_all(
                "#legend i", "items => items.map((i) => getComputedStyle(i).backgroundColor)"
            )
            assert len(set(colours)) == len(colours)
            await page.unroute("**/api/events")
            errors.clear()  # the refused stream's own errors
            await page.reload()
            await page.wait_for_selector('#live[data-live="true"]')

            sim.publish(build)  # a deployment reaches the devices: their tiles change on screen
            sim.deploy({"targetArn": "thinggroup/gateways", "components": {APP: {"componentVersion": "1.0.0"}}})
            await page.wait_for_selector('.tile[data-thing="gw-01"][data-state="succeeded"]', timeout=30_000)
            card = page.locator('.deployment[data-status="COMPLETED"]')
            await card.wait_for(timeout=30_000)
            assert await card.locator(f'[data-component="{APP}"][data-version="1.0.0"]').count() == 1
            deployment_id = await card.get_attribute("data-deployment")
            assert deployment_id and deployment_id in await card.inner_text()  # component, version and id on the card
            assert await page.locator('.tile[data-thing="pi-01"][data-state="idle"]').count() == 1

            await sim.cut_network("pi-02", 30)  # its network is cut: the tile goes offline
            await page.wait_for_selector('.tile[data-thing="pi-02"][data-state="offline"]', timeout=30_000)
            await page.locator('.tile[data-thing="gw-02"]').first.click()
            assert "gw-02" in await page.locator("#device-detail").inner_text()
            shots = Path(os.environ.get("EDGEKIT_TEST_ARTIFACTS", tmp_path))  # set it to keep the picture
            shots.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(shots / "fleet-page.png"), full_page=True)
            assert (shots / "fleet-page.png").stat().st_size > 1000
            assert errors == []
            await browser.close()

            text = (await asyncio.to_thread(_get, f"{sim.http.url}/metrics")).decode()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            assert families["edgekit_fleet_devices"].samples[0].value == 6
            assert families["edgekit_fleet_devices_connected"].samples[0].value == 5  # pi-02 is cut off
            finished = families["edgekit_fleet_executions_finished"]  # monotonic: a counter, exported as ..._total
            assert finished.type == "counter" and {s.name for s in finished.samples} == {
                "edgekit_fleet_executions_finished_total"
            }
            succeeded = [s for s in finished.samples if s.labels["status"] == "SUCCEEDED"]
            assert [s.value for s in succeeded] == [3]  # the gateways group: gw-01..gw-03
            for name in ("readings", "answers", "uplink_messages", "fallback_errors", "telemetry_windows"):
                assert families[f"edgekit_fleet_{name}"].type == "counter"
            assert families["edgekit_fleet_component_pending"].type == "gauge"  # a level
            snapshot = json.loads(await asyncio.to_thread(_get, f"{sim.http.url}/api/fleet"))
            assert {d["thing"]: d["state"] for d in snapshot["devices"]}["pi-02"] == "offline"
            assert set(snapshot) == {
                "generatedAt",
                "deployments",
                "groups",
                "devices",
                "failures",
                "inactiveFailures",
                "telemetry",
            }
            [deployment] = snapshot["deployments"]
            assert deployment["id"] == deployment_id and deployment["components"] == [{"name": APP, "version": "1.0.0"}]
            assert "createdAt" in deployment and "created_at" not in deployment
            gw = {d["thing"]: d for d in snapshot["devices"]}["gw-01"]
            assert gw["lastSeen"] is not None and "lastTelemetryAt" in gw and "componentPending" in gw["telemetry"]

    asyncio.run(scenario())


def test_the_inlined_view_cannot_end_its_script_element() -> None:
    from edgekit.fleet.http import inline_json

    text = inline_json({"cause": "</script><script>alert(1)</script> & <!--"}).decode()
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == {"cause": "</script><script>alert(1)</script> & <!--"}


def test_the_page_works_offline_from_package_files_only(tmp_path: Path) -> None:
    page = Path(__file__).resolve().parents[2] / "edgekit" / "fleet" / "web" / "static"
    for name in ("index.html", "app.js", "app.css"):
        text = (page / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text  # no CDN
    assert "innerHTML" not in (page / "app.js").read_text()  # device text goes into the page as text only
