"""Recipe variables, interpolated into every lifecycle string (Script, Setenv, Skipif) before a step runs.

See docs/device-agent.md (lifecycle, configuration, variables).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.device.configuration import get_pointer

__all__ = ["ComponentView", "VariableContext", "interpolate"]

logger = logging.getLogger(__name__)

_VARIABLE = re.compile(r"\{([^{}:\s]+):([^{}:]+)(?::([^{}]*))?\}")
_NAMESPACES = frozenset({"artifacts", "work", "kernel", "iot", "configuration"})


@dataclass(frozen=True)
class ComponentView:
    """What one component exposes to variables."""

    artifacts: Path
    decompressed: Path
    work: Path
    configuration: Mapping[str, Any]


@dataclass(frozen=True)
class VariableContext:
    name: str
    thing: str
    kernel_root: Path
    own: ComponentView
    dependencies: Mapping[str, ComponentView] = field(default_factory=dict)  # direct dependencies only


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _lookup(view: ComponentView, namespace: str, key: str) -> str | None:
    if namespace == "artifacts" and key == "path":
        return str(view.artifacts)
    if namespace == "artifacts" and key == "decompressedPath":
        return str(view.decompressed)
    if namespace == "work" and key == "path":
        return str(view.work)
    if namespace == "configuration":
        try:
            found, value = get_pointer(view.configuration, key)
        except ValueError:
            return None
        return _text(value) if found else None
    return None


def interpolate(text: str, ctx: VariableContext) -> str:
    """``text`` with every resolvable recipe variable replaced (see docs/device-agent.md: lifecycle, configuration, variables)."""

    def replace(m: re.Match[str]) -> str:
        first, second, third = m.group(1), m.group(2), m.group(3)
        value: str | None = None
        if first in _NAMESPACES:
            key = second if third is None else f"{second}:{third}"
            if first == "kernel" and key == "rootPath":
                value = str(ctx.kernel_root)
            elif first == "iot" and key == "thingName":
                value = ctx.thing
            else:
                value = _lookup(ctx.own, first, key)
        elif third is not None:
            dep = ctx.dependencies.get(first)
            if dep is None:
                logger.warning("%s: '%s' is not a direct dependency; left %s as is", ctx.name, first, m.group(0))
                return m.group(0)
            value = _lookup(dep, second, third)
        else:
            return m.group(0)  # not a recipe variable (e.g. a shell ${VAR:-x})
        if value is None:
            logger.warning("%s: %s does not resolve; left as is", ctx.name, m.group(0))
            return m.group(0)
        return value

    return _VARIABLE.sub(replace, text)
