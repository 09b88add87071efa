"""edgekit verify: run an aarch64 artifact under qemu. See docs/artifact.md."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgekit import api
from edgekit.cli.output import console, progress_line

__all__ = ["register", "verify"]


def verify(
    artifact: Path = typer.Argument(..., help="an artifact folder built for an aarch64 profile"),
    samples: int = typer.Option(4, "--samples", help="random inputs to compare"),
) -> None:
    """Run an aarch64 artifact under qemu (aarch64 Python + TVM runtime) and compare it with this host."""
    with progress_line(f"verifying {artifact}") as say:
        report = api.verify_artifact(artifact, samples=samples, progress=say)
    console.print(escape(report.summary()))


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
