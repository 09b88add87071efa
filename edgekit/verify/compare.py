"""``edgekit verify``: run an aarch64 artifact's golden vectors under qemu and compare them with the source model's outputs.

See docs/artifact.md (emulated target check).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import ArtifactError, VerificationError
from edgekit.manifest import read_manifest, tensors_only
from edgekit.progress import Progress
from edgekit.runtime.selftest import SelfTestResult, compare_outputs, read_selftest

__all__ = ["VerifyReport", "verify_artifact"]

_SCRIPT = Path(__file__).with_name("aarch64_run.py")
_BACKENDS = ("tvm", "onnxruntime")  # what aarch64_run.py loads


@dataclass
class VerifyReport:
    artifact: Path
    target: str
    emulator: str
    result: SelfTestResult
    seconds: float

    def summary(self) -> str:
        r = self.result
        verdict = "PASS" if r.passed else "FAIL"
        return (
            f"{verdict}: {self.artifact} ({self.target}) under {self.emulator}: {r.samples} samples, "
            f"max abs error {r.max_abs_error:.3g} (budget {r.tolerance:.3g}), "
            f"{r.mismatched_labels} mismatched labels, {self.seconds:.1f} s"
        )


def verify_artifact(
    artifact_dir: str | Path,
    samples: int = 4,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> VerifyReport:
    """Run ``artifact_dir`` under qemu-aarch64; raise :class:`VerificationError` if it disagrees."""
    say = progress or (lambda _msg: None)
    directory = Path(artifact_dir)
    manifest = read_manifest(directory)
    arch = manifest.profile.greengrass.get("architecture")
    if arch != "aarch64":
        raise VerificationError(
            f"{directory} is built for {arch}; 'edgekit verify' emulates aarch64 targets. "
            f"Run host-architecture artifacts directly: edgekit run {directory} --random"
        )
    if manifest.backend.name not in _BACKENDS:
        raise VerificationError(
            f"{directory} uses the {manifest.backend.name} backend; 'edgekit verify' runs {' and '.join(_BACKENDS)} "
            f"artifacts: recompile with one of them (--backend)"
        )
    if manifest.selftest is None or not (directory / manifest.selftest.file).is_file():
        raise ArtifactError(f"{directory}: no selftest.npz golden vectors; recompile with this edgekit")
    tensors_only(manifest, "'edgekit verify'", "its emulated runner passes arrays")
    cases = read_selftest(directory / manifest.selftest.file, manifest.inputs, manifest.outputs)[: max(1, samples)]
    from edgekit.verify.sysroot import ensure_sysroot, run_python

    t0 = time.perf_counter()
    say("preparing the aarch64 sysroot (cached after the first time)")
    sysroot = ensure_sysroot(cache_dir, progress=say)
    input_names = [s.name for s in manifest.inputs]
    output_names = [s.name for s in manifest.outputs]
    with tempfile.TemporaryDirectory(prefix="edgekit-verify-") as tmp:
        work = Path(tmp)
        feeds_file = work / "inputs.npz"
        np.savez(feeds_file, **{f"{i}/in/{k}": v for i, (feeds, _) in enumerate(cases) for k, v in feeds.items()})  # type: ignore[arg-type]
        model = work / "model" / manifest.backend.entry
        for name in sorted({*manifest.backend.files, manifest.backend.entry}):  # with an ONNX file's external data
            (work / "model" / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(directory / name, work / "model" / name)
        out_file = work / "outputs.npz"
        say(f"running {manifest.name} under {Path(sysroot.qemu).name}")
        proc = run_python(sysroot, _SCRIPT, [str(model), str(feeds_file), str(out_file), ",".join(input_names)])
        if proc.returncode != 0 or not out_file.is_file():
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise VerificationError(
                f"{directory}: the aarch64 run failed (exit {proc.returncode}): {detail[-1] if detail else 'no output'}"
            )
        with np.load(out_file) as data:
            produced = {k: data[k] for k in data.files}

    index = {id(feeds): i for i, (feeds, _) in enumerate(cases)}

    def emulated(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        i = index[id(feeds)]
        return [produced[f"{i}/out/{k}"] for k in range(len(output_names))]

    result = compare_outputs(emulated, cases, output_names, manifest.selftest.max_abs_error)
    report = VerifyReport(directory, manifest.profile.name, Path(sysroot.qemu).name, result, time.perf_counter() - t0)
    if not result.passed:
        raise VerificationError(report.summary())
    return report
