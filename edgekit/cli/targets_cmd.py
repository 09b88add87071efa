"""edgekit targets: the device profiles edgekit knows. See docs/compile.md."""

from __future__ import annotations

import shutil

import typer
from rich.table import Table

from edgekit.cli.output import console


def register(app: typer.Typer) -> None:
    @app.command("targets")
    def targets() -> None:
        """List the device profiles: platform, TVM target, and whether this host can build and run them."""
        from edgekit.profiles import list_profiles

        table = Table(title="device profiles", title_justify="left")
        for col in ("name", "greengrass", "neo", "tvm target", "toolchain", "runs here"):
            table.add_column(col)
        for p in list_profiles():
            t = p.tvm.target
            tgt = " ".join(f"{k}={v}" for k, v in t.items() if k in ("kind", "mtriple", "mcpu", "arch"))
            tool = p.toolchain.cxx if p.machine != "x86_64" else "g++"
            ok = shutil.which(tool) is not None
            neo = f"{p.neo.os}/{p.neo.arch}" + (f"/{p.neo.accelerator}" if p.neo.accelerator else "")
            table.add_row(
                p.name,
                f"{p.greengrass.os}/{p.greengrass.architecture}",
                neo,
                tgt,
                f"{tool} {'ok' if ok else 'missing'}",
                "yes" if p.runs_on_host() else "no",
            )
        console.print(table)
