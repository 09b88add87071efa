"""More fleet service processes on one fleet: with the state on PostgreSQL, each :class:`ServiceWorker` joins the
fleet's broker and takes part of the work. The devices' window summaries come through an MQTT shared subscription
(``$share/<group>/devices/+/#``: the broker gives each message to one member of the group); a summary is stored
once whoever gets it (the table's key is the window's; a redelivery counts as one more delivery). The Jobs requests
are split by thing (``--member I/N``: the things whose name hashes to I): mosquitto 2.0 delivers no topic that
starts with ``$`` — the Jobs topics do — to a shared subscription. A transaction that reads before it writes takes
the database's writer lock (:mod:`edgekit.fleet.state_pg`). See docs/local-fleet.md (the fleet on PostgreSQL).

::

    python -m edgekit.fleet.scale_out --database postgresql://fleet@db/fleet --broker mqtt://127.0.0.1:1883 \\
        --client-id svc-2 --member 1/2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from types import TracebackType
from typing import Any, Self

from edgekit.fleet.jobs_api import FleetMqttBridge
from edgekit.fleet.service import FleetService
from edgekit.fleet.state import FleetState
from edgekit.fleet.telemetry import SHARE_GROUP, TelemetryIngest
from edgekit.mqtt.client import MqttClient, TlsPaths

__all__ = ["SHARE_GROUP", "ServiceWorker", "main"]


class ServiceWorker:
    """One fleet service process's MQTT side on ``database`` (a ``postgresql://`` URL; an SQLite file works for one
    process), connected to ``broker_url`` as ``client_id`` (each process its own: a persistent session, so what
    arrives while it reconnects waits for it) and sharing the Jobs requests and the telemetry with every other member
    of ``share``; ``member`` (index, count): which things' Jobs requests it answers (all without it; see
    :class:`~edgekit.fleet.jobs_api.FleetMqttBridge`); ``jobs=False``: none (beside an ``edgekit fleet serve``, which
    answers them all). ``tls``: the client's certificate where the broker wants one.
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
        self.client: MqttClient | None = None
        self.bridge: FleetMqttBridge | None = None
        self.ingest: TelemetryIngest | None = None

    async def start(self) -> None:
        try:
            self.state = await asyncio.to_thread(FleetState, self.database)
            self.client = MqttClient(self.client_id, tls=self.tls)
            if self.jobs:
                self.bridge = FleetMqttBridge(FleetService(self.state), self.client, tick_s=self.tick_s, member=self.member)
                await self.bridge.start()
            self.ingest = TelemetryIngest(self.state, self.client, flush_s=self.flush_s, share=self.share)
            await self.ingest.start()
            await self.client.connect(self.broker_url)
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
        if self.ingest is not None:
            with contextlib.suppress(Exception):
                await self.ingest.stop()
        if self.bridge is not None:
            with contextlib.suppress(Exception):
                await self.bridge.stop()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.disconnect()
            self.client = None
        if self.state is not None:
            self.state.close()
            self.state = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


def _member(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        member = (int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--member {text!r}: give I/N, such as 0/2") from None
    if not 0 <= member[0] < member[1]:
        raise argparse.ArgumentTypeError(f"--member {text!r}: I must be 0 to N - 1")
    return member


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
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
        stats = asyncio.run(_run(args))
    except EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
