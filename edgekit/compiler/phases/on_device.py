"""Phase 3b, measured on the target: each candidate that ran here is sent to a device, which times it itself.

The compiler knows nothing of fleets: it gets a :class:`DeviceTimer` (``edgekit.compile(..., measure_on=THING)``
builds one over a running local fleet, :mod:`edgekit.fleet.device_timing`). Each candidate is written as an artifact
of its own (the same files, golden vectors and manifest the chosen one gets), its archive goes to the timer, and the
device's median and p90 replace the host's. A candidate the device can't load or run fails with the device's reason;
the others are ranked by the device's timings. See docs/compile.md (measured on the target).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Protocol

from edgekit.compiler.frontends import SourceModel
from edgekit.compiler.phases.check import Plan
from edgekit.compiler.phases.measure import Measured
from edgekit.compiler.phases.outcomes import Outcomes
from edgekit.compiler.phases.reference import Reference
from edgekit.compiler.phases.select import Choice
from edgekit.compiler.phases.write import write
from edgekit.errors import CompilationError
from edgekit.manifest import Latency, Measurement
from edgekit.progress import Progress

__all__ = ["DeviceTimer", "measure_on_device"]


class DeviceTimer(Protocol):
    """Times artifacts on one device: ``thing`` names it; ``time`` returns, per archive in order, the device's latency or why it could
    not time it (one line), and raises an :class:`~edgekit.errors.EdgekitError` (one line) when the device can't be reached at all."""

    @property
    def thing(self) -> str: ...

    def time(self, archives: list[Path], warmup: int, repeat: int, say: Progress) -> list[Latency | str]: ...


def measure_on_device(
    measured: list[Measured],
    timer: DeviceTimer,
    plan: Plan,
    source: SourceModel,
    reference: Reference,
    outcomes: Outcomes,
    work: Path,
    key: str,
    started: float,
    say: Progress,
) -> list[Measured]:
    """The candidates the device timed, each with the device's latency (the host's accuracy: the same code)."""
    archives: list[Path] = []
    for i, m in enumerate(measured):
        folder = work / f"on-device-{i}"
        (folder / "work").mkdir(parents=True)
        candidate_plan = replace(plan, out=folder / "out", name=f"{plan.name or 'model'}-{m.candidate.name}")
        (folder / "out").mkdir()
        _, archive, _ = write(
            Choice(m, m.candidate.budget), candidate_plan, source, reference, outcomes, folder / "work", key, started
        )
        archives.append(archive)
    say(f"timing {len(archives)} candidate(s) on {timer.thing}")
    timings = timer.time(archives, plan.pipeline.measure.warmup, plan.pipeline.measure.repeat, say)
    on_device: list[Measured] = []
    for m, timing in zip(measured, timings, strict=True):
        report = outcomes.report(m.candidate)
        if isinstance(timing, str):
            report.status = "failed"
            report.reason = f"{timer.thing} could not run it: {timing}"
            say(f"{m.candidate.name}: failed on {timer.thing} ({timing})")
            continue
        measurement = Measurement(
            on="device", host=timer.thing, measured_on=timer.thing, latency=timing, accuracy=m.measurement.accuracy
        )
        report.measured = measurement
        say(f"{m.candidate.name}: {timing.median_ms:.3f} ms median on {timer.thing}")
        on_device.append(Measured(m.build, measurement))
    if not on_device:
        raise CompilationError(
            f"no candidate could be timed on {timer.thing}: "
            + "; ".join(f"{m.candidate.name}: {t}" for m, t in zip(measured, timings, strict=True) if isinstance(t, str))
        )
    return on_device
