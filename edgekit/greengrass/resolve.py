"""Pre-flight resolution: what each device would run, checked before any API call, as the nucleus resolves it.

The device agent resolves with the same code. See docs/greengrass-packaging.md (pre-flight resolution).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import semantic_version

from edgekit.errors import RecipeError, ResolutionError
from edgekit.greengrass.recipe import load_recipe

__all__ = [
    "ComponentStore",
    "CoreDevice",
    "DeviceFacts",
    "DeviceResolution",
    "GroupDeployment",
    "PreflightReport",
    "Problem",
    "platform_matches",
    "preflight",
    "resolve_device",
]

NO_VERSION = "NO_AVAILABLE_COMPONENT_VERSION"
NOT_MET = "COMPONENT_VERSION_REQUIREMENTS_NOT_MET"
NO_PLATFORM = "NO_MATCHING_PLATFORM"


class ComponentStore:
    """Available component versions: name → version → normalized recipe."""

    def __init__(self, recipes: Iterable[Mapping[str, Any]] = ()) -> None:
        self._by_name: dict[str, dict[str, Mapping[str, Any]]] = {}
        for r in recipes:
            self.add(r)

    def add(self, recipe: Mapping[str, Any]) -> None:
        name, version = str(recipe.get("ComponentName", "")), str(recipe.get("ComponentVersion", ""))
        if not name or not semantic_version.validate(version):
            raise RecipeError(f"recipe of '{name or '?'}' has no valid ComponentName/ComponentVersion ('{version}')")
        self._by_name.setdefault(name, {})[version] = recipe

    @classmethod
    def from_dirs(cls, *dirs: str | Path) -> ComponentStore:
        store = cls()
        for d in dirs:
            for p in sorted(Path(d).glob("*")):
                if p.suffix in (".json", ".yaml", ".yml"):
                    store.add(load_recipe(p))
        return store

    def versions(self, name: str) -> list[semantic_version.Version]:
        return sorted(semantic_version.Version(v) for v in self._by_name.get(name, {}))

    def recipe(self, name: str, version: str) -> Mapping[str, Any]:
        return self._by_name[name][version]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name


class DeviceFacts(Protocol):
    """What resolution needs of a device: its thing name, thing groups and Greengrass platform.

    A fleet file's :class:`edgekit.fleet_file.FleetDevice` fits, and so does the agent's :class:`CoreDevice`.
    """

    @property
    def thing(self) -> str: ...

    @property
    def groups(self) -> Collection[str]: ...

    @property
    def platform(self) -> Mapping[str, str]: ...


@dataclass(frozen=True)
class CoreDevice:
    """A device as the agent knows itself: thing name, thing groups, Greengrass platform."""

    thing: str
    groups: tuple[str, ...]
    platform: Mapping[str, str]


@dataclass(frozen=True)
class GroupDeployment:
    """The latest deployment to one target: ``thinggroup/<name>`` or ``thing/<name>``."""

    target: str
    components: Mapping[str, str]  # name -> version

    def applies_to(self, device: DeviceFacts) -> bool:
        kind, _, name = self.target.partition("/")
        if kind == "thinggroup":
            return name in device.groups
        if kind == "thing":
            return name == device.thing
        raise ResolutionError("BAD_TARGET", f"deployment target '{self.target}' must be thinggroup/<name> or thing/<name>")


@dataclass(frozen=True)
class Problem:
    code: str
    component: str
    message: str


@dataclass
class DeviceResolution:
    device: DeviceFacts
    components: dict[str, str] = field(default_factory=dict)  # name -> resolved version
    manifests: dict[str, int] = field(default_factory=dict)  # name -> index of the chosen manifest
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class PreflightReport:
    deployment: GroupDeployment
    devices: list[DeviceResolution]

    @property
    def failed(self) -> list[DeviceResolution]:
        return [d for d in self.devices if not d.ok]

    def raise_for_problems(self) -> None:
        """Raise :class:`ResolutionError` naming the first problem and how many devices have one."""
        if not self.failed:
            return
        first = self.failed[0]
        p = first.problems[0]
        others = len(self.failed) - 1
        more = f" (and {others} more device{'s' if others != 1 else ''})" if others else ""
        raise ResolutionError(p.code, f"device '{first.device.thing}': {p.message}{more}; nothing was deployed")


def _regex(value: str) -> re.Pattern[str] | None:
    if len(value) >= 2 and value.startswith("/") and value.endswith("/"):
        return re.compile(value[1:-1])
    return None


def platform_matches(selector: Mapping[str, Any] | None, platform: Mapping[str, str]) -> bool:
    """Whether a manifest's ``Platform`` selects a device: each key exact, ``*`` or ``/regex/``."""
    for key, want in (selector or {}).items():
        want = str(want)
        if want == "*":
            continue
        have = platform.get(key)
        if have is None:
            return False
        pattern = _regex(want)
        if pattern is not None:
            if not pattern.fullmatch(have):
                return False
        elif want != have:
            return False
    return True


def _spec(text: str) -> semantic_version.NpmSpec:
    try:
        return semantic_version.NpmSpec(text)
    except ValueError as exc:
        raise ResolutionError(NOT_MET, f"'{text}' is not a valid version requirement: {exc}") from exc


def resolve_device(device: DeviceFacts, deployments: Iterable[GroupDeployment], store: ComponentStore) -> DeviceResolution:
    """Resolve what ``device`` runs under ``deployments`` (the latest one per target)."""
    result = DeviceResolution(device)
    roots: dict[str, list[tuple[str, str]]] = {}
    for dep in deployments:
        if dep.applies_to(device):
            for name, version in dep.components.items():
                roots.setdefault(name, []).append((f"deployment to {dep.target}", version))
    picks: dict[str, semantic_version.Version] = {}
    for _ in range(50):  # fixed point: dependency ranges depend on the versions picked
        requirements = {n: list(r) for n, r in roots.items()}
        for name, version in picks.items():
            deps = store.recipe(name, str(version)).get("ComponentDependencies") or {}
            for dep_name, spec in deps.items():
                rng = str((spec or {}).get("VersionRequirement", "*"))
                requirements.setdefault(dep_name, []).append((f"{name} {version}", rng))
        problems: list[Problem] = []
        new: dict[str, semantic_version.Version] = {}
        for name, reqs in requirements.items():
            available = store.versions(name)
            if not available:
                problems.append(
                    Problem(NO_VERSION, name, f"no version of component '{name}' is available (required by {reqs[0][0]})")
                )
                continue
            specs = [(src, text, _spec(text)) for src, text in reqs]
            for src, text, spec in specs:
                if not any(v in spec for v in available):
                    have = ", ".join(str(v) for v in available)
                    problems.append(Problem(NO_VERSION, name, f"{src} requires {name} '{text}', but only {have} exist(s)"))
            if any(p.component == name for p in problems):
                continue
            ok = [v for v in available if all(v in spec for _, _, spec in specs)]
            if not ok:
                shown = "; ".join(f"{src} requires '{text}'" for src, text, _ in specs)
                problems.append(Problem(NOT_MET, name, f"no version of {name} meets every requirement: {shown}"))
                continue
            new[name] = max(ok)
        if problems:
            result.problems = problems
            return result
        if new == picks:
            break
        picks = new
    result.components = {n: str(v) for n, v in sorted(picks.items())}
    for name, version in result.components.items():
        manifests = store.recipe(name, version).get("Manifests") or []
        index = next((i for i, m in enumerate(manifests) if platform_matches(m.get("Platform"), device.platform)), None)
        if index is None:
            plat = f"{device.platform.get('os')}/{device.platform.get('architecture')}"
            offered = ", ".join(
                f"{(m.get('Platform') or {}).get('os', '*')}/{(m.get('Platform') or {}).get('architecture', '*')}"
                for m in manifests
            )
            result.problems.append(
                Problem(NO_PLATFORM, name, f"no manifest of {name} {version} for {plat} (it has: {offered or 'none'})")
            )
        else:
            result.manifests[name] = index
    return result


def preflight(
    deployment: GroupDeployment,
    others: Iterable[GroupDeployment],
    devices: Iterable[DeviceFacts],
    store: ComponentStore,
) -> PreflightReport:
    """Resolve every device ``deployment`` reaches, with the other targets' latest deployments in force.

    A deployment to the same target as one in ``others`` replaces it, as on AWS.
    """
    in_force = [d for d in others if d.target != deployment.target] + [deployment]
    reached = [d for d in devices if deployment.applies_to(d)]
    return PreflightReport(deployment, [resolve_device(d, in_force, store) for d in reached])
