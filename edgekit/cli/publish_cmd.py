"""edgekit publish / edgekit deploy. See docs/publishing.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.table import Table

from edgekit.cli.output import console, progress_line
from edgekit.fleet.folder import FleetFolder

if TYPE_CHECKING:
    from edgekit.fleet.deploy import LocalDeployment


def register(app: typer.Typer) -> None:
    @app.command("publish")
    def publish_(
        build: Path = typer.Option(Path("greengrass-build"), "--build", help="the folder 'edgekit package' wrote"),
        bucket: str | None = typer.Option(None, "--bucket", help="S3 bucket for the artifacts (created in --region if missing)"),
        region: str | None = typer.Option(None, "--region"),
        profile: str | None = typer.Option(None, "--profile", help="AWS profile (default: the standard boto3 chain)"),
        endpoint_url: str | None = typer.Option(None, "--endpoint-url", help="a local AWS endpoint, e.g. moto server"),
        gdk_bucket_naming: bool = typer.Option(False, "--gdk-bucket-naming", help="use <bucket>-<region>-<account> like GDK"),
        skip_existing: bool = typer.Option(False, "--skip-existing", help="skip versions that already exist"),
        dry_run: bool = typer.Option(False, "--dry-run", help="plan only: no upload, no API call"),
        local: bool = typer.Option(False, "--local", help="publish to the local fleet's registry instead of AWS"),
        state: Path | None = typer.Option(
            None, "--state", help="with --local: the local fleet's folder (default ./.edgekit/fleet)"
        ),
    ) -> None:
        """Upload artifacts to S3 and create the component versions (CreateComponentVersion), waiting for DEPLOYABLE.

        With --local: publish to the local fleet's registry (what a simulation's devices download from)."""
        if not local:
            if bucket is None:
                raise typer.BadParameter("required (or publish with --local)", param_hint="'--bucket'")
            if region is None:
                raise typer.BadParameter("required (or publish with --local)", param_hint="'--region'")
        from edgekit.api import publish

        with progress_line("publishing to the local fleet" if local else "publishing") as say:
            result = publish(
                build,
                local=local,
                state_dir=state,
                bucket=bucket,
                region=region,
                profile=profile,
                gdk_bucket_naming=gdk_bucket_naming,
                endpoint_url=endpoint_url,
                progress=say,
                dry_run=dry_run,
                skip_existing=skip_existing,
            )
        title = f"{'local registry ' + str(FleetFolder.at(state).root) if local else result.destination}"
        table = Table(title=title + (" - dry run" if result.dry_run else ""), title_justify="left")
        for col in ("component", "version", "status", "arn", "artifacts"):
            table.add_column(col)
        for c in result.components:
            shown = ", ".join(f"{a.name} ({a.size} B)" if a.size is not None else a.name for a in c.artifacts)
            table.add_row(c.name, c.version, c.status, c.arn or "-", shown or "-")
        console.print(table)

    @app.command("deploy")
    def deploy_(
        target: str = typer.Option(..., "--target", help="thinggroup/<name>, thing/<name> or a full ARN"),
        component: list[str] = typer.Option([], "--component", "-c", help="NAME=VERSION; repeat per component"),
        spec_file: Path | None = typer.Option(None, "--spec", help="a deployment spec (YAML/JSON, CreateDeployment fields)"),
        name: str | None = typer.Option(None, "--name", help="deployment name"),
        rollout: str | None = typer.Option(None, "--rollout", help="e.g. 10/min (maximum per minute)"),
        abort_failed: str | None = typer.Option(None, "--abort-failed", help="e.g. 10% or 10%:FAILED:min=5"),
        failure_handling: str = typer.Option("ROLLBACK", "--failure-handling", help="ROLLBACK or DO_NOTHING"),
        timeout_minutes: int | None = typer.Option(None, "--timeout-minutes", help="in-progress timeout per device"),
        merge: list[str] = typer.Option([], "--merge", help="NAME='{json}': configuration to merge"),
        fleet: str | None = typer.Option(None, "--fleet", help="fleet file for the pre-flight check (devices/fleets/...)"),
        recipes: Path = typer.Option(Path("greengrass-build/recipes"), "--recipes", help="available versions for pre-flight"),
        region: str | None = typer.Option(None, "--region"),
        profile: str | None = typer.Option(None, "--profile"),
        endpoint_url: str | None = typer.Option(None, "--endpoint-url"),
        account: str | None = typer.Option(None, "--account", help="AWS account id (for short targets in --dry-run)"),
        dry_run: bool = typer.Option(False, "--dry-run", help="print the exact CreateDeployment request, call nothing"),
        local: bool = typer.Option(False, "--local", help="deploy to the local fleet (its SQLite state) instead of AWS"),
        state: Path | None = typer.Option(
            None, "--state", help="with --local: the local fleet's folder (default ./.edgekit/fleet)"
        ),
    ) -> None:
        """Create a Greengrass deployment, after a pre-flight check of versions and platforms on every device.

        With --local: the pre-flight runs against the local fleet's devices and registry, and the deployment is
        written into its state, where a running simulation picks it up on its next tick."""
        from edgekit.api import deploy
        from edgekit.fleet.deploy import LocalDeployment
        from edgekit.greengrass.deployment import build_spec, load_spec

        final = build_spec(
            target,
            component,
            spec=load_spec(spec_file) if spec_file else None,
            name=name,
            rollout=rollout,
            abort_failed=abort_failed,
            failure_handling=failure_handling,
            timeout_minutes=timeout_minutes,
            merge=merge,
        )
        result = deploy(
            final,
            local=local,
            state_dir=state,
            fleet=fleet,
            recipes=recipes,
            region=region,
            profile=profile,
            endpoint_url=endpoint_url,
            account=account,
            dry_run=dry_run,
            progress=console.print,
        )
        if isinstance(result, LocalDeployment):
            _print_local(result)
        elif result.dry_run:
            console.print_json(json.dumps(result.request, default=str))
        else:
            console.print(f"deployment {result.deployment_id} created (IoT job {result.iot_job_id})")


def _print_local(result: LocalDeployment) -> None:
    folder = result.folder
    console.print(
        f"deployment {result.deployment_id} created in {folder.database}: {result.counts.get('QUEUED', 0)} execution(s) QUEUED"
    )
    if result.running:
        console.print(f"the simulation running here (pid {result.running['pid']}) rolls it out on its next tick")
    else:
        console.print(f"no simulation runs on {folder.root}: 'edgekit simulate --state {folder.root}' rolls it out")
