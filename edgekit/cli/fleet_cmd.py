"""edgekit simulate / edgekit fleet status. See docs/local-fleet.md."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from edgekit import api
from edgekit.cli import fleet_serve_cmd
from edgekit.cli.options import AbortFailed, BuildOrNone, Database, DeploymentTargets, Fleet, Rollout, State
from edgekit.cli.output import console, emit, err_console, json_output, plain, quiet_library
from edgekit.errors import ConfigError

if TYPE_CHECKING:
    from edgekit.fleet.view import FailureView, FleetView
    from edgekit.sim import SimulationStatus
    from edgekit.sim.run import SimulationRun

__all__ = ["logs", "register", "simulate", "status", "ui"]

STATUSES = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED")
_STYLE = {
    "SUCCEEDED": "green",
    "FAILED": "red",
    "TIMED_OUT": "red",
    "REJECTED": "red",
    "CANCELED": "yellow",
    "IN_PROGRESS": "cyan",
}
_DEPLOYMENT_STYLE = {"ACTIVE": "cyan", "COMPLETED": "green", "CANCELED": "yellow", "FAILED": "red", "INACTIVE": "dim"}


# --------------------------------------------------------------------------- tables (of the fleet view)
# Every text that comes from the fleet (names, a device's error and cause, fallback error kinds) goes in through
# output.plain: rich markup in it ('[/red]') must show as written, never be parsed.


def _count(counts: dict[str, int], status: str) -> str:
    n = counts.get(status, 0)
    if status == "CANCELED":
        n += counts.get("REJECTED", 0) + counts.get("REMOVED", 0)
    if not n:
        return "[dim]0[/dim]"
    style = _STYLE.get(status)
    return f"[{style}]{n}[/{style}]" if style else str(n)


def _styled(text: str | None, styles: dict[str, str]) -> Text:
    if text is None:
        return Text("-", style="dim")
    return Text(text, style=styles.get(text, ""))


def groups_table(view: FleetView, title: str = "thing groups") -> Table:
    """One row per group: members and the counts of its latest deployment's executions."""
    table = Table(title=title, title_justify="left")
    table.add_column("group")
    table.add_column("devices", justify="right")
    table.add_column("deployment")
    for status in STATUSES:
        table.add_column(status, justify="right")
    for group in view.groups:
        deployment = (
            plain(group.deployment_id[:8] + " ").append_text(_styled(group.deployment_status, _DEPLOYMENT_STYLE))
            if group.deployment_id
            else Text("-")
        )
        table.add_row(plain(group.name), str(group.members), deployment, *(_count(group.counts, s) for s in STATUSES))
    return table


def deployments_table(view: FleetView) -> Table:
    table = Table(title="deployments", title_justify="left")
    for col in ("deployment", "target", "components", "status", "created"):
        table.add_column(col)
    for status in STATUSES:
        table.add_column(status, justify="right")
    table.add_column("reason")
    for d in sorted(view.deployments, key=lambda d: d.created_at, reverse=True):
        created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d.created_at))
        reason = d.reason or (f"replaced by {d.replaced_by[:8]}" if d.replaced_by else "")
        components = ", ".join(f"{c.name} {c.version}" for c in d.components) or "-"
        table.add_row(
            plain(d.id), plain(d.target), plain(components), _styled(d.status, _DEPLOYMENT_STYLE), created,
            *(_count(d.counts, s) for s in STATUSES), plain(reason),
        )  # fmt: skip
    return table


def devices_table(view: FleetView, limit: int = 50) -> Table:
    """One row per device, the unfinished and failed ones first; at most ``limit`` rows (0: all)."""
    order = {"FAILED": 0, "TIMED_OUT": 0, "REJECTED": 0, "IN_PROGRESS": 1, "QUEUED": 2, "CANCELED": 3, None: 4, "SUCCEEDED": 5}
    things = sorted(view.devices, key=lambda t: (order.get(t.last_status, 4), t.thing))
    shown = things if limit <= 0 else things[:limit]
    title = (
        "devices"
        if len(shown) == len(things)
        else f"devices ({len(shown)} of {len(things)}: unfinished and failed first; --limit 0 for all)"
    )
    table = Table(title=title, title_justify="left")
    presence = any(t.connected is not None for t in things)  # known where a fleet serve's agents say so
    for col in ("thing", "groups", "last execution", "deployment", "last seen", *(("connected",) if presence else ())):
        table.add_column(col)
    now = time.time()
    for t in shown:
        seen = Text(f"{now - t.last_seen:.0f} s ago") if t.last_seen else Text("never", style="dim")
        status = _styled(t.last_status, _STYLE)
        online = [plain("-" if t.connected is None else "yes" if t.connected else "no")] if presence else []
        thing = plain(t.thing)
        if t.stand_in:  # a process of another platform runs it: a host build of the same candidate, not its own code
            thing.append(f" (stand-in on {t.stand_in})", style="yellow")
        table.add_row(thing, plain(", ".join(t.groups)), status, plain((t.deployment_id or "-")[:8]), seen, *online)
    return table


def telemetry_tables(view: FleetView, limit: int = 50) -> list[Table]:
    """What the devices' inference components reported: per group, then per device (``limit`` rows, 0: all)."""
    heads = ("windows", "readings", "local", "cloud", "none", "fallback errors", "breaker", "component pending",
             "uplink msgs", "last telemetry")  # fmt: skip
    now = time.time()

    def seen(at: float | None) -> Text:
        return Text(f"{now - at:.0f} s ago") if at else Text("never", style="dim")

    def errors(kinds: dict[str, int]) -> Text:
        return plain(", ".join(f"{k} {n}" for k, n in sorted(kinds.items())) or "-")

    groups = Table(title="telemetry per group (window summaries received)", title_justify="left")
    groups.add_column("group")
    groups.add_column("reporting", justify="right")
    for head in heads:
        groups.add_column(head, justify="left" if head in ("fallback errors", "breaker") else "right")
    for g in view.telemetry:
        breakers = plain(", ".join(f"{k} {n}" for k, n in sorted(g.breakers.items())) or "-")
        groups.add_row(
            plain(g.group), f"{g.reporting}/{g.devices}", f"{g.windows:,}", f"{g.readings:,}", f"{g.local:,}", f"{g.cloud:,}",
            f"{g.none:,}", errors(g.fallback_errors), breakers, str(g.component_pending), f"{g.uplink_messages:,}",
            seen(g.last_telemetry_at),
        )  # fmt: skip
    reporting = [d for d in view.devices if d.telemetry.windows or d.telemetry.uplink_messages]
    shown = reporting if limit <= 0 else reporting[:limit]
    devices = Table(title=f"telemetry per device ({len(shown)} of {len(reporting)} reporting)", title_justify="left")
    devices.add_column("thing")
    for head in heads:
        devices.add_column(head, justify="left" if head in ("fallback errors", "breaker") else "right")
    for d in shown:
        t = d.telemetry
        devices.add_row(
            plain(d.thing), f"{t.windows:,}", f"{t.readings:,}", f"{t.local:,}", f"{t.cloud:,}", f"{t.none:,}",
            errors(t.fallback_errors), plain(t.breaker), str(t.component_pending), f"{t.uplink_messages:,}",
            seen(d.last_telemetry_at),
        )  # fmt: skip
    return [groups, devices] if reporting else []


def failures_table(failures: Sequence[FailureView], title: str = "latest failures") -> Table:
    table = Table(title=title, title_justify="left")
    for col in ("thing", "deployment", "status", "error", "cause"):
        table.add_column(col, overflow="fold")
    for f in failures:
        cause = (f.cause or "")[:600]  # it ends with the component's last log line: wrapped, not cut
        table.add_row(plain(f.thing), plain(f.deployment_id[:8]), plain(f.status, "red"), plain(f.error_code), plain(cause))
    return table


def _live_view(status: SimulationStatus) -> Group:
    header = Text(f"t+{status.elapsed_s:.0f}s", style="bold").append_text(
        plain(f"  devices connected {status.connected}/{status.devices} (agents up {status.alive})  broker {status.broker_url}")
    )
    parts: list[Text | Table] = [header, groups_table(status.view, title="")]
    if status.failures:
        parts.append(failures_table(status.failures))
    if status.faults:
        parts.append(plain("faults: " + "; ".join(status.faults[-5:]), "yellow"))
    return Group(*parts)


def _status_line(status: SimulationStatus) -> str:
    """One line of plain text (printed with ``markup=False``: the fleet's names as written, nothing escaped)."""
    groups = []
    for group in status.view.groups:
        counts = " ".join(f"{s}={group.counts[s]}" for s in STATUSES if group.counts.get(s))
        groups.append(f"{group.name}[{group.members}] {counts or '-'}")
    latest = status.failures[0].thing if status.failures else ""
    failed = f" | {len(status.failures)} recent failure(s), latest {latest}" if status.failures else ""
    return f"t+{status.elapsed_s:.0f}s connected {status.connected}/{status.devices} | " + " | ".join(groups) + failed


# --------------------------------------------------------------------------- simulate


@contextlib.contextmanager
def _watching(interval: float) -> Iterator[tuple[Callable[[SimulationStatus], None], Callable[[str], None]]]:
    """(watch, say) for a simulation: a live view on a terminal (the start-up steps, then the fleet; what is said once
    the fleet shows, such as a shard that died, is printed above the view, which stays); otherwise a status line every
    ``interval`` seconds and each start-up step on its own line (CI logs)."""
    if console.is_terminal:
        from rich.live import Live
        from rich.spinner import Spinner

        shown = [False]

        def watch(status: SimulationStatus) -> None:
            shown[0] = True
            live.update(_live_view(status))

        def say(msg: str) -> None:
            if shown[0]:
                live.console.print(plain(msg, "yellow"), soft_wrap=True)
            else:
                # drawn now: a step shorter than the refresh (0.25 s) would otherwise never show
                live.update(Spinner("dots", plain(f"starting the simulation: {msg}")), refresh=True)

        with Live(Spinner("dots", "starting the simulation"), console=console, refresh_per_second=4, transient=True) as live:
            yield watch, say
        return
    last = [0.0]

    def line(status: SimulationStatus) -> None:
        if time.monotonic() - last[0] >= interval:
            console.print(_status_line(status), soft_wrap=True, markup=False)
            last[0] = time.monotonic()

    yield line, lambda msg: err_console.print(f"  {msg}", soft_wrap=True, markup=False)


def simulate(
    fleet: Fleet = "demo",
    build: BuildOrNone = None,
    deploy: list[str] = typer.Option([], "--deploy", help="NAME=VERSION to deploy once started; repeat per component"),
    target: DeploymentTargets = [],  # noqa: B006 - typer's default, never mutated
    rollout: Rollout = None,
    abort_failed: AbortFailed = None,
    devices: int | None = typer.Option(None, "--devices", min=1, help="scale the fleet to N devices"),
    state: State = None,
    mode: str | None = typer.Option(None, "--mode", help="in_process or subprocess (default: the fleet file's)"),
    tls: bool | None = typer.Option(
        None, "--tls/--no-tls", help="mTLS with a certificate per device (default: the fleet file's)"
    ),
    until_done: bool = typer.Option(False, "--until-done", help="stop once no deployment is ACTIVE"),
    duration: float | None = typer.Option(None, "--duration", min=0, help="stop after this many seconds"),
    interval: float = typer.Option(5.0, "--interval", min=0.1, help="seconds between status lines when not on a terminal"),
    tick: float = typer.Option(1.0, "--tick", min=0.05, help="the fleet service's rollout tick, seconds"),
    shards: int | None = typer.Option(
        None,
        "--shards",
        help="processes to run the devices in, split by thing name (default: one per core, more where the open-file limit needs)",
    ),
    database: Database = None,
) -> None:
    """Run a simulated fleet (broker, fleet service, device agents) in the foreground and show it at a glance.
    Emulated aarch64 devices need the network the first time, to build their aarch64 root (~212 MB, once;
    `edgekit verify --prepare --device` builds it ahead).

    Publishes --build first (./greengrass-build when it exists), then deploys --deploy's components."""
    if mode not in (None, "in_process", "subprocess"):
        raise ConfigError(f"--mode '{mode}': use in_process or subprocess")
    run_mode: Literal["in_process", "subprocess"] | None = (
        "subprocess" if mode == "subprocess" else "in_process" if mode else None
    )
    if build is None and (Path("greengrass-build") / "recipes").is_dir():
        build = Path("greengrass-build")
    elif build is not None and not build.is_dir():
        raise ConfigError(f"--build '{build}' is not a folder; package the components first (edgekit package)")
    if until_done and not deploy and duration is None:
        err_console.print("--until-done without --deploy: waiting for deployments made with 'edgekit deploy --local'")
    seen: list[SimulationStatus] = []
    with quiet_library(), _watching(interval) as (watch, say):

        def track(status: SimulationStatus) -> None:
            seen[:] = [status]
            watch(status)

        try:
            run = api.simulate(
                fleet, state_dir=state, devices=devices, mode=run_mode, tls=tls, tick_s=tick, build=build, deploy=deploy,
                targets=target, rollout=rollout, abort_failed=abort_failed, until_done=until_done, duration=duration,
                watch=track, progress=say, shards=shards, database=database,
            )  # fmt: skip
        except KeyboardInterrupt:
            run = None
    _print_end(run, seen[-1] if seen else None, fleet)


def _print_end(run: SimulationRun | None, last: SimulationStatus | None, fleet: str) -> None:
    final = run.final if run is not None else last
    if final is not None:
        how = f"{run.mode}{', mTLS' if run.tls else ''}; state in {run.state}" if run else "interrupted"
        console.print(
            plain(
                f"fleet '{run.fleet if run else fleet}': {final.devices} device(s), {final.connected} connected at the end, "
                f"{final.elapsed_s:.1f} s ({how})"
            )
        )
        console.print(groups_table(final.view))
        if final.failures:
            console.print(failures_table(final.failures))
        if final.faults:
            console.print(plain("faults: " + "; ".join(final.faults)))
    if run is None:
        err_console.print("interrupted; the simulation was stopped (ACTIVE deployments resume with the next simulate)")
        raise SystemExit(130)


# --------------------------------------------------------------------------- fleet status / logs / ui


@json_output
def status(
    state: State = None,
    limit: int = typer.Option(50, "--limit", min=0, help="devices to list (unfinished and failed first; 0: all)"),
) -> None:
    """Deployments, thing groups and devices of the local fleet, and what the devices report: readings, answers
    (local / cloud / none), fallback errors, breakers, uplink (readable while a simulation runs)."""
    fleet = api.fleet_status(state_dir=state)
    view, running = fleet.view, fleet.running
    where = f"local fleet {fleet.root}: {len(view.devices)} device(s), {len(view.groups)} group(s)"
    if running and running.get("mode") == "serve":
        connected = sum(1 for d in view.devices if d.connected)
        where += f"; fleet serve running (pid {running['pid']}, {connected} connected, broker {running.get('broker')})"
    elif running:
        shards = f" in {running['shards']} shards" if running.get("shards") else ""
        where += f"; simulation running (pid {running['pid']}, {running.get('devices')} devices{shards}, broker {running.get('broker')})"
    else:
        where += "; no simulation running"
    facts = {"state": fleet.root, "simulation": running, **view.to_json()}
    shown: list[Text | Table] = [
        plain(where),
        deployments_table(view),
        groups_table(view),
        devices_table(view, limit),
        *telemetry_tables(view, limit),
    ]
    if view.failures:
        shown.append(failures_table(view.failures))
    if view.inactive_failures:
        shown.append(failures_table(view.inactive_failures, "failures of inactive deployments (since replaced)"))
    emit(facts, *shown)


def logs(
    thing: str = typer.Argument(..., help="the device (thing name)"),
    component: str | None = typer.Argument(None, help="only this component's log (default: every component's)"),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep printing new lines until Ctrl-C"),
    lines: int | None = typer.Option(None, "--lines", "-n", min=0, metavar="N", help="only the last N lines of each log"),
    state: State = None,
) -> None:
    """Print a device's component logs, like 'greengrass-cli logs' (each line prefixed with its component)."""
    for entry in api.logs(thing, component, state_dir=state, lines=lines, follow=follow):
        console.out(entry.line if component else f"{entry.component}: {entry.line}", highlight=False)
        if follow:
            console.file.flush()


def ui(
    state: State = None,
    no_browser: bool = typer.Option(False, "--no-browser", help="print the page's address only"),
) -> None:
    """Open the live fleet page of the simulation running on this fleet folder (devices, rollouts, failures)."""
    url = api.fleet_page(state_dir=state)
    console.print(url, markup=False)
    if not no_browser:
        import webbrowser

        webbrowser.open(url)


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
    fleet_app = typer.Typer(help="The local fleet: its state, deployments and devices.", no_args_is_help=True)
    fleet_app.command("status")(status)
    fleet_app.command("logs")(logs)
    fleet_app.command("ui")(ui)
    fleet_app.command("serve")(fleet_serve_cmd.serve)
    fleet_app.command("add-device")(fleet_serve_cmd.add_device)
    app.add_typer(fleet_app, name="fleet")
