"""Prometheus ``/metrics`` of the local fleet, collected from its state at scrape time (``prometheus_client``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from edgekit.deps import require
from edgekit.fleet.web.snapshot import Snapshotter

__all__ = ["render_metrics"]


def render_metrics(snapshots: Snapshotter) -> tuple[bytes, str]:
    """(body, content type) of the fleet's metrics in the Prometheus text format."""
    prometheus = require("prometheus_client", "the fleet's /metrics")
    from prometheus_client.core import GaugeMetricFamily

    CollectorRegistry, generate_latest = prometheus.CollectorRegistry, prometheus.generate_latest
    CONTENT_TYPE_LATEST = prometheus.CONTENT_TYPE_LATEST

    class FleetCollector:
        def collect(self) -> Iterator[Any]:
            snap = snapshots.snapshot()
            devices = snap["devices"]
            known = GaugeMetricFamily("edgekit_fleet_devices", "Devices registered in the fleet")
            known.add_metric([], len(devices))
            yield known
            connected = GaugeMetricFamily("edgekit_fleet_devices_connected", "Devices connected now (when the fleet knows)")
            connected.add_metric([], sum(1 for d in devices if d["connected"]))
            yield connected
            executions = GaugeMetricFamily(
                "edgekit_fleet_executions",
                "Job executions by deployment, target and status",
                labels=["deployment", "target", "status"],
            )
            for d in snap["deployments"]:
                for status, count in sorted(d["counts"].items()):
                    executions.add_metric([d["id"], d["target"], status], count)
            yield executions
            members = GaugeMetricFamily("edgekit_fleet_group_devices", "Devices in each thing group", labels=["group"])
            for g in snap["groups"]:
                members.add_metric([g["name"]], g["members"])
            yield members
            by_state = GaugeMetricFamily(
                "edgekit_fleet_devices_by_state", "Devices by the state the fleet view shows", labels=["state"]
            )
            states: dict[str, int] = {}
            for d in devices:
                states[d["state"]] = states.get(d["state"], 0) + 1
            for state, count in sorted(states.items()):
                by_state.add_metric([state], count)
            yield by_state
            per_group = {
                "readings": ("edgekit_fleet_readings", "Readings the group's devices accounted for in their window summaries"),
                "pending": ("edgekit_fleet_spool_pending", "Readings or messages the group's devices still hold (spool depth)"),
                "uplinkMessages": ("edgekit_fleet_uplink_messages", "Uplink messages the fleet received from the group"),
            }
            for key, (name, text) in per_group.items():
                family = GaugeMetricFamily(name, text, labels=["group"])
                for g in snap["telemetry"]:
                    family.add_metric([g["group"]], g[key])
                yield family
            answers = GaugeMetricFamily(
                "edgekit_fleet_answers", "Readings answered, by group and by who answered", labels=["group", "source"]
            )
            errors = GaugeMetricFamily(
                "edgekit_fleet_fallback_errors", "Cloud fallback errors by group and kind", labels=["group", "kind"]
            )
            for g in snap["telemetry"]:
                for source in ("local", "cloud", "none"):
                    answers.add_metric([g["group"], source], g[source])
                for kind, count in sorted(g["fallbackErrors"].items()):
                    errors.add_metric([g["group"], kind], count)
            yield answers
            yield errors

    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector())
    return generate_latest(registry), CONTENT_TYPE_LATEST
