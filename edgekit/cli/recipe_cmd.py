"""edgekit recipe lint. See docs/greengrass-packaging.md."""

from __future__ import annotations

from pathlib import Path

import typer

from edgekit import api
from edgekit.cli.output import emit, json_output, rows_table
from edgekit.errors import RecipeError

__all__ = ["lint", "register"]


@json_output
def lint(
    paths: list[Path] = typer.Argument(..., help="recipe files (.json/.yaml) or folders of them"),
    strict: bool = typer.Option(False, "--strict", help="fail on warnings too"),
) -> None:
    """Check recipes against the recipe reference; each finding names the file, the path and the fix."""
    findings = api.lint_recipes(paths)
    rows = [{"severity": f.severity, "file": f.file, "path": f.path, "problem": f.message, "fix": f.fix} for f in findings]
    errors = [f for f in findings if f.severity == "error" or strict]
    columns = {"severity": "severity", "file": "file", "path": "path", "problem": "problem", "fix": "fix"}
    shown = [rows_table("recipe findings", rows, columns)] if rows else []
    emit({"ok": not errors, "findings": rows}, *shown, *([] if errors else [f"recipes OK ({len(findings)} warning(s))"]))
    if errors:
        where = "above" if rows else ""
        raise RecipeError(
            f"{len(errors)} problem(s) in {len({f.file for f in errors})} recipe(s); see the findings {where}".rstrip()
        )


def register(app: typer.Typer) -> None:
    recipe_app = typer.Typer(help="Greengrass v2 recipes: check them the way the nucleus reads them.", no_args_is_help=True)
    recipe_app.command("lint")(lint)
    app.add_typer(recipe_app, name="recipe")
