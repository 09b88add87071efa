"""Two fleet service processes on one PostgreSQL share the work — the window summaries through an MQTT shared
subscription, the Jobs requests split by thing: every summary is stored once (a redelivered one too), every request
answered once, and both processes did some of each."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import requires

from edgekit.fleet.state import FleetState
from edgekit.fleet.state_pg import LocalPostgres
from edgekit.mqtt import topics
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import connect
from edgekit.wire.summary import AnsweredBy, WindowSummary, encode_summary

pytestmark = requires("mosquitto")

THINGS = [f"dev-{i}" for i in range(8)]


def summary(thing: str, window: int) -> str:
    return encode_summary(
        WindowSummary(
            thing=thing, component="com.example.Inference", model="mlp", run="r1", window=window,
            window_start=float(window), window_end=float(window + 1), count=window % 5 + 1,
            answered_by=AnsweredBy(local=window % 5 + 1, cloud=0, none=0),
        )
    )  # fmt: skip


def start_service(database: str, broker_url: str, client_id: str, member: str | None) -> subprocess.Popen[str]:
    """``python -m edgekit.fleet.scale_out``: the Jobs requests of things ``member`` (I/N), or none (``None``)."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgekit.fleet.scale_out", "--database", database, "--broker", broker_url, "--client-id", client_id,
         *(["--member", member] if member else ["--no-jobs"])],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait()
        proc.stdout.close()
        pytest.fail(f"fleet service {client_id} did not start: {line!r}")
    return proc


def stop_service(proc: subprocess.Popen[str]) -> dict[str, int]:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return dict(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.anyio
async def test_two_services_on_one_postgresql_store_each_summary_once(tmp_path: Path, postgres_server: LocalPostgres) -> None:
    database = postgres_server.create_database("scale_out")
    with FleetState(database) as state:  # the schema and the things, before two processes start on it
        for thing in THINGS:
            state.upsert_thing(thing, "x86_64", {"os": "linux", "architecture": "amd64"}, 0.0)
    broker = MosquittoBroker(tmp_path / "broker")
    await asyncio.to_thread(broker.start)
    services = [await asyncio.to_thread(start_service, database, broker.url, f"svc-{i}", f"{i}/2") for i in (0, 1)]
    try:
        device = await connect(broker.url, "publisher", max_inflight=100)
        replies: list[str] = []
        for answer in ("accepted", "rejected"):  # each reply's token, whichever it is
            await device.subscribe(
                f"{topics.all_get_pending()}/{answer}", 1, lambda m: replies.append(json.loads(m.payload)["clientToken"])
            )
        n = 400
        sent = [(THINGS[i % len(THINGS)], i // len(THINGS) + 1) for i in range(n)]
        await asyncio.gather(*(device.publish(f"devices/{t}/inference", summary(t, w), qos=1) for t, w in sent))
        # a redelivery (at-least-once uplink): the same windows again, to whichever service gets them
        await asyncio.gather(*(device.publish(f"devices/{t}/inference", summary(t, w), qos=1) for t, w in sent[:40]))
        tokens = [f"token-{i}" for i in range(60)]
        await asyncio.gather(
            *(
                device.publish(topics.get_pending(THINGS[i % 8]), json.dumps({"clientToken": tok}), qos=1)
                for i, tok in enumerate(tokens)
            )
        )
        for _ in range(300):  # until both have stored what they got (a flush every 0.2 s) and answered
            with FleetState(database) as state:
                got = state.telemetry()
            if sum(r.windows for r in got.values()) >= n and sum(r.duplicates for r in got.values()) >= 40 and len(replies) >= 60:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # nothing more arrives: no summary stored twice, no request answered twice
        await device.disconnect()
    finally:
        stats = [await asyncio.to_thread(stop_service, p) for p in services]
        await asyncio.to_thread(broker.stop)

    with FleetState(database) as state:
        got = state.telemetry()
        for thing in THINGS:
            mine = [w for t, w in sent if t == thing]
            totals = state.window_totals(thing, "com.example.Inference", "r1", max(mine))
            assert totals.windows == len(mine)  # every window stored, and once (the key is the window's)
            assert totals.readings == sum(w % 5 + 1 for w in mine)
    assert sum(r.windows for r in got.values()) == n
    assert sum(r.duplicates for r in got.values()) == 40  # each redelivery counted as one more delivery, not a row
    assert sum(r.messages for r in got.values()) == n + 40
    assert sorted(replies) == sorted(tokens)  # each request answered exactly once
    # both processes did part of it: the broker shared the subscriptions between them
    assert all(s["messages"] > 0 and s["requests"] > 0 for s in stats), stats
    assert sum(s["messages"] for s in stats) == n + 40 and sum(s["requests"] for s in stats) == 60
    assert sum(s["windows"] for s in stats) == n and sum(s["duplicates"] for s in stats) == 40


@pytest.mark.anyio
async def test_a_fleet_server_on_postgresql_shares_telemetry_with_one_more_process(
    tmp_path: Path, postgres_server: LocalPostgres
) -> None:
    from edgekit.fleet.fleet_server import FleetServer

    database = postgres_server.create_database("served")
    async with FleetServer(tmp_path / "fleet", tls=False, database=database) as server:
        assert server.broker is not None and server.telemetry is not None
        assert server.folder.state_location == database  # remembered: fleet status on the folder reads the same
        helper = await asyncio.to_thread(
            start_service, database, server.broker.url, "svc-extra", None
        )  # beside the server, which answers the Jobs
        try:
            device = await connect(server.broker.url, "publisher")
            await asyncio.gather(*(device.publish("devices/dev-0/inference", summary("dev-0", w), qos=1) for w in range(1, 201)))
            await device.disconnect()
            for _ in range(200):
                if (
                    server.state is not None
                    and server.state.window_totals("dev-0", "com.example.Inference", "r1", 200).windows == 200
                ):
                    break
                await asyncio.sleep(0.1)
        finally:
            stats = await asyncio.to_thread(stop_service, helper)
        served = server.telemetry.stats.windows
    with FleetState(database) as state:
        assert state.window_totals("dev-0", "com.example.Inference", "r1", 200).windows == 200
    assert served > 0 and stats["windows"] > 0 and served + stats["windows"] == 200
