"""Phase 5, write: the chosen candidate's files, golden vectors and manifest, installed as ``<name>/`` and ``<name>.tar.gz``."""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from edgekit._version import __version__
from edgekit.compiler.artifact import install_dir, make_archive
from edgekit.compiler.evaluation import too_few_to_judge
from edgekit.compiler.frontends import SourceModel
from edgekit.compiler.model_stats import model_stats
from edgekit.compiler.phases.check import Plan
from edgekit.compiler.phases.outcomes import Outcomes
from edgekit.compiler.phases.reference import Reference
from edgekit.compiler.phases.select import Choice
from edgekit.manifest import BackendInfo, HostTwin, Manifest, ProfileInfo, SamplesInfo, SelfTest, SourceInfo, artifact_digests
from edgekit.profiles import host_arch
from edgekit.runtime.sequences import pack_value, value_nbytes

__all__ = ["SELFTEST_FILE", "write", "write_selftest"]

SELFTEST_FILE = "selftest.npz"
_SELFTEST_MAX_BYTES = 4 << 20


def write(
    choice: Choice,
    plan: Plan,
    source: SourceModel,
    reference: Reference,
    outcomes: Outcomes,
    work: Path,
    key: str,
    started: float,
) -> tuple[Path, Path, Manifest]:
    """(artifact dir, archive, manifest), each put in place atomically; ``started`` is when compiling began."""
    build = choice.best.build
    staged = work / "artifact"
    staged.mkdir()
    for f in build.built.files:
        (staged / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build.folder / f, staged / f)
    selftest = write_selftest(staged, reference, _selftest_tolerance(choice))
    manifest = _manifest(choice, plan, source, reference, outcomes, staged, key, selftest)
    manifest.host_twin = _host_twin(choice, staged)
    manifest.compile_seconds = round(time.perf_counter() - started, 3)
    manifest.digests = artifact_digests(staged)
    manifest.write(staged)
    final = plan.out / manifest.name
    install_dir(staged, final)
    return final, make_archive(final), manifest


def _host_twin(choice: Choice, staged: Path) -> HostTwin | None:
    """The chosen candidate's host stand-in (built to measure it here) copied in as ``host-<machine>/``: what a
    simulated device of the target's platform runs on this host, checked with the same golden vectors."""
    build = choice.best.build
    if build.host is None:
        return None
    folder, built = build.host
    machine = host_arch()
    prefix = f"host-{machine}"
    for f in built.files:
        (staged / prefix / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(folder / f, staged / prefix / f)
    spec = build.candidate.spec
    return HostTwin(
        machine=machine,
        backend=BackendInfo(
            name=build.candidate.backend.name,
            version=build.candidate.backend.version(),
            options={**spec.options, **built.details, **({"passes": spec.passes} if spec.passes else {})},
            files=[f"{prefix}/{f}" for f in built.files],
            entry=f"{prefix}/{built.entry}",
        ),
    )


def _selftest_tolerance(choice: Choice) -> float:
    """The budget's max abs error; twice what was measured when the gate was accuracy on labelled samples (an int8
    candidate may differ from the float source by more, and still be the right one)."""
    accuracy = choice.best.measurement.accuracy
    measured = accuracy.max_abs_error if np.isfinite(accuracy.max_abs_error) else 0.0
    by_accuracy = accuracy.top1_accuracy is not None or accuracy.expected_error is not None
    return max(choice.budget.max_abs_error, 2 * measured) if by_accuracy else choice.budget.max_abs_error


def _samples_info(plan: Plan, reference: Reference) -> SamplesInfo | None:
    if plan.samples is None or reference.synthesized:
        return None
    evaluation = len(reference.samples)
    total = len(plan.samples.listed) if plan.samples.listed is not None else evaluation
    if plan.samples.stacked is not None:
        total = max(
            evaluation, next((len(a) for n, a in plan.samples.stacked.items() if n in {i.name for i in reference.inputs}), 0)
        )
    truth = reference.truth.kind if reference.truth is not None else None
    tightest = min(c.budget.max_accuracy_drop for c in plan.candidates) if plan.candidates else 0.0
    return SamplesInfo(
        source=plan.samples.where,
        total=total,
        calibration=total - evaluation,
        evaluation=evaluation,
        truth=truth,
        warning=too_few_to_judge(reference.truth, tightest),
    )


def _manifest(
    choice: Choice,
    plan: Plan,
    source: SourceModel,
    reference: Reference,
    outcomes: Outcomes,
    staged: Path,
    key: str,
    selftest: SelfTest | None,
) -> Manifest:
    build, profile, pipe = choice.best.build, plan.profile, plan.pipeline
    spec = build.candidate.spec
    flops, params = model_stats(source.model)
    for report in outcomes.reports:
        if report.flops is None and not report.passes:
            report.flops, report.params = flops, params
    return Manifest(
        name=plan.artifact_name(source),
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
            flops=flops,
            params=params,
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
            "accuracy": choice.budget.model_dump(by_alias=True),
            "select": pipe.select,
        },
        backend=BackendInfo(
            name=build.candidate.backend.name,
            version=build.candidate.backend.version(),
            options={**spec.options, **build.built.details, **({"passes": spec.passes} if spec.passes else {})},
            files=build.built.files,
            entry=build.built.entry,
        ),
        inputs=reference.measured_inputs(),
        outputs=reference.measured_outputs(),
        size_bytes=sum((staged / f).stat().st_size for f in build.built.files),
        compile_seconds=0.0,
        measured=choice.best.measurement,
        cpu=build.built.cpu,
        selftest=selftest,
        samples=_samples_info(plan, reference),
        candidates=outcomes.reports,
    )


def write_selftest(staged: Path, reference: Reference, max_abs_error: float) -> SelfTest | None:
    """Save up to 4 samples, then the other sizes of dynamic inputs (at most 4 MiB), with the source model's outputs
    as golden vectors."""
    arrays: dict[str, np.ndarray] = {}
    used = 0
    total = 0
    cases = list(zip(reference.samples[:4], reference.expected[:4], strict=True)) + reference.other_sizes
    for i, (feed, outs) in enumerate(cases):
        size = sum(value_nbytes(a) for a in feed.values()) + sum(value_nbytes(o) for o in outs)
        if total + size > _SELFTEST_MAX_BYTES:
            break
        total += size
        for name, arr in feed.items():
            pack_value(f"{i}/in/{name}", arr, arrays)  # a sequence: NAME/# and NAME/0, NAME/1, ...
        for spec, out in zip(reference.outputs, outs, strict=True):
            pack_value(f"{i}/out/{spec.name}", out, arrays)
        used += 1
    if not used:
        return None
    np.savez(staged / SELFTEST_FILE, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds badly
    return SelfTest(file=SELFTEST_FILE, samples=used, max_abs_error=max_abs_error, reference=reference.name)
