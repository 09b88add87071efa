"""``edgekit.compile``: model file → measured candidates → the best artifact for a device."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgekit._version import __version__
from edgekit.compiler.artifact import check_writable, install_dir, make_archive
from edgekit.compiler.backends import Backend, Built, get_backend
from edgekit.compiler.cache import ArtifactCache, cache_key, source_fingerprint
from edgekit.compiler.frontends import SourceModel, load_source, source_format
from edgekit.compiler.measure import agreement, host_description, interleaved_latency, sample_inputs
from edgekit.compiler.passes import apply_passes, check_passes, file_inputs
from edgekit.compiler.pipeline import CandidateSpec, Pipeline, load_pipeline
from edgekit.errors import (
    AccuracyError,
    ArtifactError,
    CompilationError,
    ConfigError,
    EdgekitError,
    MissingDependencyError,
    UnsupportedOperatorError,
)
from edgekit.manifest import (
    Accuracy,
    BackendInfo,
    CandidateReport,
    Manifest,
    Measurement,
    ProfileInfo,
    SelfTest,
    SourceInfo,
    TensorSpec,
    read_manifest,
)
from edgekit.profiles import DeviceProfile, load_profile
from edgekit.progress import Progress, no_progress
from edgekit.runtime import Runner, runner_for

__all__ = ["CompileResult", "compile_model"]

log = logging.getLogger(__name__)


@dataclass
class CompileResult:
    artifact_dir: Path
    archive: Path
    manifest: Manifest
    cache_hit: bool
    seconds: float


@dataclass
class _Candidate:
    spec: CandidateSpec
    backend: Backend[Any] | None = None
    built: Built | None = None
    folder: Path | None = None
    report: CandidateReport | None = None
    runner: Runner | None = None
    accuracy: Accuracy | None = None
    on: Literal["target", "host-proxy"] = "target"
    source: SourceModel | None = None  # the model after the candidate's passes
    size: int = 0


def compile_model(
    model: str | Path,
    target: str | Path | DeviceProfile,
    output_dir: str | Path = "build",
    *,
    pipeline: str | Path | Pipeline = "default",
    backend: str | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    name: str | None = None,
    use_cache: bool = True,
    cache: ArtifactCache | None = None,
    progress: Progress | None = None,
    tune: int | None = None,
) -> CompileResult:
    """Compile ``model`` for the device profile ``target`` and write the best artifact to ``output_dir``.

    Every candidate of the pipeline (or only ``backend``'s) is built, checked for
    numerical agreement with the source model and timed; the fastest one within the
    accuracy budget becomes ``<output_dir>/<name>/`` (plus ``<name>.tar.gz``), with a
    ``manifest.json`` recording what was measured. Nothing is left in ``output_dir``
    when compiling fails. ``tune=N`` adds a TVM candidate tuned with MetaSchedule for
    ``N`` trials (see :meth:`Pipeline.with_tuning`).
    """
    say = progress or no_progress
    started = time.perf_counter()
    profile = load_profile(target)
    pipe = pipeline if isinstance(pipeline, Pipeline) else load_pipeline(pipeline)
    if tune is not None:
        pipe = pipe.with_tuning(tune)
    if backend:
        pipe = pipe.only_backend(get_backend(backend).name)
    for spec in pipe.candidates:
        try:
            get_backend(spec.backend).parse_options(spec.options, profile)
            check_passes(spec.passes, "passes")
        except ConfigError as exc:
            raise ConfigError(f"pipeline '{pipe.name}', candidate '{spec.name}': {exc}") from None
    shapes = {k: list(v) for k, v in (input_shapes or {}).items()}
    out = Path(output_dir)
    check_writable(out)
    fmt = source_format(model)
    store = cache or ArtifactCache()

    key_parts: dict[str, Any] = {
        "shapes": shapes,
        "profile": profile.fingerprint(),
        "pipeline": pipe.fingerprint(),
        "name": name,
    }
    tuning = _tuning_states(pipe, profile)
    if tuning:
        key_parts["tuning"] = tuning
    pass_files = [h for spec in pipe.candidates for h in file_inputs(spec.passes)]
    if pass_files:
        key_parts["pass_files"] = pass_files
    model_path = Path(str(model))
    key: str | None = None
    if model_path.is_file():
        key = cache_key(source=source_fingerprint(model_path), **key_parts)
        if use_cache:
            hit = _from_cache(store, key, out, name, say)
            if hit is not None:
                return CompileResult(hit[0], hit[1], hit[2], True, time.perf_counter() - started)

    work = Path(tempfile.mkdtemp(prefix=".edgekit-compile-", dir=out))
    try:
        say(f"loading {fmt} model {model}")
        source = load_source(model, work / "source", shapes)
        if key is None:  # a factory: the exported graph is the content
            key = cache_key(source=source.sha256, **key_parts)
            if use_cache:
                hit = _from_cache(store, key, out, name, say)
                if hit is not None:
                    return CompileResult(hit[0], hit[1], hit[2], True, time.perf_counter() - started)
        artifact_name = name or f"{source.stem}-{profile.name}"
        manifest, staged = _build(source, profile, pipe, work, artifact_name, key, say)
        manifest.compile_seconds = round(time.perf_counter() - started, 3)
        manifest.write(staged)
        final = out / artifact_name
        install_dir(staged, final)
        archive = make_archive(final)
        if use_cache:
            store.put(key, final, archive)
        say(f"wrote {final}")
        return CompileResult(final, archive, manifest, False, time.perf_counter() - started)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _tuning_states(pipe: Pipeline, profile: DeviceProfile) -> dict[str, str]:
    """The state outside the pipeline each candidate's backend reads (see ``Backend.cache_state``)."""
    states: dict[str, str] = {}
    for spec in pipe.candidates:
        backend = get_backend(spec.backend)
        state = backend.cache_state(backend.parse_options(spec.options, profile), profile)
        if state is not None:
            states[spec.name] = state
    return states


def _from_cache(store: ArtifactCache, key: str, out: Path, name: str | None, say: Progress) -> tuple[Path, Path, Manifest] | None:
    cached = store.get(key)
    if cached is None:
        return None
    try:
        manifest = read_manifest(cached)
    except ArtifactError:
        return None
    final = out / manifest.name
    staged = out / f".{manifest.name}.cache-{key[:8]}"
    shutil.rmtree(staged, ignore_errors=True)
    shutil.copytree(cached, staged)
    install_dir(staged, final)
    cached_archive = store.get_archive(key)
    if cached_archive is None:
        archive = make_archive(final)
    else:
        archive = final.with_name(final.name + ".tar.gz")
        staged_archive = out / f".{archive.name}.cache-{key[:8]}"
        shutil.copyfile(cached_archive, staged_archive)
        os.replace(staged_archive, archive)
    say(f"cache hit: {final}")
    return final, archive, manifest


def _reference(source: SourceModel) -> tuple[Callable[[dict[str, np.ndarray]], list[np.ndarray]], str, list[str]]:
    """The reference predictor, its description, and the ONNX output names."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(source.onnx_path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CompilationError(
            f"'{source.path}': ONNX Runtime cannot run the source model, so there is no reference to check "
            f"candidates against: {str(exc).splitlines()[0]}"
        ) from exc
    names = [o.name for o in session.get_outputs()]
    if source.reference is not None:
        return source.reference, source.reference_name, names

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(o) for o in session.run(names, feeds)]

    return run, source.reference_name, names


def _build(
    source: SourceModel,
    profile: DeviceProfile,
    pipe: Pipeline,
    work: Path,
    artifact_name: str,
    key: str,
    say: Progress,
) -> tuple[Manifest, Path]:
    host = host_description()
    candidates = [_Candidate(spec=c) for c in pipe.candidates]
    unsupported: list[UnsupportedOperatorError] = []
    failures: list[EdgekitError] = []
    only_one = len(candidates) == 1

    # 1. Which backends can take this model at all (fast, before any compiling).
    for cand in candidates:
        spec = cand.spec
        cand.report = CandidateReport(
            name=spec.name, backend=spec.backend, options=spec.options, passes=spec.passes, status="skipped"
        )
        try:
            found = get_backend(spec.backend)
            cand.report.backend = found.name
            cand.source = source
            if spec.passes:
                cand.source = apply_passes(source, spec.passes, work / f"passes-{spec.name}", say, f"candidate '{spec.name}'")
            say(f"{spec.name}: checking operators for {found.name}")
            bad = found.unsupported_ops(cand.source, profile)
            if bad:
                raise UnsupportedOperatorError(found.name, bad)
            cand.backend = found
        except (UnsupportedOperatorError, MissingDependencyError) as exc:
            if only_one:
                raise
            if isinstance(exc, UnsupportedOperatorError):
                unsupported.append(exc)
            cand.report.reason = str(exc)
            say(f"{spec.name}: skipped ({exc})")
        except CompilationError as exc:  # a pass that failed: this candidate fails, the others go on
            if only_one:
                raise
            failures.append(exc)
            cand.report.status = "failed"
            cand.report.reason = str(exc)
            say(f"{spec.name}: failed ({exc})")
    if not any(c.backend for c in candidates):
        raise unsupported[0] if unsupported else CompilationError("no backend of the pipeline is available")

    # 2. The source model's own outputs on fixed samples: what every candidate must reproduce.
    reference, reference_name, output_names = _reference(source)
    samples = sample_inputs(source.inputs, pipe.measure.samples, pipe.measure.seed)
    ref_outputs = [reference(s) for s in samples]
    outputs = [
        TensorSpec(name=n, shape=list(np.asarray(o).shape), dtype=str(np.asarray(o).dtype))
        for n, o in zip(output_names, ref_outputs[0], strict=True)
    ]
    cached_ref = {id(s): r for s, r in zip(samples, ref_outputs, strict=True)}

    def ref_lookup(feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return cached_ref[id(feed)] if id(feed) in cached_ref else reference(feed)

    # 3. Build and measure each candidate.
    for cand in candidates:
        spec, backend, report, model = cand.spec, cand.backend, cand.report, cand.source
        if backend is None or report is None or model is None:
            continue
        try:
            t0 = time.perf_counter()
            cand.folder = work / f"candidate-{spec.name}"
            say(f"{spec.name}: compiling with {backend.name} for {profile.name}")
            options = backend.parse_options(spec.options, profile)
            cand.built = backend.compile(model, profile, options, cand.folder, say)
            report.compile_seconds = round(time.perf_counter() - t0, 3)
            cand.size = sum((cand.folder / f).stat().st_size for f in cand.built.files)
            report.size_bytes = cand.size
            on: Literal["target", "host-proxy"] = "target" if profile.runs_on_host() else "host-proxy"
            entry = cand.folder / cand.built.entry
            if backend.needs_host_stand_in(profile):
                say(f"{spec.name}: {profile.name} code can't run here; building a host stand-in to measure")
                proxy_dir = work / f"candidate-{spec.name}-host"
                proxy = backend.compile(model, profile, options, proxy_dir, say, for_host=True)
                entry = proxy_dir / proxy.entry
            say(f"{spec.name}: checking agreement with the source model")
            runner = runner_for(backend.name, entry, source.inputs, outputs)
            cand.accuracy = agreement(runner.predict, ref_lookup, samples, reference_name)
            cand.runner = runner
            cand.on = on
        except EdgekitError as exc:
            if only_one:
                raise
            failures.append(exc)
            report.status = "failed"
            report.reason = str(exc)
            say(f"{spec.name}: failed ({exc})")
        except (ValueError, RuntimeError) as exc:
            err = CompilationError(f"candidate '{spec.name}' ({spec.backend}) could not be measured: {exc}")
            if only_one:
                raise err from exc
            failures.append(err)
            report.status = "failed"
            report.reason = str(err)

    # 4. Time the built candidates in turns, so that noise on this machine hits them alike.
    ready = [c for c in candidates if c.runner is not None and c.accuracy is not None and c.report is not None]
    if ready:
        say(f"timing {len(ready)} candidate(s) on {host}")
        lats = interleaved_latency([c.runner.predict for c in ready], samples[0], pipe.measure.warmup, pipe.measure.repeat)  # type: ignore[union-attr]
        for c, lat in zip(ready, lats, strict=True):
            assert c.report is not None and c.accuracy is not None
            c.report.measured = Measurement(on=c.on, host=host, latency=lat, accuracy=c.accuracy)
            c.report.status = "rejected"  # until chosen
            log.info("%s: %.3f ms, max err %.2e", c.spec.name, lat.median_ms, c.accuracy.max_abs_error)
            c.runner = None  # release the library before the work folder goes

    measured = [c for c in candidates if c.report and c.report.measured]
    if not measured:
        if failures:
            raise failures[0]
        if unsupported:
            raise unsupported[0]
        raise CompilationError("no candidate of the pipeline could be built; see the messages above")

    passing = []
    for c in measured:
        assert c.report is not None and c.report.measured is not None
        budget = c.spec.accuracy or pipe.accuracy
        acc = c.report.measured.accuracy
        problems = []
        if acc.max_abs_error > budget.max_abs_error:
            problems.append(f"max abs error {acc.max_abs_error:.3g} > {budget.max_abs_error:.3g}")
        if acc.top1_agreement is not None and acc.top1_agreement < budget.min_top1_agreement:
            problems.append(f"top-1 agreement {acc.top1_agreement:.3f} < {budget.min_top1_agreement:.3f}")
        if problems:
            c.report.reason = "outside the accuracy budget: " + "; ".join(problems)
        else:
            passing.append(c)
    if not passing:
        detail = "; ".join(f"{c.spec.name}: {c.report.reason}" for c in measured if c.report)
        raise AccuracyError(
            f"no candidate met the accuracy budget of pipeline '{pipe.name}' ({detail}); "
            f"loosen 'accuracy' in the pipeline file or pick a more exact backend"
        )

    def latency(c: _Candidate) -> float:
        assert c.report is not None and c.report.measured is not None
        return c.report.measured.latency.median_ms

    def rank(c: _Candidate) -> tuple[float, ...]:
        return (c.size, latency(c)) if pipe.select == "size" else (latency(c),)

    best = min(passing, key=rank)
    assert best.report is not None and best.built is not None and best.folder is not None and best.backend is not None
    best.report.status = "chosen"
    best_ms = latency(best)
    for c in passing:
        if c is not best and c.report is not None:
            if pipe.select == "size" and c.size > best.size:
                c.report.reason = f"larger: {c.size / 1024:.1f} KiB vs {best.size / 1024:.1f} KiB"
            else:
                c.report.reason = f"slower: {latency(c):.3f} ms vs {best_ms:.3f} ms"
    budget = best.spec.accuracy or pipe.accuracy
    chosen_by = f"{best.size / 1024:.1f} KiB, " if pipe.select == "size" else ""
    say(f"chose {best.spec.name} ({best.backend.name}): {chosen_by}{best_ms:.3f} ms median")

    staged = work / "artifact"
    staged.mkdir()
    for f in best.built.files:
        (staged / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(best.folder / f, staged / f)
    size = sum((staged / f).stat().st_size for f in best.built.files)
    selftest = _write_selftest(staged, samples, ref_outputs, outputs, budget.max_abs_error, reference_name)
    manifest = Manifest(
        name=artifact_name,
        edgekit_version=__version__,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        cache_key=key,
        source=SourceInfo(
            path=source.path,
            format=source.format,
            sha256=source.sha256,
            size_bytes=source.size_bytes,
            framework=source.framework,
            opset=source.opset,
        ),
        profile=ProfileInfo(
            name=profile.name,
            sha256=profile.fingerprint(),
            greengrass=profile.greengrass.model_dump(),
            neo=profile.neo.model_dump(),
            tvm_target=profile.tvm.target,
        ),
        pipeline={
            "name": pipe.name,
            "sha256": pipe.fingerprint(),
            "accuracy": budget.model_dump(by_alias=True),
            "select": pipe.select,
        },
        backend=BackendInfo(
            name=best.backend.name,
            version=best.backend.version(),
            options={**best.spec.options, **best.built.details, **({"passes": best.spec.passes} if best.spec.passes else {})},
            files=best.built.files,
            entry=best.built.entry,
        ),
        inputs=source.inputs,
        outputs=outputs,
        size_bytes=size,
        compile_seconds=0.0,
        measured=best.report.measured,
        selftest=selftest,
        candidates=[c.report for c in candidates if c.report is not None],
    )
    return manifest, staged


SELFTEST_FILE = "selftest.npz"
_SELFTEST_MAX_BYTES = 4 << 20


def _write_selftest(
    staged: Path,
    samples: list[dict[str, np.ndarray]],
    ref_outputs: list[list[np.ndarray]],
    outputs: list[TensorSpec],
    max_abs_error: float,
    reference_name: str,
) -> SelfTest | None:
    """Save up to 4 samples (at most 4 MiB) with the source model's outputs as golden vectors."""
    arrays: dict[str, np.ndarray] = {}
    used = 0
    total = 0
    for i, (feed, outs) in enumerate(zip(samples[:4], ref_outputs[:4], strict=True)):
        size = sum(a.nbytes for a in feed.values()) + sum(np.asarray(o).nbytes for o in outs)
        if total + size > _SELFTEST_MAX_BYTES:
            break
        total += size
        for name, arr in feed.items():
            arrays[f"{i}/in/{name}"] = arr
        for spec, out in zip(outputs, outs, strict=True):
            arrays[f"{i}/out/{spec.name}"] = np.asarray(out)
        used += 1
    if not used:
        return None
    np.savez(staged / SELFTEST_FILE, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
    return SelfTest(file=SELFTEST_FILE, samples=used, max_abs_error=max_abs_error, reference=reference_name)
