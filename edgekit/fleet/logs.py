"""A local fleet device's component logs (``edgekit fleet logs``, like ``greengrass-cli logs``).

Each device keeps ``<state>/devices/<thing>/logs/<component>.log`` (what its lifecycle steps wrote). See
docs/local-fleet.md (the fleet folder).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import ConfigError
from edgekit.fleet.folder import FleetFolder

__all__ = ["LogLine", "log_files", "read_logs"]


@dataclass(frozen=True)
class LogLine:
    component: str
    line: str


def log_files(folder: FleetFolder, thing: str, component: str | None = None) -> dict[str, Path]:
    """The log file of each component of ``thing`` (or only ``component``'s), by component name."""
    device = folder.device(thing)
    if not device.is_dir() or thing in ("", ".", "..") or "/" in thing:
        known = sorted(p.name for p in folder.devices.iterdir()) if folder.devices.is_dir() else []
        shown = ", ".join(known[:8]) + (" ..." if len(known) > 8 else "") if known else "none yet"
        raise ConfigError(
            f"no device '{thing}' in {folder.root} (devices: {shown}); see 'edgekit fleet status --state {folder.root}'"
        )
    logs = device / "logs"
    files = {p.stem: p for p in sorted(logs.glob("*.log"))} if logs.is_dir() else {}
    if component is None:
        return files
    if component not in files:
        have = ", ".join(files) or "none yet"
        raise ConfigError(f"device '{thing}' has no log of '{component}' (logs: {have}); a component logs once it runs")
    return {component: files[component]}


def read_logs(
    files: dict[str, Path],
    *,
    lines: int | None = None,
    follow: bool = False,
    poll_s: float = 0.2,
    stop: Callable[[], bool] = lambda: False,
) -> Iterator[LogLine]:
    """The lines of ``files`` (the last ``lines`` of each), then with ``follow`` new lines as they are written, until
    ``stop()`` is true (or the caller stops iterating)."""
    offsets: dict[str, int] = {}
    for name, path in files.items():
        data = path.read_bytes() if path.is_file() else b""
        offsets[name] = len(data)
        text = data.decode("utf-8", errors="replace").splitlines()
        for line in deque(text, maxlen=lines) if lines is not None else text:
            yield LogLine(name, line)
    partial: dict[str, bytes] = {}
    while follow and not stop():
        for name, path in files.items():
            try:
                with path.open("rb") as f:
                    f.seek(offsets[name])
                    chunk = f.read()
            except FileNotFoundError:
                continue
            if not chunk:
                continue
            offsets[name] += len(chunk)
            *complete, rest = (partial.pop(name, b"") + chunk).split(b"\n")
            partial[name] = rest
            for raw in complete:
                yield LogLine(name, raw.decode("utf-8", errors="replace"))
        time.sleep(poll_s)
