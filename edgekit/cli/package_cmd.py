"""edgekit package. See docs/greengrass-packaging.md."""

from __future__ import annotations

from pathlib import Path

import typer

from edgekit.cli.aws_options import ENDPOINT_URL, PROFILE, REGION
from edgekit.cli.output import emit, json_output, progress_line, rows_table


def register(app: typer.Typer) -> None:
    @app.command("package")
    @json_output
    def package_(
        artifacts: list[Path] = typer.Argument(..., help="compiled artifact folders, one per platform"),
        name: str = typer.Option(..., "--name", "-n", help="model component name, e.g. com.example.Classifier"),
        version: str = typer.Option(
            "NEXT_PATCH", "--version", help="semver, or NEXT_PATCH: one above the highest packaged or published"
        ),
        output: Path = typer.Option(Path("greengrass-build"), "--output", "-o", metavar="DIR", help="GDK-style build folder"),
        publisher: str = typer.Option("edgekit", "--publisher", help="ComponentPublisher of the recipes"),
        state: Path | None = typer.Option(
            None,
            "--state",
            metavar="DIR",
            help="local fleet whose published versions NEXT_PATCH counts (default ./.edgekit/fleet)",
        ),
        aws: bool = typer.Option(False, "--aws", help="NEXT_PATCH also counts the versions published to AWS Greengrass"),
        region: str | None = REGION,
        profile: str | None = PROFILE,
        endpoint_url: str | None = ENDPOINT_URL,
    ) -> None:
        """Turn artifacts into runtime, model and inference Greengrass v2 components (GDK layout)."""
        from edgekit.api import package

        with progress_line("packaging") as say:
            result = package(
                artifacts,
                name=name,
                version=version,
                output=output,
                publisher=publisher,
                state_dir=state,
                aws=aws,
                region=region,
                profile=profile,
                endpoint_url=endpoint_url,
                progress=say,
            )
        rows = [
            {"component": c.name, "version": c.version, "recipe": c.recipe_path, "artifacts": [a.name for a in c.artifacts]}
            for c in result.components
        ]
        columns = {"component": "component", "version": "version", "recipe": "recipe", "artifacts": "artifacts"}
        emit({"output": result.output, "components": rows}, rows_table(f"components in {result.output}", rows, columns))
