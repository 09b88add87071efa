"""What ``edgekit fleet status`` shows of a local fleet, read in one go: the fleet view and the simulation (or
``fleet serve``) running."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.fleet.folder import FleetFolder
    from edgekit.fleet.view import FleetView

__all__ = ["FleetStatus", "read_status"]


@dataclass
class FleetStatus:
    """A local fleet at one moment: its folder, the running simulation (``None``: none) and the one fleet view
    (deployments, groups, devices, failures, telemetry) that the page, ``/api/fleet`` and ``/metrics`` show too."""

    root: Path
    running: dict[str, Any] | None
    view: FleetView


def read_status(folder: FleetFolder) -> FleetStatus:
    """Read :class:`FleetStatus` from ``folder``'s state (readable while a simulation writes it); while
    ``edgekit fleet serve`` runs, with who is connected (what its agents said: ``presence.json``)."""
    from edgekit.fleet.presence import read_presence
    from edgekit.fleet.view import fleet_view

    running = folder.running()
    presence = read_presence(folder.presence_file) if running is not None else None
    stand_ins = running.get("standIns") if running else None
    state = folder.open_state()
    try:
        view = fleet_view(state, presence=presence, stand_ins=stand_ins if isinstance(stand_ins, dict) else None)
    finally:
        state.close()
    return FleetStatus(folder.root, running, view)
