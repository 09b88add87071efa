"""Run any edgekit artifact with one API, whatever its backend: ``edgekit.load(dir).predict(x)``.

See docs/compile.md (the runtime a device needs).
"""

from __future__ import annotations

import platform
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgekit.errors import ArtifactError, SelfTestError, UnsupportedCpuError
from edgekit.machines import machine_of
from edgekit.manifest import Manifest, TensorSpec, read_manifest
from edgekit.runtime.backend_runner import Runner

if TYPE_CHECKING:
    from edgekit.runtime.inputs import Timing
    from edgekit.runtime.selftest import SelfTestResult

__all__ = ["LoadedModel", "RunResult", "Runner", "check_cpu", "load", "runner_for"]


def runner_for(
    backend: str,
    entry: Path,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    threads: int = 0,
    options: Mapping[str, Any] | None = None,
    *,
    stand_in: bool = False,
) -> Runner:
    """The runner of ``backend`` for the file ``entry`` (one registry line per backend).

    ``threads`` sets ONNX Runtime's intra-op threads (0: the device profile's, else its default). TVM's thread
    pool follows ``$TVM_NUM_THREADS``. ``options``: the manifest's backend options (ONNX Runtime's
    ``loadOptimization``: graph optimizations left to the loading CPU; ``session``: the device profile's threads,
    execution mode and memory pattern). ``stand_in``: this process stands in for a
    device of another platform (the TVM runner then loads this host's runtime library, not one given for the device).
    """
    if backend == "onnxruntime":
        from edgekit.runtime.ort_runner import OrtRunner

        at_load = str((options or {}).get("loadOptimization", "none"))
        session = (options or {}).get("session")
        return OrtRunner(
            entry,
            inputs,
            outputs,
            threads=threads,
            optimization=at_load,
            session=session if isinstance(session, Mapping) else None,
        )
    if backend == "tvm":
        from edgekit.runtime.tvm_runner import TvmRunner

        return TvmRunner(entry, inputs, outputs, host_only=stand_in)
    raise ArtifactError(f"backend '{backend}' has no runner in this edgekit; upgrade edgekit")


class LoadedModel:
    """A loaded artifact: ``predict`` takes inputs by name and returns outputs in manifest order."""

    def __init__(self, directory: Path, manifest: Manifest, runner: Runner, stand_in: str | None = None) -> None:
        self.directory = directory
        self.manifest = manifest
        self.runner = runner
        self.stand_in = stand_in
        """What runs in the device's place when this host stands in for it (``load(stand_in=True)`` on another
        platform), e.g. ``the x86_64 host twin of the rasp4b build``; ``None`` when the artifact's own code runs."""

    @property
    def inputs(self) -> list[str]:
        return [s.name for s in self.manifest.inputs]

    @property
    def outputs(self) -> list[str]:
        return [s.name for s in self.manifest.outputs]

    def predict(self, inputs: Mapping[str, np.ndarray] | np.ndarray) -> list[np.ndarray]:
        return self.runner.predict(inputs)

    def selftest(self) -> SelfTestResult:
        """Run the artifact's golden vectors and compare with the source model's outputs."""
        from edgekit.runtime.selftest import compare_outputs, read_selftest

        st = self.manifest.selftest
        if st is None:
            raise ArtifactError(f"{self.directory}: the artifact carries no self-test vectors; recompile it")
        path = self.directory / st.file
        if not path.is_file():
            raise ArtifactError(f"{self.directory}: '{st.file}' named in manifest.json is missing; recompile")
        cases = read_selftest(path, self.manifest.inputs, self.manifest.outputs)
        return compare_outputs(self.predict, cases, self.outputs, st.max_abs_error)

    def __repr__(self) -> str:
        standing = f", stand_in={self.stand_in!r}" if self.stand_in else ""
        return (
            f"LoadedModel({self.manifest.name!r}, backend={self.manifest.backend.name!r}, "
            f"target={self.manifest.profile.name!r}{standing})"
        )


@dataclass(frozen=True)
class RunResult:
    """What :func:`edgekit.run` returns: the model, its outputs by name (last run) and each run's time."""

    model: LoadedModel
    outputs: dict[str, np.ndarray]
    timing: Timing


def load(artifact_dir: str | Path, threads: int = 0, *, self_test: bool = False, stand_in: bool = False) -> LoadedModel:
    """Load a compiled artifact directory (checks the manifest and every file against its SHA-256).

    Refuses (:class:`UnsupportedCpuError`, one line) an artifact whose code needs CPU features this CPU lacks,
    before any of it runs. ``self_test``: also run the artifact's golden vectors and refuse it
    (:class:`SelfTestError`) when its outputs disagree here — what ``edgekit run``, ``edgekit serve`` and the
    inference component do.

    ``stand_in``: this host stands in for the artifact's device (a simulated device of another platform). Where the
    device's code can't run here, the artifact's host twin runs instead: the same candidate (backend, passes,
    options) built for this host at compile time, checked with the same golden vectors; a portable artifact (ONNX
    Runtime) runs its own files. :attr:`LoadedModel.stand_in` says which.
    """
    directory = Path(artifact_dir)
    manifest = read_manifest(directory)
    arch = manifest.profile.greengrass.get("architecture")
    machine = machine_of(str(arch))
    host = platform.machine()
    if stand_in and machine != host:
        model = _load_stand_in(directory, manifest, machine, host, threads)
    else:
        model = _load_own(directory, manifest, machine, threads)
    if self_test and manifest.selftest is not None:
        _self_test(directory, manifest, model)
    return model


def _load_own(directory: Path, manifest: Manifest, machine: str, threads: int) -> LoadedModel:
    """The artifact's own code, on a CPU that has what it needs."""
    if manifest.backend.name == "tvm" and manifest.backend.options.get("device_code"):
        raise ArtifactError(
            f"{directory}: a CUDA TVM artifact ('{manifest.profile.name}'); edgekit.load runs CPU artifacts only so far — "
            f"compile with --backend onnxruntime for a CPU artifact of this model"
        )
    if manifest.backend.name == "tvm" and machine != platform.machine():
        raise ArtifactError(
            f"{directory}: this TVM artifact is built for {machine} ('{manifest.profile.name}'), and this host is "
            f"{platform.machine()}; run it on the device, or check it here with 'edgekit verify {directory}'"
        )
    check_cpu(directory, manifest)
    return LoadedModel(
        directory,
        manifest,
        runner_for(
            manifest.backend.name,
            directory / manifest.backend.entry,
            manifest.inputs,
            manifest.outputs,
            threads,
            manifest.backend.options,
        ),
    )


def _self_test(directory: Path, manifest: Manifest, model: LoadedModel) -> None:
    """SelfTestError when the golden vectors disagree with what ``model`` gives on this CPU."""
    result = model.selftest()
    if not result.passed:
        what = (
            f"max abs error {result.max_abs_error:.3g} > {result.tolerance:.3g}"
            if result.max_abs_error > result.tolerance
            else f"{result.mismatched_labels} label(s) differ"
        )
        raise SelfTestError(
            f"{directory}: the self-test failed on this CPU ({what} over {result.samples} golden sample(s)); "
            f"the artifact gives wrong outputs here — recompile it for this CPU's profile"
            + (" (it was built for the compiling host's CPU)" if manifest.cpu is not None and manifest.cpu.host_specific else "")
        )


def check_cpu(directory: Path, manifest: Manifest) -> None:
    """UnsupportedCpuError when the artifact's code needs a CPU feature this CPU lacks (same architecture only:
    another architecture is refused by the loader itself)."""
    from edgekit.runtime.cpu_features import missing_features

    need = manifest.cpu
    if need is None or not need.features or need.arch != platform.machine():
        return
    missing = missing_features(need.features)
    if missing:
        hint = (
            "it was built for the compiling host's CPU; compile with the portable profile (--target x86_64) for other CPUs"
            if need.host_specific
            else "compile it for a profile whose CPU this machine is (a lower baseline)"
        )
        raise UnsupportedCpuError(
            f"{directory}: built for CPU '{need.cpu}' ('{manifest.profile.name}'), and this CPU lacks "
            f"{', '.join(missing)}; refused before running it (it would die of an illegal instruction): {hint}"
        )


def _load_stand_in(directory: Path, manifest: Manifest, machine: str, host: str, threads: int) -> LoadedModel:
    """The artifact as run by a ``host`` process standing in for its ``machine`` device."""
    twin = manifest.host_twin
    if twin is not None and twin.machine == host:
        entry = directory / twin.backend.entry
        runner = runner_for(
            twin.backend.name, entry, manifest.inputs, manifest.outputs, threads, twin.backend.options, stand_in=True
        )
        return LoadedModel(directory, manifest, runner, stand_in=f"the {host} host twin of the {manifest.profile.name} build")
    if manifest.backend.name == "tvm":
        have = f"its host twin is for {twin.machine}" if twin is not None else "it carries no host twin (an older edgekit)"
        raise ArtifactError(
            f"{directory}: a {host} process can't stand in for this {machine} TVM artifact ('{manifest.profile.name}'): "
            f"{have}; recompile it on a {host} machine with this edgekit"
        )
    entry = directory / manifest.backend.entry
    runner = runner_for(manifest.backend.name, entry, manifest.inputs, manifest.outputs, threads, manifest.backend.options)
    return LoadedModel(directory, manifest, runner, stand_in=f"the portable {manifest.backend.name} build, on {host}")
