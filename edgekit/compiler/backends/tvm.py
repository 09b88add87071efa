"""Apache TVM backend: Relax ONNX frontend, ``tvm.compile``, ``export_library``.

CPU targets build with LLVM; foreign architectures link with the profile's cross
compiler and the result is checked to be an ELF of the right machine. CUDA targets
apply TVM's default GPU schedules (dlight) and need ``nvcc`` for the device's arch.
``options.tune`` tunes with MetaSchedule first (see :mod:`edgekit.compiler.backends.tvm_tune`).
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import re
import shutil
import subprocess
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator

from edgekit.compiler.backends.backend import Backend, BackendOptions, Built, UnsupportedOp
from edgekit.compiler.backends.native_log import native_stderr_to_log
from edgekit.compiler.backends.tvm_tune import (
    RECORDS,
    TuneOptions,
    database_dir,
    parse_tune_options,
    trials_shorthand,
    tune_and_apply,
)
from edgekit.compiler.frontends.frontend import SourceModel, sequence_element_type
from edgekit.deps import package_version, require
from edgekit.digests import file_sha256
from edgekit.errors import (
    CompilationError,
    ConfigError,
    EdgekitError,
    InputShapeError,
    MissingDependencyError,
    ToolchainError,
    UnsupportedOperatorError,
    first_problem,
    last_line,
)
from edgekit.machines import ELF_MACHINES
from edgekit.manifest import CpuRequirement
from edgekit.profiles import DeviceProfile, host_arch
from edgekit.progress import Progress
from edgekit.runtime.cpu_features import from_llvm
from edgekit.runtime.tvm_runner import tvm_thread_count, tvm_thread_environment

__all__ = ["TvmBackend", "TvmOptions", "cpu_requirement", "cuda_device_code", "elf_machine", "resolve_target"]

log = logging.getLogger(__name__)

_HOST_TRIPLES = {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}


class TvmOptions(BackendOptions):
    """``options`` of a tvm candidate in a pipeline file."""

    opt_level: int = Field(3, ge=0, le=3, strict=True)
    exec_mode: Literal["compiled", "bytecode"] | None = Field(
        None,
        description="how the Relax VM runs the model's graph: 'compiled' (native code calling the kernels) or "
        "'bytecode' (interpreted); default: compiled on CPUs, bytecode for CUDA",
    )
    tune: TuneOptions | None = Field(None, description="tune with MetaSchedule first (see tvm_tune)")

    @field_validator("tune", mode="before")
    @classmethod
    def _trials_shorthand(cls, value: Any) -> Any:
        return trials_shorthand(value)

    @classmethod
    def invalid(cls, name: str, value: Any, exc: ValidationError, backend: str) -> str:
        if name == "tune":
            parse_tune_options(value)  # raises, wording the problem with the tuning options' own names
            return f"tvm option 'tune': {first_problem(exc)}"
        if name == "exec_mode":
            return f"tvm option 'exec_mode' must be compiled or bytecode, got {value!r}"
        return f"tvm option 'opt_level' must be an integer from 0 to 3, got {value!r}"


def elf_machine(path: Path) -> str:
    """Architecture of an ELF file, from its header ('unknown' if not ELF)."""
    with path.open("rb") as fh:
        head = fh.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return "not-elf"
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    return ELF_MACHINES.get(machine, "unknown")


def cuda_device_code(lib: Path) -> str:
    """How a TVM library carries its CUDA kernels: 'fatbin', 'cuda-source' (NVRTC compiles it at load) or 'none'."""
    data = lib.read_bytes()
    if bytes.fromhex("50ed55ba") in data:  # fatbin magic 0xBA55ED50
        return "fatbin"
    if b"__global__" in data or b"__CUDACC_RTC__" in data:
        return "cuda-source"
    return "none"


def _host_cpu() -> str:
    from tvm.target import codegen

    return str(codegen.llvm_get_system_cpu())


def resolve_target(profile: DeviceProfile, for_host: bool = False) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(target, host) dicts for TVM; ``mcpu: host`` replaced by the detected CPU.

    ``for_host`` gives the CPU target of this host that stands in for a foreign
    target when measuring (same kind of code, runnable here).
    """
    target = dict(profile.tvm.target)
    host = dict(profile.tvm.host) if profile.tvm.host else None
    if for_host:
        target = {"kind": "llvm", "mtriple": _HOST_TRIPLES.get(host_arch(), "x86_64-linux-gnu"), "mcpu": "host"}
        host = None
    for t in (target, host):
        if t is not None and t.get("mcpu") == "host":
            t["mcpu"] = _host_cpu()
    return target, host


def cpu_requirement(tvm: Any, target: dict[str, Any], machine: str, host_specific: bool) -> CpuRequirement:
    """The features LLVM enables for ``target`` (its ``mcpu`` and ``mattr``), as /proc/cpuinfo names."""
    try:
        from tvm.target import codegen

        features = [str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(target))]
    except Exception as exc:  # an LLVM without the query, or a target it can't take apart
        raise CompilationError(f"TVM cannot list the CPU features of {target}: {last_line(exc)}") from exc
    return CpuRequirement(
        arch=machine, cpu=str(target.get("mcpu") or "generic"), features=from_llvm(features, machine), host_specific=host_specific
    )


def _tuning_target(target: dict[str, Any]) -> dict[str, Any]:
    """MetaSchedule needs the core count in the target (its thread pools and the database key use it): the threads
    the tuned kernels will run with here — what they are timed with while tuning, too."""
    target.setdefault("num-cores", tvm_thread_count())
    return target


def _first_dynamic(source: SourceModel) -> str:
    """The first dynamic dimension of the source's inputs, in words for a refusal ('' when all are static)."""
    for spec in source.inputs:
        for axis, dim in sorted((spec.dynamic_dims or {}).items()):
            return (
                f"input '{spec.name}' dimension {axis} ('{dim}') is dynamic; the onnxruntime candidates keep it "
                f"(for TVM, give it a size: --input-shape {spec.name}:{','.join(map(str, spec.shape))})"
            )
    return ""


def _import_relax(source: SourceModel) -> Any:
    """The source in Relax; an input with dynamic dimensions is left out of ``shape_dict``, so its ``dim_param``s
    stay symbolic shape variables and the build runs at any size there."""
    from tvm.relax.frontend.onnx import from_onnx

    # The model's inputs carry their pinned shapes already. TVM reads a 0 in the model as an unknown dim, and its
    # operators can't take a pinned zero-size dim ("type is not populated"): such inputs keep the model's reading.
    # Dynamic dimensions stay symbolic: those inputs are left to the model's own reading too.
    shapes = {s.name: s.shape for s in source.inputs if 0 not in s.shape and not s.dynamic_dims}
    dtypes = {s.name: s.dtype for s in source.inputs}
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return from_onnx(source.model, shape_dict=shapes, dtype_dict=dtypes, keep_params_in_input=False)
    except Exception as exc:  # the frontend raises bare TVMError / ValueError / KeyError / AssertionError
        tail = last_line(exc, None)
        # The importer's frames (kept by the traceback) hold its half-built BlockBuilder: TVM warns "BlockBuilder
        # destroyed with remaining blocks" when it goes, which after this would be at exit, on the terminal. It goes
        # now, while TVM's native output goes to edgekit's log (the cause's message stays for -v).
        traceback.clear_frames(exc.__traceback__)
        gc.collect()
        m = re.search(r"[Oo]perator[s]? .*?(\w+) (?:is|are) not (?:implemented|supported)", tail)
        if m:
            raise UnsupportedOperatorError("tvm", [(m.group(1), "?", tail)]) from exc
        raise CompilationError(f"TVM's ONNX importer failed: {tail[:300]}") from exc


@dataclass(frozen=True)
class _Target:
    """Where one compile goes: TVM's target and host, the machine the code is for, and the C++ compiler that links."""

    target: dict[str, Any]
    host: dict[str, Any] | None
    machine: str
    cxx: str

    @property
    def cross(self) -> bool:
        return self.machine != host_arch()

    @property
    def is_cuda(self) -> bool:
        return self.target.get("kind") == "cuda"


class TvmBackend(Backend[TvmOptions]):
    name = "tvm"

    def version(self) -> str:
        return package_version("apache-tvm")

    def parse_options(self, options: Mapping[str, Any], profile: DeviceProfile) -> TvmOptions:
        parsed = TvmOptions.parse(options, self.name)
        is_cuda = profile.tvm.target.get("kind") == "cuda"
        if parsed.tune is not None and (is_cuda or profile.machine != host_arch()):
            raise ConfigError(
                f"tvm option 'tune': tuning times schedules on the machine that tunes, and this host "
                f"({host_arch()}) can't run code for '{profile.name}' ({'CUDA' if is_cuda else profile.machine}); "
                "tune on the device itself, or drop 'tune' for this target"
            )
        return parsed

    def cache_state(self, options: TvmOptions, profile: DeviceProfile) -> str | None:
        """A fingerprint of the tuning database a tuned candidate reads (None when it doesn't tune).

        A compile that applies the database must not come from the cache once the database has learnt more.
        """
        if options.tune is None or profile.machine != host_arch() or profile.tvm.target.get("kind") == "cuda":
            return None
        try:
            require("tvm", "compiling with TVM")
        except MissingDependencyError:
            return None  # the candidate reports the missing extra when it compiles
        target, _ = resolve_target(profile)
        records = database_dir(_tuning_target(target), options.tune) / RECORDS
        return file_sha256(records) if records.is_file() and records.stat().st_size > 0 else "empty"

    def unsupported_ops(self, source: SourceModel, profile: DeviceProfile) -> list[UnsupportedOp]:
        require("tvm", "compiling with TVM")
        from tvm.relax.frontend.onnx.onnx_frontend import _get_convert_map

        supported = set(_get_convert_map()) | {"If", "Constant"}  # the two its importer handles itself
        bad: list[UnsupportedOp] = [
            ("seq(tensor)", f"{kind} '{vi.name}'", "TVM's Relax ONNX importer takes and gives tensors only: use onnxruntime")
            for kind, values in (("input", source.model.graph.input), ("output", source.model.graph.output))
            for vi in values
            if sequence_element_type(vi) is not None
        ]
        for node in source.model.graph.node:
            domain = node.domain or ""
            if domain not in ("", "ai.onnx"):
                bad.append(
                    (
                        f"{domain}.{node.op_type}",
                        node.name or "(unnamed)",
                        f"TVM imports only the default ONNX domain, not '{domain}'",
                    )
                )
            elif node.op_type not in supported:
                bad.append((node.op_type, node.name or "(unnamed)", "no converter in TVM's Relax ONNX frontend"))
        return bad

    def compile(
        self,
        source: SourceModel,
        profile: DeviceProfile,
        options: TvmOptions,
        out_dir: Path,
        progress: Progress,
        *,
        for_host: bool = False,
    ) -> Built:
        # TVM's C++ logging (MetaSchedule's warnings while tuning, LLVM's) goes to edgekit's log, not the terminal.
        with native_stderr_to_log(log, "tvm: "):
            return self._compile(source, profile, options, out_dir, progress, for_host)

    def _compile(
        self, source: SourceModel, profile: DeviceProfile, options: TvmOptions, out_dir: Path, progress: Progress, for_host: bool
    ) -> Built:
        tvm_thread_environment()  # before constant folding runs kernels here (and the tuning runners start)
        tvm = require("tvm", "compiling with TVM")
        where = self._where(profile, options, for_host)
        progress(f"tvm: importing ONNX into Relax ({len(source.model.graph.node)} nodes)")
        dynamic = _first_dynamic(source)
        if dynamic and options.tune is not None:
            raise InputShapeError(f"MetaSchedule tunes static shapes only: {dynamic}")
        mod = _import_relax(source)
        try:
            target = tvm.target.Target({**where.target, "host": where.host} if where.host else where.target)
        except Exception as exc:
            raise ConfigError(f"{profile.source}: TVM rejects the target {where.target}: {str(exc).splitlines()[0]}") from exc
        exec_mode = options.exec_mode or ("bytecode" if where.is_cuda else "compiled")
        what = "cross-compiling" if where.cross else "compiling"
        t = where.target
        progress(f"tvm: {what} for {t.get('mcpu') or t.get('arch') or t['kind']} ({where.machine})")
        try:
            with tvm.transform.PassContext(opt_level=options.opt_level):
                if where.is_cuda:
                    mod = self._gpu_schedule(tvm, mod, target)
                if options.tune is not None:
                    mod, tuning = tune_and_apply(tvm, mod, target, where.target, options.tune, progress)
                executable = tvm.relax.build(mod, target=target, exec_mode=exec_mode)
        except EdgekitError:
            raise
        except Exception as exc:
            if dynamic:  # Relax keeps symbolic shapes, but not every operator builds with them
                raise InputShapeError(
                    f"TVM can't build this model with symbolic shapes ({last_line(exc, 160)}): {dynamic}"
                ) from exc
            raise CompilationError(f"TVM failed to compile for '{profile.name}': {last_line(exc)}") from exc
        lib = self._export(executable, out_dir, where, profile)
        details: dict[str, Any] = {
            "target": where.target,
            "host": where.host,
            "elf": where.machine,
            "opt_level": options.opt_level,
            "exec_mode": exec_mode,
            "tuned": options.tune is not None,
        }
        if options.tune is not None:
            details["tuning"] = tuning.model_dump()
        if where.is_cuda:
            details["device_code"] = cuda_device_code(lib)
            if details["device_code"] == "none":
                raise CompilationError(f"{lib}: the CUDA build holds no device code; check the profile's tvm.target")
        cpu_target = where.host if where.is_cuda else where.target
        cpu = None
        if cpu_target is not None and cpu_target.get("kind") == "llvm":
            cpu = cpu_requirement(tvm, cpu_target, where.machine, profile.host_cpu or for_host)
        return Built(files=["model.so"], entry="model.so", details=details, cpu=cpu)

    def _where(self, profile: DeviceProfile, options: TvmOptions, for_host: bool) -> _Target:
        """The target of this compile, with its toolchain checked before any work."""
        target, host = resolve_target(profile, for_host)
        machine = host_arch() if for_host else profile.machine
        if options.tune is not None:
            _tuning_target(target)
        cxx = profile.toolchain.cxx if machine != host_arch() else "g++"
        where = _Target(target=target, host=host, machine=machine, cxx=cxx)
        if shutil.which(where.cxx) is None:
            pkg = profile.toolchain.debian_package or where.cxx
            raise ToolchainError(
                f"profile '{profile.name}' links with '{where.cxx}', which is not installed; install it with: apt-get install -y {pkg}"
            )
        if where.is_cuda:
            self._check_nvcc(profile, target)
        return where

    @staticmethod
    def _export(executable: Any, out_dir: Path, where: _Target, profile: DeviceProfile) -> Path:
        """``out_dir/model.so``, linked with the build's compiler and checked to be an ELF of the right machine."""
        out_dir.mkdir(parents=True, exist_ok=True)
        lib = out_dir / "model.so"
        try:
            if where.cross:
                from tvm.support import cc

                executable.export_library(str(lib), fcompile=cc.cross_compiler(where.cxx))
            else:
                executable.export_library(str(lib))
        except Exception as exc:
            raise ToolchainError(f"linking the TVM library with '{where.cxx}' failed: {last_line(exc)}") from exc
        got = elf_machine(lib)
        if got != where.machine:
            raise ToolchainError(
                f"{lib}: built an ELF for '{got}', but profile '{profile.name}' needs '{where.machine}'; check toolchain.cxx"
            )
        return lib

    @staticmethod
    def _check_nvcc(profile: DeviceProfile, target: dict[str, Any]) -> None:
        nvcc = profile.toolchain.nvcc or "nvcc"
        if shutil.which(nvcc) is None:
            raise ToolchainError(
                f"profile '{profile.name}' has a CUDA target; its device code needs '{nvcc}' (the CUDA toolkit), "
                f"which is not on PATH; install a CUDA toolkit that supports {target.get('arch')}"
            )
        arch = str(target.get("arch", ""))
        try:
            listed = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=30).stdout
            version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            raise ToolchainError(f"'{nvcc}' does not run: {exc}") from exc
        wanted = arch.replace("sm_", "compute_")
        if arch and wanted not in listed.split():
            rel = re.search(r"release ([\d.]+)", version)
            raise ToolchainError(
                f"profile '{profile.name}' targets {arch}, but nvcc {rel.group(1) if rel else '?'} cannot generate "
                f"code for it (it supports {', '.join(listed.split()[:1])} and newer); use a CUDA toolkit that "
                f"still supports {arch} (e.g. CUDA 10.2 from JetPack 4 for the Jetson Nano)"
            )

    @staticmethod
    def _gpu_schedule(tvm: Any, mod: Any, target: Any) -> Any:
        from tvm.s_tir import dlight as dl

        with target:
            mod = tvm.relax.transform.LegalizeOps()(mod)
            return dl.ApplyDefaultSchedule(
                dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(), dl.gpu.Fallback()
            )(mod)
