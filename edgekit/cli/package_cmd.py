"""edgekit package. See docs/greengrass-packaging.md."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgekit.cli.output import console, progress_line


def register(app: typer.Typer) -> None:
    @app.command("package")
    def package_(
        artifacts: list[Path] = typer.Argument(..., help="compiled artifact folders, one per platform"),
        name: str = typer.Option(..., "--name", "-n", help="model component name, e.g. com.example.Classifier"),
        version: str = typer.Option("NEXT_PATCH", "--version", help="semver, or NEXT_PATCH"),
        output: Path = typer.Option(Path("greengrass-build"), "--output", "-o", help="GDK-style build folder"),
        publisher: str = typer.Option("edgekit", "--publisher"),
    ) -> None:
        """Turn artifacts into runtime, model and inference Greengrass v2 components (GDK layout)."""
        from edgekit.greengrass.package import package

        with progress_line("packaging") as say:
            result = package(artifacts, name=name, version=version, output=output, publisher=publisher, progress=say)
        table = Table(title=f"components in {result.output}", title_justify="left")
        for col in ("component", "version", "recipe", "artifacts"):
            table.add_column(col)
        for c in result.components:
            table.add_row(c.name, c.version, str(c.recipe_path), ", ".join(a.name for a in c.artifacts))
        console.print(table)
