"""edgekit demo: the whole flow on an embedded default, model to fleet. See README.md."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer
from rich.table import Table

from edgekit.cli.output import console, manifest_table, progress_line


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        output: Path = typer.Option(Path("build/demo"), "--output", "-o", help="where the demo writes everything"),
        targets: list[str] = typer.Option(["x86_64", "rasp4b"], "--target", "-t", help="profiles to compile for"),
        fleet: str = typer.Option("demo", "--fleet", help="fleet file for the rollout (devices/fleets/<name>.yaml)"),
        no_fleet: bool = typer.Option(False, "--no-fleet", help="stop after compiling and packaging"),
        rollout: int = typer.Option(600, "--rollout", help="devices per minute (maximumPerMinute) of the demo deployments"),
    ) -> None:
        """The main job: compile a bundled sensor model for two targets, package it as Greengrass components,
        and roll it out to a simulated fleet over MQTT (a real mosquitto, the local fleet service, device agents)."""
        from edgekit.api import compile, package
        from edgekit.demo import write_demo_model
        from edgekit.greengrass.lint import lint_paths

        output.mkdir(parents=True, exist_ok=True)
        model = write_demo_model(output / "sensor_cnn.onnx")
        console.print(f"[bold]1. compile[/] {model} (1-D CNN over 6 sensor channels x 64 samples, 4 classes)")
        manifests, artifacts = [], []
        for target in targets:
            with progress_line(f"compiling for {target}") as say:
                result = compile(model, target, output, progress=say)
            manifests.append(result.manifest)
            artifacts.append(result.artifact_dir)
            console.print(f"   {target}: {result.artifact_dir}" + (" (cache)" if result.cache_hit else ""))
        console.print(manifest_table(manifests))
        if len({m.backend.name for m in manifests}) > 1:
            console.print("   the targets chose different backends; packaging stops here (one runtime per component)")
            return

        build = output / "greengrass-build"
        name = "com.edgekit.demo.SensorCnn"
        with progress_line("packaging") as say:
            packaged = package(artifacts, name=name, version="1.0.0", output=build, progress=say)
        findings = [f for f in lint_paths([build / "recipes"]) if f.severity == "error"]
        console.print(f"[bold]2. package[/] {build}: " + ", ".join(f"{c.name} {c.version}" for c in packaged.components))
        console.print(f"   recipe lint: {'OK' if not findings else f'{len(findings)} error(s)'}")
        if no_fleet:
            return
        asyncio.run(_rollout(output / "fleet", build, f"{name}.Inference", fleet, rollout))


async def _rollout(state_dir: Path, build: Path, component: str, fleet_name: str, rollout: int) -> None:
    from edgekit.cli.fleet_cmd import deployments_table, groups_table
    from edgekit.fleets import load_fleet
    from edgekit.sim import Simulation

    fleet = load_fleet(fleet_name)
    groups = sorted({g for entry in fleet.devices for g in entry.groups} - {"canary"})
    with progress_line("starting the simulated fleet") as say:
        sim = Simulation(fleet, state_dir=state_dir, progress=say)
        await sim.start()
    try:
        status = sim.status()
        console.print(
            f"[bold]3. fleet[/] '{fleet.name}': {status.devices} devices ({status.connected} connected over MQTT to "
            f"{status.broker_url}), state in {state_dir}"
        )
        published = sim.publish(build)
        console.print("   published locally: " + ", ".join(f"{p.name} {p.version} ({p.status})" for p in published))
        version = next(p.version for p in published if p.name == component)
        rate = {"maximumPerMinute": rollout}
        deployments = []
        for group in groups:
            spec = {
                "targetArn": f"thinggroup/{group}",
                "deploymentName": f"demo-{group}",
                "components": {component: {"componentVersion": version}},
                "iotJobConfiguration": {"jobExecutionsRolloutConfig": rate},
            }
            deployments.append(sim.deploy(spec))
        console.print(f"[bold]4. deploy[/] {component} {version} to " + ", ".join(f"thinggroup/{g}" for g in groups))
        with progress_line("rolling out") as say:
            for dep in deployments:
                while True:
                    try:
                        await sim.wait(dep, timeout=5)
                        break
                    except TimeoutError:
                        counts = sim.status().summary
                        say(", ".join(f"{d.target}: {dict(d.counts)}" for d in counts.deployments if d.status == "ACTIVE"))
        summary = sim.status().summary
        console.print(deployments_table(summary))
        console.print(groups_table(summary))
        _components_table(sim)
    finally:
        await sim.close()


def _components_table(sim: object) -> None:
    devices = getattr(sim, "devices", {})
    table = Table(title="components on the first devices", title_justify="left")
    for col in ("device", "component", "version", "state"):
        table.add_column(col)
    for thing in sorted(devices)[:4]:
        agent = getattr(devices[thing], "agent", None)
        for c in agent.component_states() if agent is not None else []:
            table.add_row(thing, c.name, c.version, c.state)
    if table.row_count:
        console.print(table)
