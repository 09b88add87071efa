"""edgekit compile. See docs/compile.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgekit import api
from edgekit.cli.options import DeviceTarget, MeasureOn, State
from edgekit.cli.output import (
    accuracy_lines,
    candidate_rows,
    candidates_table,
    emit,
    json_output,
    manifest_rows,
    manifest_table,
    note,
    progress_line,
)

if TYPE_CHECKING:
    from edgekit.compiler import CompileResult

__all__ = ["compile_", "register"]


@json_output
def compile_(
    model: Annotated[
        str,
        typer.Argument(
            help="model.onnx, a TorchScript .pt, 'pkg.module:factory', or a scikit-learn .skops (or .joblib/.pkl with --trust-pickle)"
        ),
    ],
    target: DeviceTarget,
    output: Path = typer.Option(
        Path("build"), "--output", "-o", metavar="DIR", help="folder that receives <name>/ and <name>.tar.gz"
    ),
    input_shape: list[str] = typer.Option(
        [], "--input-shape", "-s", metavar="NAME:D1,D2", help="an input's shape (Neo's DataInputConfig); repeat per input"
    ),
    pipeline: str = typer.Option("default", "--pipeline", "-p", help="pipeline name in compiler/ or a .yaml file"),
    backend: str | None = typer.Option(None, "--backend", "-b", help="only this backend: tvm or onnxruntime"),
    name: str | None = typer.Option(None, "--name", help="artifact name (default <model>-<target>)"),
    no_cache: bool = typer.Option(False, "--no-cache", help="compile even if a cached artifact exists"),
    force: bool = typer.Option(False, "--force", help="replace an artifact of the same name built from another source"),
    samples: str | None = typer.Option(
        None,
        "--samples",
        help="your inputs (+ 'labels' or expected outputs): an .npz, a folder of .npy or 'module:function'; they fix "
        "dynamic dims, drive checks and timing, calibrate int8 and make the budget one of accuracy",
    ),
    tune: int | None = typer.Option(
        None,
        "--tune",
        min=0,
        metavar="TRIALS",
        help="add a TVM candidate tuned with MetaSchedule for N trials (minutes: ~1 s a trial here, plus ~25 s "
        "to start); the tuning database is kept and reused; 0 applies it without tuning",
    ),
    report: Path | None = typer.Option(
        None, "--report", metavar="FILE", help="also write a self-contained HTML page of every candidate's measurements"
    ),
    trust_pickle: bool = typer.Option(
        False,
        "--trust-pickle",
        help="load a scikit-learn pickle (.joblib/.pkl): loading one runs any code it holds, so only for files you "
        "trust; prefer .skops or ONNX",
    ),
    measure_on: MeasureOn = None,
    state: State = None,
) -> None:
    """Compile a model for a device profile; keep the fastest candidate within the accuracy budget."""
    with progress_line(f"compiling {model} for {target}") as say:
        result = api.compile(
            model,
            target,
            output,
            force=force,
            report=report,
            pipeline=pipeline,
            backend=backend,
            input_shapes=input_shape,
            name=name,
            use_cache=not no_cache,
            progress=say,
            tune=tune,
            trust_pickle=trust_pickle,
            samples=samples,
            measure_on=measure_on,
            state_dir=state,
        )
    _show(result)


def _show(result: CompileResult) -> None:
    hit = " (from cache)" if result.cache_hit else ""
    facts = {
        "artifact": result.artifact_dir,
        "archive": result.archive,
        "seconds": round(result.seconds, 3),
        "cacheHit": result.cache_hit,
        "candidates": candidate_rows(result.manifest),
        "chosen": manifest_rows([result.manifest])[0],
        "samples": result.manifest.samples,
    }
    emit(
        facts,
        candidates_table(result.manifest),
        manifest_table([result.manifest]),
        *accuracy_lines(result.manifest),
        f"artifact: {result.artifact_dir}  archive: {result.archive}  in {result.seconds:.2f} s{hit}",
    )
    if result.manifest.samples is not None and result.manifest.samples.warning:
        note(f"warning: {result.manifest.samples.warning}")


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_)
