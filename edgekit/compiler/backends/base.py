"""The compile side of a backend: support check, then compile to files in a folder."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.compiler.frontends.base import SourceModel
from edgekit.profiles import DeviceProfile
from edgekit.progress import Progress

__all__ = ["Backend", "Built", "UnsupportedOp"]

# (op type, qualified with its domain when not the default one; node name; why)
UnsupportedOp = tuple[str, str, str]


@dataclass
class Built:
    """What a backend wrote: files relative to the output folder, and the one the loader opens."""

    files: list[str]
    entry: str
    details: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    name: str = ""
    extra: str = ""

    @abstractmethod
    def version(self) -> str: ...

    @abstractmethod
    def check_options(self, options: dict[str, Any], profile: DeviceProfile) -> None:
        """Raise ConfigError for options this backend doesn't know or can't honour for ``profile``.

        Called for every candidate before the model is even loaded, so a typo in a pipeline
        file costs no compile time.
        """

    @abstractmethod
    def unsupported_ops(self, source: SourceModel, profile: DeviceProfile) -> list[UnsupportedOp]:
        """Ops this backend cannot import; empty when it can compile the model. Must be fast (< 5 s)."""

    @abstractmethod
    def compile(
        self,
        source: SourceModel,
        profile: DeviceProfile,
        options: dict[str, Any],
        out_dir: Path,
        progress: Progress,
        *,
        for_host: bool = False,
    ) -> Built:
        """Compile ``source`` for ``profile`` into ``out_dir``.

        With ``for_host`` the result must run on this host (a stand-in used to measure
        candidates whose target can't run here).
        """
