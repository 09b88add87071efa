"""Two fleet service processes on one PostgreSQL share the work — the window summaries through an MQTT shared
subscription, the Jobs requests split by thing: every summary is stored once (a redelivered one too), every request
answered once, and both processes did some of each."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import requires

from edgekit.fleet.state import FleetState
from edgekit.fleet.state_pg import CONNECT_TIMEOUT_S, LocalPostgres
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


# --------------------------------------------------------------------------- edgekit fleet serve --join


ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _stop(proc: subprocess.Popen[str]) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return proc.returncode, out or ""


@pytest.mark.anyio
async def test_fleet_serve_join_shares_telemetry_with_fleet_serve(
    tmp_path: Path, postgres_server: LocalPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two 'edgekit' processes on one PostgreSQL and one broker (mTLS): 'fleet serve --member 0/2' and
    'fleet serve --join --member 1/2'; every summary stored once, every Jobs request answered once, and both did some
    of each."""
    from edgekit.fleet.folder import FleetFolder
    from edgekit.mqtt.tls import TlsMaterial

    database = postgres_server.create_database("joined")
    state, log = tmp_path / "fleet", (tmp_path / "serve.log").open("w")
    folder = FleetFolder.at(state)
    edgekit = [sys.executable, "-m", "edgekit", "fleet", "serve", "--state", str(state)]
    server = subprocess.Popen(
        [*edgekit, "--database", database, "--port", "0", "--http-port", "0", "--tick", "0.2", "--member", "0/2"],
        stdout=log, stderr=log, text=True, env=ENV,
    )  # fmt: skip
    joined: subprocess.Popen[str] | None = None
    try:
        for _ in range(600):
            if folder.running() is not None or server.poll() is not None:
                break
            await asyncio.sleep(0.1)
        running = folder.running()
        assert running is not None, (tmp_path / "serve.log").read_text()
        from edgekit.cli import main
        from edgekit.errors import EXIT_CODES, ConfigError

        for member, says in ((None, "answers only the Jobs requests of things 0/2"), ("0/2", "give one of 1/2")):
            capsys.readouterr()  # a share nobody answers, or one answered twice: refused in one line
            argv = [
                "fleet",
                "serve",
                "--state",
                str(state),
                "--join",
                "--client-id",
                "x",
                *(["--member", member] if member else []),
            ]
            assert await asyncio.to_thread(main, argv) == EXIT_CODES[ConfigError]
            err = capsys.readouterr().err.strip()
            assert says in err and "\n" not in err, err
        joined = subprocess.Popen(
            [*edgekit, "--join", "--client-id", "fleet-svc-2", "--member", "1/2", "--tick", "0.2", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
        )  # fmt: skip
        assert joined.stdout is not None
        facts = json.loads(await asyncio.to_thread(joined.stdout.readline) or "{}")
        assert facts.get("broker") == running["serviceBroker"] and facts["clientId"] == "fleet-svc-2", facts
        assert facts["database"] == database  # no password in this URL: shown as it is

        service = TlsMaterial.open(folder.tls).service  # a client of the service listener, as the fleet's tools are
        device = await connect(running["serviceBroker"], "publisher", tls=service, max_inflight=100)
        replies: list[str] = []
        for answer in ("accepted", "rejected"):
            await device.subscribe(
                f"{topics.all_get_pending()}/{answer}", 1, lambda m: replies.append(json.loads(m.payload)["clientToken"])
            )
        n = 300
        sent = [(THINGS[i % len(THINGS)], i // len(THINGS) + 1) for i in range(n)]
        await asyncio.gather(*(device.publish(f"devices/{t}/inference", summary(t, w), qos=1) for t, w in sent))
        await asyncio.gather(*(device.publish(f"devices/{t}/inference", summary(t, w), qos=1) for t, w in sent[:30]))
        tokens = [f"token-{i}" for i in range(40)]
        await asyncio.gather(
            *(
                device.publish(topics.get_pending(THINGS[i % 8]), json.dumps({"clientToken": t}), qos=1)
                for i, t in enumerate(tokens)
            )
        )
        for _ in range(300):
            with FleetState(database) as fleet_state:
                got = fleet_state.telemetry()
            if sum(r.windows for r in got.values()) >= n and sum(r.duplicates for r in got.values()) >= 30 and len(replies) >= 40:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)  # nothing more: no request answered twice
        await device.disconnect()
        rc, out = await asyncio.to_thread(_stop, joined)
        assert rc == 0, out + (joined.stderr.read() if joined.stderr else "")
        stats = json.loads(out)  # what it did: the one JSON document after the first line
    finally:
        if joined is not None:
            await asyncio.to_thread(_stop, joined)
            if joined.stderr is not None:
                joined.stderr.close()
        await asyncio.to_thread(_stop, server)
        log.close()
    with FleetState(database) as fleet_state:
        got = fleet_state.telemetry()
        for thing in THINGS:
            mine = [w for t, w in sent if t == thing]
            assert fleet_state.window_totals(thing, "com.example.Inference", "r1", max(mine)).windows == len(mine)
    assert sum(r.windows for r in got.values()) == n and sum(r.duplicates for r in got.values()) == 30
    assert sum(r.messages for r in got.values()) == n + 30
    # both did part: the joined process stored some, 'fleet serve' the rest
    assert stats["clientId"] == "fleet-svc-2" and 0 < stats["windows"] < n, stats
    assert 0 < stats["messages"] < n + 30, stats
    assert sorted(replies) == sorted(tokens) and 0 < stats["requests"] < len(tokens), stats  # once each, by both


def test_fleet_serve_join_refuses_what_it_cannot_join_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from edgekit.cli import main
    from edgekit.errors import EXIT_CODES, ConfigError
    from edgekit.fleet.folder import FleetFolder

    state = tmp_path / "fleet"

    def refused(*args: str) -> str:
        capsys.readouterr()
        assert main(["fleet", "serve", "--state", str(state), *args]) == EXIT_CODES[ConfigError]
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
        return err

    # an SQLite fleet: a second writer on one file is what scale-out avoids
    assert "needs PostgreSQL" in refused("--join", "--client-id", "svc-2")
    assert "postgresql://" in refused("--join", "--client-id", "svc-2", "--database", str(tmp_path / "fleet.db"))
    assert "--client-id ID" in refused("--join")
    assert "first fleet service's own id" in refused("--join", "--client-id", "edgekit-fleet-service")
    assert "leave out --host, --port" in refused("--join", "--client-id", "svc-2", "--port", "1883")
    assert "go with --join" in refused("--client-id", "svc-2")
    assert "keeps its state in SQLite" in refused("--member", "0/2")  # one process answers every Jobs request there
    assert "I must be 0 to N - 1" in refused("--join", "--client-id", "svc-2", "--member", "2/2")
    assert "give I/N" in refused("--join", "--client-id", "svc-2", "--member", "half")
    FleetFolder.at(state).use_database("postgresql://fleet@127.0.0.1:9/fleet")  # PostgreSQL, but no fleet runs
    assert f"no fleet runs on {FleetFolder.at(state).root}" in refused("--join", "--client-id", "svc-2")
    assert "tls/" in refused("--join", "--client-id", "svc-2", "--broker", "mqtts://127.0.0.1:9")
    assert "mqtts://HOST:PORT" in refused("--join", "--client-id", "svc-2", "--broker", "http://127.0.0.1:9")


# --------------------------------------------------------------------------- PostgreSQL away and back


def test_a_connection_the_server_ended_mid_pipeline_is_an_outage_not_a_statement_error(
    postgres_server: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """What CI's run of the test below met: PostgreSQL stopping during a pipelined executemany made psycopg raise
    "cannot exit pipeline mode while busy", the server's AdminShutdown only its context and the connection not marked
    broken. Taken for a statement's own error, every batch after it failed the same way on the stuck connection."""
    import psycopg

    from edgekit.fleet.errors import StateUnavailableError
    from edgekit.fleet.state_pg import RETRY_FIRST_S, PostgresDatabase

    caplog.set_level(logging.WARNING)
    db = PostgresDatabase(postgres_server.create_database("ended"))
    try:
        first = db.live()
        with pytest.raises(StateUnavailableError, match="terminating connection due to administrator command"), db.watch():
            try:
                raise psycopg.errors.AdminShutdown("terminating connection due to administrator command")
            except psycopg.Error:
                # as psycopg raised it: the shutdown only the context ("during handling of the above exception")
                raise psycopg.OperationalError("cannot exit pipeline mode while busy")  # noqa: B904
        assert not db.available and db.outages == 1 and first.closed  # not used again
        assert caplog.text.count("connection lost (terminating connection due to administrator command)") == 1
        time.sleep(RETRY_FIRST_S)
        assert "pg_tables" not in db.tables() and db.available  # a new connection, after the backoff

        # a connection left in pipeline mode outside any pipeline is stuck, whatever the error says
        stuck = db.live()
        stuck.pgconn.enter_pipeline_mode()
        with pytest.raises(StateUnavailableError), db.watch():
            raise psycopg.OperationalError("sending query failed: another command is already in progress")
        assert stuck.closed and db.outages == 2
        time.sleep(RETRY_FIRST_S)  # a new outage starts its backoff afresh

        # a statement's own operational error (here a statement timeout) goes through: the connection is fine
        with pytest.raises(psycopg.errors.QueryCanceled), db.watch():
            db.live().execute("SET statement_timeout = 50")
            db.live().execute("SELECT pg_sleep(1)")
        assert db.available and db.outages == 2
    finally:
        db.close()


@pytest.mark.anyio
async def test_a_service_that_loses_postgresql_keeps_what_it_did_not_store_and_says_so_once(
    tmp_path: Path, postgres_server: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """The database server stops mid-ingest and comes back: the service (ingest and Jobs bridge) says so in one line
    each way, retries with backoff, and every summary the broker took is stored once — none acknowledged unstored.
    The fleet's HTTP server answers 503 with the reason meanwhile, and 200 again after."""
    import urllib.error
    import urllib.request

    from edgekit.fleet.component_registry import Registry
    from edgekit.fleet.http import FleetHttpServer
    from edgekit.fleet.scale_out import ServiceWorker

    def get(url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read().decode()

    database = postgres_server.create_database("outage")
    broker = MosquittoBroker(tmp_path / "broker")
    await asyncio.to_thread(broker.start)
    caplog.set_level(logging.WARNING)
    page_state = FleetState(database)
    http = FleetHttpServer(Registry(page_state, tmp_path / "store")).start()
    try:
        assert (await asyncio.to_thread(get, f"{http.url}/api/fleet"))[0] == 200
        async with ServiceWorker(database, broker.url, client_id="svc-outage", tick_s=0.1, flush_s=0.05) as worker:
            assert worker.state is not None and worker.ingest is not None
            device = await connect(broker.url, "publisher", max_inflight=100)
            sent = [(THINGS[i % len(THINGS)], i // len(THINGS) + 1) for i in range(600)]

            async def send(part: list[tuple[str, int]]) -> None:
                await asyncio.gather(*(device.publish(f"devices/{t}/inference", summary(t, w), qos=1) for t, w in part))

            await send(sent[:200])
            stopping = asyncio.create_task(asyncio.to_thread(postgres_server.stop))  # mid-ingest
            await send(sent[200:400])  # the broker takes these (PUBACK to the device); the service can't store them
            await stopping
            await asyncio.sleep(2.0)  # tries fail meanwhile: the backoff, and quiet
            assert not worker.state.database.available  # type: ignore[attr-defined]
            stored_before = worker.ingest.stats.windows
            assert stored_before < 400 and worker.ingest.stats.retries > 0
            code, body = await asyncio.to_thread(get, f"{http.url}/api/fleet")
            assert code == 503 and "is unreachable for now" in body, (code, body)
            await asyncio.to_thread(postgres_server.start)
            await send(sent[400:])
            for _ in range(300):
                if worker.ingest.stats.windows >= len(sent):
                    break
                await asyncio.sleep(0.1)
            await device.disconnect()
            assert worker.state.database.available  # type: ignore[attr-defined]
            assert worker.state.database.outages == 1  # type: ignore[attr-defined]
        await asyncio.sleep(1.0)  # the page's connection: its next try once its backoff allows
        assert (await asyncio.to_thread(get, f"{http.url}/api/fleet"))[0] == 200
    finally:
        http.stop()
        page_state.close()
        await asyncio.to_thread(broker.stop)
        if not postgres_server.running:  # the session's server: back for the tests after this one
            await asyncio.to_thread(postgres_server.start)

    with FleetState(database) as state:
        for thing in THINGS:
            mine = [w for t, w in sent if t == thing]
            totals = state.window_totals(thing, "com.example.Inference", "r1", max(mine))
            assert totals.windows == len(mine) and totals.readings == sum(w % 5 + 1 for w in mine)
        assert sum(r.windows for r in state.telemetry().values()) == len(sent)
    said = [r.getMessage() for r in caplog.records if r.name == "edgekit.fleet.state_pg"]
    # per connection (the service's, the page's) one line when lost, one when back
    assert sum("connection lost" in m for m in said) == 2 and sum("connected again after" in m for m in said) == 2, said
    assert len(said) == 4, said
    # one line each way: no traceback per message, per batch or per tick
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


class _CuttableLink:
    """A TCP link to PostgreSQL (a thread of its own) that can be cut like a network that swallows packets: its
    connections drop, and a new one is taken without a word — a connection attempt waits for its timeout (5 s)."""

    def __init__(self, port: int) -> None:
        self._to = port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._cut = False
        self._lock = threading.Lock()
        self._links: list[socket.socket] = []  # both ends of each live link
        self._silent: list[socket.socket] = []  # taken while cut, left unanswered
        self.first_try_at: float | None = None  # when the first connection attempt came while cut (monotonic)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._cut:
                    self._silent.append(conn)
                    self.first_try_at = self.first_try_at or time.monotonic()
                    threading.Thread(target=self._swallow, args=(conn,), daemon=True).start()
                    continue
                upstream = socket.create_connection(("127.0.0.1", self._to))
                self._links += [conn, upstream]
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _swallow(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while conn.recv(4096):
                pass  # read and say nothing (psycopg keeps the socket open past its timeout: until the link is back)
        with self._lock:
            if conn in self._silent:
                self._silent.remove(conn)
        conn.close()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for end in (src, dst):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def cut(self, cut: bool = True) -> None:
        with self._lock:
            self._cut = cut
            ends = self._links if cut else self._silent
            for end in ends:
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._listener.close()
        self.cut()
        self.cut(False)
        with self._lock:
            for end in self._links:
                end.close()
            self._links.clear()


@pytest.mark.anyio
async def test_the_jobs_bridge_serves_mqtt_while_a_postgresql_connection_attempt_waits(
    tmp_path: Path, postgres_server: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """The Jobs bridge uses the fleet state in a thread of its own: while its new PostgreSQL connection waits on a
    network that swallows everything (CONNECT_TIMEOUT_S a try), the event loop goes on serving MQTT — a round trip
    through the broker completes while that attempt still waits — and once the network is back the bridge answers
    again. (Run on the event loop, the attempt held up everything: the round trip came after its timeout.)"""
    from edgekit.fleet.jobs_api import FleetMqttBridge
    from edgekit.fleet.service import FleetService

    database = postgres_server.create_database("waits")
    link = _CuttableLink(postgres_server.port)
    broker = MosquittoBroker(tmp_path / "broker")
    await asyncio.to_thread(broker.start)
    state = await asyncio.to_thread(FleetState, database.replace(f":{postgres_server.port}/", f":{link.port}/"))
    caplog.set_level(logging.WARNING)
    service = FleetService(state)
    await asyncio.to_thread(service.register_thing, "dev-0")
    client = await connect(broker.url, "svc-waits")
    bridge = FleetMqttBridge(service, client, tick_s=0.1)
    device = await connect(broker.url, "dev-0")
    try:
        await bridge.start()
        replies: asyncio.Queue[str] = asyncio.Queue()
        await device.subscribe(f"{topics.get_pending('dev-0')}/accepted", 1, lambda m: replies.put_nowait(m.topic))
        echoes: asyncio.Queue[bytes] = asyncio.Queue()
        await client.subscribe("test/echo", 1, lambda m: echoes.put_nowait(m.payload))

        link.cut()  # the next tick finds the connection gone and, after the backoff, tries a new one: it waits
        async with asyncio.timeout(30):
            while link.first_try_at is None:
                await asyncio.sleep(0.02)
        await device.publish("test/echo", b"ping", qos=1)  # device -> broker -> the bridge's client (PUBACK back)
        async with asyncio.timeout(30):
            assert await echoes.get() == b"ping"
        # done while that attempt still waited (it waits CONNECT_TIMEOUT_S): the loop was free meanwhile
        assert time.monotonic() - link.first_try_at < CONNECT_TIMEOUT_S
        assert not state.database.available  # type: ignore[attr-defined]

        link.cut(False)
        async with asyncio.timeout(60):  # the device asks until it is answered (requests meanwhile go unanswered)
            while replies.empty():
                await device.publish(topics.get_pending("dev-0"), json.dumps({"clientToken": "t"}), qos=1)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await replies.get()
                        break
        assert state.database.available and state.database.outages == 1  # type: ignore[attr-defined]
    finally:
        await bridge.stop()
        await device.disconnect()
        await client.disconnect()
        await asyncio.to_thread(broker.stop)
        await asyncio.to_thread(state.close)
        link.close()
    said = [r.getMessage() for r in caplog.records if r.name == "edgekit.fleet.state_pg"]
    assert sum("connection lost" in m for m in said) == 1 and sum("connected again after" in m for m in said) == 1, said
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []


# --------------------------------------------------------------------------- edgekit simulate --database


def test_simulate_keeps_the_fleet_state_in_postgresql(
    tmp_path: Path, postgres_server: LocalPostgres, capsys: pytest.CaptureFixture[str]
) -> None:
    from helpers import APP, write_build, write_fleet

    from edgekit.cli import main
    from edgekit.errors import EXIT_CODES, ConfigError
    from edgekit.fleet.folder import FleetFolder

    database = postgres_server.create_database("simulated")
    state, build, fleet = tmp_path / "state", write_build(tmp_path / "gg"), write_fleet(tmp_path / "fleet.yaml")
    common = ["simulate", "--fleet", str(fleet), "--state", str(state), "--shards", "1"]
    capsys.readouterr()
    assert main([*common, "--database", "sqlite:///fleet.db", "--duration", "1"]) == EXIT_CODES[ConfigError]
    err = capsys.readouterr().err.strip()
    assert "postgresql://" in err and "\n" not in err, err
    argv = [*common, "--database", database, "--build", str(build), "--deploy", f"{APP}=1.0.0",
            "--target", "thinggroup/line-1", "--until-done", "--duration", "60", "--interval", "0.5", "--tick", "0.2"]  # fmt: skip
    assert main(argv) == 0
    assert "fleet 'clitest': 4 device(s), 4 connected at the end" in capsys.readouterr().out
    folder = FleetFolder.at(state)
    assert folder.state_location == database and not folder.database.exists()  # PostgreSQL, no SQLite file
    with FleetState(database) as fleet_state:
        [deployment] = fleet_state.deployments()
        assert fleet_state.status_counts(deployment.id) == {"SUCCEEDED": 4} and len(fleet_state.things()) == 4
    assert main(["fleet", "status", "--state", str(state), "--json"]) == 0  # remembered: status reads the same
    assert json.loads(capsys.readouterr().out)["deployments"][0]["counts"] == {"SUCCEEDED": 4}


@pytest.mark.anyio
async def test_a_service_that_stops_leaves_the_shared_group(tmp_path: Path, postgres_server: LocalPostgres) -> None:
    """mosquitto queues an offline member's share of a shared subscription in its session: a process that stops
    cleanly unsubscribes first, so what comes after goes to the processes still running, at once."""
    from edgekit.fleet.scale_out import ServiceWorker

    database = postgres_server.create_database("leaving")
    broker = MosquittoBroker(tmp_path / "broker")
    await asyncio.to_thread(broker.start)
    try:
        async with ServiceWorker(database, broker.url, client_id="svc-stays", jobs=False, flush_s=0.05) as stays:
            leaves = ServiceWorker(database, broker.url, client_id="svc-leaves", jobs=False, flush_s=0.05)
            await leaves.start()
            device = await connect(broker.url, "publisher", max_inflight=100)
            sent = [(THINGS[i % len(THINGS)], i // len(THINGS) + 1) for i in range(80)]
            await asyncio.gather(*(device.publish(f"devices/{t}/inference", summary(t, w), qos=1) for t, w in sent[:40]))
            for _ in range(100):
                if stays.stats()["windows"] + leaves.stats()["windows"] >= 40:
                    break
                await asyncio.sleep(0.1)
            await leaves.close()
            assert leaves.stats()["windows"] > 0  # it had its share while it ran
            before = stays.stats()["windows"]
            await asyncio.gather(*(device.publish(f"devices/{t}/inference", summary(t, w), qos=1) for t, w in sent[40:]))
            for _ in range(100):
                if stays.stats()["windows"] - before >= 40:
                    break
                await asyncio.sleep(0.1)
            await device.disconnect()
            assert stays.stats()["windows"] - before == 40  # all of it, none queued for the process that left
    finally:
        await asyncio.to_thread(broker.stop)
    with FleetState(database) as state:
        assert sum(r.windows for r in state.telemetry().values()) == 80
