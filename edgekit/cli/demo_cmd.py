"""edgekit demo: the whole flow on an embedded default, model to a fleet that runs it (edgekit.demo.flow). See README.md."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgekit.cli.output import console, manifest_table, progress_line


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        output: Path = typer.Option(Path("build/demo"), "--output", "-o", help="where the demo writes its build"),
        targets: list[str] = typer.Option(["x86_64", "rasp4b"], "--target", "-t", help="profiles to compile for"),
        fleet: str = typer.Option("demo", "--fleet", help="fleet file for the rollout (devices/fleets/<name>.yaml)"),
        state: Path | None = typer.Option(None, "--state", help="the local fleet's folder (default ./.edgekit/fleet)"),
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
        through a broker outage, and count every reading."""
        from edgekit.cli.fleet_cmd import quiet_library
        from edgekit.demo.flow import DemoOptions, run_demo

        options = DemoOptions(
            output=output,
            targets=tuple(targets),
            fleet=fleet,
            state=state,
            rollout_per_min=rollout,
            seconds=seconds,
            outage_s=outage,
            no_fleet=no_fleet,
            keep=keep,
            cloud_url=cloud_url,
        )
        with quiet_library(), progress_line("the demo") as say:
            report = run_demo(options, progress=say)
        console.print(f"[bold]1. compile[/] {report.model} (1-D CNN over 6 sensor channels x 64 samples, 4 classes)")
        for target, artifact, hit in zip(targets, report.artifacts, report.cached, strict=True):
            console.print(f"   {target}: {artifact}" + (" (cache)" if hit else ""))
        console.print(manifest_table(report.manifests))
        if not report.same_backend:
            console.print("   the targets chose different backends; packaging stops here (one runtime per component)")
            return
        console.print(f"[bold]2. package[/] {output / 'greengrass-build'}: " + ", ".join(report.packaged))
        console.print(f"   recipe lint: {'OK' if not report.lint_errors else f'{report.lint_errors} error(s)'}")
        if no_fleet:
            return
        console.print(f"[bold]3. cloud fallback[/] {'' if cloud_url else 'edgekit serve '}{report.cloud} (the float model)")
        if report.cloud_note:
            console.print(f"   [yellow]{report.cloud_note}[/yellow]")
        console.print(
            f"[bold]4. fleet[/] '{report.fleet}': {report.devices} devices over MQTT ({report.broker}), state in {report.state}; "
            f"set up in {report.setup_s:.0f} s, then every device inferred for {report.seconds:.0f} s"
        )
        console.print(_groups(report))
        console.print(_fallback(report))
        lost = sum(g.lost for g in report.groups)
        twice = sum(g.duplicates for g in report.groups)
        produced = sum(g.produced for g in report.groups)
        crashed = sum(g.crashed_runs for g in report.groups)
        verdict = "[green]" if lost == 0 else "[red]"
        console.print(
            f"{verdict}{produced:,} readings produced, {produced - lost:,} accounted for in the summaries the fleet "
            f"received: {lost} lost, 0 counted twice[/] ({twice} redelivered summaries ignored"
            + (f"; {crashed} loop(s) killed by a fault, their open window lost" if crashed else "")
            + ")"
        )
        if report.faults:
            console.print("faults: " + "; ".join(report.faults), soft_wrap=True)
        console.print(f"the demo took {report.fleet_s:.0f} s; 'edgekit fleet status' reads the same fleet", soft_wrap=True)


def _groups(report: object) -> Table:
    table = Table(title="per thing group", title_justify="left")
    for col in ("group", "devices", "rollout", "produced", "accounted", "lost", "local", "cloud", "none", "uplink msgs", "msgs/reading"):
        table.add_column(col, justify="left" if col in ("group", "rollout") else "right")
    for g in getattr(report, "groups", []):
        rollout = ", ".join(f"{k} {v}" for k, v in sorted(g.rollout.items()))
        ratio = g.uplink_messages / g.produced if g.produced else 0.0
        lost = f"[green]{g.lost}[/green]" if g.lost == 0 else f"[red]{g.lost}[/red]"
        table.add_row(
            g.group, str(g.devices), rollout, f"{g.produced:,}", f"{g.accounted:,}", lost,
            f"{g.local:,}", f"{g.cloud:,}", f"{g.none:,}", f"{g.uplink_messages:,}", f"{ratio:.3f}",
        )  # fmt: skip
    return table


def _fallback(report: object) -> Table:
    table = Table(title="cloud fallback", title_justify="left")
    for col in ("group", "answers", "p50 ms", "p99 ms", "errors by kind", "breakers (latest window)"):
        table.add_column(col)
    for g in getattr(report, "groups", []):
        errors = ", ".join(f"{k} {v}" for k, v in sorted(g.fallback_errors.items())) or "-"
        breakers = ", ".join(f"{k} {v}" for k, v in sorted(g.breakers.items())) or "-"
        ms = g.fallback_ms
        table.add_row(g.group, f"{g.cloud:,}", str(ms.get("p50", "-")), str(ms.get("p99", "-")), errors, breakers)
    return table
