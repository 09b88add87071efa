"""The local fleet's component registry and artifact store: what ``CreateComponentVersion`` + S3 are on AWS.

See docs/publishing.md (to the local fleet).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import semantic_version

from edgekit.atomic import install_dir
from edgekit.clock import Clock, SystemClock
from edgekit.errors import PublishError
from edgekit.fleet.errors import ComponentConflictError, NotFoundError
from edgekit.fleet.state import ArtifactRecord, FleetState
from edgekit.greengrass.build_folder import (
    BUCKET_PLACEHOLDER,
    NAME_PLACEHOLDER,
    VERSION_PLACEHOLDER,
    BuiltComponent,
    PublishedArtifact,
    PublishedComponent,
    read_build,
)
from edgekit.greengrass.lint import check_recipe
from edgekit.greengrass.package import RUNTIME_COMPONENT
from edgekit.progress import Progress, no_progress

__all__ = ["DIGEST_ALGORITHM", "PublishedComponent", "Registry", "artifact_file", "publish_local", "safe_segment"]

log = logging.getLogger(__name__)

DIGEST_ALGORITHM = "SHA-256"
_CHUNK = 1 << 20


def safe_segment(value: str) -> bool:
    """True if ``value`` is one plain path segment (no separators, not ``.``/``..``, no NUL)."""
    return bool(value) and value not in (".", "..") and not any(c in value for c in "/\\\0")


def artifact_file(uri: str) -> str | None:
    """The file name of a placeholder artifact URI (``s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>``)."""
    if not uri.startswith("s3://"):
        return None
    host, _, path = uri[len("s3://") :].partition("/")
    if host != BUCKET_PLACEHOLDER:
        return None
    return path.rsplit("/", 1)[-1]


def _digest(sha256_hex: str) -> str:
    return base64.b64encode(bytes.fromhex(sha256_hex)).decode("ascii")


def _hash_file(path: Path, copy_to: Path | None = None) -> tuple[str, int]:
    """SHA-256 (hex) and size of ``path``, copying it to ``copy_to`` on the way when given."""
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as src:
        out = copy_to.open("wb") if copy_to is not None else None
        try:
            while chunk := src.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
                if out is not None:
                    out.write(chunk)
            if out is not None:
                out.flush()
        finally:
            if out is not None:
                out.close()
    return h.hexdigest(), size


def _canonical(recipe: dict[str, Any]) -> str:
    return json.dumps(recipe, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class _Plan:
    name: str
    version: str
    recipe_file: Path
    recipe: dict[str, Any]
    files: dict[str, Path]  # artifact file name -> local source
    artifacts: list[ArtifactRecord] = field(default_factory=list)
    existing: bool = False

    def component(self, store: Path) -> PublishedComponent:
        return PublishedComponent(
            self.name,
            self.version,
            "unchanged" if self.existing else "published",
            self.recipe,
            tuple(
                PublishedArtifact(
                    a.file,
                    f"{a.name}/{a.version}/{a.file}",
                    f"{a.name}/{a.version}/{a.file}",
                    store / a.name / a.version / a.file,
                    a.size,
                    a.sha256,
                )
                for a in self.artifacts
            ),
        )


def _plan(built: BuiltComponent, known: dict[str, list[str]]) -> _Plan:
    """Lint the recipe and check that each artifact fits the store's ``<name>/<version>/<file>`` layout."""
    recipe_file = built.recipe_file
    recipe = check_recipe(built.recipe, file=str(recipe_file), known_components=known)
    name, version = built.name, built.version
    if not safe_segment(name) or not safe_segment(version):
        raise PublishError(f"{recipe_file}: component name '{name}' / version '{version}' can't be a folder name")
    files: dict[str, Path] = {}
    for manifest in recipe.get("Manifests") or []:
        for artifact in manifest.get("Artifacts") or []:
            artifact.pop("Digest", None)  # computed here, from the bytes stored, never taken from the recipe
            artifact.pop("Algorithm", None)
            uri = artifact.get("URI", "")
            built_artifact = built.artifacts.get(uri)
            if built_artifact is None:
                log.warning(
                    "%s %s: artifact %s is not in the build folder; devices of the local fleet can't download it",
                    name,
                    version,
                    uri,
                )
                continue
            parts, file = built_artifact.parts, built_artifact.name
            if parts[:2] != (NAME_PLACEHOLDER, VERSION_PLACEHOLDER) or len(parts) != 3 or not safe_segment(file):
                raise PublishError(
                    f"{recipe_file}: artifact URI '{uri}' is not s3://{BUCKET_PLACEHOLDER}/{NAME_PLACEHOLDER}/"
                    f"{VERSION_PLACEHOLDER}/<file> (one file name, no sub-folders); package the component again"
                )
            files[file] = built_artifact.file
    return _Plan(name, version, recipe_file, recipe, files)


def _with_digests(recipe: dict[str, Any], digests: dict[str, str]) -> dict[str, Any]:
    """A copy of ``recipe`` whose placeholder artifacts carry ``Digest`` and ``Algorithm``."""
    out: dict[str, Any] = json.loads(json.dumps(recipe))
    for manifest in out.get("Manifests") or []:
        for artifact in manifest.get("Artifacts") or []:
            file = artifact_file(artifact.get("URI", ""))
            if file is not None and file in digests:
                artifact["Digest"] = _digest(digests[file])
                artifact["Algorithm"] = DIGEST_ALGORITHM
    return out


def publish_local(
    build_dir: str | Path,
    state: FleetState,
    store_root: str | Path,
    *,
    clock: Clock | None = None,
    progress: Progress | None = None,
) -> list[PublishedComponent]:
    """Publish every component of a packaged build folder to the local fleet's registry.

    Returns one :class:`PublishedComponent` per recipe. Raises :class:`~edgekit.errors.RecipeError` for an
    invalid recipe, :class:`~edgekit.errors.PublishError` for missing artifacts or a version listed twice,
    and :class:`~edgekit.fleet.errors.ComponentConflictError` for a version already published differently;
    in every case nothing of this publish is left behind.
    """
    say = progress or no_progress
    now = (clock or SystemClock()).now()
    store = Path(store_root)
    build = read_build(build_dir)

    # 1. Check everything (lint with the registry's and this build's components known); hash every artifact;
    #    refuse conflicts, all before writing anything.
    known = state.components()
    for built in build.components:
        known.setdefault(built.name, []).append(built.version)
    plans = [_plan(c, known) for c in build.components]
    for plan in plans:
        stored = state.get_component(plan.name, plan.version)
        if stored is None:
            continue
        candidate = _with_digests(plan.recipe, {file: _hash_file(src)[0] for file, src in plan.files.items()})
        if _canonical(candidate) != _canonical(stored.recipe):
            if plan.name.startswith(RUNTIME_COMPONENT + "."):
                raise ComponentConflictError(
                    f"{plan.name} {plan.version} is already published with different content: the edgekit packaging "
                    "now differs from the one that published it under the same version; package with that edgekit, "
                    "or publish to a fresh fleet folder (--state)"
                )
            raise ComponentConflictError(
                f"{plan.name} {plan.version} is already published with a different recipe or artifacts; versions can't "
                f"change once published: package again with 'edgekit package ... --version NEXT_PATCH --state "
                f"{Path(store_root).absolute().parent}' (one above the published versions) and publish again"
            )
        plan.existing = True
        plan.recipe = stored.recipe
        plan.artifacts = state.artifacts(plan.name, plan.version)

    new = [p for p in plans if not p.existing]
    if not new:
        say("every component is already published")
        return [p.component(store) for p in plans]

    # 2. Copy the new versions' artifacts to a staging folder next to the store, hashing the copies.
    store.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=store))
    installed: list[Path] = []
    try:
        for plan in new:
            folder = staging / plan.name / plan.version
            folder.mkdir(parents=True)
            digests: dict[str, str] = {}
            for file, source in sorted(plan.files.items()):
                sha, size = _hash_file(source, copy_to=folder / file)
                digests[file] = sha
                plan.artifacts.append(ArtifactRecord(plan.name, plan.version, file, sha, size))
            plan.recipe = _with_digests(plan.recipe, digests)
            say(f"staged {plan.name} {plan.version}: {len(plan.files)} artifact(s)")

        # 3. Put the folders in place and insert the rows in one transaction; undo the folders on failure.
        with state.transaction():
            for plan in new:
                if state.get_component(plan.name, plan.version) is not None:  # published meanwhile by another process
                    raise ComponentConflictError(
                        f"{plan.name} {plan.version} was published by someone else meanwhile; publish again"
                    )
            for plan in new:
                final = store / plan.name / plan.version
                install_dir(staging / plan.name / plan.version, final)
                installed.append(final)
                state.insert_component(plan.name, plan.version, plan.recipe, plan.artifacts, now)
    except BaseException:
        for folder in installed:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)

    for plan in new:
        log.info("published %s %s (%d artifact(s)) to the local registry", plan.name, plan.version, len(plan.artifacts))
        say(f"published {plan.name} {plan.version}")
    return [p.component(store) for p in plans]


class Registry:
    """Read access to the published components and their artifact files."""

    def __init__(self, state: FleetState, store_root: str | Path) -> None:
        self.state = state
        self.store_root = Path(store_root)

    def publish(self, build_dir: str | Path, *, clock: Clock | None = None) -> list[PublishedComponent]:
        """:func:`publish_local` into this registry."""
        return publish_local(build_dir, self.state, self.store_root, clock=clock)

    def components(self) -> dict[str, list[str]]:
        """Every component name with its versions, lowest first."""
        return {name: _sorted(versions) for name, versions in self.state.components().items()}

    def versions(self, name: str) -> list[str]:
        """The published versions of ``name``, lowest first; :class:`NotFoundError` if there are none."""
        versions = self.state.component_versions(name)
        if not versions:
            raise NotFoundError(f"component '{name}' is not published in the local fleet; publish it (publish_local)")
        return _sorted(versions)

    def recipe(self, name: str, version: str) -> dict[str, Any]:
        """The stored recipe (with Digests) of ``name`` ``version``."""
        record = self.state.get_component(name, version)
        if record is None:
            raise NotFoundError(f"component '{name}' version '{version}' is not published in the local fleet")
        return record.recipe

    def artifact(self, name: str, version: str, file: str) -> tuple[ArtifactRecord, Path]:
        """The record and stored path of one published artifact; refuses anything outside the store."""
        if not all(safe_segment(s) for s in (name, version, file)):
            raise NotFoundError(f"'{name}/{version}/{file}' is not an artifact path")
        record = self.state.get_artifact(name, version, file)
        if record is None:
            raise NotFoundError(f"no artifact '{file}' in component '{name}' version '{version}'")
        root = self.store_root.resolve()
        path = (root / name / version / file).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise NotFoundError(f"artifact '{file}' of '{name}' '{version}' is missing from the store {root}")
        return record, path


def _sorted(versions: list[str]) -> list[str]:
    def key(v: str) -> tuple[int, semantic_version.Version | str]:
        return (1, semantic_version.Version(v)) if semantic_version.validate(v) else (0, v)

    return sorted(versions, key=key)
