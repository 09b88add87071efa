"""The one reader of a packaged build folder, feeding both destinations (AWS and the local fleet).

:func:`read_build` checks every recipe, name and artifact file before anything is uploaded or copied.
See docs/publishing.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from edgekit.errors import PublishError
from edgekit.greengrass.recipe import load_recipe

if TYPE_CHECKING:
    from edgekit.greengrass.aws import UploadResult

__all__ = [
    "BUCKET_PLACEHOLDER",
    "NAME_PLACEHOLDER",
    "RECIPE_SUFFIXES",
    "VERSION_PLACEHOLDER",
    "BuildFolder",
    "BuiltArtifact",
    "BuiltComponent",
    "PublishResult",
    "PublishedArtifact",
    "PublishedComponent",
    "read_build",
]

BUCKET_PLACEHOLDER: Final = "BUCKET_NAME"
NAME_PLACEHOLDER: Final = "COMPONENT_NAME"
VERSION_PLACEHOLDER: Final = "COMPONENT_VERSION"
RECIPE_SUFFIXES: Final = (".json", ".yaml", ".yml")


@dataclass(frozen=True)
class BuiltArtifact:
    """A placeholder artifact of a recipe: its URI, the path after the bucket, and the local file it names."""

    uri: str
    parts: tuple[str, ...]  # e.g. ("COMPONENT_NAME", "COMPONENT_VERSION", "model.zip")
    file: Path

    @property
    def name(self) -> str:
        return self.parts[-1]

    def key(self, name: str, version: str) -> str:
        """The object key once the component's name and version replace the placeholders."""
        return "/".join(name if p == NAME_PLACEHOLDER else version if p == VERSION_PLACEHOLDER else p for p in self.parts)


@dataclass
class BuiltComponent:
    """One recipe of the build folder (normalized) and its placeholder artifacts, keyed by URI."""

    name: str
    version: str
    recipe_file: Path
    recipe: dict[str, Any]
    artifacts: dict[str, BuiltArtifact]

    def artifact_entries(self) -> Iterator[dict[str, Any]]:
        """Every ``Artifacts`` entry of every manifest of :attr:`recipe` (to rewrite URIs or add digests)."""
        manifests = self.recipe.get("Manifests")
        for manifest in manifests if isinstance(manifests, list) else []:
            entries = manifest.get("Artifacts") if isinstance(manifest, dict) else None
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, dict) and isinstance(entry.get("URI"), str):
                    yield entry


@dataclass(frozen=True)
class BuildFolder:
    root: Path
    components: tuple[BuiltComponent, ...]


def _placeholder(uri: str, component: str, artifacts_dir: Path) -> BuiltArtifact | None:
    """The artifact behind a placeholder URI; ``None`` for a concrete URI (someone else's object, left as it is)."""
    if not uri.startswith("s3://"):
        return None
    host, _, path = uri[len("s3://") :].partition("/")
    if host != BUCKET_PLACEHOLDER:
        return None
    parts = tuple(path.split("/"))
    if not path or any(p in ("", ".", "..") for p in parts):
        raise PublishError(
            f"artifact URI '{uri}' of {component} is not of the form s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/<file>"
        )
    if parts[:2] == (NAME_PLACEHOLDER, VERSION_PLACEHOLDER) and len(parts) > 2:
        local = artifacts_dir.joinpath(*parts[2:])
    else:  # GDK finds the file by its name in the component's artifact folder
        local = artifacts_dir / parts[-1]
    return BuiltArtifact(uri, parts, local)


def _component(recipe_file: Path, root: Path, load: Callable[[Path], dict[str, Any]]) -> BuiltComponent:
    recipe = load(recipe_file)
    name, version = recipe.get("ComponentName"), recipe.get("ComponentVersion")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        raise PublishError(f"{recipe_file}: the recipe has no ComponentName / ComponentVersion")
    if recipe_file.stem != f"{name}-{version}":
        raise PublishError(
            f"{recipe_file}: holds {name} {version} but is named {recipe_file.name}; expected {name}-{version}{recipe_file.suffix} "
            "(package the component again)"
        )
    component = BuiltComponent(name, version, recipe_file, recipe, {})
    artifacts_dir = root / "artifacts" / name / version
    for entry in component.artifact_entries():
        artifact = _placeholder(entry["URI"], f"{name} {version}", artifacts_dir)
        if artifact is not None:
            component.artifacts.setdefault(artifact.uri, artifact)
    return component


def read_build(build_dir: str | Path, load: Callable[[Path], dict[str, Any]] = load_recipe) -> BuildFolder:
    """Read and check a packaged build folder: every recipe (with ``load``), names, duplicates, artifact files.

    Raises :class:`~edgekit.errors.PublishError` (or ``load``'s :class:`~edgekit.errors.RecipeError`) naming
    the file and the fix; nothing is written.
    """
    root = Path(build_dir)
    recipes_dir = root / "recipes"
    files = (
        sorted(p for p in recipes_dir.iterdir() if p.suffix in RECIPE_SUFFIXES and not p.name.startswith(".") and p.is_file())
        if recipes_dir.is_dir()
        else []
    )
    if not files:
        raise PublishError(f"no recipes in {recipes_dir}; package the component first (edgekit package)")
    components = tuple(_component(f, root, load) for f in files)
    seen: dict[tuple[str, str], Path] = {}
    for c in components:
        if (c.name, c.version) in seen:
            raise PublishError(f"{c.name} {c.version} appears in both {seen[(c.name, c.version)]} and {c.recipe_file}")
        seen[(c.name, c.version)] = c.recipe_file
    missing = [
        f"{c.recipe_file}: artifact '{a.name}' is missing: expected {a.file}"
        for c in components
        for a in c.artifacts.values()
        if not a.file.is_file()
    ]
    if missing:
        raise PublishError(f"{'; '.join(missing)}; package the component again")
    return BuildFolder(root, components)


@dataclass(frozen=True)
class PublishedArtifact:
    """An artifact as published: its file name, final URI, object key, the file sent, and (when known) size and SHA-256."""

    name: str
    uri: str
    key: str
    file: Path
    size: int | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class PublishedComponent:
    """One component version of a publish, to AWS or to the local fleet.

    ``status``: ``published`` now; ``unchanged`` (local: already there, identical); ``skipped`` (AWS: already
    there, ``skip_existing``); ``planned`` (a dry run). ``arn`` and ``uploads`` are AWS's.
    """

    name: str
    version: str
    status: Literal["published", "unchanged", "skipped", "planned"]
    recipe: dict[str, Any]  # as the registry got it: final artifact URIs (AWS) or with Digests (local)
    artifacts: tuple[PublishedArtifact, ...] = ()
    arn: str | None = None
    uploads: tuple[UploadResult, ...] = ()


@dataclass(frozen=True)
class PublishResult:
    """A publish of a build folder: where it went (``s3://bucket (region)`` or ``local fleet <folder>``) and each component."""

    destination: str
    components: tuple[PublishedComponent, ...]
    dry_run: bool = False
    bucket: str | None = None  # AWS
    region: str | None = None  # AWS
