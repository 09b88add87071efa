"""edgekit deployment list / cancel (AWS, or the local fleet with --local). See docs/publishing.md."""

from __future__ import annotations

import time
from typing import Any

import typer

from edgekit import api
from edgekit.cli.options import EndpointUrl, Local, LocalState, Profile, Region
from edgekit.cli.output import emit, json_output, rows_table

__all__ = ["cancel", "list_", "register"]

_STATUSES = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED")


@json_output
def list_(
    local: Local = False,
    state: LocalState = None,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """List deployments, newest first (greengrass:ListDeployments, or the local fleet's with their executions)."""
    found = api.deployments(local=local, state_dir=state, region=region, profile=profile, endpoint_url=endpoint_url)
    rows: list[dict[str, Any]] = [
        {"id": d.id, "target": d.target, "status": d.status, "createdAt": d.created_at, "name": d.name, "counts": d.counts}
        for d in found
    ]
    columns = {"id": "deployment", "target": "target", "status": "status", "createdAt": "created"}
    columns |= {"name": "name"} if not local else {"counts": "executions"}
    shown = {
        "createdAt": lambda t: "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)),
        "counts": lambda c: " ".join(f"{s}={c[s]}" for s in _STATUSES if c and c.get(s)) or "-",
    }
    emit(rows, rows_table("deployments", rows, columns, shown))


@json_output
def cancel(
    deployment_id: str = typer.Argument(..., help="the deployment id (with --local, an unambiguous prefix will do)"),
    local: Local = False,
    state: LocalState = None,
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Cancel a deployment: devices that have not started it never will; those applying it finish."""
    canceled = api.cancel_deployment(
        deployment_id, local=local, state_dir=state, region=region, profile=profile, endpoint_url=endpoint_url
    )
    emit({"canceled": canceled}, f"deployment {canceled} canceled")


def register(app: typer.Typer) -> None:
    deployment_app = typer.Typer(help="Deployments: list them, cancel one (AWS, or the local fleet with --local).",
                                 no_args_is_help=True)  # fmt: skip
    deployment_app.command("list")(list_)
    deployment_app.command("cancel")(cancel)
    app.add_typer(deployment_app, name="deployment")
