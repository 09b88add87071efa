"""One view of the fleet: deployments, groups, devices, failures and telemetry in one shape.

:func:`fleet_view` builds a :class:`FleetView` from the fleet's state. The same object, serialized with
``model_dump(by_alias=True, mode="json")`` (camelCase keys), is what ``edgekit fleet status --json`` prints,
``/api/fleet`` and the page's event stream send, ``/metrics`` is collected from, the demo sums and
:class:`~edgekit.sim.SimulationStatus` carries. Python code reads its snake_case attributes. Times are seconds since
the epoch, each fact under one name everywhere (``createdAt``, ``lastSeen``, ``lastTelemetryAt``, ``failedAt``).
See docs/local-fleet.md (the fleet view).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from edgekit.fleet.queries import device_failures
from edgekit.fleet.service import FleetService
from edgekit.fleet.state import FleetState, TelemetryRecord

__all__ = [
    "FAILURES_SHOWN",
    "ComponentRef",
    "DeploymentView",
    "DeviceTelemetry",
    "DeviceView",
    "FailureView",
    "FleetView",
    "GroupTelemetry",
    "GroupView",
    "HistoryPoint",
    "device_state",
    "fleet_view",
]

FAILURES_SHOWN: Final = 20
"""How many failures a view lists (of current deployments, and as many of inactive ones), newest first."""


class ViewModel(BaseModel):
    """camelCase in JSON (``by_alias``), snake_case in Python; built by name."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ComponentRef(ViewModel):
    name: str
    version: str


class HistoryPoint(ViewModel):
    """A deployment's execution counts by status at time ``t`` (kept while a server runs; not stored)."""

    t: float
    counts: dict[str, int]


class DeploymentView(ViewModel):
    id: str
    name: str | None = None
    """The spec's ``deploymentName``, when it has one."""
    target: str
    status: str
    created_at: float
    updated_at: float
    components: list[ComponentRef] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)
    """Its job executions by status."""
    total: int = 0
    replaced_by: str | None = None
    reason: str | None = None
    history: list[HistoryPoint] = Field(default_factory=list)


class GroupView(ViewModel):
    """A thing group, its members and the counts of its latest deployment's executions."""

    name: str
    members: int
    deployment_id: str | None = None
    deployment_status: str | None = None
    counts: dict[str, int] = Field(default_factory=dict)


class DeviceTelemetry(ViewModel):
    """What a device's inference components reported in their window summaries (de-duplicated)."""

    windows: int = 0
    readings: int = 0
    local: int = 0
    cloud: int = 0
    none: int = 0
    fallback_errors: dict[str, int] = Field(default_factory=dict)
    breaker: str | None = None
    """The breaker's state in the latest window (the worst of its components')."""
    component_pending: int = 0
    """Readings or messages the components still held in their own outbox at the latest window (not the agent's
    uplink spool)."""
    uplink_messages: int = 0
    """Messages the fleet received from the device (any topic under ``devices/<thing>/``)."""
    unanswered_messages: int = 0
    malformed: int = 0
    duplicates: int = 0
    """Window summaries delivered again (at-least-once uplink), counted once."""


class DeviceView(ViewModel):
    thing: str
    state: str
    """The tile's state: ``offline``, else its latest execution's status in lower case, or ``idle``."""
    groups: list[str] = Field(default_factory=list)
    profile: str = ""
    platform: dict[str, str] = Field(default_factory=dict)
    last_status: str | None = None
    """The status of its most recently changed job execution."""
    deployment_id: str | None = None
    """The deployment of that execution."""
    connected: bool | None = None
    """Connected to the broker now (``None`` where the server does not know)."""
    last_seen: float | None = None
    """When the fleet last heard from it over MQTT (a Jobs request)."""
    last_telemetry_at: float | None = None
    """When the fleet last received telemetry from it."""
    stand_in: str | None = None
    """The platform of the process that stands in for this device (``linux/amd64``), when it differs from the
    device's own: a simulated device then runs a host build of the same candidate, not the device's code (see
    docs/local-fleet.md, stand-ins). ``None``: the device runs its own code, or the fleet does not know."""
    telemetry: DeviceTelemetry = Field(default_factory=DeviceTelemetry)


class GroupTelemetry(ViewModel):
    """A thing group's devices' telemetry, summed."""

    group: str
    devices: int = 0
    reporting: int = 0
    """Members that sent at least one window summary."""
    windows: int = 0
    readings: int = 0
    local: int = 0
    cloud: int = 0
    none: int = 0
    fallback_errors: dict[str, int] = Field(default_factory=dict)
    breakers: dict[str, int] = Field(default_factory=dict)
    """Members by their breaker's state."""
    component_pending: int = 0
    uplink_messages: int = 0
    duplicates: int = 0
    last_telemetry_at: float | None = None


class FailureView(ViewModel):
    """A device whose execution of a deployment ended badly, with the device's reason."""

    thing: str
    deployment_id: str
    deployment_status: str
    status: str
    error_code: str | None = None
    cause: str | None = None
    failed_at: float


class FleetView(ViewModel):
    """The fleet at one moment: see the module's docstring."""

    generated_at: float
    deployments: list[DeploymentView] = Field(default_factory=list)
    """Oldest first."""
    groups: list[GroupView] = Field(default_factory=list)
    devices: list[DeviceView] = Field(default_factory=list)
    failures: list[FailureView] = Field(default_factory=list)
    """Of each target's latest deployment, newest first."""
    inactive_failures: list[FailureView] = Field(default_factory=list)
    """Of deployments since replaced by a newer one to their target (what the devices no longer run), newest first."""
    telemetry: list[GroupTelemetry] = Field(default_factory=list)
    """Per thing group; each device's own is :attr:`DeviceView.telemetry`."""

    @property
    def connected(self) -> int:
        """Devices known to be connected now."""
        return sum(1 for d in self.devices if d.connected)

    def device(self, thing: str) -> DeviceView:
        """The device ``thing`` (``KeyError`` when the fleet has none)."""
        for d in self.devices:
            if d.thing == thing:
                return d
        raise KeyError(thing)

    def group(self, name: str) -> GroupView:
        for g in self.groups:
            if g.name == name:
                return g
        raise KeyError(name)

    def group_telemetry(self, name: str) -> GroupTelemetry:
        for g in self.telemetry:
            if g.group == name:
                return g
        return GroupTelemetry(group=name)

    def to_json(self) -> dict[str, object]:
        """The camelCase JSON object (what every output of the fleet view shows)."""
        return self.model_dump(by_alias=True, mode="json")


def device_state(last_status: str | None, connected: bool | None) -> str:
    """A tile's state: ``offline`` when the device is known to be disconnected, else its latest execution's status
    (``queued``, ``in_progress``, ``succeeded``, ``failed``, ...), or ``idle`` when it never had one."""
    if connected is False:
        return "offline"
    return (last_status or "idle").lower()


def _components(spec: Mapping[str, object]) -> list[ComponentRef]:
    components = spec.get("components")
    if not isinstance(components, Mapping):
        return []
    out = []
    for name, body in sorted(components.items()):
        version = body.get("componentVersion") if isinstance(body, Mapping) else None
        out.append(ComponentRef(name=str(name), version=str(version or "")))
    return out


def _device_telemetry(record: TelemetryRecord | None) -> DeviceTelemetry:
    if record is None:
        return DeviceTelemetry()
    return DeviceTelemetry(
        windows=record.windows,
        readings=record.readings,
        local=record.local,
        cloud=record.cloud,
        none=record.none,
        fallback_errors=dict(record.fallback_errors),
        breaker=record.breaker,
        component_pending=record.component_pending,
        uplink_messages=record.messages,
        unanswered_messages=record.unanswered_messages,
        malformed=record.malformed,
        duplicates=record.duplicates,
    )


def _group_telemetry(devices: Sequence[DeviceView]) -> list[GroupTelemetry]:
    groups: dict[str, GroupTelemetry] = {}
    for d in devices:
        t = d.telemetry
        for name in d.groups:
            g = groups.setdefault(name, GroupTelemetry(group=name))
            g.devices += 1
            g.reporting += 1 if t.windows else 0
            g.windows += t.windows
            g.readings += t.readings
            g.local += t.local
            g.cloud += t.cloud
            g.none += t.none
            g.component_pending += t.component_pending
            g.uplink_messages += t.uplink_messages
            g.duplicates += t.duplicates
            for kind, n in t.fallback_errors.items():
                g.fallback_errors[kind] = g.fallback_errors.get(kind, 0) + n
            if t.breaker:
                g.breakers[t.breaker] = g.breakers.get(t.breaker, 0) + 1
            if d.last_telemetry_at is not None:
                g.last_telemetry_at = max(g.last_telemetry_at or 0.0, d.last_telemetry_at)
    return sorted(groups.values(), key=lambda g: g.group)


def fleet_view(
    state: FleetState,
    *,
    presence: Mapping[str, bool] | None = None,
    history: Mapping[str, Sequence[HistoryPoint]] | None = None,
    failures: int = FAILURES_SHOWN,
    now: float | None = None,
    stand_ins: Mapping[str, str] | None = None,
) -> FleetView:
    """The fleet in ``state`` now. ``presence``: which devices are connected (thing → connected), where the caller
    knows; ``history``: each deployment's counts over time, where the caller keeps them; ``stand_ins``: the devices
    a process of another platform stands in for (thing → that platform), where a simulation says so."""
    summary = FleetService(state).summary()
    stored = state.deployments()  # oldest first
    records = {d.id: d for d in stored}
    online = dict(presence or {})
    telemetry = state.telemetry()
    things = {t.name: t for t in state.things()}
    deployments = []
    for d in summary.deployments:
        record = records[d.id]
        name = record.spec.get("deploymentName")
        deployments.append(
            DeploymentView(
                id=d.id,
                name=str(name) if name else None,
                target=d.target,
                status=d.status,
                created_at=d.created_at,
                updated_at=record.updated_at,
                components=_components(record.spec),
                counts=dict(d.counts),
                total=d.total,
                replaced_by=d.replaced_by,
                reason=d.reason,
                history=list((history or {}).get(d.id, ())),
            )
        )
    groups = [
        GroupView(
            name=g.name,
            members=g.members,
            deployment_id=g.deployment_id,
            deployment_status=g.deployment_status,
            counts=dict(g.counts),
        )
        for g in summary.groups
    ]
    devices = []
    for t in summary.things:
        thing = things.get(t.name)
        reported = telemetry.get(t.name)
        connected = online.get(t.name)
        devices.append(
            DeviceView(
                thing=t.name,
                state=device_state(t.last_status, connected),
                groups=list(t.groups),
                profile=thing.profile if thing else "",
                platform=dict(thing.platform) if thing else {},
                last_status=t.last_status,
                deployment_id=t.deployment_id,
                connected=connected,
                last_seen=t.last_seen,
                last_telemetry_at=reported.last_telemetry_at if reported else None,
                stand_in=(stand_ins or {}).get(t.name),
                telemetry=_device_telemetry(reported),
            )
        )
    latest: dict[str, str] = {}
    for record in stored:  # the last one of a target wins
        latest[record.target] = record.id
    current: list[FailureView] = []
    inactive: list[FailureView] = []
    for f in device_failures(state, limit=None):
        deployment = records.get(f.deployment_id)
        view = FailureView(
            thing=f.thing,
            deployment_id=f.deployment_id,
            deployment_status=deployment.status if deployment else "",
            status=f.status,
            error_code=f.error_code,
            cause=f.cause,
            failed_at=f.at,
        )
        is_current = deployment is not None and latest.get(deployment.target) == deployment.id
        (current if is_current else inactive).append(view)
    return FleetView(
        generated_at=time.time() if now is None else now,
        deployments=deployments,
        groups=groups,
        devices=devices,
        failures=current[:failures],
        inactive_failures=inactive[:failures],
        telemetry=_group_telemetry(devices),
    )
