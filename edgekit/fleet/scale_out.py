"""More fleet service processes on one fleet: with the state on PostgreSQL, each :class:`ServiceWorker` joins the
fleet's broker and takes part of the work. The devices' window summaries come through an MQTT shared subscription
(``$share/<group>/devices/+/#``: the broker gives each message to one member of the group); a summary is stored
once whoever gets it (the table's key is the window's; a redelivery counts as one more delivery). The Jobs requests
are split by thing (``--member I/N``: the things whose name hashes to I): mosquitto 2.0 delivers no topic that
starts with ``$`` — the Jobs topics do — to a shared subscription. A transaction that reads before it writes takes
the database's writer lock (:mod:`edgekit.fleet.state_pg`). See docs/local-fleet.md (the fleet on PostgreSQL).

``edgekit fleet serve --join`` (:func:`join_fleet`) runs one beside a running ``edgekit fleet serve`` on PostgreSQL:
the broker's service listener and the service certificate from the fleet folder; telemetry ingest, and with
``--member I/N`` its share of the Jobs requests (the first process then has ``--member`` too). For benchmarks and
tests, without a fleet folder::

    python -m edgekit.fleet.scale_out --database postgresql://fleet@db/fleet --broker mqtt://127.0.0.1:1883 \\
        --client-id svc-2 --member 1/2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self

from edgekit.errors import ConfigError
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet.jobs_api import FleetMqttBridge, parse_member
from edgekit.fleet.service import FleetService
from edgekit.fleet.state import FleetState, is_database_url
from edgekit.fleet.stopping import run_until_signalled, stop_each
from edgekit.fleet.telemetry import SHARE_GROUP, TELEMETRY_CLIENT_ID, TelemetryIngest
from edgekit.mqtt.client import MqttClient, TlsPaths
from edgekit.mqtt.tls import SERVICE_IDENTITY, TlsFiles
from edgekit.progress import Progress

__all__ = ["SHARE_GROUP", "JoinedFleet", "ServiceWorker", "join_fleet", "main"]

_SAY_EVERY_S: Final = 5.0


class ServiceWorker:
    """One fleet service process's MQTT side on ``database`` (a ``postgresql://`` URL; an SQLite file works for one
    process), connected to ``broker_url`` as ``client_id`` (each process its own: a persistent session, so what
    arrives while it reconnects waits for it) and sharing the Jobs requests and the telemetry with every other member
    of ``share``; ``member`` (index, count): which things' Jobs requests it answers (all without it; see
    :class:`~edgekit.fleet.jobs_api.FleetMqttBridge`); ``jobs=False``: none (beside an ``edgekit fleet serve``, which
    answers them all). With ``jobs`` the telemetry has a connection of its own, ``<client_id>-telemetry`` (as
    :class:`~edgekit.fleet.fleet_server.FleetServer`'s: a Jobs request never waits behind the telemetry backlog).
    ``tls``: the client's certificate where the broker wants one.
    An async context manager."""

    def __init__(
        self,
        database: str,
        broker_url: str,
        *,
        client_id: str,
        share: str = SHARE_GROUP,
        member: tuple[int, int] | None = None,
        jobs: bool = True,
        tls: TlsPaths | None = None,
        tick_s: float = 1.0,
        flush_s: float = 0.2,
    ) -> None:
        self.database = database
        self.broker_url = broker_url
        self.client_id = client_id
        self.share = share
        self.member = member
        self.jobs = jobs
        self.tls = tls
        self.tick_s = tick_s
        self.flush_s = flush_s
        self.state: FleetState | None = None
        self.client: MqttClient | None = None  # the Jobs bridge's, with ``jobs``; else the telemetry's
        self.telemetry_client: MqttClient | None = None  # with ``jobs``: the telemetry's own (``<client_id>-telemetry``)
        self.bridge: FleetMqttBridge | None = None
        self.ingest: TelemetryIngest | None = None

    async def start(self) -> None:
        try:
            self.state = await asyncio.to_thread(FleetState, self.database)
            self.client = MqttClient(self.client_id, tls=self.tls)
            ingest_client = self.client
            if self.jobs:  # a connection each, as FleetServer: a Jobs request never waits behind the telemetry
                self.bridge = FleetMqttBridge(FleetService(self.state), self.client, tick_s=self.tick_s, member=self.member)
                await self.bridge.start()
                ingest_client = self.telemetry_client = MqttClient(f"{self.client_id}-telemetry", tls=self.tls)
            self.ingest = TelemetryIngest(self.state, ingest_client, flush_s=self.flush_s, share=self.share)
            if self.jobs:
                self.ingest.take_over(self.client)  # the session of a run with one connection may still queue telemetry
            await self.ingest.start()
            await self.client.connect(self.broker_url)
            if self.telemetry_client is not None:
                await self.telemetry_client.connect(self.broker_url)
                if self.client.session_present:
                    await self.ingest.unsubscribe_old(self.client)
            elif self.client.session_present:  # a run with --member left the Jobs subscriptions: nobody here handles them
                for topic_filter in FleetMqttBridge.FILTERS:
                    await self.client.unsubscribe(topic_filter)
        except BaseException:
            await self.close()
            raise

    def stats(self) -> dict[str, Any]:
        """What this process did: window summaries stored (new / duplicates) and Jobs requests answered."""
        ingest, bridge = self.ingest, self.bridge
        return {
            "clientId": self.client_id,
            "messages": ingest.stats.messages if ingest else 0,
            "windows": ingest.stats.windows if ingest else 0,
            "duplicates": ingest.stats.duplicates if ingest else 0,
            "requests": bridge.stats.requests if bridge else 0,
        }

    async def close(self) -> None:
        """Leave the shared group (the broker then queues this client id no share while it is gone), store and
        acknowledge what arrived, disconnect. What can't be stored now (the database away) stays unacknowledged: the
        broker gives it to this client id again when it reconnects."""
        ingest_client = self.ingest.client if self.ingest is not None else None
        connected = ingest_client is not None and ingest_client.connected
        await stop_each(
            self.ingest.leave if self.ingest is not None and connected else None,
            self.ingest.stop if self.ingest else None,
            self.bridge.stop if self.bridge else None,
            self.client.disconnect if self.client else None,
            self.telemetry_client.disconnect if self.telemetry_client else None,
        )
        self.client = self.telemetry_client = None
        if self.state is not None:
            self.state.close()
            self.state = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


# --------------------------------------------------------------------------- edgekit fleet serve --join


@dataclass(frozen=True)
class JoinedFleet:
    """Where a joined fleet service process works (what ``fleet serve --join`` prints once it is up)."""

    folder: FleetFolder
    broker_url: str
    database: str
    """The fleet's PostgreSQL URL without its password."""
    client_id: str


def _join_database(folder: FleetFolder, database: str | None) -> str:
    if database is not None and not is_database_url(database):
        raise ConfigError(f"--database {database!r}: a joined process shares the fleet's PostgreSQL; give its postgresql:// URL")
    where = database or folder.state_location
    if not is_database_url(where):
        raise ConfigError(
            f"the fleet in {folder.root} keeps its state in SQLite ({where}): a second fleet service process needs "
            "PostgreSQL (two writers on one SQLite file are what scale-out avoids); serve the fleet with "
            "'edgekit fleet serve --database postgresql://...' first, or give --database"
        )
    return str(where)


def _join_broker(folder: FleetFolder, broker: str | None) -> tuple[str, TlsFiles | None]:
    if broker is None:
        running = folder.running()
        if running is None:
            raise ConfigError(
                f"no fleet runs on {folder.root} to join: start 'edgekit fleet serve --database postgresql://...' "
                "there first, or give --broker mqtts://HOST:PORT (the broker's fleet service listener)"
            )
        broker = str(running.get("serviceBroker") or running.get("broker"))
    scheme = broker.split("://", 1)[0].lower()
    if scheme not in ("mqtt", "mqtts"):
        raise ConfigError(f"--broker {broker!r}: give mqtts://HOST:PORT (mTLS, the fleet's broker) or mqtt://HOST:PORT")
    if scheme == "mqtt":
        return broker, None
    clients = folder.tls / "clients"
    files = TlsFiles(folder.tls / "ca.crt", clients / f"{SERVICE_IDENTITY}.crt", clients / f"{SERVICE_IDENTITY}.key")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConfigError(
            f"the broker {broker} wants the fleet service's certificate, and {', '.join(missing)} is missing: copy the "
            f"fleet folder's tls/ (ca.crt, clients/{SERVICE_IDENTITY}.crt and .key) into {folder.tls}"
        )
    return broker, files


def _check_member(folder: FleetFolder, jobs: tuple[int, int] | None) -> None:
    """Against the running ``fleet serve --member I/N`` on the folder: this process must answer another share of N."""
    running = folder.running()
    theirs = running.get("jobsMember") if running is not None else None
    if not isinstance(theirs, str):
        return
    index, count = parse_member(theirs)
    others = ", ".join(f"{i}/{count}" for i in range(count) if i != index)
    if jobs is None:
        raise ConfigError(
            f"the fleet serve on {folder.root} answers only the Jobs requests of things {theirs}: give this process "
            f"--member with one of {others}, or the others' requests go unanswered"
        )
    if jobs[1] != count or jobs[0] == index:
        raise ConfigError(f"--member {jobs[0]}/{jobs[1]}: the fleet serve on {folder.root} is {theirs}; give one of {others}")


def _join_client_id(client_id: str | None) -> str:
    if not client_id:
        raise ConfigError(
            "--join needs --client-id ID: this process's own MQTT client id, one per process and the same across its "
            "restarts (what arrives while it restarts waits for it on the broker)"
        )
    if client_id in (SERVICE_IDENTITY, TELEMETRY_CLIENT_ID):
        raise ConfigError(f"--client-id {client_id}: that is the first fleet service's own id; give each joined process another")
    return client_id


async def join_fleet_async(
    folder: FleetFolder,
    *,
    client_id: str | None,
    broker: str | None = None,
    database: str | None = None,
    member: str | None = None,
    tick_s: float = 1.0,
    progress: Progress | None = None,
    ready: Callable[[JoinedFleet], None] | None = None,
    stop: asyncio.Event | None = None,
) -> dict[str, Any]:
    """Join the fleet in ``folder`` until ``stop`` is set (see :func:`join_fleet`); returns what this process did."""
    say = progress or (lambda _m: None)
    client_id = _join_client_id(client_id)
    jobs = parse_member(member) if member is not None else None
    _check_member(folder, jobs)
    url = _join_database(folder, database)
    broker_url, tls = _join_broker(folder, broker)
    stop = stop or asyncio.Event()
    worker = ServiceWorker(url, broker_url, client_id=client_id, jobs=jobs is not None, member=jobs, tls=tls, tick_s=tick_s)
    async with worker:
        assert worker.state is not None
        if ready is not None:
            ready(JoinedFleet(folder, broker_url, worker.state.path, client_id))
        last, said_at = worker.stats(), time.monotonic()
        if jobs is not None:
            say(f"answering the Jobs requests of things {jobs[0]} of {jobs[1]} (by a hash of the thing name)")
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            now = worker.stats()
            if now != last and time.monotonic() - said_at >= _SAY_EVERY_S:
                say(f"{time.strftime('%H:%M:%S')} stored {now['windows']} window summaries ({now['duplicates']} "
                    f"redelivered) of {now['messages']} messages; answered {now['requests']} Jobs requests")  # fmt: skip
                last, said_at = now, time.monotonic()
        say("leaving the fleet (storing what arrived)")
        await worker.close()  # leaves the shared group, flushes what arrived: the stats count it
        return worker.stats()


def join_fleet(
    folder: FleetFolder,
    *,
    client_id: str | None,
    broker: str | None = None,
    database: str | None = None,
    member: str | None = None,
    tick_s: float = 1.0,
    progress: Progress | None = None,
    ready: Callable[[JoinedFleet], None] | None = None,
) -> dict[str, Any]:
    """One more fleet service process for the fleet in ``folder``, in the foreground until SIGTERM or SIGINT: it
    ingests a share of the devices' telemetry (an MQTT shared subscription) into the fleet's PostgreSQL.

    ``database``: the fleet's ``postgresql://`` URL (default: the folder's ``database.url``; an SQLite fleet is
    refused). ``broker``: the broker's fleet service listener (default: the running fleet's, from the folder);
    ``mqtts://`` connects with the service certificate in the folder's ``tls/``. ``client_id``: this process's own
    (required). ``member`` (``"I/N"``): also answer the Jobs requests of the things whose name hashes to I of N (then
    every process of the fleet, ``fleet serve`` too, is given its ``--member``; ``tick_s`` is its rollout tick);
    without it the Jobs requests are left to ``fleet serve``. Returns what it did: ``clientId``, ``messages``,
    ``windows``, ``duplicates``, ``requests``."""

    return run_until_signalled(
        lambda stop: join_fleet_async(
            folder, client_id=client_id, broker=broker, database=database, member=member, tick_s=tick_s,
            progress=progress, ready=ready, stop=stop,
        )
    )  # fmt: skip


# --------------------------------------------------------------------------- python -m edgekit.fleet.scale_out


def _member(text: str) -> tuple[int, int]:
    try:
        return parse_member(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _run(args: argparse.Namespace, stop: asyncio.Event) -> dict[str, Any]:
    async with ServiceWorker(
        args.database,
        args.broker,
        client_id=args.client_id,
        share=args.share,
        member=args.member,
        jobs=not args.no_jobs,
        tick_s=args.tick,
    ) as worker:
        print("ready", flush=True)
        await stop.wait()
        await worker.close()  # flushes what arrived, so stats count it
        return worker.stats()


def main(argv: list[str] | None = None) -> int:
    """Run one :class:`ServiceWorker` until SIGTERM / SIGINT; prints ``ready``, then what it did (JSON) at the end."""
    from edgekit.errors import EdgekitError

    parser = argparse.ArgumentParser(prog="python -m edgekit.fleet.scale_out", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", required=True, help="the fleet's state: a postgresql:// URL")
    parser.add_argument("--broker", required=True, help="the fleet's broker, mqtt://HOST:PORT")
    parser.add_argument("--client-id", required=True, help="this process's MQTT client id (one per process)")
    parser.add_argument("--share", default=SHARE_GROUP, help=f"the shared-subscription group (default {SHARE_GROUP})")
    parser.add_argument(
        "--member", type=_member, default=None, metavar="I/N", help="answer the Jobs requests of things I of N (0-based)"
    )
    parser.add_argument("--no-jobs", action="store_true", help="telemetry only (beside 'edgekit fleet serve')")
    parser.add_argument("--tick", type=float, default=1.0, help="the rollout / timeout tick, seconds")
    args = parser.parse_args(argv)
    try:
        stats = run_until_signalled(lambda stop: _run(args, stop))
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
