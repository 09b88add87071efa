"""The compile side of a backend: its typed options, a support check, then compile to files in a folder.

A backend also says what the driver needs to know about it (whether its artifacts run on this
host as built, what state outside the pipeline decides its result), so the driver never names one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit.compiler.frontends.frontend import SourceModel
from edgekit.errors import ConfigError, first_problem
from edgekit.manifest import CpuRequirement
from edgekit.profiles import DeviceProfile
from edgekit.progress import Progress

__all__ = ["Backend", "BackendOptions", "Built", "UnsupportedOp"]

# (op type, qualified with its domain when not the default one; node name; why)
UnsupportedOp = tuple[str, str, str]


class BackendOptions(BaseModel):
    """A backend's ``options:`` in a pipeline candidate; each backend subclasses it with its fields.

    :meth:`parse` reads the pipeline's mapping: every unknown key is named at once, then the
    first bad value in the backend's own words (:meth:`invalid`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, options: Mapping[str, Any], backend: str) -> Self:
        known = sorted(cls.model_fields)
        unknown = sorted((k for k in options if k not in known), key=str)
        if unknown:
            raise ConfigError(f"{backend} options {unknown} are not known; known options: {known}")
        try:
            return cls.model_validate(dict(options))
        except ValidationError as exc:
            loc = exc.errors()[0]["loc"]
            name = str(loc[0]) if loc else ""
            raise ConfigError(cls.invalid(name, options.get(name), exc, backend)) from None

    @classmethod
    def invalid(cls, name: str, value: Any, exc: ValidationError, backend: str) -> str:
        """The message for a bad value of option ``name``; backends word their own."""
        return f"{backend} option '{name}': {first_problem(exc)}"


OptionsT = TypeVar("OptionsT", bound=BackendOptions)


@dataclass
class Built:
    """What a backend wrote: files relative to the output folder, the one the loader opens, and the CPU its code needs
    (None: any CPU that runs the backend's runtime)."""

    files: list[str]
    entry: str
    details: dict[str, Any] = field(default_factory=dict)
    cpu: CpuRequirement | None = None


class Backend(ABC, Generic[OptionsT]):
    name: ClassVar[str] = ""
    portable: ClassVar[bool] = False
    """True when an artifact built for any target also runs on this host as built (no stand-in to measure)."""

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def parse_options(self, options: Mapping[str, Any], profile: DeviceProfile) -> OptionsT:
        """The typed options, or ConfigError for options this backend doesn't know or can't honour for ``profile``.

        Called for every candidate before the model is even loaded, so a typo in a pipeline
        file costs no compile time.
        """

    def cache_state(self, options: OptionsT, profile: DeviceProfile) -> str | None:
        """A fingerprint of state outside the pipeline that decides what this candidate builds (a tuning
        database, say), or None when there is none. Part of the artifact cache key."""
        return None

    def needs_host_stand_in(self, profile: DeviceProfile) -> bool:
        """Whether measuring needs a second build for this host (``compile(for_host=True)``): the artifact
        for ``profile`` can't run here."""
        return not self.portable and not profile.runs_on_host()

    @abstractmethod
    def unsupported_ops(self, source: SourceModel, profile: DeviceProfile) -> list[UnsupportedOp]:
        """Ops this backend cannot import; empty when it can compile the model. Must be fast (< 5 s)."""

    @abstractmethod
    def compile(
        self,
        source: SourceModel,
        profile: DeviceProfile,
        options: OptionsT,
        out_dir: Path,
        progress: Progress,
        *,
        for_host: bool = False,
    ) -> Built:
        """Compile ``source`` for ``profile`` into ``out_dir``.

        With ``for_host`` the result must run on this host (a stand-in used to measure
        candidates whose target can't run here).
        """
