"""Reading and writing Greengrass v2 recipes the way the nucleus does: any key casing in, the documented one out.

See docs/greengrass-packaging.md (the recipe linter).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from edgekit.errors import RecipeError
from edgekit.parsing import MAX_FILE_BYTES, ParseError, decode_utf8, loads_json, loads_yaml

__all__ = [
    "COERCED_BOOLEANS",
    "LIFECYCLE_STEPS",
    "MANIFEST_KEYS",
    "RECIPE_FORMAT_VERSION",
    "SET_BY_SERVICE",
    "TOP_LEVEL_KEYS",
    "dump_recipe",
    "load_recipe",
    "normalize_recipe",
    "nucleus_bool",
    "parse_recipe_text",
]

RECIPE_FORMAT_VERSION = "2020-01-25"
LIFECYCLE_STEPS = ("Setenv", "Install", "Run", "Startup", "Shutdown", "Recover", "Bootstrap")

# documented casing of every fixed key, by the structure it appears in (the top level in the documented order)
TOP_LEVEL_KEYS = (
    "RecipeFormatVersion",
    "ComponentName",
    "ComponentVersion",
    "ComponentType",
    "ComponentDescription",
    "ComponentPublisher",
    "ComponentSource",
    "ComponentConfiguration",
    "ComponentDependencies",
    "Manifests",
    "Lifecycle",
)
SET_BY_SERVICE = ("ComponentType", "ComponentSource")  # the service fills these in; a recipe should not
MANIFEST_KEYS = ("Platform", "Name", "Lifecycle", "Selections", "Artifacts")
_TOP = list(TOP_LEVEL_KEYS)
_CONFIG = ["DefaultConfiguration"]
_DEPENDENCY = ["VersionRequirement", "DependencyType"]
_MANIFEST = list(MANIFEST_KEYS)
_PLATFORM = ["os", "architecture", "architecture.detail"]
_STEP = ["Script", "RequiresPrivilege", "Skipif", "Timeout", "Setenv"]
_BOOTSTRAP_STEP = [*_STEP, "BootstrapOnRollback"]
_ARTIFACT = ["URI", "Unarchive", "Permission", "Digest", "Algorithm"]
_PERMISSION = ["Read", "Execute"]


# The recipe's booleans the nucleus reads with Coerce.toBoolean (com.aws.greengrass.util.Coerce): a lifecycle step's
# RequiresPrivilege (GenericExternalService.isPrivilegeRequired) and Bootstrap's BootstrapOnRollback
# (KernelAlternatives). It takes a boolean, a number (non-zero is true) or these exact strings as true; any other
# string is false. See docs/greengrass-packaging.md (coerced booleans).
COERCED_BOOLEANS = ("RequiresPrivilege", "BootstrapOnRollback")
NUCLEUS_TRUE = ("true", "yes", "on", "t", "y", "Y")
NUCLEUS_FALSE = ("false", "no", "off", "f", "n", "N")  # false to the nucleus as any other string, and meant so


def nucleus_bool(value: Any) -> bool | None:
    """``value`` as the nucleus coerces it (``"true"`` is true, as the developer guide's examples write it), or None
    for a value it reads as false though it doesn't say so (``"True"``, ``"1"``: strings it doesn't know, floats)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    if isinstance(value, str) and value in NUCLEUS_TRUE:
        return True
    if isinstance(value, str) and value in NUCLEUS_FALSE:
        return False
    return None


class _RecipeLoader(yaml.SafeLoader):
    """SafeLoader that keeps dates as strings: ``RecipeFormatVersion: 2020-01-25`` is text, not a date."""


_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _fix(mapping: dict[str, Any], known: list[str]) -> dict[str, Any]:
    lookup = {k.lower(): k for k in known}
    return {lookup.get(str(k).lower(), k): v for k, v in mapping.items()}


def _lifecycle(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    out = _fix(value, list(LIFECYCLE_STEPS))
    for step, body in list(out.items()):
        if step == "Setenv" or not isinstance(body, dict):
            continue
        out[step] = _fix(body, _BOOTSTRAP_STEP if step == "Bootstrap" else _STEP)
    return out


def normalize_recipe(raw: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with every known key in its documented casing."""
    recipe = _fix(dict(raw), _TOP)
    if isinstance(recipe.get("ComponentConfiguration"), dict):
        recipe["ComponentConfiguration"] = _fix(recipe["ComponentConfiguration"], _CONFIG)
    deps = recipe.get("ComponentDependencies")
    if isinstance(deps, dict):
        recipe["ComponentDependencies"] = {
            name: _fix(spec, _DEPENDENCY) if isinstance(spec, dict) else spec for name, spec in deps.items()
        }
    if "Lifecycle" in recipe:
        recipe["Lifecycle"] = _lifecycle(recipe["Lifecycle"])
    manifests = recipe.get("Manifests")
    if isinstance(manifests, list):
        fixed = []
        for m in manifests:
            if not isinstance(m, dict):
                fixed.append(m)
                continue
            m = _fix(m, _MANIFEST)
            if isinstance(m.get("Platform"), dict):
                m["Platform"] = _fix(m["Platform"], _PLATFORM)
            if "Lifecycle" in m:
                m["Lifecycle"] = _lifecycle(m["Lifecycle"])
            if isinstance(m.get("Artifacts"), list):
                arts = []
                for a in m["Artifacts"]:
                    if isinstance(a, dict):
                        a = _fix(a, _ARTIFACT)
                        if isinstance(a.get("Permission"), dict):
                            a["Permission"] = _fix(a["Permission"], _PERMISSION)
                    arts.append(a)
                m["Artifacts"] = arts
            fixed.append(m)
        recipe["Manifests"] = fixed
    return recipe


def parse_recipe_text(text: str | bytes, where: str) -> dict[str, Any]:
    """Parse recipe text (JSON or YAML; JSON is YAML) into a normalized dict.

    Bounded (size, depth, YAML aliases), UTF-8 only; a key given twice in one mapping, also in another casing
    (the classic nucleus reads keys case-insensitively and would merge them), is an error naming both lines.
    """
    try:
        text = decode_utf8(text)
        if text.lstrip().startswith("{"):
            data = loads_json(text, max_bytes=MAX_FILE_BYTES, fold_keys=str.lower)
        else:
            data = loads_yaml(text, max_bytes=MAX_FILE_BYTES, loader=_RecipeLoader, fold_keys=str.lower)
    except ParseError as exc:
        raise RecipeError(f"{where}: the recipe {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe must be a mapping at the top level, got {type(data).__name__}")
    return normalize_recipe(data)


def load_recipe(path: str | Path) -> dict[str, Any]:
    """Read a recipe file (``.json``, ``.yaml`` or ``.yml``) into a normalized dict."""
    p = Path(path)
    try:
        text = p.read_bytes()
    except OSError as exc:
        raise RecipeError(f"{p}: cannot read recipe: {exc.strerror or exc}") from exc
    return parse_recipe_text(text, str(p))


def dump_recipe(recipe: dict[str, Any], fmt: str = "json") -> str:
    """Serialize deterministically (stable key order as given, UTF-8, trailing newline)."""
    if fmt == "json":
        return json.dumps(recipe, indent=2, ensure_ascii=False) + "\n"
    if fmt in ("yaml", "yml"):
        return str(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True, width=120))
    raise RecipeError(f"unknown recipe format '{fmt}'; use json or yaml")
