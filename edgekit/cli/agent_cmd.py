"""edgekit agent: the device agent of a device bundle, in the foreground or as a systemd service. See
docs/device-agent.md (a real device)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgekit import api
from edgekit.cli.output import console, err_console

__all__ = ["agent", "register"]


def _say(message: str) -> None:
    err_console.print(f"agent: {message}", soft_wrap=True, markup=False, highlight=False)
    err_console.file.flush()


def agent(
    config: Path = typer.Option(..., "--config", "-c", metavar="FILE", help="the device bundle's config.yaml (or its folder)"),
    systemd_unit: Path | None = typer.Option(
        None, "--systemd-unit", metavar="FILE", help="write a systemd unit that runs this agent there, and exit"
    ),
    setup_system_service: bool = typer.Option(
        False,
        "--setup-system-service",
        help="as the nucleus: write /etc/systemd/system/edgekit-agent.service (or --systemd-unit), enable and start it",
    ),
    user: str | None = typer.Option(None, "--user", help="with a unit: the user it runs as (User=)"),
) -> None:
    """Run the device agent of a device bundle ('edgekit fleet add-device' writes one) until SIGTERM or Ctrl-C: it
    connects to the fleet's broker with the bundle's certificate, takes deployments as IoT jobs, and reconnects when
    the broker comes back. Progress goes to stderr."""
    unit = api.run_agent(config, systemd_unit=systemd_unit, setup_system_service=setup_system_service, user=user, progress=_say)
    if unit is not None:
        console.print(escape(str(unit)), soft_wrap=True)
        if not setup_system_service:
            err_console.print(
                escape(f"enable it with: sudo cp {unit} /etc/systemd/system/ && sudo systemctl daemon-reload && "
                       f"sudo systemctl enable --now {unit.name}"),
                soft_wrap=True,
            )  # fmt: skip


def register(app: typer.Typer) -> None:
    app.command("agent")(agent)
