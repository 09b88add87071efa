"""edgekit deployment list / cancel (AWS, or the local fleet with --local). See docs/publishing.md."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

from edgekit.cli.aws_options import ENDPOINT_URL, PROFILE, REGION
from edgekit.cli.output import emit, json_output, rows_table

_STATUSES = ("QUEUED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "TIMED_OUT", "CANCELED")


def register(app: typer.Typer) -> None:
    deployment_app = typer.Typer(help="Deployments: list them, cancel one (AWS, or the local fleet with --local).",
                                 no_args_is_help=True)  # fmt: skip
    app.add_typer(deployment_app, name="deployment")

    @deployment_app.command("list")
    @json_output
    def list_(
        local: bool = typer.Option(False, "--local", help="the local fleet's deployments instead of AWS's"),
        state: Path | None = typer.Option(None, "--state", metavar="DIR", help="with --local: the local fleet's folder"),
        region: str | None = REGION,
        profile: str | None = PROFILE,
        endpoint_url: str | None = ENDPOINT_URL,
    ) -> None:
        """List deployments, newest first (greengrass:ListDeployments, or the local fleet's with their executions)."""
        from edgekit.api import deployments

        found = deployments(local=local, state_dir=state, region=region, profile=profile, endpoint_url=endpoint_url)
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

    @deployment_app.command("cancel")
    @json_output
    def cancel(
        deployment_id: str = typer.Argument(..., help="the deployment id (with --local, an unambiguous prefix will do)"),
        local: bool = typer.Option(False, "--local", help="cancel a deployment of the local fleet instead of AWS"),
        state: Path | None = typer.Option(None, "--state", metavar="DIR", help="with --local: the local fleet's folder"),
        region: str | None = REGION,
        profile: str | None = PROFILE,
        endpoint_url: str | None = ENDPOINT_URL,
    ) -> None:
        """Cancel a deployment: devices that have not started it never will; those applying it finish."""
        from edgekit.api import cancel_deployment

        canceled = cancel_deployment(
            deployment_id, local=local, state_dir=state, region=region, profile=profile, endpoint_url=endpoint_url
        )
        emit({"canceled": canceled}, f"deployment {canceled} canceled")
