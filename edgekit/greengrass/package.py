"""``edgekit package``: compiled artifacts → three Greengrass v2 components (runtime, model, inference), GDK layout.

See docs/greengrass-packaging.md.
"""

from __future__ import annotations

import copy
import os
import shutil
import stat
import tempfile
import uuid
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import semantic_version
import yaml

from edgekit._version import __version__
from edgekit.atomic import install_dir, write_bytes
from edgekit.digests import file_sha256
from edgekit.errors import ArtifactError, PackagingError, RecipeError
from edgekit.greengrass.recipe import SET_BY_SERVICE, TOP_LEVEL_KEYS, dump_recipe, normalize_recipe
from edgekit.greengrass.resolve import BUILDS_KEY
from edgekit.manifest import Manifest, read_manifest, tensors_only, verify_files
from edgekit.progress import Progress, no_progress
from edgekit.resources import bundled_dir

__all__ = [
    "RUNTIME_COMPONENT",
    "PackageResult",
    "PackagedComponent",
    "build_facts",
    "next_version",
    "package",
    "reproducible_zip",
    "runtime_component",
]

RUNTIME_COMPONENT = "com.edgekit.Runtime"
"""The prefix of the runtime components: one per backend (:func:`runtime_component`)."""
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# The part of edgekit a device needs to load and run an artifact (no compiler, no CLI).
_RUNTIME_MODULES = [
    "__init__.py",
    "_version.py",
    "api.py",
    "clock.py",
    "parsing.py",
    "digests.py",
    "errors.py",
    "deps.py",
    "manifest.py",
    "machines.py",
    "runtime",
    "edge",
    "wire",
]


@dataclass
class PackagedComponent:
    name: str
    version: str
    recipe_path: Path
    artifacts: list[Path] = field(default_factory=list)


@dataclass
class PackageResult:
    output: Path
    components: list[PackagedComponent]

    def component(self, name: str) -> PackagedComponent:
        return next(c for c in self.components if c.name == name)


def runtime_component(backend: str) -> str:
    """The runtime component of ``backend``: ``com.edgekit.Runtime.Onnxruntime``, ``com.edgekit.Runtime.Tvm``.

    One per backend, so models with different backends share a fleet and a device without two recipes of one
    component version; its version is edgekit's, and its content follows from it (reproducible zips), so every
    model packaged with one edgekit shares one runtime version per backend."""
    return f"{RUNTIME_COMPONENT}.{backend.capitalize()}"


def reproducible_zip(dest: Path, files: Iterable[tuple[str, Path]]) -> None:
    """Zip ``(arcname, path)`` pairs with fixed times and modes, sorted, written atomically."""
    entries = sorted(files, key=lambda e: e[0])
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as zf:
            for arcname, path in entries:
                info = zipfile.ZipInfo(arcname, date_time=_ZIP_TIME)
                executable = bool(path.stat().st_mode & stat.S_IXUSR) or path.suffix == ".so"
                info.external_attr = ((0o755 if executable else 0o644) | stat.S_IFREG) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                info.create_system = 3  # unix, so the modes are honoured when unzipped
                zf.writestr(info, path.read_bytes(), compresslevel=6)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _tree(root: Path, prefix: str) -> list[tuple[str, Path]]:
    """Files under ``root`` as zip entries under ``prefix`` ("" for the zip's root: "x.zip" unpacks into x/)."""
    return [
        (f"{prefix}/{p.relative_to(root).as_posix()}".lstrip("/"), p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith(".pyc")
    ]


def next_version(name: str, recipes_dir: Path, known: Iterable[str] = ()) -> str:
    """NEXT_PATCH: one patch above the highest version of ``name`` packaged here or ``known``; 1.0.0 if none."""
    versions = [semantic_version.Version(v) for v in known if semantic_version.validate(v)]
    prefix = f"{name}-"
    if recipes_dir.is_dir():
        for p in recipes_dir.glob(f"{name}-*.json"):
            v = p.stem[len(prefix) :]
            if semantic_version.validate(v):
                versions.append(semantic_version.Version(v))
    if not versions:
        return "1.0.0"
    top = max(versions)
    return str(semantic_version.Version(major=top.major, minor=top.minor, patch=top.patch + 1))


def _template(name: str, tokens: dict[str, str]) -> dict[str, Any]:
    path = bundled_dir("recipes") / f"{name}.yaml"
    text = path.read_text()
    for token, value in tokens.items():
        text = text.replace(token, value)
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise PackagingError(f"{path}: a recipe template must be a YAML mapping")
    return normalize_recipe(data)


def _platform(manifest: Manifest) -> dict[str, str]:
    gg = manifest.profile.greengrass
    return {"os": gg["os"], "architecture": gg["architecture"]}


def _write_recipe(recipe: dict[str, Any], recipes_dir: Path) -> Path:
    from edgekit.greengrass.lint import check_recipe

    try:
        check_recipe(recipe, file=f"{recipe['ComponentName']}-{recipe['ComponentVersion']}.json")
    except RecipeError as exc:  # a template edited into something the nucleus would refuse
        raise PackagingError(f"the generated recipe is invalid (check recipes/*.yaml): {exc}") from exc
    path = recipes_dir / f"{recipe['ComponentName']}-{recipe['ComponentVersion']}.json"
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(dump_recipe(recipe, "json"))
    os.replace(tmp, path)
    return path


def _set_artifact(manifest: dict[str, Any], zip_path: Path) -> None:
    """Check that the manifest names ``zip_path`` (the URI's last segment is the file on disk)."""
    if not any(art["URI"].endswith("/" + zip_path.name) for art in manifest.get("Artifacts", [])):
        raise PackagingError(f"recipe template names no artifact '{zip_path.name}'")


def _write_sums(out: Path) -> None:
    """``SHA256SUMS`` of every artifact under ``out/artifacts`` (``cd out && sha256sum -c SHA256SUMS``)."""
    lines = [
        f"{file_sha256(p)}  {p.relative_to(out).as_posix()}\n"
        for p in sorted((out / "artifacts").rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    ]
    write_bytes(out / "SHA256SUMS", "".join(lines).encode())


def package(
    artifacts: Iterable[str | Path],
    *,
    name: str,
    version: str = "NEXT_PATCH",
    output: str | Path = "greengrass-build",
    publisher: str = "edgekit",
    runtime_name: str | None = None,
    known_versions: Iterable[str] = (),
    progress: Progress | None = None,
) -> PackageResult:
    """Package compiled ``artifacts`` (one per platform) as runtime, model and inference components.

    Nothing is written to ``output`` until every input is checked; each file is
    written atomically.
    """
    say = progress or (lambda _m: None)
    out = Path(output)
    _check_name(name, "--name")

    # 1. Read and check every input before writing anything.
    loaded: list[tuple[Path, Manifest]] = []
    for a in artifacts:
        path = Path(a)
        try:
            m = read_manifest(path, check_files=False)
            missing = [f for f in [*m.backend.files, m.selftest.file if m.selftest else None] if f and not (path / f).is_file()]
            if missing:
                raise PackagingError(
                    f"cannot package '{path}': files {missing} named in its manifest.json are missing; recompile"
                )
            verify_files(path, m)  # nothing modified since compiling goes into a component
            tensors_only(m, "the inference component", "a device's input sources make tensors")
        except ArtifactError as exc:
            raise PackagingError(f"cannot package '{path}': {exc}") from exc
        loaded.append((path, m))
    if not loaded:
        raise PackagingError("give at least one compiled artifact folder to package")
    by_platform: dict[tuple[str, str], tuple[Path, Manifest]] = {}
    for path, m in loaded:
        key = (m.profile.greengrass["os"], m.profile.greengrass["architecture"])
        if key in by_platform:
            other = by_platform[key][1].profile.name
            raise PackagingError(
                f"two artifacts for {key[0]}/{key[1]}: '{other}' and '{m.profile.name}'; a device picks the first "
                f"manifest that matches its platform, so package them as separate components (another --name)"
            )
        by_platform[key] = (path, m)
    if len({tuple((s.name, tuple(s.shape)) for s in m.inputs) for _, m in loaded}) > 1:
        shown = sorted({f"{m.profile.name}: {[(s.name, s.shape) for s in m.inputs]}" for _, m in loaded})
        raise PackagingError(f"the artifacts take different inputs ({'; '.join(shown)}); package one model per component")
    if version == "NEXT_PATCH":
        version = next_version(name, out / "recipes", known_versions)
    elif not semantic_version.validate(version):
        raise PackagingError(f"--version '{version}' is not semver (MAJOR.MINOR.PATCH) or NEXT_PATCH")
    backends = sorted({m.backend.name for _, m in loaded})
    if runtime_name is not None and len(backends) > 1:
        raise PackagingError(
            f"a runtime component name ('{runtime_name}') names one runtime, and the artifacts use {len(backends)} "
            f"backends {backends}: leave it out (each backend gets its own, {runtime_component(backends[0])}, ...)"
        )
    # Mixed backends (TVM on one platform, ONNX Runtime on another): one runtime component per backend; each
    # platform's inference manifest runs on its own (see docs/greengrass-packaging.md, mixed backends).
    runtimes = {b: runtime_name or runtime_component(b) for b in backends}
    for runtime in runtimes.values():
        _check_name(runtime, "runtime component name")

    # 2. Build everything in a staging folder, then move each piece into place whole.
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".edgekit-package-", dir=out))
    try:
        staged = _build(by_platform, name, version, publisher, runtimes, staging, say)
        return _install(staged, staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _install(staged: list[PackagedComponent], staging: Path, out: Path) -> PackageResult:
    final: list[PackagedComponent] = []
    for comp in staged:
        src_dir = staging / "artifacts" / comp.name / comp.version
        dest_dir = out / "artifacts" / comp.name / comp.version
        install_dir(src_dir, dest_dir)
        recipe = out / "recipes" / comp.recipe_path.name
        recipe.parent.mkdir(parents=True, exist_ok=True)
        os.replace(comp.recipe_path, recipe)
        final.append(PackagedComponent(comp.name, comp.version, recipe, [dest_dir / a.name for a in comp.artifacts]))
    _write_sums(out)
    return PackageResult(out, final)


def _build(
    by_platform: dict[tuple[str, str], tuple[Path, Manifest]],
    name: str,
    version: str,
    publisher: str,
    runtimes: dict[str, str],
    staging: Path,
    say: Progress,
) -> list[PackagedComponent]:
    recipes_dir, artifacts_root = staging / "recipes", staging / "artifacts"
    recipes_dir.mkdir(parents=True)
    runtime_version = __version__
    inference_name = f"{name}.Inference"
    result: list[PackagedComponent] = []
    for backend, runtime_name in sorted(runtimes.items()):
        say(f"runtime component {runtime_name} {runtime_version} ({backend})")
        tokens = {"@RUNTIME@": runtime_name, "@MODEL@": name, "@BACKEND@": backend}
        result.append(_package_runtime(runtime_name, runtime_version, publisher, tokens, recipes_dir, artifacts_root, say))

    say(f"model component {name} {version}: {', '.join(f'{k[0]}/{k[1]}' for k in sorted(by_platform))}")
    # @RUNTIME@ and @BACKEND@ are per platform: they are filled in each manifest
    tokens = {"@MODEL@": name}
    model = _template("model", tokens)
    template_manifest = model["Manifests"][0]
    model_dest = _fresh_dir(artifacts_root / name / version)
    model_manifests = []
    model_zips = []
    builds: dict[str, dict[str, Any]] = {}
    for key in sorted(by_platform, key=lambda k: (k[1] != "amd64", k)):
        path, m = by_platform[key]
        # "x.zip" unpacks to {artifacts:decompressedPath}/x on the device
        zip_path = model_dest / f"{_model_dir(m)}.zip"
        reproducible_zip(zip_path, _tree(path, ""))  # with its host twin (host-<machine>/), if it has one
        manifest = _subst(copy.deepcopy(template_manifest), "@MODEL_DIR@", _model_dir(m))
        manifest["Platform"] = _platform(m)
        _set_artifact(manifest, zip_path)
        model_manifests.append(manifest)
        model_zips.append(zip_path)
        builds[_model_dir(m)] = build_facts(m, runtimes[m.backend.name])
    defaults = model.setdefault("ComponentConfiguration", {}).setdefault("DefaultConfiguration", {})
    defaults[BUILDS_KEY] = builds  # what the pre-flight checks each device against (edgekit.greengrass.resolve)
    model.update(ComponentName=name, ComponentVersion=version, ComponentPublisher=publisher, Manifests=model_manifests)
    model = _ordered(model)
    result.append(PackagedComponent(name, version, _write_recipe(model, recipes_dir), model_zips))

    say(f"inference component {inference_name} {version}")
    inference = _template("inference", tokens)
    src = bundled_dir("components") / "inference"
    inf_dest = _fresh_dir(artifacts_root / inference_name / version)
    inf_zip = inf_dest / "inference.zip"
    reproducible_zip(inf_zip, _tree(src, ""))
    base = inference["Manifests"][0]
    manifests = []
    for key in sorted(by_platform, key=lambda k: (k[1] != "amd64", k)):
        m = by_platform[key][1]
        runtime_name = runtimes[m.backend.name]
        manifest = _subst(copy.deepcopy(base), "@MODEL_DIR@", _model_dir(m))
        manifest = _subst(_subst(manifest, "@RUNTIME@", runtime_name), "@BACKEND@", m.backend.name)
        manifest["Platform"] = {"os": key[0], "architecture": key[1]}
        _set_artifact(manifest, inf_zip)
        if m.backend.name == "tvm":
            _tvm_library_env(manifest, runtime_name, key[1])
        manifests.append(manifest)
    # Greengrass dependencies are the component's, not a manifest's (the 2020-01-25 format has none per manifest):
    # with mixed backends every device installs each runtime, and each platform's manifest runs on its own one.
    requirement = f">={runtime_version} <{semantic_version.Version(runtime_version).next_major()}"
    dependencies: dict[str, Any] = {
        runtime: {"VersionRequirement": requirement, "DependencyType": "HARD"} for runtime in sorted(set(runtimes.values()))
    }
    dependencies[name] = {"VersionRequirement": version, "DependencyType": "HARD"}
    inference.update(
        ComponentName=inference_name,
        ComponentVersion=version,
        ComponentPublisher=publisher,
        ComponentDependencies=dependencies,
        Manifests=manifests,
    )
    inference = _ordered(inference)
    result.append(PackagedComponent(inference_name, version, _write_recipe(inference, recipes_dir), [inf_zip]))
    return result


_GG_ARCH = {"x86_64": "amd64", "aarch64": "aarch64", "armv7l": "arm", "i686": "x86"}


def build_facts(m: Manifest, runtime: str) -> dict[str, Any]:
    """What a device needs to run the artifact ``m`` (the model recipe's ``Builds`` entry of its folder): its target,
    backend and that backend's runtime component, the architecture its code is for (``*``: portable), the CPU
    features it needs (where its manifest records them) and the machine of its host twin (a simulator's stand-in)."""
    elf = m.backend.options.get("elf")
    facts: dict[str, Any] = {
        "Target": m.profile.name,
        "Backend": m.backend.name,
        "Runtime": runtime,
        "Architecture": _GG_ARCH.get(str(elf), str(elf)) if elf else "*",
    }
    if m.cpu is not None and m.cpu.features:  # /proc/cpuinfo names, as the devices' cpuFeatures attribute
        facts["CpuFeatures"] = sorted(m.cpu.features)
    if m.host_twin is not None:
        facts["HostTwin"] = m.host_twin.machine
    return facts


def _package_runtime(
    name: str,
    version: str,
    publisher: str,
    tokens: dict[str, str],
    recipes_dir: Path,
    artifacts_root: Path,
    say: Progress = no_progress,
) -> PackagedComponent:
    recipe = _template("runtime", tokens)
    dest = _fresh_dir(artifacts_root / name / version)
    zip_path = dest / "runtime.zip"
    pkg = Path(__file__).resolve().parents[1]  # the installed edgekit package
    files: list[tuple[str, Path]] = []
    for entry in _RUNTIME_MODULES:
        p = pkg / entry
        files += _tree(p, f"edgekit/{entry}") if p.is_dir() else [(f"edgekit/{entry}", p)]
    backend = tokens["@BACKEND@"]
    # only this backend's requirements: the runtime component of a backend installs that backend alone
    files += [e for e in _tree(bundled_dir("components") / "runtime", "") if _for_backend(e[0], backend)]
    reproducible_zip(zip_path, files)
    recipe["ComponentConfiguration"]["DefaultConfiguration"]["Backend"] = backend
    for manifest in recipe["Manifests"]:
        _set_artifact(manifest, zip_path)
    if backend == "tvm":
        recipe["Manifests"] = _tvm_library_manifests(recipe["Manifests"][0], dest, say)
    recipe.update(ComponentName=name, ComponentVersion=version, ComponentPublisher=publisher)
    recipe = _ordered(recipe)
    return PackagedComponent(name, version, _write_recipe(recipe, recipes_dir), sorted(dest.glob("*.zip")))


def tvm_library_dir(architecture: str) -> str:
    """Where the TVM runtime component unpacks ``libtvm_runtime.so`` for ``architecture``, under its decompressedPath."""
    return f"tvm-runtime-{architecture}"


def _tvm_library_manifests(template: dict[str, Any], dest: Path, say: Progress = no_progress) -> list[dict[str, Any]]:
    """One manifest per architecture, each with the official ``libtvm_runtime.so`` of that platform as a second artifact.

    The component installs numpy and apache-tvm-ffi only (requirements-tvm.txt); the inference component points
    the runner at the library with ``EDGEKIT_TVM_RUNTIME`` (:func:`_tvm_library_env`). Every platform is always
    shipped, so the component's content follows from edgekit's version alone, whatever the models packaged with it.
    """
    from edgekit.greengrass.tvm_library import LIBRARY, WHEEL_PLATFORMS, runtime_library

    manifests = []
    for arch in WHEEL_PLATFORMS:
        lib_zip = dest / f"{tvm_library_dir(arch)}.zip"
        reproducible_zip(lib_zip, [(LIBRARY, runtime_library(arch, progress=say))])
        manifest = copy.deepcopy(template)
        manifest["Platform"] = {"os": "linux", "architecture": arch}
        manifest["Artifacts"] = [
            *manifest["Artifacts"],
            {"URI": f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{lib_zip.name}", "Unarchive": "ZIP"},
        ]
        manifests.append(manifest)
    return manifests


def _tvm_library_env(manifest: dict[str, Any], runtime_name: str, architecture: str) -> None:
    """Point the TVM runner of an inference manifest at the runtime component's library for ``architecture``."""
    from edgekit.greengrass.tvm_library import LIBRARY

    setenv = manifest.setdefault("Lifecycle", {}).setdefault("Setenv", {})
    setenv["EDGEKIT_TVM_RUNTIME"] = f"{{{runtime_name}:artifacts:decompressedPath}}/{tvm_library_dir(architecture)}/{LIBRARY}"


def _for_backend(arcname: str, backend: str) -> bool:
    name = arcname.rsplit("/", 1)[-1]
    return not name.startswith("requirements-") or name == f"requirements-{backend}.txt"


_ORDER = [k for k in TOP_LEVEL_KEYS if k not in SET_BY_SERVICE]  # how generated recipes are laid out


def _model_dir(m: Manifest) -> str:
    return f"model-{m.profile.name}"


def _subst(value: Any, token: str, text: str) -> Any:
    """``value`` with ``token`` replaced by ``text`` in every string inside it."""
    if isinstance(value, str):
        return value.replace(token, text)
    if isinstance(value, list):
        return [_subst(v, token, text) for v in value]
    if isinstance(value, dict):
        return {k: _subst(v, token, text) for k, v in value.items()}
    return value


def _ordered(recipe: dict[str, Any]) -> dict[str, Any]:
    return {k: recipe[k] for k in _ORDER if k in recipe} | {k: v for k, v in recipe.items() if k not in _ORDER}


def _fresh_dir(path: Path) -> Path:
    """An empty ``path``: a version folder holds exactly what this packaging wrote."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _check_name(name: str, what: str) -> None:
    import re

    # '-' is legal in a component name, but the nucleus does not interpolate {other-name:...} variables, and the
    # inference component refers to the runtime and model by name: so edgekit allows letters, digits, '.' and '_'.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._]{0,127}", name) or name.lower().startswith("aws.greengrass"):
        raise PackagingError(
            f"{what} '{name}' is not a valid component name here: use reverse-domain style like com.example.Classifier "
            f"(letters, digits, '.', '_'; no '-', which the nucleus won't resolve in cross-component variables; "
            f"the aws.greengrass prefix is reserved)"
        )
