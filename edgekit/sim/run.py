"""Running a simulation in the foreground: publish, deploy, then watch until done or for a while.

See docs/local-fleet.md (``edgekit simulate``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgekit.greengrass.deployment import DeploymentSpec
from edgekit.progress import Progress, no_progress
from edgekit.sim.simulation import Simulation, SimulationStatus

__all__ = ["SimulationRun", "run_simulation"]

Watch = Callable[[SimulationStatus], None]


@dataclass(frozen=True)
class SimulationRun:
    """What :func:`run_simulation` did: the deployments it made (id, spec) and the fleet at the end."""

    fleet: str
    mode: str
    tls: bool
    state: Path
    deployments: tuple[tuple[str, DeploymentSpec], ...]
    final: SimulationStatus


async def run_simulation(
    sim: Simulation,
    *,
    build: str | Path | None = None,
    deployments: Sequence[DeploymentSpec] = (),
    until_done: bool = False,
    duration: float | None = None,
    watch: Watch | None = None,
    every: float = 0.5,
    progress: Progress | None = None,
) -> SimulationRun:
    """Start ``sim`` (when it isn't), publish ``build``, make ``deployments``, then call ``watch`` every ``every``
    seconds with the fleet's status until no deployment is ACTIVE (``until_done``) or ``duration`` has passed
    (neither: until cancelled). The caller closes ``sim``."""
    say = progress or no_progress
    if sim.state is None:
        sim.progress = say
        await sim.start()
    if build is not None:
        published = sim.publish(build)
        say(f"published {', '.join(f'{p.name} {p.version}' for p in published)}")
    made = tuple((sim.deploy(spec), spec) for spec in deployments)
    for deployment_id, spec in made:
        say(f"deployment {deployment_id} to {spec.target_arn}: {', '.join(spec.components)}")
    started = time.monotonic()

    def done() -> bool:
        if duration is not None and time.monotonic() - started >= duration:
            return True
        return until_done and sim.state is not None and not sim.state.deployments(statuses=("ACTIVE",))

    while not done():
        if watch is not None:
            watch(sim.status())
        await asyncio.sleep(every)
    return SimulationRun(sim.fleet.name, sim.mode, sim.tls, sim.folder.root, made, sim.status())
