"""Publishing and deploying to a local fleet's folder (what ``edgekit publish --local`` / ``deploy --local`` do).

See docs/publishing.md (to the local fleet).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.errors import DeploymentError, EdgekitError, PublishError
from edgekit.fleet.component_registry import publish_local
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet.jobs import parse_target, target_key
from edgekit.fleet.service import DeploymentSummary, FleetService
from edgekit.fleet.state import FleetState
from edgekit.fleet_file import FleetDevice, device_platform, load_fleet
from edgekit.greengrass.build_folder import PublishedComponent
from edgekit.greengrass.deployment import DeploymentSpec
from edgekit.greengrass.resolve import ComponentStore, GroupDeployment, PreflightReport, preflight
from edgekit.profiles import load_profile
from edgekit.progress import Progress, no_progress

__all__ = [
    "LocalDeployment",
    "cancel_local",
    "current_components",
    "deploy_to_folder",
    "list_deployments",
    "publish_dirs_to_folder",
    "publish_to_folder",
]


@dataclass(frozen=True)
class LocalDeployment:
    """A deployment written into a local fleet's state: its id, its executions by status, the pre-flight."""

    deployment_id: str
    folder: FleetFolder
    counts: dict[str, int]
    preflight: PreflightReport
    running: dict[str, Any] | None = field(default=None)  # the simulation running on the folder, if any


def publish_to_folder(build_dir: str | Path, folder: FleetFolder, progress: Progress | None = None) -> list[PublishedComponent]:
    """:func:`~edgekit.fleet.component_registry.publish_local` into the fleet folder's registry (made when missing)."""
    if not (Path(build_dir) / "recipes").is_dir():  # before the state folder is made
        raise PublishError(f"no recipes in {Path(build_dir) / 'recipes'}; package the components first (edgekit package)")
    with FleetState(folder.state_location) as state:
        return publish_local(build_dir, state, folder.store, progress=progress)


def publish_dirs_to_folder(
    recipe_dir: str | Path, artifact_dir: str | Path, folder: FleetFolder, progress: Progress | None = None
) -> list[PublishedComponent]:
    """Publish recipes and artifacts kept in two folders (the Greengrass CLI's ``--recipeDir`` / ``--artifactDir``:
    ``<artifactDir>/<name>/<version>/<file>``) into the fleet folder's registry."""
    recipes, artifacts = Path(recipe_dir), Path(artifact_dir)
    for flag, path in (("--recipeDir", recipes), ("--artifactDir", artifacts)):
        if not path.is_dir():
            raise PublishError(f"{flag} {path}: no such folder")
    with tempfile.TemporaryDirectory(prefix=".edgekit-local-") as tmp:
        view = Path(tmp)
        (view / "recipes").symlink_to(recipes.resolve(), target_is_directory=True)
        (view / "artifacts").symlink_to(artifacts.resolve(), target_is_directory=True)
        return publish_to_folder(view, folder, progress)


def current_components(folder: FleetFolder, target: str) -> dict[str, dict[str, Any]]:
    """The components of the latest deployment to ``target`` (``thinggroup/NAME`` or ``thing/NAME``) in the local
    fleet: what a Greengrass CLI style deployment adds to and removes from."""
    key = target_key(parse_target(target))
    state = folder.open_state()
    try:
        latest = state.latest_deployment(key)
    finally:
        state.close()
    if latest is None or latest.status == "CANCELED":
        return {}
    return {str(n): dict(c) for n, c in (latest.spec.get("components") or {}).items()}


def list_deployments(folder: FleetFolder) -> list[DeploymentSummary]:
    """Every deployment of the local fleet with its execution counts, newest first."""
    state = folder.open_state()
    try:
        summary = FleetService(state).summary()
    finally:
        state.close()
    return sorted(summary.deployments, key=lambda d: d.created_at, reverse=True)


def cancel_local(folder: FleetFolder, deployment_id: str) -> tuple[str, list[str]]:
    """Cancel a live deployment of the local fleet by its id (or an unambiguous prefix of it): its id and the
    things whose queued executions were canceled."""
    state = folder.open_state()
    try:
        ids = [d.id for d in state.deployments() if d.id.startswith(deployment_id)]
        if len(ids) != 1:
            what = "no deployment" if not ids else f"{len(ids)} deployments"
            raise DeploymentError(
                f"{what} in {folder.root} with an id starting '{deployment_id}'; see 'edgekit deployment list --local --state {folder.root}'"
            )
        record = state.get_deployment(ids[0])
        if record is None or record.status not in ("ACTIVE", "COMPLETED"):
            status = record.status if record else "gone"
            raise DeploymentError(f"deployment {ids[0]} is {status}: nothing to cancel")
        return ids[0], FleetService(state).cancel_deployment(ids[0])
    finally:
        state.close()


def _devices(state: FleetState, fleet: str | None) -> tuple[dict[str, FleetDevice], list[FleetDevice]]:
    """The devices registered in the state, with ``fleet``'s added (their groups joined); and ``fleet``'s alone."""
    devices = {
        t.name: FleetDevice(
            thing=t.name, profile=t.profile, groups=tuple(state.groups_of(t.name)), platform=_platform(t.profile, t.platform)
        )
        for t in state.things()
    }
    extra = load_fleet(fleet).expand() if fleet else []
    for device in extra:
        known = devices.get(device.thing)
        groups = tuple(sorted(set(device.groups) | set(known.groups if known else ())))
        devices[device.thing] = device.model_copy(update={"groups": groups})
    return devices, extra


def _platform(profile: str, stored: dict[str, str]) -> dict[str, str]:
    """A registered device's platform with its profile's attributes (CPU features: the state keeps os and
    architecture only), where the profile is known here and agrees with what the state has."""
    try:
        platform = device_platform(load_profile(profile))
    except EdgekitError:
        return stored
    same = all(platform.get(k) == stored.get(k) for k in ("os", "architecture"))
    return platform if same else stored


def _in_force(state: FleetState, target: str) -> list[GroupDeployment]:
    """The latest deployment of every other target: what the devices keep running beside this one."""
    others = []
    for record in state.deployments(statuses=("ACTIVE", "COMPLETED")):
        latest = state.latest_deployment(record.target)
        if latest is not None and latest.id == record.id and record.target != target:
            comps = {n: str(c.get("componentVersion")) for n, c in (record.spec.get("components") or {}).items()}
            others.append(GroupDeployment(record.target, comps))
    return others


def _store(state: FleetState) -> ComponentStore:
    store = ComponentStore()
    for name, published in state.components().items():
        for version in published:
            component = state.get_component(name, version)
            if component is not None:
                store.add(component.recipe)
    return store


def deploy_to_folder(
    spec: DeploymentSpec, folder: FleetFolder, fleet: str | None = None, progress: Progress | None = None
) -> LocalDeployment:
    """Pre-flight ``spec`` against the local fleet's devices and registry, then write it into the fleet's state.

    The devices are those registered in the state (a simulation registers its fleet), plus ``fleet``'s when given
    (registered too, once the pre-flight passed). Nothing is written when the pre-flight fails.
    """
    say = progress or no_progress
    state = folder.open_state()
    try:
        devices, extra = _devices(state, fleet)
        target = target_key(parse_target(spec.target_arn))
        versions = {n: c.component_version for n, c in spec.components.items()}
        report = preflight(GroupDeployment(target, versions), _in_force(state, target), list(devices.values()), _store(state))
        say(f"pre-flight: {len(report.devices)} device(s) reached, {len(report.failed)} with problems")
        report.raise_for_problems()
        if not report.devices:
            raise DeploymentError(
                f"{target} reaches no device of the local fleet in {folder.root}; check the target, or pass --fleet to register one"
            )
        service = FleetService(state)
        with state.transaction():
            if extra:
                service.register_devices(extra)
            deployment_id = service.create_deployment(spec)
        counts = state.status_counts(deployment_id)
    finally:
        state.close()
    return LocalDeployment(deployment_id, folder, counts, report, folder.running())
