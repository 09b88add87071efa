"""edgekit compile. See docs/compile.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edgekit import api
from edgekit.cli.options import (
    DeviceTarget,
    MeasureOn,
    Report,
    RpcKey,
    RpcTracker,
    State,
    Tune,
    TuneMinutes,
    TuningRecords,
)
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

MODEL_HELP = (
    "model.onnx, a TorchScript .pt, 'pkg.module:factory', a scikit-learn .skops (or .joblib/.pkl with --trust-unknown-types), "
    "an XGBoost .json/.ubj, a LightGBM .txt, a .tflite, a Keras .keras/.h5 or a TensorFlow SavedModel folder"
)


def _deprecated_trust_pickle(value: bool) -> bool:
    if value:
        note("warning: --trust-pickle is deprecated; use --trust-unknown-types (pickles and .skops types alike)")
    return value


TrustUnknownTypes = Annotated[
    bool,
    typer.Option(
        "--trust-unknown-types",
        help="load types edgekit can't vouch for: a scikit-learn pickle (.joblib/.pkl, loading one runs any code it "
        "holds) or a .skops file's types beyond scikit-learn's and numpy's own; only for files you trust",
    ),
]
TrustPickle = Annotated[bool, typer.Option("--trust-pickle", hidden=True, callback=_deprecated_trust_pickle)]


@json_output
def compile_(
    model: Annotated[
        str,
        typer.Argument(help=MODEL_HELP),
    ],
    target: DeviceTarget,
    output: Path = typer.Option(
        Path("build"), "--output", "-o", metavar="DIR", help="folder that receives <name>/ and <name>.tar.gz"
    ),
    input_shape: list[str] = typer.Option(
        [],
        "--input-shape",
        "-s",
        metavar="NAME:D1,D2",
        help="an input's shape (-1 or a name such as batch: a dynamic dimension); also Neo's JSON "
        "'{\"input\": [1,3,224,224]}' and tvmc's 'input:[1,3,224,224]'; repeat per input",
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
    tune: Tune = None,
    tune_minutes: TuneMinutes = None,
    tuning_records: TuningRecords = None,
    report: Report = None,
    trust_unknown_types: TrustUnknownTypes = False,
    trust_pickle: TrustPickle = False,
    measure_on: MeasureOn = None,
    rpc_tracker: RpcTracker = None,
    rpc_key: RpcKey = None,
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
            tune_minutes=tune_minutes,
            tuning_records=tuning_records,
            trust_unknown_types=trust_unknown_types or trust_pickle,
            samples=samples,
            measure_on=measure_on,
            state_dir=state,
            rpc_tracker=rpc_tracker,
            rpc_key=rpc_key,
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
