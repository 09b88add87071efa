"""``edgekit.compile``: model file → measured candidates → the best artifact for a device.

The driver is a short script over the phases in :mod:`edgekit.compiler.phases`; it never names a backend.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.compiler.artifact import WORK_PREFIX, check_host_memory, check_input_memory, sweep_stale_work
from edgekit.compiler.cache import ArtifactCache, source_fingerprint
from edgekit.compiler.frontends import SourceModel, load_source
from edgekit.compiler.phases import (
    DeviceTimer,
    Outcomes,
    Plan,
    build,
    check,
    measure,
    measure_on_device,
    prepare,
    reference_outputs,
    screen,
    select,
    split_samples,
    stage,
    write,
)
from edgekit.compiler.pipeline import Pipeline
from edgekit.compiler.samples import SamplesSource
from edgekit.manifest import Manifest
from edgekit.profiles import DeviceProfile
from edgekit.progress import Progress, no_progress

__all__ = ["CompileResult", "compile_model"]


@dataclass
class CompileResult:
    artifact_dir: Path
    archive: Path
    manifest: Manifest
    cache_hit: bool
    seconds: float


def compile_model(
    model: str | Path,
    target: str | Path | DeviceProfile,
    output_dir: str | Path = "build",
    *,
    pipeline: str | Path | Pipeline = "default",
    backend: str | None = None,
    input_shapes: Mapping[str, Sequence[int | str]] | None = None,
    name: str | None = None,
    use_cache: bool = True,
    cache: ArtifactCache | None = None,
    progress: Progress | None = None,
    tune: int | None = None,
    tune_minutes: float | None = None,
    tuning_records: str | Path | None = None,
    trust_unknown_types: bool = False,
    samples: SamplesSource | None = None,
    device_timer: DeviceTimer | None = None,
    trust_pickle: bool | None = None,
) -> CompileResult:
    """Compile ``model`` for the device profile ``target`` and write the best artifact to ``output_dir``.

    Every candidate of the pipeline (or only ``backend``'s) is built, checked for
    numerical agreement with the source model and timed; the fastest one within the
    accuracy budget becomes ``<output_dir>/<name>/`` (plus ``<name>.tar.gz``), with a
    ``manifest.json`` recording what was measured. Nothing is left in ``output_dir``
    when compiling fails. ``tune=N`` adds a TVM candidate tuned with MetaSchedule for
    ``N`` trials (see :meth:`Pipeline.with_tuning`), ``tune_minutes`` bounds its tuning by the clock, and
    ``tuning_records`` (tvmc's ``--tuning-records``) names the tuning database to read and add to (default: one per
    target in edgekit's cache, reused by every compile). The tuned candidate is measured beside the others, in turns.

    ``samples`` (an ``.npz``, a folder of ``.npy``, ``module:function`` or a mapping of arrays) are the
    user's inputs, optionally with ``labels`` or expected outputs: they fix dynamic dimensions, drive
    the checks and the timing, calibrate int8 and make the accuracy budget one of accuracy. Every
    failure is an :class:`~edgekit.errors.EdgekitError`, whatever a backend raised.
    A pickled scikit-learn model is loaded only with ``trust_unknown_types`` (loading a pickle runs its code); ``.skops``
    files need it only for types that are neither skops' defaults nor scikit-learn's or numpy's own classes.
    ``trust_pickle`` is its old, deprecated name.
    ``device_timer``: rank by a device's own timings (``--measure-on``; see :mod:`edgekit.compiler.phases.on_device`);
    such a compile neither reads nor fills the cache (the timings are the device's of the moment).
    """
    if trust_pickle is not None:
        warnings.warn(
            "trust_pickle is deprecated: use trust_unknown_types (it covers pickles and .skops types alike)",
            DeprecationWarning,
            stacklevel=2,
        )
        trust_unknown_types = trust_unknown_types or trust_pickle
    say = progress or no_progress
    started = time.perf_counter()
    use_cache = use_cache and device_timer is None
    made_out = not Path(output_dir).exists()  # a failed compile removes the output folder it made
    plan = check(
        model, target, output_dir, pipeline=pipeline, backend=backend, input_shapes=input_shapes, name=name, tune=tune,
        samples=samples, tune_minutes=tune_minutes, tuning_records=tuning_records,
    )  # fmt: skip
    store = (cache or ArtifactCache()) if use_cache else None
    path = Path(str(model))
    key = plan.cache_key(source_fingerprint(path)) if path.is_file() else None
    if key is not None and (hit := _from_cache(store, key, plan, say, started)):
        return hit
    try:
        check_input_memory(plan.shapes, plan.profile)  # before anything is allocated: 1 byte an element at least
        check_host_memory(plan.shapes)  # and the build host's: a compile takes many times its inputs
    except BaseException:
        if made_out:
            with contextlib.suppress(OSError):
                plan.out.rmdir()
        raise
    sweep_stale_work(plan.out)
    work = Path(tempfile.mkdtemp(prefix=f"{WORK_PREFIX}{os.getpid()}-", dir=plan.out))
    try:
        say(f"loading {plan.format} model {model}")
        with stage(model, "loading the model", "check that the model loads in its own framework"):
            source = load_source(
                model, work / "source", plan.shapes, trust_unknown_types=trust_unknown_types, examples=plan.examples
            )
        dtypes = {i.name: i.dtype for i in source.inputs}
        check_input_memory({i.name: i.shape for i in source.inputs}, plan.profile, dtypes)
        check_host_memory({i.name: i.shape for i in source.inputs}, dtypes)
        if key is None:  # a factory: the exported graph is the content
            key = plan.cache_key(source.sha256)
            if hit := _from_cache(store, key, plan, say, started):
                return hit
        final, archive, manifest = _compile(plan, source, work, key, say, started, device_timer)
        if store is not None:
            store.put(key, final, archive)
        say(f"wrote {final}")
        return CompileResult(final, archive, manifest, False, time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if made_out:
            with contextlib.suppress(OSError):  # only when empty: a failure leaves nothing behind
                plan.out.rmdir()


def _compile(
    plan: Plan, source: SourceModel, work: Path, key: str, say: Progress, started: float, timer: DeviceTimer | None = None
) -> tuple[Path, Path, Manifest]:
    """The phases after loading: build the candidates, measure them against the source model, keep the best, write it."""
    outcomes = Outcomes(plan.candidates, say)
    model = plan.model
    with stage(model, "checking operators", "try another pipeline or --backend"):
        screened = screen(plan, source, outcomes, say)
    with stage(model, "running the source model for reference", "pass valid inputs with --samples"):
        calibration, evaluation = split_samples(plan, source, say)
        reference = reference_outputs(source, plan.pipeline.measure, evaluation, plan.samples.where if plan.samples else "")
    with stage(model, "preparing candidates", "try another pipeline or --backend"):
        prepared = prepare(plan, source, work, outcomes, say, reference, calibration, screened)
    with stage(model, "compiling candidates", "try another pipeline or --backend"):
        builds = build(prepared, plan.profile, work, outcomes, say)
    with stage(model, "measuring candidates", "try another pipeline or --backend"):
        measured = measure(builds, reference, plan.pipeline.measure, outcomes, say)
    if timer is not None:
        with stage(model, f"measuring candidates on {timer.thing}", "check the device with 'edgekit fleet status'"):
            measured = measure_on_device(measured, timer, plan, source, reference, outcomes, work, key, started, say)
    choice = select(measured, plan.pipeline, outcomes, say)
    with stage(model, "writing the artifact", "check the output folder"):
        return write(choice, plan, source, reference, outcomes, work, key, started)


def _from_cache(store: ArtifactCache | None, key: str, plan: Plan, say: Progress, started: float) -> CompileResult | None:
    hit = store.install(key, plan.out) if store is not None else None
    if hit is None:
        return None
    final, archive, manifest = hit
    say(f"cache hit: {final}")
    return CompileResult(final, archive, manifest, True, time.perf_counter() - started)
