"""edgekit recipe lint. See docs/greengrass-packaging.md."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from edgekit.cli.output import console
from edgekit.errors import RecipeError


def register(app: typer.Typer) -> None:
    recipe_app = typer.Typer(help="Greengrass v2 recipes: check them the way the nucleus reads them.", no_args_is_help=True)
    app.add_typer(recipe_app, name="recipe")

    @recipe_app.command("lint")
    def lint(
        paths: list[Path] = typer.Argument(..., help="recipe files (.json/.yaml) or folders of them"),
        strict: bool = typer.Option(False, "--strict", help="fail on warnings too"),
    ) -> None:
        """Check recipes against the recipe reference; each finding names the file, the path and the fix."""
        from edgekit.greengrass.lint import lint_paths

        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise RecipeError(f"no such recipe file or folder: {', '.join(missing)}")
        findings = lint_paths(paths)
        if findings:
            table = Table(title="recipe findings", title_justify="left")
            for col in ("severity", "file", "path", "problem", "fix"):
                table.add_column(col)
            for f in findings:
                table.add_row(f.severity, f.file, f.path, f.message, f.fix)
            console.print(table)
        errors = [f for f in findings if f.severity == "error" or strict]
        if errors:
            raise RecipeError(f"{len(errors)} problem(s) in {len({f.file for f in errors})} recipe(s); see the table above")
        console.print(f"recipes OK ({len(findings)} warning(s))")
