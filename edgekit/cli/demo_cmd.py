"""edgekit demo: the whole flow on an embedded default, model to a fleet that runs it (edgekit.demo.flow). See README.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape as esc
from rich.table import Table

from edgekit import api
from edgekit.cli.options import DeviceTargets, Fleet, State
from edgekit.cli.output import console, manifest_table, progress_line, quiet_library

if TYPE_CHECKING:
    from edgekit.demo.flow import DemoReport

__all__ = ["demo", "register"]


def demo(
    output: Path = typer.Option(Path("build/demo"), "--output", "-o", help="where the demo writes its build"),
    targets: DeviceTargets = ["x86_64", "rasp4b"],  # noqa: B006 - typer's default, never mutated
    fleet: Fleet = "demo",
    state: State = None,
    no_fleet: bool = typer.Option(False, "--no-fleet", help="stop after compiling and packaging"),
    rollout: int = typer.Option(600, "--rollout", help="devices per minute (maximumPerMinute) of the demo deployments"),
    seconds: float = typer.Option(20.0, "--seconds", min=1, help="how long every device infers"),
    outage: float = typer.Option(5.0, "--outage", min=0, help="seconds the broker is down a third of the way in (0: none)"),
    keep: bool = typer.Option(False, "--keep", help="leave the fleet running afterwards (Ctrl-C stops it)"),
    cloud_url: str | None = typer.Option(
        None, "--cloud-url", help="an Open Inference Protocol server to fall back to instead of starting edgekit serve"
    ),
) -> None:
    """The main job: compile a bundled sensor model for two targets, package it as Greengrass components, start
    `edgekit serve` as the cloud fallback, roll it out to a simulated fleet over MQTT, let every device infer
    through a broker outage, and count every reading.
    The first run needs the network: its emulated aarch64 Pi runs in an aarch64 root built from Debian arm64
    packages and PyPI wheels (~212 MB, once; `edgekit verify --prepare --device` builds it ahead)."""
    with quiet_library(), progress_line("the demo") as say:
        report = api.run_demo(
            output, targets=targets, fleet=fleet, state_dir=state, no_fleet=no_fleet, rollout_per_min=rollout,
            seconds=seconds, outage_s=outage, keep=keep, cloud_url=cloud_url, progress=say,
        )  # fmt: skip
    console.print(f"[bold]1. compile[/] {esc(str(report.model))} (1-D CNN over 6 sensor channels x 64 samples, 4 classes)")
    for target, artifact, hit in zip(targets, report.artifacts, report.cached, strict=True):
        console.print(esc(f"   {target}: {artifact}" + (" (cache)" if hit else "")))
    console.print(manifest_table(report.manifests))
    console.print(f"[bold]2. package[/] {esc(str(output / 'greengrass-build'))}: " + esc(", ".join(report.packaged)))
    console.print(f"   recipe lint: {'OK' if not report.lint_errors else f'{report.lint_errors} error(s)'}")
    if no_fleet:
        return
    console.print(f"[bold]3. cloud fallback[/] {'' if cloud_url else 'edgekit serve '}{esc(str(report.cloud))} (the float model)")
    if report.cloud_note:
        console.print(f"   [yellow]{esc(report.cloud_note)}[/yellow]")
    _print_fleet(report)


def _print_fleet(report: DemoReport) -> None:
    console.print(
        f"[bold]4. fleet[/] '{esc(report.fleet)}': {report.devices} devices over MQTT ({esc(str(report.broker))}), "
        f"state in {esc(str(report.state))}; set up in {report.setup_s:.0f} s, then every device inferred for {report.seconds:.0f} s"
    )
    console.print(_groups(report))
    console.print(_fallback(report))
    lost = sum(g.lost for g in report.groups)
    twice = sum(g.duplicates for g in report.groups)
    produced = sum(g.produced for g in report.groups)
    crashed = sum(g.crashed_runs for g in report.groups)
    abandoned = sum(g.abandoned for g in report.groups)
    verdict = "[green]" if lost == 0 else "[red]"
    console.print(
        f"{verdict}{produced:,} readings produced, {produced - lost - abandoned:,} accounted for in the summaries the "
        f"fleet received: {lost} lost, 0 counted twice[/] ({twice} redelivered summaries ignored"
        + (
            f"; {crashed} loop(s) killed by a fault, {abandoned} reading(s) in their open window gone with them"
            if crashed
            else ""
        )
        + ")",
        soft_wrap=True,  # one line, however long the counts: wrapped at the terminal's width it split the verdict
    )
    if report.faults:
        console.print("faults: " + esc("; ".join(report.faults)), soft_wrap=True)
    console.print(f"the demo took {report.fleet_s:.0f} s; 'edgekit fleet status' reads the same fleet", soft_wrap=True)


def _groups(report: DemoReport) -> Table:
    table = Table(title="per thing group", title_justify="left")
    for col in (
        "group",
        "devices",
        "rollout",
        "produced",
        "accounted",
        "lost",
        "local",
        "cloud",
        "none",
        "uplink msgs",
        "msgs/reading",
    ):
        table.add_column(col, justify="left" if col in ("group", "rollout") else "right")
    for g in report.groups:
        rollout = ", ".join(f"{k} {v}" for k, v in sorted(g.rollout.items()))
        ratio = g.uplink_messages / g.produced if g.produced else 0.0
        lost = f"[green]{g.lost}[/green]" if g.lost == 0 else f"[red]{g.lost}[/red]"
        table.add_row(
            esc(g.group), str(g.devices), esc(rollout), f"{g.produced:,}", f"{g.accounted:,}", lost,
            f"{g.local:,}", f"{g.cloud:,}", f"{g.none:,}", f"{g.uplink_messages:,}", f"{ratio:.3f}",
        )  # fmt: skip
    return table


def _fallback(report: DemoReport) -> Table:
    table = Table(title="cloud fallback", title_justify="left")
    for col in ("group", "answers", "p50 ms", "p99 ms", "errors by kind", "breakers (latest window)"):
        table.add_column(col)
    for g in report.groups:
        errors = ", ".join(f"{k} {v}" for k, v in sorted(g.fallback_errors.items())) or "-"
        breakers = ", ".join(f"{k} {v}" for k, v in sorted(g.breakers.items())) or "-"
        ms = g.fallback_ms
        table.add_row(esc(g.group), f"{g.cloud:,}", str(ms.get("p50", "-")), str(ms.get("p99", "-")), esc(errors), esc(breakers))
    return table


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
