"""What ``edgekit fleet status`` shows of a local fleet, read in one go: summary, failures, telemetry, simulation."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.fleet.folder import FleetFolder
    from edgekit.fleet.queries import DeviceFailure
    from edgekit.fleet.service import FleetSummary
    from edgekit.fleet.telemetry import TelemetryView

__all__ = ["FleetStatus", "read_status"]


@dataclass
class FleetStatus:
    """A local fleet at one moment: its folder, the running simulation (``None``: none), deployments, groups and
    devices (``summary``), the latest failed executions and what the devices report (``telemetry``)."""

    root: Path
    running: dict[str, Any] | None
    summary: FleetSummary
    failures: list[DeviceFailure]
    telemetry: TelemetryView


def read_status(folder: FleetFolder, failures: int = 10) -> FleetStatus:
    """Read :class:`FleetStatus` from ``folder``'s state (readable while a simulation writes it)."""
    from edgekit.fleet.queries import device_failures
    from edgekit.fleet.service import FleetService
    from edgekit.fleet.telemetry import telemetry_view

    state = folder.open_state()
    try:
        summary = FleetService(state).summary()
        failed = device_failures(state, failures)
        telemetry = telemetry_view(state)
    finally:
        state.close()
    return FleetStatus(folder.root, folder.running(), summary, failed, telemetry)
