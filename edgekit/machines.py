"""Machine names, one vocabulary: ``platform.machine()``'s (``x86_64``, ``aarch64``, ``armv7l``, ``i686``).

Greengrass writes a platform's architecture its own way (``amd64``, ``aarch64``, ``arm``, ``x86``) and an ELF header
as a number; this module is the one map from both. It ships in the runtime component (a device needs it to check an
artifact), so it imports nothing of edgekit.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ELF_MACHINES", "GREENGRASS_MACHINES", "elf_machine", "machine_of"]

GREENGRASS_MACHINES = {"amd64": "x86_64", "aarch64": "aarch64", "arm": "armv7l", "x86": "i686"}
"""Greengrass ``platform.architecture`` -> ``platform.machine()``."""
ELF_MACHINES = {62: "x86_64", 183: "aarch64", 40: "armv7l", 3: "i686"}
"""ELF header ``e_machine`` -> ``platform.machine()``."""
_ALIASES = {"arm64": "aarch64", "AMD64": "x86_64"}  # macOS's and Windows' names


def machine_of(arch: str) -> str:
    """``platform.machine()`` for a Greengrass architecture (``amd64`` -> ``x86_64``) or an alias (``arm64``); a
    machine name comes back as it is."""
    return GREENGRASS_MACHINES.get(arch, _ALIASES.get(arch, arch))


def elf_machine(path: Path) -> str | None:
    """``platform.machine()`` of the ELF file ``path``; None where it can't be read or is not an ELF this knows."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return None
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return None
    return ELF_MACHINES.get(int.from_bytes(head[18:20], "little" if head[5] == 1 else "big"))
