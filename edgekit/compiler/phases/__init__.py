"""The compile driver's phases, each a function returning a typed result (see :mod:`edgekit.compiler.compile`):

check → (load the model) → prepare → build → measure → select → write
"""

from __future__ import annotations

from edgekit.compiler.phases.build import Build, Prepared, build, prepare, screen
from edgekit.compiler.phases.check import Plan, PlannedCandidate, check
from edgekit.compiler.phases.guard import stage
from edgekit.compiler.phases.measure import Measured, measure
from edgekit.compiler.phases.on_device import DeviceTimer, measure_on_device
from edgekit.compiler.phases.outcomes import Outcomes
from edgekit.compiler.phases.reference import Reference, reference_outputs
from edgekit.compiler.phases.select import Choice, budget_problems, select
from edgekit.compiler.phases.split import split_samples
from edgekit.compiler.phases.write import write

__all__ = [
    "Build",
    "Choice",
    "DeviceTimer",
    "Measured",
    "Outcomes",
    "Plan",
    "PlannedCandidate",
    "Prepared",
    "Reference",
    "budget_problems",
    "build",
    "check",
    "measure",
    "measure_on_device",
    "prepare",
    "reference_outputs",
    "screen",
    "select",
    "split_samples",
    "stage",
    "write",
]
