"""edgekit run: run an artifact on this host. See docs/compile.md."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from edgekit.cli.output import console
from edgekit.errors import InferenceError


def _read_inputs(specs: list[str], names: list[str]) -> dict[str, np.ndarray]:
    feeds: dict[str, np.ndarray] = {}
    for spec in specs:
        name, sep, file = spec.partition("=")
        if not sep:
            name, file = "", spec
        path = Path(file)
        try:
            if path.suffix == ".npz":
                with np.load(path) as data:
                    feeds.update({k: data[k] for k in data.files})
                continue
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InferenceError(f"--input {spec}: cannot read '{path}' as a .npy/.npz array: {exc}") from exc
        if not name:
            if len(names) != 1:
                raise InferenceError(f"the model has inputs {names}; pass --input NAME=file.npy for each")
            name = names[0]
        feeds[name] = arr
    return feeds


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        artifact: Path = typer.Argument(..., help="an artifact folder written by 'edgekit compile'"),
        input: list[str] = typer.Option([], "--input", "-i", help="file.npy, NAME=file.npy, or an .npz of all inputs"),
        output: Path | None = typer.Option(None, "--output", "-o", help="save outputs to this .npz"),
        random: bool = typer.Option(False, "--random", help="run on random inputs of the manifest's shapes"),
    ) -> None:
        """Run an artifact on this host and print its outputs."""
        from edgekit.compiler.measure import sample_inputs
        from edgekit.runtime import load

        model = load(artifact)
        if random or not input:
            if not random:
                raise InferenceError("give --input file.npy (or NAME=file.npy per input), or --random")
            feeds = sample_inputs(model.manifest.inputs, 1, 0)[0]
        else:
            feeds = _read_inputs(input, model.inputs)
        outs = model.predict(feeds)
        for name, arr in zip(model.outputs, outs, strict=True):
            console.print(f"[bold]{name}[/] {arr.dtype}{list(arr.shape)}")
            console.print(np.array2string(arr, threshold=40, precision=5))
        if output is not None:
            np.savez(output, **dict(zip(model.outputs, outs, strict=True)))  # type: ignore[arg-type]
            console.print(f"saved {output}")
