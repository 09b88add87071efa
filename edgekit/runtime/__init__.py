"""Run any edgekit artifact with one API, whatever its backend: ``edgekit.load(dir).predict(x)``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgekit.errors import ArtifactError
from edgekit.manifest import Manifest, read_manifest
from edgekit.runtime.base import Runner

__all__ = ["LoadedModel", "Runner", "load", "runner_for"]


def runner_for(backend: str, entry: Path, manifest: Manifest) -> Runner:
    """The runner of ``backend`` for the file ``entry`` (one registry line per backend)."""
    if backend == "onnxruntime":
        from edgekit.runtime.onnxruntime import OrtRunner

        return OrtRunner(entry, manifest.inputs, manifest.outputs)
    if backend == "tvm":
        from edgekit.runtime.tvm import TvmRunner

        return TvmRunner(entry, manifest.inputs, manifest.outputs)
    raise ArtifactError(f"backend '{backend}' has no runner in this edgekit; upgrade edgekit")


class LoadedModel:
    """A loaded artifact: ``predict`` takes inputs by name and returns outputs in manifest order."""

    def __init__(self, directory: Path, manifest: Manifest, runner: Runner) -> None:
        self.directory = directory
        self.manifest = manifest
        self.runner = runner

    @property
    def inputs(self) -> list[str]:
        return [s.name for s in self.manifest.inputs]

    @property
    def outputs(self) -> list[str]:
        return [s.name for s in self.manifest.outputs]

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        return self.runner.predict(inputs)

    def __repr__(self) -> str:
        return f"LoadedModel({self.manifest.name!r}, backend={self.manifest.backend.name!r}, target={self.manifest.profile.name!r})"


def load(artifact_dir: str | Path) -> LoadedModel:
    """Load a compiled artifact directory (checks the manifest and that every file is present)."""
    directory = Path(artifact_dir)
    manifest = read_manifest(directory)
    for name in manifest.backend.files:
        if not (directory / name).is_file():
            raise ArtifactError(f"{directory}: file '{name}' listed in manifest.json is missing; recompile")
    return LoadedModel(directory, manifest, runner_for(manifest.backend.name, directory / manifest.backend.entry, manifest))
