"""edgekit targets: the device profiles edgekit knows. See docs/compile.md."""

from __future__ import annotations

import shutil
from typing import Any

import typer

from edgekit import api
from edgekit.cli.output import emit, json_output, rows_table

__all__ = ["register", "targets"]

COLUMNS = {"name": "name", "greengrass": "greengrass", "neo": "neo", "tvmTarget": "tvm target", "toolchain": "toolchain",
           "runsHere": "runs here"}  # fmt: skip


@json_output
def targets() -> None:
    """List the device profiles: platform, TVM target, and whether this host can build and run them."""
    rows: list[dict[str, Any]] = []
    for p in api.targets():
        t = p.tvm.target
        tool = p.toolchain.cxx if p.machine != "x86_64" else "g++"
        ok = shutil.which(tool) is not None
        rows.append(
            {
                "name": p.name,
                "greengrass": f"{p.greengrass.os}/{p.greengrass.architecture}",
                "neo": f"{p.neo.os}/{p.neo.arch}" + (f"/{p.neo.accelerator}" if p.neo.accelerator else ""),
                "tvmTarget": " ".join(f"{k}={v}" for k, v in t.items() if k in ("kind", "mtriple", "mcpu", "arch")),
                "toolchain": f"{tool} {'ok' if ok else 'missing'}",
                "runsHere": p.runs_on_host(),
            }
        )
    emit(rows, rows_table("device profiles", rows, COLUMNS, {"runsHere": lambda v: "yes" if v else "no"}))


def register(app: typer.Typer) -> None:
    app.command("targets")(targets)
