"""The simulation's errors (exit code 22). See docs/errors.md."""

from __future__ import annotations

from edgekit.errors import EdgekitError

__all__ = ["SimulationError", "SimulationTimeoutError"]


class SimulationError(EdgekitError):
    """The simulation could not start, or a fault names something the simulation does not have."""

    exit_code = 22


class SimulationTimeoutError(SimulationError, TimeoutError):
    """A deployment did not finish within the time given; the message carries its counts."""
