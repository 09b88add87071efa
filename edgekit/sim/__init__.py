"""The simulation harness: a local fleet, its broker and N device agents on one machine.

It stands above :mod:`edgekit.fleet` and :mod:`edgekit.device`; neither imports it. See docs/local-fleet.md.
"""

from __future__ import annotations

from edgekit.sim.errors import SimulationError, SimulationTimeoutError
from edgekit.sim.network import NetworkLink
from edgekit.sim.scripted_shell import SimulatedExecutor
from edgekit.sim.simulation import SimulatedDevice, Simulation, SimulationStatus

__all__ = [
    "NetworkLink",
    "SimulatedDevice",
    "SimulatedExecutor",
    "Simulation",
    "SimulationError",
    "SimulationStatus",
    "SimulationTimeoutError",
]
