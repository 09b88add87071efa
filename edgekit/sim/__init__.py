"""The simulation harness: a local fleet, its broker and N device agents on one machine; see docs/local-fleet.md.

It stands above :mod:`edgekit.fleet` (the server) and :mod:`edgekit.device` (what a device runs); neither
imports it. :class:`Simulation` runs them in one event loop; :mod:`~edgekit.sim.network` relays each device's
TCP connection (a cut is a real reset); :mod:`~edgekit.sim.executor` models lifecycle scripts for devices
that run no processes.
"""

from __future__ import annotations

from edgekit.sim.errors import SimulationError, SimulationTimeoutError
from edgekit.sim.executor import SimulatedExecutor
from edgekit.sim.network import NetworkLink
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
