"""edgekit demo"""

from __future__ import annotations

from pathlib import Path

import typer

from edgekit.cli.output import console, manifest_table, progress_line


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo(
        output: Path = typer.Option(Path("build/demo"), "--output", "-o", help="where the demo writes its artifacts"),
        targets: list[str] = typer.Option(["x86_64", "rasp4b"], "--target", "-t", help="profiles to compile for"),
    ) -> None:
        """The main job on an embedded default: build a bundled sensor model and compile it for two targets."""
        from edgekit.compiler import compile_model
        from edgekit.demo import write_demo_model

        output.mkdir(parents=True, exist_ok=True)
        model = write_demo_model(output / "sensor_cnn.onnx")
        console.print(f"demo model: {model} (1-D CNN over 6 sensor channels x 64 samples, 4 classes)")
        manifests = []
        for target in targets:
            with progress_line(f"compiling for {target}") as say:
                result = compile_model(model, target, output, progress=say)
            manifests.append(result.manifest)
            console.print(f"{target}: {result.artifact_dir}" + (" (cache)" if result.cache_hit else ""))
        console.print(manifest_table(manifests))
