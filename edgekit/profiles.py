"""Device profiles: what a target device is, for Neo, Greengrass and TVM, and where profiles are looked up.

See docs/compile.md (device profiles).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.errors import ConfigError, UnknownTargetError, first_problem
from edgekit.machines import GREENGRASS_MACHINES
from edgekit.parsing import MAX_FILE_BYTES, ParseError, loads_yaml
from edgekit.resources import bundled_dir

__all__ = [
    "DeviceProfile",
    "GreengrassPlatform",
    "NeoPlatform",
    "OrtSession",
    "host_arch",
    "host_platform",
    "list_profiles",
    "load_profile",
    "profile_dirs",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


class NeoPlatform(_Model):
    """SageMaker Neo's ``TargetPlatform``."""

    os: Literal["LINUX", "ANDROID", "WINDOWS"]
    arch: Literal["X86_64", "X86", "ARM64", "ARM_EABI", "ARM_EABIHF"]
    accelerator: Literal["NVIDIA", "INTEL_GRAPHICS", "MALI"] | None = None


class GreengrassPlatform(_Model):
    """The ``Platform`` a Greengrass manifest selects on."""

    os: Literal["linux", "windows", "darwin"]
    architecture: Literal["amd64", "aarch64", "arm", "x86"]


class TvmSpec(_Model):
    target: dict[str, Any]
    host: dict[str, Any] | None = None


class Toolchain(_Model):
    cxx: str = "g++"
    debian_package: str | None = None
    nvcc: str | None = None


class Emulator(_Model):
    qemu: str
    debian_package: str | None = None


class OrtSession(_Model):
    """How ONNX Runtime runs on the device (its ``SessionOptions``): applied when candidates are measured and when the
    artifact is loaded, recorded in the manifest (``backend.options.session``). 0 threads: ``cores``, else ONNX
    Runtime's own default (one per core it sees)."""

    intra_op_threads: int = Field(0, alias="intraOpThreads", ge=0, le=256)
    inter_op_threads: int = Field(0, alias="interOpThreads", ge=0, le=256)
    execution_mode: Literal["sequential", "parallel"] = Field("sequential", alias="executionMode")
    memory_pattern: bool = Field(True, alias="memoryPattern")

    def resolved(self, cores: int | None) -> dict[str, Any]:
        """The session options as the manifest records them (camelCase), threads filled in from ``cores``."""
        intra = self.intra_op_threads or cores or 0
        return {
            "intraOpThreads": intra,
            "interOpThreads": self.inter_op_threads,
            "executionMode": self.execution_mode,
            "memoryPattern": self.memory_pattern,
        }


class DeviceProfile(_Model):
    """One target device."""

    schema_version: Literal[1] = Field(1, alias="schemaVersion")
    name: str
    description: str = ""
    neo: NeoPlatform
    greengrass: GreengrassPlatform
    tvm: TvmSpec
    toolchain: Toolchain = Toolchain()
    emulator: Emulator | None = None
    cpu_flags: list[str] = Field(default_factory=list, alias="cpuFlags")
    memory_mb: int = Field(alias="memoryMb", gt=0)
    cores: int | None = Field(None, gt=0, le=1024, description="CPU cores the device gives a model (ONNX Runtime's threads)")
    onnxruntime: OrtSession = OrtSession()
    source: str = Field("", exclude=True, description="file the profile was read from")

    @property
    def machine(self) -> str:
        """``platform.machine()`` of the device (x86_64, aarch64, ...)."""
        return GREENGRASS_MACHINES[self.greengrass.architecture]

    @property
    def has_cuda(self) -> bool:
        return self.tvm.target.get("kind") == "cuda"

    @property
    def host_cpu(self) -> bool:
        """True for a profile built for the compiling host's own CPU (``mcpu: host``): its code may use every
        feature of this CPU, and ONNX Runtime's layout transforms for its vector width are baked in."""
        return not self.has_cuda and self.tvm.target.get("mcpu") == "host"

    def runs_on_host(self) -> bool:
        """True when this host can execute the profile's CPU code (same arch, CPU flags present)."""
        if self.has_cuda or self.machine != host_arch():
            return False
        return set(self.cpu_flags) <= _host_cpu_flags()

    def fingerprint(self) -> str:
        """SHA-256 of the profile's content (not of its file name or location)."""
        data = self.model_dump(mode="json", by_alias=True)
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def host_arch() -> str:
    return platform.machine()


def host_platform() -> dict[str, str]:
    """This host's Greengrass platform (``os``, ``architecture``), as a device's platform is written."""
    machine = host_arch()
    arch = next((gg for gg, m in GREENGRASS_MACHINES.items() if m == machine), machine)
    system = platform.system().lower()  # linux, darwin, windows: as Greengrass writes them
    return {"os": system, "architecture": arch}


def _host_cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def profile_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("EDGEKIT_DEVICES", "").split(os.pathsep) if p]
    dirs.append(Path.cwd() / "devices")
    dirs.append(bundled_dir("devices"))
    return dirs


def _read(path: Path) -> DeviceProfile:
    try:
        data = loads_yaml(path.read_bytes(), max_bytes=MAX_FILE_BYTES)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read device profile: {exc.strerror or exc}") from exc
    except ParseError as exc:
        raise ConfigError(f"{path}: the device profile {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a device profile must be a YAML mapping")
    try:
        return DeviceProfile.model_validate({**data, "source": str(path)})
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_problem(exc)} (see devices/rasp4b.yaml for a complete profile)") from exc


def list_profiles() -> list[DeviceProfile]:
    """Every profile found, first occurrence of a name wins."""
    seen: dict[str, DeviceProfile] = {}
    for d in profile_dirs():
        if not d.is_dir():
            continue
        for path in sorted(d.glob("*.yaml")):
            prof = _read(path)
            seen.setdefault(prof.name, prof)
    return sorted(seen.values(), key=lambda p: p.name)


def load_profile(target: str | Path | DeviceProfile) -> DeviceProfile:
    """The profile named ``target``, or read from the YAML file ``target``."""
    if isinstance(target, DeviceProfile):
        return target
    text = str(target)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        path = Path(text)
        if not path.is_file():
            raise UnknownTargetError(f"device profile file '{path}' does not exist")
        return _read(path)
    for d in profile_dirs():
        path = d / f"{text}.yaml"
        if path.is_file():
            prof = _read(path)
            if prof.name != text:
                raise ConfigError(f"{path}: profile is named '{prof.name}', but the file is '{text}.yaml'")
            return prof
    known = ", ".join(p.name for p in list_profiles())
    raise UnknownTargetError(f"unknown target '{text}'; known targets: {known} (run 'edgekit targets', or pass a profile .yaml)")
