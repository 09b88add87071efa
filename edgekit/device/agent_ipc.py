"""Where the device agent and its IPC meet (:mod:`edgekit.device.ipc`).

* :class:`AgentHost` is what the IPC handler reads and changes through: the components' live configurations
  (``GetConfiguration``, ``UpdateConfiguration``, saved in ``state.json``) and the states they report
  (``UpdateState`` ERRORED runs the component's error path, as the nucleus's ``reportState`` does).
* :func:`restart_needed` decides, as the nucleus does, whether a deployment that changes only a component's
  configuration restarts it: only when a lifecycle string (Script, Setenv, Skipif, ...) of the component reads
  a value that changed, or a dependent reads its configuration. Otherwise the running component keeps running
  and hears of the change through ``SubscribeToConfigurationUpdate``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from edgekit.device.agent_state import InstalledComponent
from edgekit.device.lifecycle import Supervisor
from edgekit.device.variables import VariableContext, interpolate

__all__ = ["AgentHost", "restart_needed"]


class AgentHost:
    """The IPC handler's view of the agent's components (see the module docstring)."""

    def __init__(
        self,
        thing: str,
        records: Callable[[], Mapping[str, InstalledComponent]],
        supervisor: Supervisor,
        save: Callable[[], None],
    ) -> None:
        self.thing = thing
        self._records = records
        self._sup = supervisor
        self._save = save

    def configuration(self, component: str) -> dict[str, Any] | None:
        record = self._records().get(component)
        return record.configuration if record is not None else None

    def set_configuration(self, component: str, configuration: dict[str, Any]) -> None:
        record = self._records().get(component)
        if record is not None:
            record.configuration = configuration
            self._save()

    def report_state(self, component: str, state: str) -> None:
        comp = self._sup.components.get(component)
        if comp is not None and state == "ERRORED":
            self._sup.spawn(comp.report_errored(), f"errored {component}")


def _strings(value: Any, ctx: VariableContext) -> Any:
    if isinstance(value, str):
        return interpolate(value, ctx)
    if isinstance(value, Mapping):
        return {str(k): _strings(v, ctx) for k, v in value.items()}
    if isinstance(value, list):
        return [_strings(v, ctx) for v in value]
    return value


def restart_needed(sup: Supervisor, current: InstalledComponent, new: InstalledComponent) -> bool:
    """Whether moving ``current`` to ``new`` (same component) needs a restart (see the module docstring)."""
    if (
        current.version != new.version
        or current.recipe != new.recipe
        or current.manifest_index != new.manifest_index
        or current.state in ("BROKEN", "NEW", "ERRORED")
    ):
        return True
    comp = sup.components.get(current.name)
    if comp is None or comp.record is not current:
        return True
    marker = "{" + current.name + ":configuration:"
    for other in sup.components.values():
        depends = other.name != current.name and current.name in other.record.dependencies()
        if depends and marker in json.dumps(other.lifecycle()):
            return True
    ctx = sup.variables(comp)
    after = replace(ctx, own=replace(ctx.own, configuration=new.configuration))
    lifecycle = comp.lifecycle()
    return bool(_strings(lifecycle, ctx) != _strings(lifecycle, after))
