"""Project defaults: ``edgekit.toml``, or ``[tool.edgekit]`` in ``pyproject.toml``, so flags need not be retyped.

Found from the current folder upwards (the first file that has edgekit settings wins) or named by
``$EDGEKIT_PROJECT``; flags and environment variables override it. See docs/cli.md (project file).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from edgekit.errors import ConfigError
from edgekit.parsing import MAX_FILE_BYTES, ParseError, check_depth, decode_utf8

__all__ = ["PROJECT_ENV", "Project", "ProjectSettings", "find_project", "read_project"]

PROJECT_ENV = "EDGEKIT_PROJECT"


class ProjectSettings(BaseModel):
    """The defaults a project file may set; each names the flags it fills (docs/cli.md has the table)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target: str | None = None
    """compile --target"""
    pipeline: str | None = None
    """compile --pipeline"""
    backend: str | None = None
    """compile --backend"""
    artifacts: str | None = None
    """compile --output (where artifacts are written)"""
    component: str | None = None
    """package --name (the model component)"""
    publisher: str | None = None
    """package --publisher"""
    build: str | None = None
    """package --output, publish --build, simulate --build, deploy --recipes (its recipes/)"""
    bucket: str | None = None
    """publish --bucket"""
    gdk_bucket_naming: bool | None = None
    """publish --gdk-bucket-naming"""
    region: str | None = None
    """--region of publish, deploy and deployment list/cancel"""
    profile: str | None = None
    """--profile (AWS) of the same commands"""
    account: str | None = None
    """deploy --account"""
    endpoint_url: str | None = None
    """--endpoint-url of the AWS commands"""
    state: str | None = None
    """--state (the local fleet's folder) of every local-fleet command"""
    fleet: str | None = None
    """--fleet of simulate and deploy"""


@dataclass(frozen=True)
class Project:
    path: Path
    settings: ProjectSettings


def read_project(path: str | Path) -> Project:
    """Read a project file: ``edgekit.toml`` (settings at the top) or a ``pyproject.toml`` (``[tool.edgekit]``).
    Relative paths in it are taken from the file's folder."""
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise ConfigError(f"project file {file}: cannot read it ({exc.strerror}); fix ${PROJECT_ENV} or the file") from exc
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(f"project file {file}: over {MAX_FILE_BYTES} bytes; a project file holds a few settings")
    try:
        data = check_depth(tomllib.loads(decode_utf8(raw)))
    except (tomllib.TOMLDecodeError, ParseError) as exc:
        raise ConfigError(f"project file {file}: {exc}; fix the TOML") from exc
    table = data.get("tool", {}).get("edgekit", {}) if file.name == "pyproject.toml" else data
    where = "[tool.edgekit]" if file.name == "pyproject.toml" else "the file"
    if not isinstance(table, dict):
        raise ConfigError(f"project file {file}: {where} must be a table of settings")
    try:
        settings = ProjectSettings.model_validate(table)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "?"
        known = ", ".join(ProjectSettings.model_fields)
        why = "is not a setting" if err["type"] == "extra_forbidden" else err["msg"].lower()
        raise ConfigError(f"project file {file}: '{key}' {why}; the settings are: {known}") from None
    base = file.resolve().parent
    paths = {"artifacts", "build", "state"}
    resolved = {k: str(base / v) for k, v in settings.model_dump(exclude_none=True).items() if k in paths}
    fleet = settings.fleet
    if fleet and (fleet.endswith((".yaml", ".yml")) or "/" in fleet):
        resolved["fleet"] = str(base / fleet)
    return Project(file, settings.model_copy(update=resolved))


def find_project(start: str | Path | None = None) -> Project | None:
    """The project file for ``start`` (default: the current folder): ``$EDGEKIT_PROJECT`` if set (empty: none), else
    the nearest ``edgekit.toml`` or ``pyproject.toml`` with a ``[tool.edgekit]`` table in it or a folder above."""
    env = os.environ.get(PROJECT_ENV)
    if env is not None:
        return read_project(env) if env else None
    folder = Path(start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        own = candidate / "edgekit.toml"
        if own.is_file():
            return read_project(own)
        pyproject = candidate / "pyproject.toml"
        if pyproject.is_file() and _has_edgekit_table(pyproject):
            return read_project(pyproject)
    return None


def _has_edgekit_table(pyproject: Path) -> bool:
    try:
        data = tomllib.loads(pyproject.read_text(encoding="utf-8", errors="replace"))
    except (OSError, tomllib.TOMLDecodeError):
        return False  # someone else's broken pyproject.toml is not ours to refuse
    tool = data.get("tool")
    return isinstance(tool, dict) and "edgekit" in tool
