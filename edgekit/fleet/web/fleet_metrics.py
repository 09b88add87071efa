"""Prometheus ``/metrics`` of the local fleet, collected from the fleet view at scrape time (``prometheus_client``).

Levels are gauges (devices, connections, executions waiting or running, what components still hold); what only
grows is a counter, named ``..._total`` (readings, answers, fallback errors, uplink messages, windows, finished
executions). A group's counters are its members' sums, so they drop when a device leaves the group: Prometheus
takes that as a counter reset. See docs/local-fleet.md (the fleet view).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from edgekit.deps import require
from edgekit.fleet.jobs import TERMINAL_STATUSES
from edgekit.fleet.web.snapshot import Snapshotter

__all__ = ["render_metrics"]


def render_metrics(snapshots: Snapshotter) -> tuple[bytes, str]:
    """(body, content type) of the fleet's metrics in the Prometheus text format."""
    prometheus = require("prometheus_client", "the fleet's /metrics")
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    CollectorRegistry, generate_latest = prometheus.CollectorRegistry, prometheus.generate_latest
    CONTENT_TYPE_LATEST = prometheus.CONTENT_TYPE_LATEST

    class FleetCollector:
        def collect(self) -> Iterator[Any]:
            view = snapshots.view()
            known = GaugeMetricFamily("edgekit_fleet_devices", "Devices registered in the fleet")
            known.add_metric([], len(view.devices))
            yield known
            connected = GaugeMetricFamily("edgekit_fleet_devices_connected", "Devices connected now (when the fleet knows)")
            connected.add_metric([], view.connected)
            yield connected
            by_state = GaugeMetricFamily(
                "edgekit_fleet_devices_by_state", "Devices by the state the fleet view shows", labels=["state"]
            )
            states: dict[str, int] = {}
            for d in view.devices:
                states[d.state] = states.get(d.state, 0) + 1
            for state, count in sorted(states.items()):
                by_state.add_metric([state], count)
            yield by_state
            members = GaugeMetricFamily("edgekit_fleet_group_devices", "Devices in each thing group", labels=["group"])
            for g in view.groups:
                members.add_metric([g.name], g.members)
            yield members

            labels = ["deployment", "target", "status"]
            unfinished = GaugeMetricFamily(
                "edgekit_fleet_executions", "Job executions not finished (QUEUED, IN_PROGRESS) by deployment", labels=labels
            )
            finished = CounterMetricFamily(
                "edgekit_fleet_executions_finished", "Job executions finished, by deployment and final status", labels=labels
            )
            for deployment in view.deployments:
                for status, count in sorted(deployment.counts.items()):
                    family = finished if status in TERMINAL_STATUSES else unfinished
                    family.add_metric([deployment.id, deployment.target, status], count)
            yield unfinished
            yield finished

            pending = GaugeMetricFamily(
                "edgekit_fleet_component_pending",
                "Readings or messages the group's inference components still hold in their own outbox (latest window)",
                labels=["group"],
            )
            for t in view.telemetry:
                pending.add_metric([t.group], t.component_pending)
            yield pending
            per_group = {
                "readings": ("edgekit_fleet_readings", "Readings the group's devices accounted for in their window summaries"),
                "windows": ("edgekit_fleet_telemetry_windows", "Window summaries received from the group (each counted once)"),
                "duplicates": ("edgekit_fleet_telemetry_duplicates", "Window summaries the group's uplink delivered again"),
                "uplink_messages": ("edgekit_fleet_uplink_messages", "Uplink messages the fleet received from the group"),
            }
            for key, (name, text) in per_group.items():
                counter = CounterMetricFamily(name, text, labels=["group"])
                for t in view.telemetry:
                    counter.add_metric([t.group], getattr(t, key))
                yield counter
            answers = CounterMetricFamily(
                "edgekit_fleet_answers", "Readings answered, by group and by who answered", labels=["group", "source"]
            )
            errors = CounterMetricFamily(
                "edgekit_fleet_fallback_errors", "Cloud fallback errors by group and kind", labels=["group", "kind"]
            )
            for t in view.telemetry:
                for source in ("local", "cloud", "none"):
                    answers.add_metric([t.group, source], getattr(t, source))
                for kind, count in sorted(t.fallback_errors.items()):
                    errors.add_metric([t.group, kind], count)
            yield answers
            yield errors

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
