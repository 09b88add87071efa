"""edgekit fleet serve / edgekit fleet add-device: a local fleet for real devices. See docs/local-fleet.md (real
devices)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.text import Text

from edgekit import api
from edgekit.cli.options import Database, JobsMember, Join, JoinBroker, JoinClientId, State
from edgekit.cli.output import MODE, console, emit, err_console, json_output, note
from edgekit.errors import ConfigError

if TYPE_CHECKING:
    from edgekit.fleet.foreground import ServedFleet
    from edgekit.fleet.scale_out import JoinedFleet

__all__ = ["add_device", "serve"]


def _say(message: str) -> None:
    err_console.print(message, soft_wrap=True, markup=False, highlight=False)
    err_console.file.flush()


def _ready(served: ServedFleet) -> None:
    facts = {"state": str(served.folder.root), "broker": served.broker_url, "http": served.http_url, "page": served.page_url}
    if MODE.json:
        console.file.write(json.dumps(facts) + "\n")
    else:
        for key in ("broker", "http", "page"):
            console.print(f"{key:7} {facts[key]}", markup=False, soft_wrap=True)
        note(
            f"add a device: edgekit fleet add-device THING --group GROUP --platform PROFILE --state {served.folder.root}; "
            "SIGTERM or Ctrl-C stops"
        )
    console.file.flush()


def _joined(joined: JoinedFleet) -> None:
    facts = {
        "state": str(joined.folder.root),
        "broker": joined.broker_url,
        "database": joined.database,
        "clientId": joined.client_id,
    }
    if MODE.json:
        console.file.write(json.dumps(facts) + "\n")
    else:
        for key in ("broker", "database", "clientId"):
            console.print(f"{key:9} {facts[key]}", markup=False, soft_wrap=True)
        note("joined: ingesting a share of the devices' telemetry; SIGTERM or Ctrl-C stops")
    console.file.flush()


def _join(state: Path | None, database: str | None, broker: str | None, client_id: str | None, member: str | None,
          tick: float) -> None:  # fmt: skip
    done = api.serve_fleet(
        state_dir=state, database=database, join=True, broker=broker, client_id=client_id, member=member, tick_s=tick,
        progress=None if MODE.quiet else _say, joined=_joined,
    )  # fmt: skip
    done = done or {}
    emit(done, Text(f"{done.get('clientId')}: stored {done.get('windows', 0)} window summaries "
                    f"({done.get('duplicates', 0)} redelivered) of {done.get('messages', 0)} messages; answered "
                    f"{done.get('requests', 0)} Jobs requests"))  # fmt: skip


@json_output
def serve(
    state: State = None,
    host: str = typer.Option("127.0.0.1", "--host", help="the address to listen on (loopback by default)"),
    port: int | None = typer.Option(
        None, "--port", min=0, max=65535, help="the broker's (mTLS) port: default the last run's, else 8883; 0: a free one"
    ),
    http_port: int | None = typer.Option(
        None,
        "--http-port",
        min=0,
        max=65535,
        help="the registry and page's port: default the last run's, else 8080; 0: a free one",
    ),
    public_host: str | None = typer.Option(
        None, "--public-host", help="the address devices reach this machine at (default --host; needed with 0.0.0.0)"
    ),
    tick: float = typer.Option(1.0, "--tick", min=0.05, help="the fleet service's rollout tick, seconds"),
    database: Database = None,
    join: Join = False,
    broker: JoinBroker = None,
    client_id: JoinClientId = None,
    member: JobsMember = None,
) -> None:
    """Run a local fleet for real devices in the foreground: mosquitto (mTLS, a certificate per device), the fleet
    service, the registry and the page, with no simulated device. Prints the broker, HTTP and page addresses; add
    devices with 'edgekit fleet add-device', deploy with 'edgekit deploy --local'. With --join: one more fleet service
    process for the fleet served on --state on PostgreSQL: a share of the telemetry ingest and, with --member, of the Jobs
    requests."""
    if join:
        if host != "127.0.0.1" or port is not None or http_port is not None or public_host is not None:
            raise ConfigError("--join starts no broker or HTTP server: leave out --host, --port, --http-port and --public-host")
        _join(state, database, broker, client_id, member, tick)
        return
    if broker is not None or client_id is not None:
        raise ConfigError("--broker and --client-id go with --join (one more fleet service process)")
    api.serve_fleet(
        state_dir=state, host=host, port=port, http_port=http_port, public_host=public_host, tick_s=tick,
        progress=None if MODE.quiet else _say, ready=_ready, database=database, member=member,
    )  # fmt: skip


@json_output
def add_device(
    thing: str = typer.Argument(..., help="the device's thing name (its certificate's CN and MQTT client id)"),
    group: list[str] = typer.Option([], "--group", "-g", help="a thing group it joins; repeat per group"),
    platform: str = typer.Option(
        ..., "--platform", help="a device profile (see 'edgekit targets') or OS/ARCHITECTURE such as linux/aarch64"
    ),
    state: State = None,
    out: Path | None = typer.Option(None, "--out", metavar="DIR", help="where to write the bundle (default STATE/bundles/THING)"),
    root: str = typer.Option("work", "--root", help="the agent's folder on the device (relative to the bundle, or absolute)"),
    create_group: bool = typer.Option(False, "--create-group", help="make thing groups the fleet doesn't have yet"),
    force: bool = typer.Option(False, "--force", help="write the bundle of a thing already added again / replace --out"),
) -> None:
    """Add a real device to the local fleet: register the thing in its groups and write its device bundle (its
    certificate signed by the fleet's CA, its key, the CA certificate and config.yaml). Copy the bundle to the device
    and run 'edgekit agent --config config.yaml' there."""
    added = api.add_device(
        thing, groups=group, platform=platform, state_dir=state, out=out, root=root, create_groups=create_group, force=force
    )
    line = Text(f"device {added.thing} added (groups {', '.join(added.groups) or '-'}): bundle {added.bundle}")
    emit(added.to_json(), line)
    note(f"on the device: edgekit agent --config {added.config}")
