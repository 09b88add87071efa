"""The broker queues enough for the fleet service: a service a busy machine slows loses no acknowledged summary.

mosquitto drops what it would queue for a client past ``max_queued_messages`` — after the publishing device got its
PUBACK, so the device's spool has let it go. The fleet service's one session takes every device's telemetry; the 10,000
default lost 14,771 windows (2.2 %) of the 10,000-device bench run (issue 23). Real mosquitto, the real ingest, stalled.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgekit.fleet import fleet_server
from edgekit.fleet.fleet_server import FleetServer, broker_queue_limit
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet_file import FleetFile
from edgekit.mqtt.client import MqttClient
from edgekit.wire.summary import AnsweredBy, WindowSummary, encode_summary

DEVICES = 4
SENT = 300  # the broker's in-flight window to the service (100) + what it must queue (200)


def _summary(window: int) -> bytes:
    return encode_summary(
        WindowSummary(
            thing="d-1", component="c", model="m", run="r", window=window, window_start=float(window),
            window_end=float(window + 1), count=10, classes={"0": 10}, answered_by=AnsweredBy(local=10, cloud=0, none=0),
        )
    ).encode()  # fmt: skip


async def _stored_after_stall(folder: Path) -> int:
    """Summaries stored of ``SENT`` a device published (every one PUBACKed) while the service acknowledged nothing."""
    devices = FleetFile.model_validate(
        {"name": "q", "devices": [{"prefix": "d-", "count": DEVICES, "profile": "x86_64", "groups": ["all"]}]}
    ).expand()
    async with FleetServer(FleetFolder.at(folder), devices=devices, name="q", tls=False) as server:
        ingest = server.telemetry
        assert ingest is not None and ingest._task is not None
        ingest._task.cancel()  # the service stalls (as on a saturated machine): nothing stored, nothing acknowledged
        await asyncio.gather(ingest._task, return_exceptions=True)
        device = MqttClient("d-1")
        await device.connect(server.broker_url)
        try:
            results = await device.publish_many([("devices/d-1/inference", _summary(w)) for w in range(1, SENT + 1)])
            assert results == [0] * SENT  # the broker took every one: the device's spool would let them go
        finally:
            await device.disconnect()
        assert server.state is not None
        state = server.state
        idle = 0
        # the service catches up: store and acknowledge until all are stored, or nothing more came for 2 s (what the
        # broker dropped never comes; a loaded machine's round trips may pause for a while)
        while idle < 40 and state.window_totals("d-1", "c", "r", SENT).windows < SENT:
            await asyncio.sleep(0.05)
            idle = 0 if ingest.flush() else idle + 1
        return state.window_totals("d-1", "c", "r", SENT).windows


def test_a_stalled_service_loses_nothing_the_broker_may_queue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_server, "MIN_QUEUED", 0)
    monkeypatch.setattr(fleet_server, "QUEUED_PER_DEVICE", 60)  # 240 queued for 4 devices: the 200 fit
    assert broker_queue_limit(DEVICES) >= SENT - 100
    assert asyncio.run(_stored_after_stall(tmp_path / "fleet")) == SENT


def test_past_the_queue_limit_the_broker_drops_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Why the limit scales with the fleet: past it the summaries are gone, though every publish was acknowledged."""
    monkeypatch.setattr(fleet_server, "MIN_QUEUED", 0)
    monkeypatch.setattr(fleet_server, "QUEUED_PER_DEVICE", 10)  # 40 queued: 160 of the 200 are dropped
    stored = asyncio.run(_stored_after_stall(tmp_path / "fleet"))
    assert stored < SENT
    log = (tmp_path / "fleet" / "broker" / "mosquitto.log").read_text()
    assert "Outgoing messages are being dropped" in log


def test_the_limit_scales_with_the_fleet() -> None:
    assert broker_queue_limit(1) == fleet_server.MIN_QUEUED
    assert broker_queue_limit(10_000) == 10_000 * fleet_server.QUEUED_PER_DEVICE > fleet_server.MIN_QUEUED
