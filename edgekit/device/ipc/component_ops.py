"""The IPC operations about a component itself: configuration, state, and deployments that update it.

* ``GetConfiguration`` (``keyPath`` [] = all; a leaf comes back as ``{<last key>: value}``, as the nucleus sends
  it; another component's configuration may be read, as on the nucleus), ``UpdateConfiguration`` (merge
  ``valueToMerge`` at ``keyPath`` into the caller's own configuration; not under ``accessControl``; a
  ``timestamp`` older than the last update is ``FailedUpdateConditionCheckError``) and
  ``SubscribeToConfigurationUpdate`` (one ``ConfigurationUpdateEvents`` per changed key under ``keyPath``,
  whether a deployment's merge or an ``UpdateConfiguration`` changed it).
* ``UpdateState``: ``RUNNING`` or ``ERRORED``, handed to the agent (ERRORED runs the component's error path).
* ``SubscribeToComponentUpdates`` / ``DeferComponentUpdate``: before a deployment stops or changes components
  (policy ``NOTIFY_COMPONENTS``), every subscriber gets a ``preUpdateEvent``; the agent waits until each answered
  with ``DeferComponentUpdate`` (``recheckAfterMs`` 0 = go ahead) or the policy's timeout passed, waits the
  longest deferral and asks again; after the deployment a ``postUpdateEvent`` follows
  (``UpdateSystemPolicyService``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgekit.device.ipc.errors import FailedUpdateConditionCheckError, InvalidArgumentsError, ResourceNotFoundError, ServiceError
from edgekit.device.ipc.handler import NS, EventSink, Reply, operation
from edgekit.greengrass.access import ACCESS_CONTROL

if TYPE_CHECKING:
    from edgekit.device.ipc.handler import IpcHandler

__all__ = ["ComponentEvents", "changed_paths"]

log = logging.getLogger(__name__)

KEY_NOT_FOUND = "Key not found"


def _key_path(request: Mapping[str, Any]) -> list[str]:
    path = request.get("keyPath") or []
    if not isinstance(path, list) or not all(isinstance(p, str) for p in path):
        raise InvalidArgumentsError("keyPath must be a list of strings")
    return list(path)


def _find(config: Any, path: list[str]) -> tuple[bool, Any]:
    node = config
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def changed_paths(old: Any, new: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every leaf (or removed / added / retyped node) that differs between two configurations."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        for key in dict.fromkeys([*old, *new]):
            if key not in old or key not in new:
                yield (*prefix, str(key))
            else:
                yield from changed_paths(old[key], new[key], (*prefix, str(key)))
    elif old != new:
        yield prefix


@dataclass(eq=False)
class _ConfigWatch:
    subscriber: str
    component: str
    path: tuple[str, ...]
    sink: EventSink


@dataclass
class _PendingUpdate:
    deployment_id: str
    waiting: set[str]
    deferrals: dict[str, int] = field(default_factory=dict)
    answered: asyncio.Event = field(default_factory=asyncio.Event)


class ComponentEvents:
    """Configuration watchers and component-update subscribers of one device."""

    def __init__(self, handler: IpcHandler) -> None:
        self.handler = handler
        self._watches: list[_ConfigWatch] = []
        self._updates: dict[str, list[EventSink]] = {}
        self._pending: _PendingUpdate | None = None
        self._modified: dict[str, float] = {}

    # ------------------------------------------------------------------ configuration

    def configuration_changed(self, component: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> int:
        """Tell the watchers of ``component`` what changed; returns how many events went out."""
        paths = list(changed_paths(old or {}, new or {}))
        sent = 0
        for watch in list(self._watches):
            if watch.component != component:
                continue
            for path in paths:
                n = min(len(path), len(watch.path))
                if path[:n] == watch.path[:n]:
                    event = {"componentName": component, "keyPath": list(path)}
                    watch.sink.send(NS + "ConfigurationUpdateEvents", {"configurationUpdateEvent": event})
                    sent += 1
        return sent

    # ------------------------------------------------------------------ component updates

    @property
    def update_subscribers(self) -> list[str]:
        return [c for c, sinks in self._updates.items() if sinks]

    async def before_update(self, deployment_id: str, timeout_s: float) -> None:
        """Notify the subscribers and wait out their deferrals (see the module docstring)."""
        loop = asyncio.get_running_loop()
        while self.update_subscribers:
            pending = _PendingUpdate(deployment_id, set(self.update_subscribers))
            self._pending = pending
            event = {"preUpdateEvent": {"deploymentId": deployment_id, "isGgcRestarting": False}}
            for component in list(pending.waiting):
                for sink in self._updates.get(component, []):
                    sink.send(NS + "ComponentUpdatePolicyEvents", event)
            end = loop.time() + timeout_s
            while pending.waiting and loop.time() < end:
                pending.answered.clear()
                try:
                    async with asyncio.timeout(end - loop.time()):
                        await pending.answered.wait()
                except TimeoutError:
                    break
            self._pending = None
            delay_ms = max(pending.deferrals.values(), default=0)
            if delay_ms <= 0:
                return
            log.info("deployment %s deferred for %d ms by %s", deployment_id, delay_ms, sorted(pending.deferrals))
            await asyncio.sleep(delay_ms / 1000.0)

    def after_update(self, deployment_id: str) -> None:
        event = {"postUpdateEvent": {"deploymentId": deployment_id}}
        for sinks in self._updates.values():
            for sink in sinks:
                sink.send(NS + "ComponentUpdatePolicyEvents", event)

    def defer(self, component: str, deployment_id: str, recheck_ms: int) -> None:
        if component not in self.update_subscribers:
            raise InvalidArgumentsError("Component is not subscribed to component update events")
        pending = self._pending
        if pending is None or pending.deployment_id != deployment_id or component not in pending.waiting:
            raise ServiceError("Time limit to respond to PreComponentUpdateEvent exceeded")
        pending.waiting.discard(component)
        if recheck_ms > 0:
            pending.deferrals[component] = recheck_ms
        pending.answered.set()


# ---------------------------------------------------------------------- operations


@operation("GetConfiguration")
async def _get_configuration(h: IpcHandler, component: str, request: dict[str, Any], sink: EventSink | None) -> Reply:
    name = request.get("componentName") or component
    config = h.host.configuration(str(name))
    if config is None:
        raise ResourceNotFoundError(KEY_NOT_FOUND, resourceType="Component", resourceName=str(name))
    path = _key_path(request)
    found, value = _find(config, path)
    if not found:
        raise ResourceNotFoundError(KEY_NOT_FOUND)
    if path and not isinstance(value, Mapping):
        value = {path[-1]: value}
    return Reply(NS + "GetConfigurationResponse", {"componentName": name, "value": copy.deepcopy(value)})


@operation("UpdateConfiguration")
async def _update_configuration(h: IpcHandler, component: str, request: dict[str, Any], sink: EventSink | None) -> Reply:
    timestamp = request.get("timestamp")
    if not isinstance(timestamp, int | float):
        raise InvalidArgumentsError("Timestamp is required")
    value = request.get("valueToMerge")
    if not isinstance(value, Mapping):
        raise InvalidArgumentsError("ValueToMerge is required")
    path = _key_path(request)
    if (path and path[0] == ACCESS_CONTROL) or (not path and ACCESS_CONTROL in value):
        raise InvalidArgumentsError(f"Config update is not allowed for following fields [{ACCESS_CONTROL}]")
    old = h.host.configuration(component)
    if old is None:
        raise InvalidArgumentsError(f"Component config not found for component {component}")
    events = h.events
    if float(timestamp) < events._modified.get(component, float("-inf")):
        raise FailedUpdateConditionCheckError("Proposed timestamp is older than the config's latest modified timestamp")
    new = copy.deepcopy(old)
    node = new
    for part in path:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    _merge(node, value)
    events._modified[component] = float(timestamp)
    h.host.set_configuration(component, new)
    events.configuration_changed(component, old, new)
    return Reply(NS + "UpdateConfigurationResponse", {})


def _merge(into: dict[str, Any], value: Mapping[str, Any]) -> None:
    for key, item in value.items():
        if isinstance(item, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], item)
        else:
            into[key] = copy.deepcopy(item)


@operation("SubscribeToConfigurationUpdate", streaming=True)
async def _subscribe_config(h: IpcHandler, component: str, request: dict[str, Any], sink: EventSink | None) -> Reply:
    name = str(request.get("componentName") or component)
    config = h.host.configuration(name)
    path = _key_path(request)
    if config is None or not _find(config, path)[0]:
        raise ResourceNotFoundError(KEY_NOT_FOUND)
    if sink is None:
        raise ServiceError("SubscribeToConfigurationUpdate needs a stream")
    watch = _ConfigWatch(component, name, tuple(path), sink)
    watches = h.events._watches
    watches.append(watch)

    def remove() -> None:
        if watch in watches:
            watches.remove(watch)

    return Reply(NS + "SubscribeToConfigurationUpdateResponse", {}, remove)


@operation("UpdateState")
async def _update_state(h: IpcHandler, component: str, request: dict[str, Any], sink: EventSink | None) -> Reply:
    state = request.get("state")
    if state not in ("RUNNING", "ERRORED"):
        raise InvalidArgumentsError(f"state must be RUNNING or ERRORED, got {state!r}")
    if h.host.configuration(component) is None:
        raise ResourceNotFoundError("Component with given name not found", resourceType="Component", resourceName=component)
    h.host.report_state(component, str(state))
    return Reply(NS + "UpdateStateResponse", {})


@operation("SubscribeToComponentUpdates", streaming=True)
async def _subscribe_updates(h: IpcHandler, component: str, request: dict[str, Any], sink: EventSink | None) -> Reply:
    if sink is None:
        raise ServiceError("SubscribeToComponentUpdates needs a stream")
    sinks = h.events._updates.setdefault(component, [])
    sinks.append(sink)
    target = sink

    def remove() -> None:
        if target in sinks:
            sinks.remove(target)

    return Reply(NS + "SubscribeToComponentUpdatesResponse", {}, remove)


@operation("DeferComponentUpdate")
async def _defer(h: IpcHandler, component: str, request: dict[str, Any], sink: EventSink | None) -> Reply:
    deployment_id = request.get("deploymentId")
    if not isinstance(deployment_id, str) or not deployment_id:
        raise InvalidArgumentsError("Cannot defer the update, the deployment ID provided was null")
    recheck = request.get("recheckAfterMs") or 0
    if not isinstance(recheck, int) or recheck < 0:
        raise InvalidArgumentsError("recheckAfterMs must be a non-negative integer")
    h.events.defer(component, deployment_id, recheck)
    return Reply(NS + "DeferComponentUpdateResponse", {})
