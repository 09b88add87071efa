"""edgekit publish / edgekit deploy"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from edgekit.cli.output import console, progress_line
from edgekit.errors import DeploymentError, PublishError


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
        if local:
            _publish_local(build, state)
            return
        if bucket is None:
            raise typer.BadParameter("required (or publish with --local)", param_hint="'--bucket'")
        if region is None:
            raise typer.BadParameter("required (or publish with --local)", param_hint="'--region'")
        from edgekit.greengrass.aws import PublishEvent, publish

        with progress_line("publishing") as say:

            def show(event: PublishEvent) -> None:
                say(f"{event.stage}: {event.component} {event.detail}".rstrip())

            result = publish(
                build,
                bucket=bucket,
                region=region,
                profile=profile,
                account_bucket_suffix=gdk_bucket_naming,
                endpoint_url=endpoint_url,
                progress=show,
                dry_run=dry_run,
                skip_existing=skip_existing,
            )
        table = Table(
            title=f"s3://{result.bucket} ({result.region}){' - dry run' if result.dry_run else ''}", title_justify="left"
        )
        for col in ("component", "version", "status", "arn", "artifacts"):
            table.add_column(col)
        for c in result.components:
            table.add_row(c.name, c.version, c.status, c.arn or "-", str(len(c.artifacts)))
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
        from edgekit.greengrass.deployment import DeploymentSpec, deploy, load_spec, parse_abort, parse_rollout

        spec = load_spec(spec_file) if spec_file else None
        data = spec.model_dump(by_alias=True, exclude_none=True) if spec else {}
        data["targetArn"] = target
        comps = dict(data.get("components", {}))
        for item in component:
            cname, sep, version = item.partition("=")
            if not sep or not cname or not version:
                raise DeploymentError(f"--component '{item}': expected NAME=VERSION")
            comps[cname] = {**comps.get(cname, {}), "componentVersion": version}
        for item in merge:
            cname, sep, text = item.partition("=")
            if cname not in comps:
                raise DeploymentError(f"--merge '{item}': '{cname}' is not a component of this deployment")
            comps[cname] = {**comps[cname], "configurationUpdate": {"merge": text}}
        if not comps:
            raise DeploymentError("a deployment needs at least one --component NAME=VERSION (or a --spec)")
        data["components"] = comps
        if name:
            data["deploymentName"] = name
        data.setdefault("deploymentPolicies", {})["failureHandlingPolicy"] = failure_handling
        job = dict(data.get("iotJobConfiguration", {}))
        if rollout:
            job["jobExecutionsRolloutConfig"] = parse_rollout(rollout).model_dump(by_alias=True, exclude_none=True)
        if abort_failed:
            job["abortConfig"] = parse_abort(abort_failed).model_dump(by_alias=True, exclude_none=True)
        if timeout_minutes:
            job["timeoutConfig"] = {"inProgressTimeoutInMinutes": timeout_minutes}
        if job:
            data["iotJobConfiguration"] = job
        final = DeploymentSpec.from_dict(data)

        if local:
            if dry_run:
                raise DeploymentError("--dry-run is for AWS deployments; a local deployment is checked by its pre-flight")
            from edgekit.cli.fleet_cmd import deploy_local

            deploy_local(final, state, fleet)
            return
        if fleet:
            from edgekit.fleets import load_fleet
            from edgekit.greengrass.resolve import ComponentStore, GroupDeployment, preflight

            short = final.target_arn.rsplit(":", 1)[-1]
            versions = {n: c.component_version for n, c in final.components.items()}
            report = preflight(
                GroupDeployment(short, versions), [], load_fleet(fleet).expand(), ComponentStore.from_dirs(recipes)
            )
            console.print(f"pre-flight: {len(report.devices)} device(s) reached, {len(report.failed)} with problems")
            report.raise_for_problems()
        if not region:
            raise DeploymentError("give --region (the deployment's AWS region)")
        result = deploy(final, region=region, profile=profile, endpoint_url=endpoint_url, dry_run=dry_run, account=account)
        if result.dry_run:
            console.print_json(json.dumps(result.request, default=str))
        else:
            console.print(f"deployment {result.deployment_id} created (IoT job {result.iot_job_id})")


def _publish_local(build: Path, state: Path | None) -> None:
    from edgekit.device.simulator import FleetFolder
    from edgekit.fleet.registry import publish_local
    from edgekit.fleet.state import FleetState

    folder = FleetFolder.at(state)
    if not (build / "recipes").is_dir():  # before the state folder is made
        raise PublishError(f"no recipes in {build / 'recipes'}; package the components first (edgekit package)")
    with progress_line("publishing to the local fleet") as say, FleetState(folder.database) as fleet_state:
        result = publish_local(build, fleet_state, folder.store, progress=say)
    table = Table(title=f"local registry {folder.root}", title_justify="left")
    for col in ("component", "version", "status", "artifacts"):
        table.add_column(col)
    for c in result:
        table.add_row(c.name, c.version, c.status, ", ".join(f"{a.file} ({a.size} B)" for a in c.artifacts) or "-")
    console.print(table)
