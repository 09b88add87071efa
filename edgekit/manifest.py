"""The artifact manifest (``manifest.json``): what was compiled, for which device, and what was measured.

See docs/artifact.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.digests import file_sha256
from edgekit.errors import ArtifactError, first_problem
from edgekit.parsing import MAX_FILE_BYTES, ParseError, loads_json

__all__ = [
    "MANIFEST_NAME",
    "Accuracy",
    "BackendInfo",
    "CandidateReport",
    "CpuRequirement",
    "HostTwin",
    "Latency",
    "Manifest",
    "Measurement",
    "ProfileInfo",
    "SamplesInfo",
    "SelfTest",
    "SourceInfo",
    "TensorSpec",
    "artifact_digests",
    "read_manifest",
    "tensors_only",
    "verify_files",
]

MANIFEST_NAME = "manifest.json"
SCHEMA_VERSION = 1


def _inside(value: str) -> str:
    """``value`` if it names a file inside the artifact folder: relative, no ``..``, no backslashes."""
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or "\0" in value or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"'{value[:80]}' is not a file inside the artifact folder (relative, no '..')")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


class TensorSpec(_Model):
    """One input or output. ``shape`` is concrete (the shape samples and timing use); ``dynamicDims`` names the axes
    that take any size (``{"0": "batch"}``), absent for a static tensor (manifests before it load unchanged).

    ``kind: sequence`` (ONNX ``seq(tensor)``): a list of any length of tensors of ``dtype``; ``shape`` is then each
    element's, ``-1`` where elements differ or the model leaves it open (absent for a tensor)."""

    name: str
    shape: list[int]
    dtype: str
    kind: Literal["tensor", "sequence"] = Field("tensor", exclude_if=lambda v: v == "tensor")
    dynamic_dims: dict[int, str] | None = Field(None, alias="dynamicDims", exclude_if=lambda v: v is None)
    measured_shapes: list[list[int]] | None = Field(
        None,
        alias="measuredShapes",
        exclude_if=lambda v: v is None,
        description="the shapes the compile ran and self-tested (dynamic inputs only)",
    )

    @property
    def is_sequence(self) -> bool:
        return self.kind == "sequence"

    def accepts(self, shape: Sequence[int]) -> bool:
        """Whether an array (a sequence's element) of ``shape`` fits: any size on a dynamic axis (``-1`` in a
        sequence's element shape), the exact size on a fixed one."""
        dyn = self.dynamic_dims or {}
        return len(shape) == len(self.shape) and all(
            i in dyn or s < 0 or int(d) == s for i, (d, s) in enumerate(zip(shape, self.shape, strict=True))
        )

    def declared(self) -> str:
        """The shape as declared, dynamic axes by name: ``[batch, 13]``; a sequence's as ``sequence of [2, ?]``."""
        if self.is_sequence:
            return "sequence of [" + ", ".join("?" if d < 0 else str(d) for d in self.shape) + "]"
        dyn = self.dynamic_dims or {}
        return "[" + ", ".join(dyn.get(i, str(d)) for i, d in enumerate(self.shape)) + "]"


class SourceInfo(_Model):
    path: str
    format: Literal["onnx", "torch", "sklearn", "xgboost", "lightgbm", "tflite", "keras", "tensorflow"]
    sha256: str
    size_bytes: int = Field(alias="sizeBytes")
    framework: str = Field(description="framework and version the model came from, e.g. 'torch 2.13.0'")
    opset: int
    flops: int | None = Field(None, description="multiply-accumulates of one run, counted by onnx-tool (None: it can't)")
    params: int | None = None


class ProfileInfo(_Model):
    name: str
    sha256: str
    greengrass: dict[str, str]
    neo: dict[str, str | None]
    tvm_target: dict[str, Any] = Field(alias="tvmTarget")


class CpuRequirement(_Model):
    """The CPU an artifact's code needs: ``edgekit.load`` refuses it, in one line, on a CPU that lacks a feature.

    ``features`` are /proc/cpuinfo names (``sse4_2``, ``avx2``, ``avx512f``; ``asimd`` on aarch64): what the
    compiled code may execute, from the LLVM target the build used (``mcpu``/``mattr``) or, for a build
    specialised to this host, this host's CPU. Empty: the artifact runs on any CPU of ``arch``
    (ONNX Runtime picks its kernels when it loads).
    """

    arch: str = Field(description="platform.machine() of the CPU: x86_64, aarch64, ...")
    cpu: str = Field(description="the CPU the build was made for: an LLVM mcpu (x86-64-v2, cortex-a72) or 'any'")
    features: list[str] = Field(default_factory=list)
    host_specific: bool = Field(False, alias="hostSpecific", description="built for the compiling host's own CPU")


class BackendInfo(_Model):
    name: str
    version: str
    options: dict[str, Any]
    files: list[str] = Field(description="files of the artifact the backend loads, relative to the artifact dir")
    entry: str = Field(description="the file the loader opens")

    @field_validator("entry")
    @classmethod
    def _entry_inside(cls, value: str) -> str:
        return _inside(value)

    @field_validator("files")
    @classmethod
    def _files_inside(cls, value: list[str]) -> list[str]:
        return [_inside(v) for v in value]


class Latency(_Model):
    median_ms: float = Field(alias="medianMs")
    p90_ms: float = Field(alias="p90Ms")
    runs: int
    rounds_ms: list[float] | None = Field(
        None, alias="roundsMs", description="the median of each interleaved round (timed in turns with the other candidates)"
    )


class Accuracy(_Model):
    max_abs_error: float = Field(alias="maxAbsError")
    top1_agreement: float | None = Field(alias="top1Agreement")
    samples: int
    reference: str = Field(description="what the outputs were compared with")
    inputs: Literal["synthesized", "samples"] = Field("synthesized", description="the user's samples, or made-up inputs")
    top1_accuracy: float | None = Field(None, alias="top1Accuracy", description="against the samples' labels")
    source_top1_accuracy: float | None = Field(None, alias="sourceTop1Accuracy", description="the source model's, same samples")
    expected_error: float | None = Field(
        None, alias="expectedError", description="mean |output - expected| against the samples' expected outputs"
    )
    source_expected_error: float | None = Field(None, alias="sourceExpectedError")


class Measurement(_Model):
    """Where the latency was measured.

    ``on`` is ``target`` when the compiling host runs the target's code itself, and ``host-proxy``
    when the target can't run here: then the same candidate was compiled for the host
    and measured, which ranks candidates but is not the device's latency. ``device``: the
    candidate was sent to a device of a running local fleet (``--measure-on``), which timed it
    itself; ``measuredOn`` names that device (see docs/compile.md, measured on the target).
    """

    on: Literal["target", "host-proxy", "device"]
    host: str
    measured_on: str | None = Field(None, alias="measuredOn", description="the thing that timed it (on: device)")
    latency: Latency
    accuracy: Accuracy


class SelfTest(_Model):
    """Golden vectors shipped in the artifact: source-model outputs for a few inputs.

    A device (or ``edgekit verify`` under qemu) runs the inputs and checks the
    outputs against them within ``maxAbsError`` before it trusts the model.
    """

    file: str
    samples: int
    max_abs_error: float = Field(alias="maxAbsError")
    reference: str

    @field_validator("file")
    @classmethod
    def _file_inside(cls, value: str) -> str:
        return _inside(value)


class HostTwin(_Model):
    """The chosen candidate built again for the compiling host, where the device's code can't run there.

    Same backend, same passes and options, the same golden vectors (the artifact's ``selftest``); only the code
    generation targets ``machine`` instead of the device. A simulated device whose platform differs from its host
    runs this build and says it is a stand-in (docs/local-fleet.md); a real device never loads it.
    """

    machine: str = Field(description="platform.machine() of the host it was built for (x86_64, aarch64, ...)")
    backend: BackendInfo = Field(description="its files, under host-<machine>/ in the artifact folder")


class CandidateReport(_Model):
    name: str
    backend: str
    options: dict[str, Any]
    status: Literal["chosen", "rejected", "skipped", "failed"]
    reason: str = ""
    budget: str | None = Field(None, description="the accuracy budget it was judged by, in words (measured candidates)")
    passes: list[dict[str, Any]] = Field(default_factory=list)
    measured: Measurement | None = None
    compile_seconds: float | None = Field(None, alias="compileSeconds")
    size_bytes: int | None = Field(None, alias="sizeBytes")
    flops: int | None = Field(None, description="of the candidate's graph after its passes (pruning lowers it)")
    params: int | None = None
    kept_float: list[str] = Field(
        default_factory=list, alias="keptFloat", description="int8: layers kept in float so the accuracy budget holds"
    )
    pruned: dict[str, Any] | None = Field(None, description="pruning: channels kept per layer group, ratio, method")
    quantization: dict[str, Any] | None = Field(
        None, description="int8: mode (static/dynamic), format (QDQ/QOperator), granularity (per-channel/per-tensor)"
    )
    tuning: dict[str, Any] | None = Field(
        None, description="a tuned candidate (TVM's MetaSchedule): trials measured, tasks reused, budget, best estimate"
    )
    tied_with: list[str] = Field(
        default_factory=list,
        alias="tiedWith",
        description="candidates whose latency was within the timing noise of this one's (ties are broken by size, then pipeline order)",
    )


class SamplesInfo(_Model):
    """The user's samples: where they came from and how they were split."""

    source: str
    total: int
    calibration: int = Field(description="set aside to calibrate int8, never used to evaluate")
    evaluation: int
    truth: Literal["labels", "expected outputs"] | None = None
    warning: str | None = Field(None, description="why the evaluation set is too small for the accuracy budget, if it is")


class Manifest(_Model):
    schema_version: Literal[1] = Field(1, alias="schemaVersion")
    name: str
    edgekit_version: str = Field(alias="edgekitVersion")
    created_at: str = Field(alias="createdAt")
    cache_key: str = Field(alias="cacheKey")
    source: SourceInfo
    profile: ProfileInfo
    pipeline: dict[str, Any]
    backend: BackendInfo
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    size_bytes: int = Field(alias="sizeBytes")
    compile_seconds: float = Field(alias="compileSeconds")
    measured: Measurement | None
    cpu: CpuRequirement | None = Field(None, description="the CPU features the code needs (None: written by an older edgekit)")
    selftest: SelfTest | None = None
    host_twin: HostTwin | None = Field(None, alias="hostTwin")
    samples: SamplesInfo | None = None
    candidates: list[CandidateReport]
    digests: dict[str, str] = Field(
        default_factory=dict, description="SHA-256 (hex) of every file of the artifact but the manifest, by relative path"
    )

    @field_validator("digests")
    @classmethod
    def _digests_inside(cls, value: dict[str, str]) -> dict[str, str]:
        for name, digest in value.items():
            _inside(name)
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise ValueError(f"digest of '{name[:80]}' is not a hex SHA-256")
        return value

    def write(self, directory: Path) -> Path:
        path = directory / MANIFEST_NAME
        path.write_text(json.dumps(self.model_dump(mode="json", by_alias=True), indent=2, sort_keys=False) + "\n")
        return path


def read_manifest(artifact_dir: str | Path, *, check_files: bool = True) -> Manifest:
    """Read and validate ``<artifact_dir>/manifest.json`` and (``check_files``) every file against its digest."""
    path = Path(artifact_dir) / MANIFEST_NAME
    if not Path(artifact_dir).is_dir():
        raise ArtifactError(f"artifact directory '{artifact_dir}' does not exist (run 'edgekit compile' first)")
    try:
        raw = loads_json(path.read_bytes(), max_bytes=MAX_FILE_BYTES)
    except FileNotFoundError as exc:
        raise ArtifactError(f"'{artifact_dir}' is not an edgekit artifact: it has no {MANIFEST_NAME}") from exc
    except OSError as exc:
        raise ArtifactError(f"{path}: unreadable manifest ({exc.strerror or exc}); recompile the artifact") from exc
    except ParseError as exc:
        raise ArtifactError(f"{path}: unreadable manifest: it {exc}; recompile the artifact") from None
    if isinstance(raw, dict) and raw.get("schemaVersion") not in (None, SCHEMA_VERSION):
        raise ArtifactError(
            f"{path}: schemaVersion {raw.get('schemaVersion')} is not supported by this edgekit "
            f"(supports {SCHEMA_VERSION}); recompile or upgrade edgekit"
        )
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        raise ArtifactError(f"{path}: {first_problem(exc)}; recompile the artifact") from exc
    if check_files:
        verify_files(Path(artifact_dir), manifest)
    return manifest


def artifact_digests(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory`` but the manifest, by POSIX relative path (what a manifest lists)."""
    return {
        p.relative_to(directory).as_posix(): file_sha256(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != MANIFEST_NAME
    }


def verify_files(directory: Path, manifest: Manifest) -> None:
    """Refuse an artifact whose files differ from what its manifest lists (a modified or swapped model file),
    or whose files lie outside its folder (a symlink out of it)."""
    path = directory / MANIFEST_NAME
    if not manifest.digests:
        raise ArtifactError(f"{path}: lists no per-file digests (written by an older edgekit); recompile the artifact")
    needed = [*manifest.backend.files, *([manifest.selftest.file] if manifest.selftest else [])]
    needed += manifest.host_twin.backend.files if manifest.host_twin else []
    uncovered = [f for f in needed if f not in manifest.digests]
    if uncovered:
        raise ArtifactError(f"{path}: '{uncovered[0]}' has no digest in the manifest; recompile the artifact")
    root = directory.resolve()
    for name, digest in manifest.digests.items():
        file = directory / name
        if not file.is_file():
            raise ArtifactError(f"{directory}: file '{name}' listed in manifest.json is missing; recompile")
        if not file.resolve().is_relative_to(root):
            raise ArtifactError(f"{directory}: '{name}' leads outside the artifact folder; refused")
        if file_sha256(file) != digest:
            raise ArtifactError(
                f"{directory}: '{name}' does not match its SHA-256 in manifest.json (changed after compiling); "
                "recompile the artifact, or restore the file"
            )


def tensors_only(manifest: Manifest, what: str, why: str) -> None:
    """ArtifactError naming the artifact's first sequence input or output when ``what`` (a consumer: ``edgekit serve``,
    the inference component) carries tensors only; ``why`` says why. See docs/compile.md (sequences)."""
    for kind, specs in (("input", manifest.inputs), ("output", manifest.outputs)):
        for spec in specs:
            if spec.is_sequence:
                raise ArtifactError(
                    f"{kind} '{spec.name}' is a sequence ({spec.declared()} {spec.dtype}), and {what} carries tensors "
                    f"only ({why}); run this model with edgekit.load(...).predict or 'edgekit run', or end its graph "
                    "with ConcatFromSequence so that it gives one tensor"
                )
