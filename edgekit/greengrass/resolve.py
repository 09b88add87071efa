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
    "BUILDS_KEY",
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
WRONG_ARCHITECTURE = "WRONG_ARCHITECTURE"
MISSING_CPU_FEATURES = "MISSING_CPU_FEATURES"
NO_RUNTIME = "NO_RUNTIME_FOR_PLATFORM"

LINES_SHOWN = 50
"""How many device-and-reason lines a refused pre-flight lists."""

BUILDS_KEY = "Builds"
"""``ComponentConfiguration.DefaultConfiguration.Builds`` of a model component edgekit packaged: per artifact folder
(``model-rasp4b``), what running it needs: ``Target``, ``Backend``, ``Runtime`` (that backend's runtime component),
``Architecture`` (of its code; ``*`` when portable), ``CpuFeatures`` (where the artifact records them) and
``HostTwin`` (the machine its host twin is for). The pre-flight and the device agent check each device against it."""


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

    def lines(self) -> list[str]:
        """One line per device and reason: ``<thing>: <CODE>: <why>``."""
        return [f"{d.device.thing}: {p.code}: {p.message}" for d in self.failed for p in d.problems]

    def raise_for_problems(self) -> None:
        """Raise :class:`ResolutionError`: the first problem and how many devices have one, with one line per device
        and reason (its ``lines``, at most :data:`LINES_SHOWN`; the CLI prints them before its error line)."""
        if not self.failed:
            return
        first = self.failed[0]
        p = first.problems[0]
        others = len(self.failed) - 1
        more = f" (and {others} more device{'s' if others != 1 else ''})" if others else ""
        lines = self.lines()
        shown = lines[:LINES_SHOWN] + ([f"... and {len(lines) - LINES_SHOWN} more"] if len(lines) > LINES_SHOWN else [])
        raise ResolutionError(p.code, f"device '{first.device.thing}': {p.message}{more}; nothing was deployed", shown)


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
    _check_builds(result, store)
    return result


def _device_features(platform: Mapping[str, str]) -> set[str] | None:
    """The CPU features a device's platform declares (a ``cpuFeatures`` attribute, space or comma separated);
    None when it declares none (then nothing is checked against them)."""
    text = platform.get("cpuFeatures")
    if not text:
        return None
    return {f for f in re.split(r"[\s,]+", str(text).lower()) if f}


def _builds(recipe: Mapping[str, Any], manifest: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """The ``Builds`` entries (folder, facts) of the artifacts a model component's chosen manifest unpacks."""
    config = recipe.get("ComponentConfiguration") or {}
    builds = (config.get("DefaultConfiguration") or {}).get(BUILDS_KEY) if isinstance(config, Mapping) else None
    if not isinstance(builds, Mapping):
        return []
    out = []
    for artifact in manifest.get("Artifacts") or []:
        uri = str((artifact or {}).get("URI", "")) if isinstance(artifact, Mapping) else ""
        folder = uri.rsplit("/", 1)[-1].removesuffix(".zip")
        facts = builds.get(folder)
        if isinstance(facts, Mapping):
            out.append((folder, facts))
    return out


def _check_builds(result: DeviceResolution, store: ComponentStore) -> None:
    """What resolution alone can't see: a model build whose code is for another architecture, needs CPU features the
    device lacks, or runs on a backend whose runtime the device won't have (in a deployment that runs the model)."""
    device = result.device
    arch = device.platform.get("architecture")
    plat = f"{device.platform.get('os')}/{arch}"
    features = _device_features(device.platform)
    used_by = {
        dep: name
        for name, version in result.components.items()
        for dep in (store.recipe(name, version).get("ComponentDependencies") or {})
    }
    for name, index in list(result.manifests.items()):
        recipe = store.recipe(name, result.components[name])
        for folder, facts in _builds(recipe, (recipe.get("Manifests") or [])[index]):
            built_for = str(facts.get("Architecture", "*"))
            if built_for not in ("*", "") and built_for != arch:
                result.problems.append(
                    Problem(
                        WRONG_ARCHITECTURE,
                        name,
                        f"{name} gives {plat} devices '{folder}', whose code is built for {built_for} "
                        f"(target {facts.get('Target', '?')}); package a build for {arch}",
                    )
                )
            needed = {str(f).lower() for f in facts.get("CpuFeatures") or []}
            if features is not None and needed - features:
                result.problems.append(
                    Problem(
                        MISSING_CPU_FEATURES,
                        name,
                        f"'{folder}' of {name} needs CPU features {', '.join(sorted(needed - features))}, which the "
                        f"device's platform (cpuFeatures) lacks; compile for a CPU baseline it has",
                    )
                )
            runtime, backend = str(facts.get("Runtime", "")), str(facts.get("Backend", "?"))
            if not runtime or name not in used_by:
                continue  # the model alone is only files: nothing runs them
            if runtime in result.manifests:
                continue
            missing = next((p for p in result.problems if p.component == runtime and p.code == NO_PLATFORM), None)
            if missing is not None:  # said once, as what it means here: the backend can't run on this platform
                result.problems.remove(missing)
            why = missing.message if missing is not None else f"nothing in the deployment brings its runtime component {runtime}"
            result.problems.append(
                Problem(NO_RUNTIME, name, f"'{folder}' of {name} runs on {backend}, and {plat} has no runtime for it: {why}")
            )


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
