"""What ``edgekit serve`` serves: a compiled artifact, or an inference pipeline of artifacts and Python callables.

A :class:`Servable` is a name, its inputs/outputs, a ``predict`` over arrays by name, and the memory it
is counted for under the server's budget (the size of its model files: ONNX Runtime and the TVM runtime
hold the weights in memory once). Artifacts are refused here when built for another CPU architecture.

A **pipeline** is SageMaker's serial inference pipeline (the multi-container pattern) in one process:
steps run in order, each an artifact folder or an importable ``module:callable`` taking and returning
arrays by name. See docs/cloud.md.
"""

from __future__ import annotations

import importlib
import platform
import re
import shutil
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.cloud.content import HttpError
from edgekit.errors import EdgekitError, ServeError
from edgekit.machines import machine_of
from edgekit.manifest import MANIFEST_NAME, Manifest, TensorSpec, read_manifest, tensors_only

__all__ = [
    "Servable",
    "artifact_dir",
    "check_architecture",
    "estimate_bytes",
    "load_artifact",
    "load_pipeline",
    "run_records",
]

_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]  # inputs by name -> outputs by name, in order


@dataclass
class Servable:
    name: str
    url: str  # where it was loaded from (SageMaker's modelUrl)
    inputs: list[TensorSpec] | None  # None: a pipeline starting with a callable takes what it is sent
    outputs: list[str]  # empty when a callable last step names them as it answers
    predict: Predict  # checks its inputs against the specs (a pipeline step feeding it, a Python caller)
    memory_bytes: int
    platform: str  # Open Inference Protocol model metadata: onnxruntime_onnx, tvm, pipeline
    latency_ms: float | None = None  # measured by the compiler on this architecture, when known
    cleanup: list[Path] = field(default_factory=list)  # folders extracted from a .tar.gz, removed on unload
    run: Predict | None = None  # the same without the check, for inputs the server decoded against the specs itself
    output_specs: list[TensorSpec] | None = None  # the outputs' dtypes and shapes (None: a callable last step's, unknown)

    def __post_init__(self) -> None:
        if self.run is None:
            self.run = self.predict

    def close(self) -> None:
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)
        self.cleanup.clear()


def run_records(run: Predict, feeds: dict[str, np.ndarray], batch: int | None, records: int) -> dict[str, np.ndarray]:
    """``run`` over ``records`` records stacked on the inputs' first dimension, for a model compiled with a first
    dimension of ``batch`` (0: dynamic, None: no shared one): passed through as one batch when they fit it exactly
    (or it is dynamic), otherwise run ``batch`` records at a time (the last run padded with zeros) and the outputs
    joined on their first dimension, trimmed to ``records`` rows."""
    if not batch or records == batch:
        return run(feeds)
    items = list(feeds.items())
    parts: list[dict[str, np.ndarray]] = []
    for start in range(0, records, batch):
        rows = min(batch, records - start)
        if rows == batch:
            chunk = {name: arr[start : start + batch] for name, arr in items}
        else:  # pad the last run: the model takes exactly `batch` records
            chunk = {
                name: np.concatenate([arr[start:], np.zeros((batch - rows, *arr.shape[1:]), dtype=arr.dtype)])
                for name, arr in items
            }
        out = run(chunk)
        if not parts:  # a compiled model's outputs keep their shapes: the first run tells
            for name, arr in out.items():
                if np.ndim(arr) == 0 or np.shape(arr)[0] != batch:
                    raise HttpError(
                        400,
                        f"{records} records and this model takes {batch} at a time, and its output '{name}' "
                        f"(shape {list(np.shape(arr))}) has no row per record to split: send {batch} per request",
                    )
        parts.append({name: arr[:rows] for name, arr in out.items()} if rows < batch else out)
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def artifact_dir(path: str | Path) -> tuple[Path, list[Path]]:
    """The artifact folder behind ``path``: the folder itself, its only artifact sub-folder, or a ``.tar.gz``
    extracted to a temporary folder (SageMaker's ``model.tar.gz``). Returns it and the folders to remove later."""
    p = Path(path)
    if p.is_file() and p.name.endswith((".tar.gz", ".tgz")):
        tmp = Path(tempfile.mkdtemp(prefix="edgekit-serve-"))
        try:
            with tarfile.open(p) as tar:
                tar.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ServeError(f"{p}: not a readable .tar.gz ({exc}); pass the artifact folder or its archive") from exc
        found, _ = artifact_dir(tmp)
        return found, [tmp]
    if not p.is_dir():
        raise ServeError(f"'{p}' is neither an artifact folder nor its .tar.gz; compile one with 'edgekit compile'")
    if (p / MANIFEST_NAME).is_file():
        return p, []
    subs = [d for d in sorted(p.iterdir()) if (d / MANIFEST_NAME).is_file()]
    if len(subs) == 1:
        return subs[0], []
    what = f"{len(subs)} artifact folders ({', '.join(d.name for d in subs)}): pass one" if subs else f"no {MANIFEST_NAME}"
    raise ServeError(f"'{p}' holds {what}; an artifact folder is what 'edgekit compile' writes")


def _private_copy(directory: Path, manifest: Manifest, cleanup: list[Path]) -> Path:
    """A copy of the artifact's files in a private temporary folder (added to ``cleanup``), loaded instead of the
    original: a model file rewritten in place while it is served (a TVM library is mapped into the process) would
    otherwise crash the server. The runtime checks the copy against the manifest's digests, so what is served is
    what was compiled, however the original changes."""
    tmp = Path(tempfile.mkdtemp(prefix="edgekit-serve-"))
    cleanup.append(tmp)
    target = tmp / directory.name
    target.mkdir()
    root = directory.resolve()
    try:
        for name in [MANIFEST_NAME, *manifest.digests]:
            source = directory / name
            if not source.resolve().is_relative_to(root):
                raise ServeError(f"{directory}: '{name}' leads outside the artifact folder; refused")
            dest = target / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
    except OSError as exc:
        raise ServeError(f"cannot serve '{directory}': copying '{exc.filename}' failed ({exc.strerror or exc})") from exc
    return target


def check_architecture(manifest: Manifest, directory: Path) -> None:
    """Refuse an artifact built for another CPU architecture, with the reason."""
    arch = str(manifest.profile.greengrass.get("architecture", ""))
    machine = machine_of(arch)
    host = platform.machine()
    if machine and machine != host:
        why = (
            "its compiled code runs only there"
            if manifest.backend.name == "tvm"
            else "ONNX Runtime's graph optimisations were made for that CPU"
        )
        raise ServeError(
            f"{directory}: built for {machine} (profile '{manifest.profile.name}') and this host is {host}: {why}; "
            f"compile it for this host (e.g. 'edgekit compile ... --target x86_64') to serve it here"
        )


def estimate_bytes(manifest: Manifest, directory: Path) -> int:
    """Memory counted for a model under the budget: the size of the files its backend loads."""
    return sum((directory / f).stat().st_size for f in manifest.backend.files if (directory / f).is_file())


def load_artifact(name: str, path: str | Path, *, threads: int = 0, self_test: bool = True) -> Servable:
    """Load an artifact folder (or .tar.gz) as a servable (``name`` "": the manifest's); ServeError when it can't be served
    here: another architecture, CPU features this CPU lacks, or (``self_test``) golden vectors that disagree here."""
    from edgekit.runtime import load

    directory, cleanup = artifact_dir(path)
    try:
        manifest = read_manifest(directory)
        tensors_only(manifest, "edgekit serve", "SageMaker's and KServe v2's request and response bodies hold tensors")
        check_architecture(manifest, directory)
        if not cleanup:  # a folder someone else owns: serve a private copy of it
            directory = _private_copy(directory, manifest, cleanup)
        model = load(directory, threads=threads, self_test=self_test)  # checks every file of the copy against its SHA-256
    except EdgekitError as exc:
        for c in cleanup:
            shutil.rmtree(c, ignore_errors=True)
        if isinstance(exc, ServeError):
            raise
        raise ServeError(f"cannot serve '{path}': {exc}") from exc
    measured = manifest.measured
    names = [o.name for o in manifest.outputs]
    checked, unchecked = model.predict, model.runner.run

    def predict(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, checked(feeds), strict=True))

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(names, unchecked(feeds), strict=True))

    return Servable(
        name=name or manifest.name,
        url=str(path),
        inputs=list(manifest.inputs),
        outputs=names,
        predict=predict,
        run=run,
        output_specs=list(manifest.outputs),
        memory_bytes=estimate_bytes(manifest, directory),
        platform="onnxruntime_onnx" if manifest.backend.name == "onnxruntime" else manifest.backend.name,
        latency_ms=measured.latency.median_ms if measured is not None and measured.on == "target" else None,
        cleanup=cleanup,
    )


def _import_callable(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.partition(":")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")  # like 'python -m': modules of the working directory are importable
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ServeError(f"pipeline step '{spec}': cannot import it ({exc}); give module:function importable from here") from exc
    if not callable(obj):
        raise ServeError(f"pipeline step '{spec}' is not callable")
    return obj  # type: ignore[no-any-return]


def _as_named(result: Any, step: str) -> dict[str, np.ndarray]:
    if isinstance(result, Mapping):
        return {str(k): np.asarray(v) for k, v in result.items()}
    if isinstance(result, np.ndarray):
        return {"output0": result}
    if isinstance(result, list | tuple):
        return {f"output{i}": np.asarray(v) for i, v in enumerate(result)}
    raise TypeError(
        f"pipeline step '{step}' returned {type(result).__name__}; return arrays by name (a dict), an array or a list"
    )


def _feed(named: dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> dict[str, np.ndarray]:
    """The previous step's outputs as this artifact's inputs: by name, or positionally when the names differ."""
    if all(s.name in named for s in specs):
        return {s.name: named[s.name] for s in specs}
    if len(named) == len(specs):
        return {s.name: a for s, a in zip(specs, named.values(), strict=True)}
    raise ValueError(f"the step before gives {sorted(named)}, this artifact takes {[s.name for s in specs]}")


def load_pipeline(name: str, steps: Sequence[str], *, threads: int = 0, self_test: bool = True) -> Servable:
    """A serial chain (pre-processing -> model -> post-processing) served under one name."""
    if not steps:
        raise ServeError(f"pipeline '{name}' has no steps; give artifact folders and/or module:function callables")
    stages: list[tuple[str, Servable | Callable[..., Any]]] = []
    try:
        for step in steps:
            if Path(step).exists():
                stages.append((step, load_artifact(f"{name}[{len(stages)}]", step, threads=threads, self_test=self_test)))
            elif _CALLABLE.match(step):
                stages.append((step, _import_callable(step)))
            else:
                raise ServeError(f"pipeline '{name}' step '{step}' is neither an existing artifact folder nor module:function")
    except ServeError:
        for _, st in stages:
            if isinstance(st, Servable):
                st.close()
        raise
    first, last = stages[0][1], stages[-1][1]

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        named: dict[str, np.ndarray] = dict(inputs)
        for step, stage in stages:
            if isinstance(stage, Servable):
                assert stage.inputs is not None
                named = stage.predict(_feed(named, stage.inputs))
            else:
                named = _as_named(stage(named), step)
        return named

    # the output names of a callable last step are known only once it ran: "output0".. or its dict's keys
    outputs = last.outputs if isinstance(last, Servable) else []
    return Servable(
        name=name,
        url=" -> ".join(steps),
        inputs=first.inputs if isinstance(first, Servable) else None,
        outputs=outputs,
        predict=predict,
        output_specs=last.output_specs if isinstance(last, Servable) else None,
        memory_bytes=sum(st.memory_bytes for _, st in stages if isinstance(st, Servable)),
        platform="pipeline",
        cleanup=[p for _, st in stages if isinstance(st, Servable) for p in st.cleanup],
    )
