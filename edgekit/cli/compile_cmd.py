"""edgekit compile. See docs/compile.md."""

from __future__ import annotations

from pathlib import Path

import typer

from edgekit.cli.output import candidates_table, console, manifest_table, progress_line


def register(app: typer.Typer) -> None:
    @app.command("compile")
    def compile_(
        model: str = typer.Argument(
            ..., help="model.onnx, a TorchScript .pt, 'pkg.module:factory', or a scikit-learn .joblib/.pkl"
        ),
        target: str = typer.Option(..., "--target", "-t", help="device profile name (see 'edgekit targets') or a profile .yaml"),
        output: Path = typer.Option(Path("build"), "--output", "-o", help="folder that receives <name>/ and <name>.tar.gz"),
        input_shape: list[str] = typer.Option(
            [], "--input-shape", "-s", help="NAME:D1,D2,... (Neo's DataInputConfig); repeat per input"
        ),
        pipeline: str = typer.Option("default", "--pipeline", "-p", help="pipeline name in compiler/ or a .yaml file"),
        backend: str | None = typer.Option(None, "--backend", "-b", help="only this backend: tvm or onnxruntime"),
        name: str | None = typer.Option(None, "--name", help="artifact name (default <model>-<target>)"),
        no_cache: bool = typer.Option(False, "--no-cache", help="compile even if a cached artifact exists"),
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
            help="add a TVM candidate tuned with MetaSchedule for N trials (minutes: ~1 s a trial here, plus ~25 s "
            "to start); the tuning database is kept and reused; 0 applies it without tuning",
        ),
    ) -> None:
        """Compile a model for a device profile; keep the fastest candidate within the accuracy budget."""
        from edgekit.compiler import compile_model
        from edgekit.compiler.frontends import parse_input_shapes

        shapes = parse_input_shapes(input_shape)
        with progress_line(f"compiling {model} for {target}") as say:
            result = compile_model(
                model,
                target,
                output,
                pipeline=pipeline,
                backend=backend,
                input_shapes=shapes,
                name=name,
                use_cache=not no_cache,
                progress=say,
                tune=tune,
                samples=samples,
            )
        console.print(candidates_table(result.manifest))
        console.print(manifest_table([result.manifest]))
        hit = " (from cache)" if result.cache_hit else ""
        console.print(f"artifact: {result.artifact_dir}  archive: {result.archive}  in {result.seconds:.2f} s{hit}")
