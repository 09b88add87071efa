"""Component configuration the way the nucleus merges it (previous, ``reset``, defaults, ``merge``), with RFC 6901 JSON pointers.

See docs/device-agent.md (lifecycle, configuration, variables).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from edgekit.wire.deployment_parts import ConfigurationUpdate

__all__ = ["get_pointer", "next_configuration", "parse_pointer"]


def parse_pointer(pointer: str) -> list[str]:
    """``"/a/b~1c"`` → ``["a", "b/c"]``; ``""`` → ``[]``."""
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise ValueError(f"'{pointer}' is not a JSON pointer: it must be '' or start with '/'")
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer[1:].split("/")]


def get_pointer(doc: Any, pointer: str) -> tuple[bool, Any]:
    """``(True, value)`` at ``pointer`` in ``doc``, or ``(False, None)`` when nothing is there."""
    node = doc
    for part in parse_pointer(pointer):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _set(doc: dict[str, Any], parts: list[str], value: Any) -> None:
    node = doc
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _remove(doc: dict[str, Any], parts: list[str]) -> None:
    node: Any = doc
    for part in parts[:-1]:
        if not isinstance(node, dict) or part not in node:
            return
        node = node[part]
    if isinstance(node, dict):
        node.pop(parts[-1], None)


def _fill(config: dict[str, Any], default: Mapping[str, Any]) -> None:
    for key, value in default.items():
        if key not in config:
            config[key] = copy.deepcopy(value)
        elif isinstance(config[key], dict) and isinstance(value, Mapping):
            _fill(config[key], value)


def _merge(config: dict[str, Any], update: Mapping[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(config.get(key), dict):
            _merge(config[key], value)
        else:
            config[key] = copy.deepcopy(value)


def next_configuration(
    previous: Mapping[str, Any] | None, default: Mapping[str, Any] | None, update: ConfigurationUpdate | None
) -> dict[str, Any]:
    """The configuration a component runs with after a deployment (see docs/device-agent.md)."""
    default = default or {}
    config: dict[str, Any] = copy.deepcopy(dict(previous)) if previous is not None else {}
    for pointer in (update.reset if update else None) or []:
        parts = parse_pointer(pointer)
        if not parts:
            config = copy.deepcopy(dict(default))
            continue
        found, value = get_pointer(default, pointer)
        if found:
            _set(config, parts, copy.deepcopy(value))
        else:
            _remove(config, parts)
    _fill(config, default)
    if update and update.merge:
        _merge(config, update.merge)
    return config
