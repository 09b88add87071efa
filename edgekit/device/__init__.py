"""The device agent: a small Greengrass-nucleus-like runtime, the same code for a real Linux device and a simulated one.

::

    agent = DeviceAgent("gw-1", "/var/lib/edgekit/gw-1", {"os": "linux", "architecture": "amd64"},
                        "http://fleet:8080", groups=["line-1"], report=on_state)
    await agent.resume()                     # after a (re)start: bring back what ran
    outcome = await agent.apply(job)         # a JobDocument → DeploymentOutcome

See docs/device-agent.md.
"""

from __future__ import annotations

from edgekit.clock import Clock, SystemClock
from edgekit.device.agent import DeviceAgent, parse_target
from edgekit.device.agent_state import DeviceLayout, DeviceState
from edgekit.device.errors import ArtifactDownloadError, DeviceError, UnsafeArchiveError
from edgekit.device.executor import Executor, InProcessExecutor, StepSpec, SubprocessExecutor
from edgekit.device.lifecycle import StateCallback
from edgekit.device.outcome import ComponentOutcome, DeploymentOutcome

__all__ = [
    "ArtifactDownloadError",
    "Clock",
    "ComponentOutcome",
    "DeploymentOutcome",
    "DeviceAgent",
    "DeviceError",
    "DeviceLayout",
    "DeviceState",
    "Executor",
    "InProcessExecutor",
    "StateCallback",
    "StepSpec",
    "SubprocessExecutor",
    "SystemClock",
    "UnsafeArchiveError",
    "parse_target",
]
