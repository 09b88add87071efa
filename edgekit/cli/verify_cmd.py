"""edgekit verify: run an aarch64 artifact under qemu. See docs/artifact.md."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape

from edgekit import api
from edgekit.cli.output import console, progress_line

__all__ = ["register", "verify"]


def verify(
    artifact: Path | None = typer.Argument(None, help="an artifact folder built for an aarch64 profile"),
    samples: int = typer.Option(4, "--samples", help="random inputs to compare"),
    prepare: bool = typer.Option(
        False, "--prepare", help="only build the aarch64 root (downloads ~212 MB once; a CI caches the folder it prints)"
    ),
    device: bool = typer.Option(False, "--device", help="with --prepare: also the device layer emulated fleet devices use"),
) -> None:
    """Run an aarch64 artifact under qemu (aarch64 Python + TVM runtime) and compare it with this host.
    The first run needs the network: it builds an aarch64 root from Debian arm64 packages and PyPI's aarch64
    wheels (~212 MB, cached in ~/.cache/edgekit/sysroots or $EDGEKIT_SYSROOT_CACHE); --prepare does only that.
    """
    if prepare:
        with progress_line("preparing the aarch64 root") as say:
            folder = api.prepare_verify(device=device, progress=say)
        console.print(escape(f"aarch64 root ready: {folder}"))
        if artifact is None:
            return
    if artifact is None:
        raise typer.BadParameter("give an artifact folder to verify, or --prepare", param_hint="ARTIFACT")
    with progress_line(f"verifying {artifact}") as say:
        report = api.verify_artifact(artifact, samples=samples, progress=say)
    console.print(escape(report.summary()))


def register(app: typer.Typer) -> None:
    app.command("verify")(verify)
