"""Lint Greengrass v2 component recipes before they are published; each :class:`Finding` names file, place and fix.

See docs/greengrass-packaging.md (the recipe linter).
"""

from __future__ import annotations

import difflib
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal

from semantic_version import NpmSpec, Version

from edgekit.errors import RecipeError
from edgekit.greengrass.access import ACCESS_CONTROL, policy_problems
from edgekit.greengrass.recipe import (
    COERCED_BOOLEANS,
    LIFECYCLE_STEPS,
    MANIFEST_KEYS,
    NUCLEUS_TRUE,
    RECIPE_FORMAT_VERSION,
    SET_BY_SERVICE,
    TOP_LEVEL_KEYS,
    load_recipe,
    normalize_recipe,
    nucleus_bool,
    parse_recipe_text,
)

__all__ = ["Finding", "check_recipe", "lint_paths", "lint_recipe"]

log = logging.getLogger(__name__)

Severity = Literal["error", "warning"]
Known = Mapping[str, Iterable[str]]

_REQUIRED = ("RecipeFormatVersion", "ComponentName", "ComponentVersion")
_SET_BY_SERVICE = SET_BY_SERVICE
# the known top-level keys as the findings list them: required first, the service's own last
_TOP = (*_REQUIRED, *(k for k in TOP_LEVEL_KEYS if k not in (*_REQUIRED, *_SET_BY_SERVICE)), *_SET_BY_SERVICE)
_MANIFEST_KEYS = MANIFEST_KEYS
_STEP_KEYS = ("Script", "RequiresPrivilege", "Skipif", "Timeout", "Setenv")
_ARTIFACT_KEYS = ("URI", "Unarchive", "Permission", "Digest", "Algorithm")
_PERMISSIONS = ("NONE", "OWNER", "ALL")
_OS = ("linux", "windows", "darwin")
_ARCH = ("amd64", "arm", "aarch64", "x86")
_ARCH_ALIASES = {
    "x86_64": "amd64",
    "x64": "amd64",
    "arm64": "aarch64",
    "armv7l": "arm",
    "armhf": "arm",
    "i386": "x86",
    "i686": "x86",
}
_ANY_VALUE = ("*", "all", "any")  # PlatformHelper still reads "all"/"any" as a wildcard for os and architecture
_URI_SCHEMES = ("s3://", "greengrass:", "docker:")
_SUFFIXES = (".json", ".yaml", ".yml")

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")  # ComponentRecipe.COMPONENT_NAME_PATTERN and length
_IDENT_RE = re.compile(r"[A-Za-z_]\w*")
_SKIPIF_RE = re.compile(r"(onpath|exists)\s+\S.*", re.DOTALL)
# The nucleus replaces {namespace:key} and {component:namespace:key}, names being [.\w]+ and the key free of ':' and
# '}'. The component part is widened to [\w.-]+ to report names the nucleus would skip; '${' is shell, not a variable.
_VAR_RE = re.compile(r"(?<!\$)\{(?:(?P<comp>[\w.-]+):)?(?P<ns>[\w.]+):(?P<key>[^:{}]+)\}")
_SELF_VARS = {"artifacts": ("path", "decompressedPath"), "work": ("path",), "kernel": ("rootPath",), "iot": ("thingName",)}
_NAMESPACES = (*_SELF_VARS, "configuration")
_CROSS_NAMESPACES = ("configuration", "artifacts", "work")


@dataclass(frozen=True)
class Finding:
    """One problem in a recipe: where it is, what is wrong, and what to do."""

    file: str
    path: str
    message: str
    fix: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.file}: {self.path}: {self.message} (fix: {self.fix})"


def lint_recipe(
    recipe: Mapping[str, Any] | str | Path, *, file: str | None = None, known_components: Known | None = None
) -> list[Finding]:
    """Every finding for a recipe given as a mapping, as JSON/YAML text, or as the path of a recipe file.

    A string is a path when it is one line ending in .json, .yaml or .yml, and recipe text otherwise.
    ``known_components`` (name -> published versions) turns on the check that each dependency range is satisfiable.
    """
    return _lint(recipe, file, known_components)[1]


def check_recipe(
    recipe: Mapping[str, Any] | str | Path, *, file: str | None = None, known_components: Known | None = None
) -> dict[str, Any]:
    """The normalized recipe, or :class:`RecipeError` listing the errors (``findings`` holds every finding)."""
    data, findings = _lint(recipe, file, known_components)
    errors = [f for f in findings if f.severity == "error"]
    for warning in (f for f in findings if f.severity == "warning"):
        log.warning("%s", warning)
    if data is None or errors:
        where = findings[0].file if findings else file or "<inline>"
        listing = "".join(f"\n  {f}" for f in errors)
        raise RecipeError(f"{where}: the recipe has {len(errors)} error(s):{listing}", findings=list(findings))
    return data


def lint_paths(paths: Iterable[str | Path]) -> list[Finding]:
    """Lint recipe files, and every *.json, *.yaml and *.yml under the given folders (recursively)."""
    findings: list[Finding] = []
    for path in map(Path, paths):
        if path.is_file():
            findings += lint_recipe(path)
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES)
            for file in files:
                findings += lint_recipe(file)
            if not files:
                findings.append(Finding(str(path), "(folder)", "no *.json, *.yaml or *.yml here", "check the folder", "warning"))
        else:
            findings.append(Finding(str(path), "(file)", "no such file or folder", "check the path"))
    return findings


def _lint(
    recipe: Mapping[str, Any] | str | Path, file: str | None, known: Known | None
) -> tuple[dict[str, Any] | None, list[Finding]]:
    is_path = isinstance(recipe, Path) or (
        isinstance(recipe, str) and "\n" not in recipe and recipe.strip().lower().endswith(_SUFFIXES)
    )
    where = file or (str(recipe) if is_path else "<inline>")
    try:
        if is_path:
            data = load_recipe(Path(str(recipe)))
        elif isinstance(recipe, str):
            data = parse_recipe_text(recipe, where)
        elif isinstance(recipe, Mapping):
            data = normalize_recipe(dict(recipe))
        else:
            return None, [
                Finding(where, "(recipe)", f"a recipe can't be a {type(recipe).__name__}", "pass a dict, text or a path")
            ]
    except RecipeError as exc:
        return None, [Finding(where, "(file)", str(exc).removeprefix(f"{where}: "), "make the file a JSON or YAML mapping")]
    return data, _Linter(where, data, known).run()


def _join(path: str, key: object) -> str:
    if _IDENT_RE.fullmatch(text := str(key)):
        return f"{path}.{text}" if path else text
    return f"{path}[{json.dumps(text)}]"


def _suggest(word: str, choices: Iterable[str]) -> str | None:
    lookup = {c.lower(): c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(lookup), n=1, cutoff=0.6)
    return lookup[hits[0]] if hits else None


def _canon(mapping: Mapping[Any, Any], known: Iterable[str]) -> dict[Any, Any]:
    """Known keys in documented casing (sections under selection keys escape normalize_recipe)."""
    lookup = {k.lower(): k for k in known}
    return {lookup.get(str(k).lower(), k): v for k, v in mapping.items()}


def _leaves(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(value, Mapping):
        for key, item in value.items():
            yield from _leaves(item, _join(path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, f"{path}[{i}]")
    else:
        yield path, value


def _resolve(doc: Any, pointer: str) -> tuple[bool, Any]:
    """Follow a JSON pointer (RFC 6901) through ``doc``: (found, value)."""
    for raw in pointer.split("/")[1:]:
        part = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(doc, Mapping) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return False, None
    return True, doc


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _version(text: str) -> Version | None:
    try:
        return Version(text)
    except ValueError:
        return None


def _matches_every_device(platform: Any) -> bool:
    return platform is None or (
        isinstance(platform, Mapping)
        and all(v in _ANY_VALUE and (v == "*" or k in ("os", "architecture")) for k, v in platform.items())
    )


class _Linter:
    def __init__(self, file: str, recipe: dict[str, Any], known: Known | None) -> None:
        self.file, self.recipe, self.known = file, recipe, known
        self.findings: list[Finding] = []
        self.name = recipe.get("ComponentName")
        deps = recipe.get("ComponentDependencies")
        self.deps = {str(k) for k in deps} if isinstance(deps, Mapping) else set()
        config = recipe.get("ComponentConfiguration")
        defaults = config.get("DefaultConfiguration") if isinstance(config, Mapping) else None
        self.defaults = defaults if isinstance(defaults, Mapping) else {}

    def error(self, path: str, message: str, fix: str) -> None:
        self.findings.append(Finding(self.file, path, message, fix, "error"))

    def warn(self, path: str, message: str, fix: str) -> None:
        self.findings.append(Finding(self.file, path, message, fix, "warning"))

    def keys(self, mapping: Mapping[Any, Any], known: tuple[str, ...], path: str, what: str) -> None:
        for key in mapping:
            if key not in known:
                hint = _suggest(str(key), known)
                did = f"; did you mean {hint}?" if hint else ""
                fix = f"rename it to {hint}" if hint else f"use {', '.join(known)}"
                self.error(_join(path, key), f"unknown {what} '{key}'{did}", fix)

    def enum(self, value: Any, allowed: tuple[str, ...], path: str) -> None:
        if value not in allowed:
            fix = f"write {str(value).upper()}" if str(value).upper() in allowed else f"use one of {', '.join(allowed)}"
            self.error(path, f"'{value}' is not one of {', '.join(allowed)} (values are case-sensitive)", fix)

    def run(self) -> list[Finding]:
        r = self.recipe
        self.keys(r, _TOP, "", "top-level key")
        for key in (k for k in _SET_BY_SERVICE if k in r):
            self.warn(key, f"{key} is set by the Greengrass service when it creates the component", f"remove {key}")
        for key in (k for k in _REQUIRED if r.get(k) in (None, "")):
            self.error(key, f"{key} is missing", f"add {key} (required)")
        self.header()
        for key in ("ComponentDescription", "ComponentPublisher"):
            if key in r and not isinstance(r[key], str):
                self.error(key, f"{key} must be text", "quote the value")
        self.configuration(r.get("ComponentConfiguration"))
        self.dependencies(r.get("ComponentDependencies", {}))
        manifests = r.get("Manifests")
        selections = {"all"}
        for m in manifests if isinstance(manifests, list) else []:
            if isinstance(m, Mapping) and isinstance(m.get("Selections"), list):
                selections.update(s for s in m["Selections"] if isinstance(s, str))
        if "Lifecycle" in r:
            self.lifecycle(r["Lifecycle"], "Lifecycle", frozenset(selections))
        self.manifests(manifests, has_global="Lifecycle" in r)
        self.variables()
        return self.findings

    def header(self) -> None:
        fmt, name, version = (self.recipe.get(k) for k in _REQUIRED)
        fmt = fmt.isoformat() if isinstance(fmt, date) else fmt
        if fmt not in (None, "", RECIPE_FORMAT_VERSION):
            self.error(
                "RecipeFormatVersion", f"'{fmt}' is not {RECIPE_FORMAT_VERSION}, the only recipe format", "write that date"
            )
        if name not in (None, "") and (not isinstance(name, str) or not _NAME_RE.fullmatch(name)):
            self.error("ComponentName", f"'{name}' is not 1-128 letters, digits, '.', '-' or '_'", "use e.g. com.example.MyModel")
        elif isinstance(name, str) and name.lower().startswith("aws.greengrass"):
            self.error("ComponentName", f"'{name}' uses aws.greengrass, the prefix of AWS's components", "use your own prefix")
        if isinstance(version, int | float) and not isinstance(version, bool):
            quoted = str(version) + ".0" * (2 - str(version).count("."))
            self.error("ComponentVersion", f"{version} was read as a number, not as version text", f"quote it: '{quoted}'")
        elif version not in (None, ""):
            v = _version(version) if isinstance(version, str) else None
            if v is None:
                self.error("ComponentVersion", f"'{version}' is not a semantic version MAJOR.MINOR.PATCH", "write e.g. '1.0.0'")
            elif len(str(version)) > 64 or max(v.major, v.minor, v.patch) > 999_999:
                self.error("ComponentVersion", f"'{version}' exceeds 64 characters or 6 digits a part", "use a shorter version")

    def configuration(self, config: Any) -> None:
        if config is None:
            return
        if not isinstance(config, Mapping) or not isinstance(config.get("DefaultConfiguration", {}), Mapping):
            self.error(
                "ComponentConfiguration", "it must be {DefaultConfiguration: {...}}", "nest a mapping under DefaultConfiguration"
            )
            return
        self.keys(config, ("DefaultConfiguration",), "ComponentConfiguration", "configuration key")
        for path, value in _leaves(self.defaults, "ComponentConfiguration.DefaultConfiguration"):
            if _is_int(value) and abs(value) > 2**53:
                self.warn(path, f"{value} can come back as a float and lose digits", f"write it as a string ('{value}')")
        if ACCESS_CONTROL in self.defaults:  # the IPC policies the device enforces (edgekit.greengrass.access)
            base = f"ComponentConfiguration.DefaultConfiguration.{ACCESS_CONTROL}"
            for where, message, fix in policy_problems(self.defaults[ACCESS_CONTROL]):
                self.error(f"{base}.{where}" if where else base, message, fix)

    def dependencies(self, deps: Any) -> None:
        if not isinstance(deps, Mapping):
            self.error("ComponentDependencies", "dependencies must map names to {VersionRequirement: ...}", "write a mapping")
            return
        for name, spec in deps.items():
            path = _join("ComponentDependencies", name)
            if not _NAME_RE.fullmatch(str(name)):
                self.error(path, f"'{name}' is not a component name", "use the dependency's exact component name")
            if name == self.name:
                self.error(path, f"{name} depends on itself", "remove the dependency")
            if not isinstance(spec, Mapping):
                self.error(path, "a dependency must be a mapping", f"write {name}: {{VersionRequirement: '^1.0.0'}}")
                continue
            self.keys(spec, ("VersionRequirement", "DependencyType"), path, "dependency key")
            self.enum(spec.get("DependencyType", "HARD"), ("HARD", "SOFT"), _join(path, "DependencyType"))
            self.requirement(str(name), spec.get("VersionRequirement"), _join(path, "VersionRequirement"))

    def requirement(self, name: str, req: Any, path: str) -> None:
        if not isinstance(req, str) or not req.strip():
            fix = f"quote it: '{req}'" if isinstance(req, int | float) else "add an npm-style range such as '^1.0.0'"
            self.error(path, f"the dependency on {name} needs a VersionRequirement range as text", fix)
            return
        try:
            spec = NpmSpec(req)
        except ValueError:
            self.error(path, f"'{req}' is not an npm-style version range", "write e.g. '^1.2.0', '~2.0.0' or '>=1.0.0 <2.0.0'")
            return
        if self.known is not None and name not in self.known:
            self.warn(path, f"{name} is not a known component, so '{req}' can't be checked", "check the name or publish it")
        elif self.known is not None:
            versions = sorted(v for v in map(_version, self.known[name]) if v is not None)
            if spec.select(versions) is None:
                shown = ", ".join(map(str, versions)) or "none"
                self.error(path, f"no version of {name} satisfies '{req}' (known: {shown})", "relax the range or publish a match")

    def manifests(self, manifests: Any, has_global: bool) -> None:
        if not isinstance(manifests, list) or not manifests:
            self.error("Manifests", "Manifests must be a non-empty list (the nucleus refuses the recipe)", "add a manifest")
            return
        for i, m in enumerate(manifests):
            path = f"Manifests[{i}]"
            if not isinstance(m, Mapping):
                self.error(path, "a manifest must be a mapping", "write Platform, Lifecycle and Artifacts under the item")
                continue
            self.keys(m, _MANIFEST_KEYS, path, "manifest key")
            if m.get("Platform") is not None:
                self.platform(m["Platform"], f"{path}.Platform")
            if i < len(manifests) - 1 and _matches_every_device(m.get("Platform")):
                self.warn(path, f"this manifest matches every device, so Manifests[{i + 1}:] are never used", "move it last")
            if "Name" in m and not isinstance(m["Name"], str):
                self.error(f"{path}.Name", "Name must be text", "quote the manifest name")
            if "Selections" in m:
                self.selections(m, f"{path}.Selections", has_global)
            if "Lifecycle" in m:
                self.lifecycle(m["Lifecycle"], f"{path}.Lifecycle", None)
            if "Artifacts" in m:
                self.artifacts(m["Artifacts"], f"{path}.Artifacts")

    def selections(self, manifest: Mapping[str, Any], path: str, has_global: bool) -> None:
        if not isinstance(manifest["Selections"], list) or not all(isinstance(s, str) for s in manifest["Selections"]):
            self.error(path, "Selections must be a list of selection keys", "write Selections: [key1, all]")
        elif "Lifecycle" in manifest:
            self.warn(path, "Selections are ignored: this manifest defines its own Lifecycle", "drop Selections or the Lifecycle")
        elif not has_global:
            self.warn(path, "Selections pick sections of the global Lifecycle, and there is none", "add a top-level Lifecycle")

    def platform(self, platform: Any, path: str) -> None:
        if not isinstance(platform, Mapping):
            self.error(path, "Platform must be a mapping such as {os: linux}", "write Platform as key: value pairs")
            return
        for key, value in platform.items():
            p = _join(path, key)
            if not isinstance(value, str):
                self.error(p, f"platform value {value!r} is not text", "quote it, or use * or /regex/")
            elif len(value) > 1 and value[0] == value[-1] == "/":
                try:
                    re.compile(value[1:-1])
                except re.error as exc:
                    self.error(p, f"platform regex {value} does not compile: {exc}", "fix the expression between the slashes")
            elif value != "*" and not value[:1].isalnum():
                self.error(p, f"'{value}' is not *, /regex/ or a value starting with a letter or digit", "fix the value")
            elif key in ("os", "architecture") and value not in (*_ANY_VALUE, *(_OS if key == "os" else _ARCH)):
                known = _OS if key == "os" else _ARCH
                hint = (_ARCH_ALIASES.get(value.lower()) if key == "architecture" else None) or _suggest(value, known)
                did = f"; did you mean {hint}?" if hint else ""
                fix = f"write {hint}" if hint else f"use {', '.join(known)}"
                self.warn(p, f"{key} '{value}' is not one the nucleus reports{did}", fix)

    def lifecycle(self, lifecycle: Any, path: str, selections: frozenset[str] | None) -> None:
        """A manifest's lifecycle (``selections`` None) or the global one, where selection keys may wrap any level."""
        if not isinstance(lifecycle, Mapping):
            self.error(path, "Lifecycle must be a mapping of steps (Install, Run, ...)", "write the steps as keys")
            return
        lifecycle = _canon(lifecycle, LIFECYCLE_STEPS)
        if "Run" in lifecycle and "Startup" in lifecycle:
            self.error(path, "Run and Startup are both defined; a component has one or the other", "keep Startup or Run")
        for key, body in lifecycle.items():
            if key == "Setenv":
                self.env(body, _join(path, key))
            elif key in LIFECYCLE_STEPS:
                self.step(key, body, _join(path, key), selections)
            elif selections is not None and key in selections:
                self.lifecycle(body, _join(path, key), selections)
            elif (
                selections is not None and isinstance(body, Mapping) and set(_canon(body, LIFECYCLE_STEPS)) & set(LIFECYCLE_STEPS)
            ):
                self.error(
                    _join(path, key), f"'{key}' holds steps, but no manifest selects it", "add it to a manifest's Selections"
                )
            else:
                hint = _suggest(str(key), LIFECYCLE_STEPS)
                fix = f"rename it to {hint}" if hint else f"use {', '.join(LIFECYCLE_STEPS)}"
                self.error(_join(path, key), f"unknown lifecycle step '{key}'" + (f"; did you mean {hint}?" if hint else ""), fix)

    def step(self, name: str, body: Any, path: str, selections: frozenset[str] | None) -> None:
        if selections is not None and isinstance(body, Mapping) and body and set(body) <= selections:
            for key, sub in body.items():
                self.step(name, sub, _join(path, key), selections)
            return
        if isinstance(body, str):
            return
        if not isinstance(body, Mapping):
            self.error(path, f"{name} must be a script or a mapping with Script", f"write {name}: {{Script: 'command'}}")
            return
        allowed = (*_STEP_KEYS, "BootstrapOnRollback") if name == "Bootstrap" else _STEP_KEYS
        body = _canon(body, allowed)
        self.keys(body, allowed, path, f"{name} key")
        script = body.get("Script")
        by_selection = selections is not None and isinstance(script, Mapping) and all(isinstance(s, str) for s in script.values())
        if not isinstance(script, str) and not by_selection:
            self.error(_join(path, "Script"), f"{name} needs a Script (text)", "write Script: 'command' (| for several lines)")
        for flag in (k for k in COERCED_BOOLEANS if k in body and nucleus_bool(body[k]) is None):
            self.error(
                _join(path, flag),
                f"{flag} is {body[flag]!r}, which the nucleus reads as false (it takes true/false, a whole number, or the "
                f"strings {', '.join(repr(t) for t in NUCLEUS_TRUE)} as true)",
                f"write {flag}: true (or false)",
            )
        if "Timeout" in body and (not _is_int(body["Timeout"]) or body["Timeout"] <= 0):
            self.error(
                _join(path, "Timeout"), f"Timeout must be a positive number of seconds, not {body['Timeout']!r}", "write 120"
            )
        skip = body.get("Skipif")
        if skip is not None and (not isinstance(skip, str) or not _SKIPIF_RE.fullmatch(skip.strip())):
            self.error(
                _join(path, "Skipif"), f"Skipif {skip!r} is not 'onpath <exe>' or 'exists <file>'", "write Skipif: onpath git"
            )
        elif skip is not None and name == "Bootstrap":
            self.warn(_join(path, "Skipif"), "Skipif is not documented for Bootstrap", "test the condition in the script")
        if "Setenv" in body:
            self.env(body["Setenv"], _join(path, "Setenv"))

    def env(self, env: Any, path: str) -> None:
        if not isinstance(env, Mapping):
            self.error(path, "Setenv must map variable names to text", "write Setenv: {NAME: value}")
            return
        for key, value in env.items():
            if isinstance(value, int | float | bool):
                self.warn(_join(path, key), f"{key} is {value!r}; environment variables are text", f"quote it: '{value}'")
            elif not isinstance(value, str):
                self.error(_join(path, key), f"{key} must be text, not a {type(value).__name__}", "write a string")

    def artifacts(self, artifacts: Any, path: str) -> None:
        if not isinstance(artifacts, list):
            self.error(path, "Artifacts must be a list", "write each artifact as a list item (- URI: s3://...)")
            return
        names: dict[str, int] = {}
        for j, art in enumerate(artifacts):
            p = f"{path}[{j}]"
            if not isinstance(art, Mapping):
                self.error(p, "an artifact must be a mapping with URI", "write - URI: s3://bucket/key")
                continue
            self.keys(art, _ARTIFACT_KEYS, p, "artifact key")
            for key in (k for k in ("Digest", "Algorithm") if k in art):
                self.warn(_join(p, key), f"{key} is computed by the service from the uploaded file", f"remove {key}")
            uri = art.get("URI")
            if not isinstance(uri, str) or not uri:
                self.error(_join(p, "URI"), "the artifact has no URI", "add URI: s3://bucket/key")
                uri = ""
            elif not uri.startswith(_URI_SCHEMES):
                fix = "write s3://bucket/key" if uri.lower().startswith("s3") else "upload it to S3 and use the s3:// URI"
                self.warn(_join(p, "URI"), f"'{uri}' is not an s3://, greengrass: or docker: URI the nucleus can download", fix)
            elif uri.startswith("s3://") and "/" not in uri[5:].strip("/"):
                self.error(_join(p, "URI"), f"'{uri}' names a bucket but no object", "write s3://bucket/path/to/file")
            fname = uri.rstrip("/").rsplit("/", 1)[-1]
            if uri and not uri.startswith("docker:") and names.setdefault(fname, j) != j:
                self.error(_join(p, "URI"), f"'{fname}' is also the file name of {path}[{names[fname]}]", "rename one")
            unarchive = art.get("Unarchive", "NONE")
            self.enum(unarchive, ("NONE", "ZIP"), _join(p, "Unarchive"))
            if unarchive == "ZIP" and uri and not uri.lower().endswith(".zip"):
                self.warn(_join(p, "Unarchive"), f"Unarchive is ZIP but '{uri}' is not a .zip", "name it *.zip or set NONE")
            perm = art.get("Permission", {})
            if not isinstance(perm, Mapping):
                self.error(_join(p, "Permission"), "Permission must be a mapping", "write Permission: {Read: OWNER}")
                continue
            self.keys(perm, ("Read", "Execute"), _join(p, "Permission"), "permission")
            for key in (k for k in ("Read", "Execute") if k in perm):
                self.enum(perm[key], _PERMISSIONS, _join(_join(p, "Permission"), key))

    def variables(self) -> None:
        manifests = self.recipe.get("Manifests")
        sources = [(self.recipe.get("Lifecycle"), "Lifecycle"), (self.defaults, "ComponentConfiguration.DefaultConfiguration")]
        for i, m in enumerate(manifests if isinstance(manifests, list) else []):
            sources.append((m.get("Lifecycle") if isinstance(m, Mapping) else None, f"Manifests[{i}].Lifecycle"))
        for value, root in sources:
            for path, text in _leaves(value, root):
                for match in _VAR_RE.finditer(text) if isinstance(text, str) else ():
                    self.variable(match["comp"], match["ns"], match["key"], path)

    def variable(self, comp: str | None, ns: str, key: str, path: str) -> None:
        var = "{" + (f"{comp}:" if comp else "") + f"{ns}:{key}}}"
        if ns not in _NAMESPACES:
            if hint := _suggest(ns, _NAMESPACES):  # no near miss: not meant as a variable ({0:.2f}, a JS object, ...)
                fixed = "{" + (f"{comp}:" if comp else "") + f"{hint}:{key}}}"
                self.error(path, f"unknown namespace '{ns}' in {var}; did you mean {hint}?", f"write {fixed}")
            return
        plain = f"{{{ns}:{key}}}"
        if comp is not None and ns not in _CROSS_NAMESPACES:
            self.error(path, f"{var}: only configuration, artifacts and work of a dependency can be read", f"write {plain}")
            return
        if comp is not None and not re.fullmatch(r"[\w.]+", comp):
            skipped = f"{var}: the nucleus replaces only component names of letters, digits, '_' and '.'"
            self.error(path, skipped, "rename the dependency without '-' or pass the value in configuration")
        elif comp is not None and comp == self.name:
            self.error(path, f"{var} names this component, but only direct dependencies are replaced", f"write {plain}")
        elif comp is not None and comp not in self.deps:
            self.error(path, f"{var}: {comp} is not a direct dependency (ComponentDependencies)", f"add {comp} as a dependency")
        if ns == "configuration" and not key.startswith("/"):
            self.error(path, f"{var}: a configuration JSON pointer starts with '/'", f"write {{configuration:/{key}}}")
        elif ns == "configuration" and comp is None:
            found, value = _resolve(self.defaults, key)
            if not found:
                self.warn(path, f"{var}: DefaultConfiguration has no {key} (left as is unless deployed)", f"add {key}")
            elif _is_int(value):
                self.warn(
                    path,
                    f"{var} is the number {value}; merged configuration may make it {float(value)}",
                    f"use the string '{value}'",
                )
        elif ns != "configuration" and key not in _SELF_VARS[ns]:
            hint = _suggest(key, _SELF_VARS[ns])
            did = f"; did you mean {{{ns}:{hint}}}?" if hint else ""
            self.error(path, f"unknown recipe variable {var}{did}", "use " + " or ".join(f"{{{ns}:{k}}}" for k in _SELF_VARS[ns]))
