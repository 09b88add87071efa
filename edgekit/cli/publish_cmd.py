"""edgekit publish / edgekit deploy. See docs/publishing.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import typer

from edgekit import api
from edgekit.cli.options import (
    AbortFailed,
    Account,
    Build,
    DeploymentTarget,
    EndpointUrl,
    FleetOrNone,
    Local,
    LocalState,
    Profile,
    Region,
    Rollout,
)
from edgekit.cli.output import MODE, emit, json_output, note, progress_line, rows_table

if TYPE_CHECKING:
    from edgekit.fleet.deploy import LocalDeployment
    from edgekit.greengrass.deployment import DeploymentResult, DeploymentSpec

__all__ = ["deploy", "publish", "register"]


@json_output
def publish(
    build: Build = Path("greengrass-build"),
    bucket: str | None = typer.Option(None, "--bucket", help="S3 bucket for the artifacts (created in --region if missing)"),
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
    gdk_bucket_naming: bool = typer.Option(False, "--gdk-bucket-naming", help="use <bucket>-<region>-<account> like GDK"),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="skip versions that already exist"),
    dry_run: bool = typer.Option(False, "--dry-run", help="plan only: no upload, no API call"),
    local: Local = False,
    state: LocalState = None,
) -> None:
    """Upload artifacts to S3 and create the component versions (CreateComponentVersion), waiting for DEPLOYABLE.

    With --local: publish to the local fleet's registry (what a simulation's devices download from)."""
    if not local and bucket is None:
        raise typer.BadParameter("required (or publish with --local)", param_hint="'--bucket'")
    with progress_line("publishing to the local fleet" if local else "publishing") as say:
        result = api.publish(
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
    rows = [
        {
            "component": c.name,
            "version": c.version,
            "status": c.status,
            "arn": c.arn,
            "artifacts": [{"name": a.name, "size": a.size} for a in c.artifacts],
        }
        for c in result.components
    ]
    columns = {"component": "component", "version": "version", "status": "status", "arn": "arn", "artifacts": "artifacts"}
    shown = {"artifacts": lambda arts: ", ".join(f"{a['name']} ({a['size']} B)" if a["size"] is not None else a["name"]
                                                 for a in arts) or "-"}  # fmt: skip
    title = result.destination + (" - dry run" if result.dry_run else "")
    emit(
        {"destination": result.destination, "dryRun": result.dry_run, "components": rows},
        rows_table(title, rows, columns, shown),
    )


@json_output
def deploy(
    target: DeploymentTarget = None,
    group_id: str | None = typer.Option(
        None, "--groupId", metavar="GROUP", help="the thing group (the Greengrass CLI's flag): --target thinggroup/GROUP"
    ),
    component: list[str] = typer.Option([], "--component", "-c", metavar="NAME=VERSION", help="repeat per component"),
    spec_file: Path | None = typer.Option(
        None, "--spec", metavar="FILE", help="a deployment spec (YAML/JSON, CreateDeployment fields)"
    ),
    name: str | None = typer.Option(None, "--name", help="deployment name"),
    rollout: Rollout = None,
    abort_failed: AbortFailed = None,
    failure_handling: str = typer.Option("ROLLBACK", "--failure-handling", metavar="POLICY", help="ROLLBACK or DO_NOTHING"),
    timeout_minutes: int | None = typer.Option(None, "--timeout-minutes", metavar="MIN", help="in-progress timeout per device"),
    merge: list[str] = typer.Option(
        [],
        "--merge",
        metavar="NAME=VERSION|NAME={json}",
        help="add a component (the Greengrass CLI's --merge) or merge configuration into one",
    ),
    update_config: str | None = typer.Option(
        None, "--update-config", metavar="JSON|FILE", help='the Greengrass CLI\'s {"NAME": {"MERGE": {...}, "RESET": [...]}}'
    ),
    remove: list[str] = typer.Option(
        [], "--remove", metavar="NAME", help="with --local: remove a component the target runs (keeps the others)"
    ),
    recipe_dir: Path | None = typer.Option(
        None, "--recipeDir", metavar="DIR", help="with --local: publish these recipes first (the Greengrass CLI's flag)"
    ),
    artifact_dir: Path | None = typer.Option(
        None, "--artifactDir", metavar="DIR", help="with --local: their artifacts, <DIR>/<name>/<version>/<file>"
    ),
    fleet: FleetOrNone = None,
    recipes: Path = typer.Option(
        Path("greengrass-build/recipes"), "--recipes", metavar="DIR", help="available versions for the AWS pre-flight"
    ),
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
    account: Account = None,
    dry_run: bool = typer.Option(False, "--dry-run", help="print the exact CreateDeployment request, create nothing"),
    local: Local = False,
    state: LocalState = None,
) -> None:
    """Create a Greengrass deployment, after a pre-flight check of versions and platforms on every device.

    With --local: the pre-flight runs against the local fleet's devices and registry, and the deployment is
    written into its state, where a running simulation picks it up on its next tick. The Greengrass CLI's
    --recipeDir/--artifactDir/--merge NAME=VERSION/--remove/--update-config work there too: like its local
    deployments, they add to (or remove from) what the target already runs."""
    if group_id:
        target = target or f"thinggroup/{group_id}"
    if not target:
        raise typer.BadParameter("required (or the Greengrass CLI's --groupId)", param_hint="'--target'")
    spec = api.deployment_spec(
        target, component, spec_file=spec_file, name=name, rollout=rollout, abort_failed=abort_failed,
        failure_handling=failure_handling, timeout_minutes=timeout_minutes, merge=merge, update_config=update_config,
        remove=remove,
    )  # fmt: skip
    gg_cli = bool(remove or recipe_dir or artifact_dir or update_config or _adds_components(spec, merge))
    result = api.deploy(
        spec, local=local, state_dir=state, fleet=fleet, recipes=recipes, region=region, profile=profile,
        endpoint_url=endpoint_url, account=account, dry_run=dry_run, recipe_dir=recipe_dir, artifact_dir=artifact_dir,
        cumulative=gg_cli and local and not component, remove=remove, progress=note,
    )  # fmt: skip
    if local:  # written into the local fleet's state
        _print_local(cast("LocalDeployment", result))
    else:
        _print_created(cast("DeploymentResult", result))


def _print_created(result: DeploymentResult) -> None:
    if result.dry_run:
        emit({"dryRun": True, "request": result.request}, _json_text(result.request))
    else:
        facts = {"deploymentId": result.deployment_id, "iotJobId": result.iot_job_id, "iotJobArn": result.iot_job_arn,
                 "request": result.request}  # fmt: skip
        emit(facts, f"deployment {result.deployment_id} created (IoT job {result.iot_job_id})")


def _adds_components(spec: DeploymentSpec, merge: list[str]) -> bool:
    """Whether a --merge added a component (NAME=VERSION, the Greengrass CLI's) rather than merged configuration
    into one (NAME={json}: the request carries that text as the component's configurationUpdate.merge)."""
    for item in merge:
        name, _, text = item.partition("=")
        component = spec.components.get(name)
        update = component.configuration_update if component is not None else None
        if update is None or update.merge is None or update.merge != _json_or_none(text):
            return True
    return False


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _json_text(value: Any) -> Any:
    from rich.json import JSON

    return JSON.from_data(value, default=str)


def _print_local(result: LocalDeployment) -> None:
    folder = result.folder
    queued = result.counts.get("QUEUED", 0)
    facts = {
        "deploymentId": result.deployment_id,
        "database": folder.database,
        "counts": result.counts,
        "devices": len(result.preflight.devices),
        "simulationPid": result.running["pid"] if result.running else None,
    }
    lines = [f"deployment {result.deployment_id} created in {folder.database}: {queued} execution(s) QUEUED"]
    if result.running:
        what = "the fleet served" if result.running.get("mode") == "serve" else "the simulation running"
        lines.append(f"{what} here (pid {result.running['pid']}) rolls it out on its next tick")
    emit(facts, *lines)
    if not result.running and not MODE.json:
        note(
            f"no simulation runs on {folder.root}: 'edgekit simulate --state {folder.root}' (or 'edgekit fleet serve' "
            "for real devices) rolls it out"
        )


def register(app: typer.Typer) -> None:
    app.command("publish")(publish)
    app.command("deploy")(deploy)
