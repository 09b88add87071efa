"""The fleet at a glance in a browser and in Prometheus: a live page and ``/metrics`` on the fleet's HTTP server.

See docs/local-fleet.md (the fleet view).
"""

from __future__ import annotations

from edgekit.fleet.view import device_state
from edgekit.fleet.web.snapshot import Presence, Snapshotter

__all__ = ["Presence", "Snapshotter", "device_state"]
