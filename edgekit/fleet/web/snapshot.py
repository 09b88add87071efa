"""One JSON snapshot of the fleet for the page: deployments (with their progress over time), groups, devices."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from edgekit.fleet.queries import device_failures
from edgekit.fleet.service import FleetService
from edgekit.fleet.state import FleetState
from edgekit.fleet.telemetry import telemetry_view

__all__ = ["HISTORY_POINTS", "Presence", "Snapshotter", "device_state"]

Presence = Callable[[], Mapping[str, bool]]
"""Which devices are connected now (thing → connected); the simulation knows, the fleet's state does not."""

HISTORY_POINTS: Final = 600  # per deployment: 5 minutes at one sample every 0.5 s


def device_state(last_status: str | None, connected: bool | None) -> str:
    """A tile's state: ``offline`` when the device is known to be disconnected, else its latest execution's status
    (``queued``, ``in_progress``, ``succeeded``, ``failed``, ...), or ``idle`` when it never had one."""
    if connected is False:
        return "offline"
    return (last_status or "idle").lower()


@dataclass
class Snapshotter:
    """Builds snapshots from the fleet's SQLite state and keeps each deployment's counts over time (thread-safe)."""

    state: FleetState
    presence: Presence | None = None
    clock: Callable[[], float] = time.time
    _history: dict[str, deque[dict[str, Any]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> dict[str, Any]:
        summary = FleetService(self.state).summary()
        telemetry = telemetry_view(self.state)
        by_thing = {d.thing: d for d in telemetry.devices}
        online = dict(self.presence()) if self.presence is not None else {}
        now = self.clock()
        with self._lock:
            for d in summary.deployments:
                points = self._history.setdefault(d.id, deque(maxlen=HISTORY_POINTS))
                if not points or points[-1]["counts"] != d.counts:
                    points.append({"t": now, "counts": dict(d.counts)})
            history = {k: list(v) for k, v in self._history.items()}
        return {
            "t": now,
            "deployments": [
                {
                    "id": d.id,
                    "target": d.target,
                    "status": d.status,
                    "createdAt": d.created_at,
                    "counts": d.counts,
                    "reason": d.reason,
                    "history": history.get(d.id, []),
                }
                for d in summary.deployments
            ],
            "telemetry": [
                {
                    "group": g.group,
                    "devices": g.devices,
                    "reporting": g.reporting,
                    "readings": g.readings,
                    "local": g.local,
                    "cloud": g.cloud,
                    "none": g.none,
                    "fallbackErrors": g.fallback_errors,
                    "breakers": g.breakers,
                    "pending": g.pending,
                    "uplinkMessages": g.uplink_messages,
                }
                for g in telemetry.groups
            ],
            "groups": [
                {"name": g.name, "members": g.members, "status": g.deployment_status, "counts": g.counts} for g in summary.groups
            ],
            "devices": [
                {
                    "thing": t.name,
                    "groups": list(t.groups),
                    "status": t.last_status,
                    "deployment": t.deployment_id,
                    "lastSeen": t.last_seen,
                    "connected": online.get(t.name),
                    "state": device_state(t.last_status, online.get(t.name)),
                    "telemetry": _device_telemetry(by_thing.get(t.name)),
                }
                for t in summary.things
            ],
            "failures": [
                {
                    "thing": f.thing,
                    "deployment": f.deployment_id,
                    "status": f.status,
                    "error": f.error_code,
                    "cause": f.cause,
                    "at": f.at,
                }
                for f in device_failures(self.state, 20)
            ],
        }


def _device_telemetry(t: Any) -> dict[str, Any]:
    """What a device reported, for its detail panel (empty when it sent nothing yet)."""
    if t is None or not t.windows:
        return {}
    return {
        "readings": t.readings,
        "answered local / cloud / none": f"{t.local} / {t.cloud} / {t.none}",
        "fallback errors": dict(t.fallback_errors) or "none",
        "breaker": t.breaker or "-",
        "pending (spool)": t.pending,
        "uplink messages": t.uplink_messages,
        "windows": t.windows,
    }
