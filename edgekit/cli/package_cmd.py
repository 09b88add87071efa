"""edgekit package. See docs/greengrass-packaging.md."""

from __future__ import annotations

from pathlib import Path

import typer

from edgekit import api
from edgekit.cli.options import EndpointUrl, Profile, Region, State
from edgekit.cli.output import emit, json_output, progress_line, rows_table

__all__ = ["package", "register"]


@json_output
def package(
    artifacts: list[Path] = typer.Argument(..., help="compiled artifact folders, one per platform"),
    name: str = typer.Option(..., "--name", "-n", help="model component name, e.g. com.example.Classifier"),
    version: str = typer.Option(
        "NEXT_PATCH",
        "--version",
        help="semver, or NEXT_PATCH: one above the highest packaged or published (in --state's local fleet; with --aws, "
        "in Greengrass)",
    ),
    output: Path = typer.Option(Path("greengrass-build"), "--output", "-o", metavar="DIR", help="GDK-style build folder"),
    publisher: str = typer.Option("edgekit", "--publisher", help="ComponentPublisher of the recipes"),
    state: State = None,
    aws: bool = typer.Option(False, "--aws", help="NEXT_PATCH also counts the versions published to AWS Greengrass"),
    region: Region = None,
    profile: Profile = None,
    endpoint_url: EndpointUrl = None,
) -> None:
    """Turn artifacts into runtime, model and inference Greengrass v2 components (GDK layout).
    Needs the network once when a TVM artifact is packaged: the runtime component ships the official
    libtvm_runtime.so of each platform, taken from the apache-tvm wheels (aarch64: ~95 MB from PyPI, cached in
    ~/.cache/edgekit/wheels or $EDGEKIT_WHEELHOUSE)."""
    with progress_line("packaging") as say:
        result = api.package(
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


def register(app: typer.Typer) -> None:
    app.command("package")(package)
