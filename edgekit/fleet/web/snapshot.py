"""The fleet view as the page and ``/metrics`` see it: :func:`~edgekit.fleet.view.fleet_view` plus who is connected
(when the server knows) and each deployment's progress over time."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from edgekit.fleet.state import FleetState
from edgekit.fleet.view import FleetView, HistoryPoint, fleet_view

__all__ = ["HISTORY_POINTS", "Presence", "Snapshotter"]

Presence = Callable[[], Mapping[str, bool]]
"""Which devices are connected now (thing → connected); the simulation knows, the fleet's state does not."""

HISTORY_POINTS: Final = 600  # per deployment: 5 minutes at one sample every 0.5 s


@dataclass
class Snapshotter:
    """Builds fleet views from the fleet's SQLite state and keeps each deployment's counts over time (thread-safe)."""

    state: FleetState
    presence: Presence | None = None
    clock: Callable[[], float] = time.time
    stand_ins: Mapping[str, str] | None = None
    """The devices a process of another platform stands in for (thing → its platform): see ``DeviceView.stand_in``."""
    _history: dict[str, deque[HistoryPoint]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def view(self) -> FleetView:
        """The fleet now, with each deployment's history (a new point whenever its counts changed)."""
        online = dict(self.presence()) if self.presence is not None else None
        now = self.clock()
        view = fleet_view(self.state, presence=online, now=now, stand_ins=self.stand_ins)
        with self._lock:
            for d in view.deployments:
                points = self._history.setdefault(d.id, deque(maxlen=HISTORY_POINTS))
                if not points or points[-1].counts != d.counts:
                    points.append(HistoryPoint(t=now, counts=dict(d.counts)))
                d.history = list(points)
        return view

    def snapshot(self) -> dict[str, Any]:
        """:meth:`view` as its JSON object (camelCase keys)."""
        return self.view().to_json()
