"""edgekit run: run an artifact on this host. See docs/compile.md."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import RenderableType
from rich.text import Text

from edgekit import api
from edgekit.cli.output import array_text, emit, json_output, note, rows_table

__all__ = ["register", "run"]


@json_output
def run(
    artifact: Path = typer.Argument(..., help="an artifact folder written by 'edgekit compile'"),
    input: list[str] = typer.Option(
        [], "--input", "-i", metavar="[NAME=]FILE", help="a .npy, .npz (inputs by name) or .json file; repeat per input"
    ),
    output: Path | None = typer.Option(None, "--output", "-o", metavar="FILE.npz", help="save outputs to this .npz"),
    random: bool = typer.Option(False, "--random", help="run on random inputs of the manifest's shapes"),
    repeat: int = typer.Option(1, "--repeat", min=1, metavar="N", help="run N times (tvmc's --repeat)"),
    print_time: bool = typer.Option(
        False, "--print-time", help="print the run times: mean, median, max, min, std in ms (tvmc's --print-time)"
    ),
    self_test: bool = typer.Option(
        True, "--self-test/--no-self-test", help="run the artifact's golden vectors first; refuse it if they disagree here"
    ),
) -> None:
    """Run an artifact on this host and print its outputs."""
    result = api.run(artifact, input_files=input, random=random, repeat=repeat, save=output, self_test=self_test)
    if output is not None:
        note(f"saved {output}")
    shown: list[RenderableType] = []
    outputs: dict[str, object] = {}
    for name, value in result.outputs.items():
        items = value if isinstance(value, list) else [value]  # a sequence output: a list of arrays
        if isinstance(value, list):
            shown.append(Text.assemble((name, "bold"), f" sequence of {len(value)}"))
            outputs[name] = [{"dtype": str(a.dtype), "shape": list(a.shape), "data": a} for a in items]
        else:
            outputs[name] = {"dtype": str(value.dtype), "shape": list(value.shape), "data": value}
        for i, arr in enumerate(items):
            label = Text(f"[{i}] ") if isinstance(value, list) else Text.assemble((name, "bold"), " ")
            shown += [label.append(f"{arr.dtype}{list(arr.shape)}"), array_text(arr)]
    facts: dict[str, object] = {"artifact": artifact, "outputs": outputs}
    if print_time:
        summary = {k: round(v, 4) for k, v in result.timing.summary.items()}
        facts["timeMs"] = summary | {"runs": repeat}
        columns = {k: f"{k} (ms)" for k in summary}
        shown.append(rows_table(f"execution time summary ({repeat} run(s))", [summary], columns))
    emit(facts, *shown)


def register(app: typer.Typer) -> None:
    app.command("run")(run)
