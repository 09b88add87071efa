"""Pre-flight resolution: union over groups, intersected requirements, first matching manifest."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import ResolutionError
from edgekit.fleet_file import FleetDevice, load_fleet
from edgekit.greengrass.package import package
from edgekit.greengrass.resolve import ComponentStore, GroupDeployment, platform_matches, preflight, resolve_device

PI = FleetDevice(thing="pi-1", profile="rasp4b", groups=("line-1", "canary"), platform={"os": "linux", "architecture": "aarch64"})
GW = FleetDevice(thing="gw-1", profile="x86_64", groups=("line-1",), platform={"os": "linux", "architecture": "amd64"})


def recipe(
    name: str, version: str, deps: dict[str, str] | None = None, platforms: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    return {
        "RecipeFormatVersion": "2020-01-25",
        "ComponentName": name,
        "ComponentVersion": version,
        "ComponentDependencies": {n: {"VersionRequirement": r, "DependencyType": "HARD"} for n, r in (deps or {}).items()},
        "Manifests": [{"Platform": p, "Lifecycle": {"Run": "true"}} for p in (platforms or [{"os": "linux"}])],
    }


@pytest.fixture
def store() -> ComponentStore:
    return ComponentStore(
        [
            recipe("rt", "0.1.0"),
            recipe("rt", "0.2.0"),
            recipe("rt", "1.0.0"),
            recipe("model", "1.0.0"),
            recipe("model", "1.1.0"),
            recipe("app", "1.0.0", {"rt": ">=0.1.0 <1.0.0", "model": "1.0.0"}),
            recipe("app", "2.0.0", {"rt": "^1.0.0", "model": "~1.1.0"}),
            recipe("x86only", "1.0.0", platforms=[{"os": "linux", "architecture": "amd64"}]),
        ]
    )


def test_dependencies_resolve_to_the_highest_satisfying_version(store: ComponentStore) -> None:
    res = resolve_device(PI, [GroupDeployment("thinggroup/line-1", {"app": "1.0.0"})], store)
    assert res.ok and res.components == {"app": "1.0.0", "model": "1.0.0", "rt": "0.2.0"}


def test_union_of_groups_with_intersected_requirements(store: ComponentStore) -> None:
    line = GroupDeployment("thinggroup/line-1", {"app": "1.0.0"})
    canary_ok = GroupDeployment("thinggroup/canary", {"rt": "0.1.0"})
    res = resolve_device(PI, [line, canary_ok], store)
    assert res.ok and res.components["rt"] == "0.1.0"  # both ranges hold: the canary pin wins the intersection
    canary_bad = GroupDeployment("thinggroup/canary", {"model": "1.1.0"})
    res = resolve_device(PI, [line, canary_bad], store)
    assert [p.code for p in res.problems] == ["COMPONENT_VERSION_REQUIREMENTS_NOT_MET"]
    assert "deployment to thinggroup/canary requires '1.1.0'" in res.problems[0].message
    assert "app 1.0.0 requires '1.0.0'" in res.problems[0].message
    # the gateway is not in the canary group: unaffected
    assert resolve_device(GW, [line, canary_bad], store).ok


def test_missing_versions(store: ComponentStore) -> None:
    res = resolve_device(PI, [GroupDeployment("thinggroup/line-1", {"app": "3.0.0"})], store)
    assert res.problems[0].code == "NO_AVAILABLE_COMPONENT_VERSION" and "only 1.0.0, 2.0.0" in res.problems[0].message
    res = resolve_device(PI, [GroupDeployment("thinggroup/line-1", {"ghost": "1.0.0"})], store)
    assert res.problems[0].code == "NO_AVAILABLE_COMPONENT_VERSION" and "'ghost'" in res.problems[0].message


def test_no_manifest_for_the_platform(store: ComponentStore) -> None:
    res = resolve_device(PI, [GroupDeployment("thinggroup/line-1", {"x86only": "1.0.0"})], store)
    assert res.problems[0].code == "NO_MATCHING_PLATFORM"
    assert "no manifest of x86only 1.0.0 for linux/aarch64 (it has: linux/amd64)" in res.problems[0].message
    assert resolve_device(GW, [GroupDeployment("thinggroup/line-1", {"x86only": "1.0.0"})], store).ok


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ({"os": "linux", "architecture": "aarch64"}, True),
        ({"os": "linux", "architecture": "amd64"}, False),
        ({"os": "*", "architecture": "*"}, True),
        ({"os": "linux", "architecture": "/aarch64|arm/"}, True),
        ({"os": "linux", "architecture": "/amd.*/"}, False),
        ({"os": "linux", "architecture.detail": "armv8"}, False),  # the device has no such attribute
        ({}, True),
        (None, True),
    ],
)
def test_platform_selectors(selector: dict[str, str] | None, matches: bool) -> None:
    assert platform_matches(selector, PI.platform) is matches


def test_first_matching_manifest_wins() -> None:
    store = ComponentStore(
        [recipe("c", "1.0.0", platforms=[{"os": "linux", "architecture": "amd64"}, {"os": "*"}, {"os": "linux"}])]
    )
    assert resolve_device(PI, [GroupDeployment("thing/pi-1", {"c": "1.0.0"})], store).manifests == {"c": 1}
    assert resolve_device(GW, [GroupDeployment("thing/pi-1", {"c": "1.0.0"})], store).components == {}


def test_a_new_deployment_replaces_the_old_one_for_its_target(store: ComponentStore) -> None:
    old = GroupDeployment("thinggroup/line-1", {"x86only": "1.0.0"})  # would fail on the pi
    new = GroupDeployment("thinggroup/line-1", {"app": "2.0.0"})
    report = preflight(new, [old], [PI, GW], store)
    assert not report.failed
    assert {d.device.thing: d.components["app"] for d in report.devices} == {"pi-1": "2.0.0", "gw-1": "2.0.0"}


def test_packaged_components_against_the_demo_fleet(mlp_onnx: Path, tmp_path: Path) -> None:
    quick = Pipeline.model_validate(
        {
            "name": "q",
            "candidates": [{"name": "ort", "backend": "onnxruntime"}],
            "measure": {"samples": 2, "warmup": 0, "repeat": 2},
        }
    )
    x86 = edgekit.compile(mlp_onnx, "x86_64", tmp_path / "b", pipeline=quick).artifact_dir
    pi = edgekit.compile(mlp_onnx, "rasp4b", tmp_path / "b", pipeline=quick).artifact_dir
    package([x86, pi], name="com.example.Both", version="1.0.0", output=tmp_path / "gg")
    package([x86], name="com.example.X86", version="1.0.0", output=tmp_path / "gg")
    store = ComponentStore.from_dirs(tmp_path / "gg" / "recipes")
    devices = load_fleet("demo").expand()
    ok = preflight(GroupDeployment("thinggroup/line-1", {"com.example.Both.Inference": "1.0.0"}), [], devices, store)
    assert len(ok.devices) == 12 and not ok.failed
    assert {d.components["com.example.Both"] for d in ok.devices} == {"1.0.0"}
    bad = preflight(GroupDeployment("thinggroup/line-1", {"com.example.X86.Inference": "1.0.0"}), [], devices, store)
    assert len(bad.failed) == 10  # 8 pis + the canary pi + the emulated pi; the two gateways are fine
    with pytest.raises(
        ResolutionError,
        match=r"NO_MATCHING_PLATFORM: device 'line1-pi-01': no manifest of .* for linux/aarch64.*\(and 9 more devices\)",
    ):
        bad.raise_for_problems()


# --------------------------------------------------------------------------- what can't run (issue 18)

ARM = FleetDevice(thing="arm-1", profile="armv7", groups=("line-1",), platform={"os": "linux", "architecture": "arm"})
C5 = FleetDevice(
    thing="c5-1",
    profile="ml_c5",
    groups=("line-1",),
    platform={"os": "linux", "architecture": "amd64", "cpuFeatures": "avx2 fma"},
)


def model_store(builds: dict[str, dict[str, Any]], model_platforms: list[dict[str, str]]) -> ComponentStore:
    """A packaged-like model (builds per folder), a TVM runtime for amd64/aarch64 only, an ONNX Runtime one for any
    linux, and an inference component depending on the model and both runtimes (as edgekit packages mixed backends)."""
    folders = list(builds)
    model = recipe("m", "1.0.0", platforms=model_platforms)
    model["ComponentConfiguration"] = {"DefaultConfiguration": {"Builds": builds}}
    for manifest, folder in zip(model["Manifests"], folders, strict=True):
        manifest["Artifacts"] = [{"URI": f"s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/{folder}.zip", "Unarchive": "ZIP"}]
    tvm = recipe(
        "rt.Tvm", "0.1.0", platforms=[{"os": "linux", "architecture": "amd64"}, {"os": "linux", "architecture": "aarch64"}]
    )
    deps = {"m": "1.0.0", "rt.Tvm": "^0.1.0", "rt.Onnxruntime": "^0.1.0"}
    inference = recipe("m.Inference", "1.0.0", deps, platforms=model_platforms)
    return ComponentStore([model, tvm, recipe("rt.Onnxruntime", "0.1.0"), inference])


def build(target: str, backend: str, arch: str, **more: Any) -> dict[str, Any]:
    runtime = "rt.Tvm" if backend == "tvm" else "rt.Onnxruntime"
    return {"Target": target, "Backend": backend, "Runtime": runtime, "Architecture": arch, **more}


def test_preflight_refuses_a_build_for_another_architecture() -> None:
    # a hand-written manifest that matches every linux device, holding an x86_64 TVM build
    store = model_store({"model-x86_64": build("x86_64", "tvm", "amd64")}, [{"os": "linux"}])
    report = preflight(GroupDeployment("thinggroup/line-1", {"m.Inference": "1.0.0"}), [], [PI, GW], store)
    assert [d.device.thing for d in report.failed] == ["pi-1"]
    [problem] = report.failed[0].problems
    assert problem.code == "WRONG_ARCHITECTURE" and "'model-x86_64', whose code is built for amd64" in problem.message
    # a portable build (ONNX Runtime) runs on either
    portable = model_store({"model-x86_64": build("x86_64", "onnxruntime", "*")}, [{"os": "linux"}])
    assert not preflight(GroupDeployment("thinggroup/line-1", {"m.Inference": "1.0.0"}), [], [PI, GW], portable).failed


def test_preflight_refuses_missing_cpu_features_where_the_device_declares_them() -> None:
    store = model_store({"model-ml_c5": build("ml_c5", "tvm", "amd64", CpuFeatures=["avx2", "avx512f"])}, [{"os": "linux"}])
    report = preflight(GroupDeployment("thinggroup/line-1", {"m.Inference": "1.0.0"}), [], [C5, GW], store)
    assert [d.device.thing for d in report.failed] == ["c5-1"]  # gw-1 declares no features: nothing to check against
    [problem] = report.failed[0].problems
    assert problem.code == "MISSING_CPU_FEATURES" and "needs CPU features avx512f" in problem.message


def test_preflight_refuses_a_backend_without_a_runtime_for_the_platform() -> None:
    arm = {"os": "linux", "architecture": "arm"}
    store = model_store({"model-armv7": build("armv7", "tvm", "arm")}, [arm])
    report = preflight(GroupDeployment("thinggroup/line-1", {"m.Inference": "1.0.0"}), [], [ARM], store)
    [problem] = report.failed[0].problems  # said once, as what it means: not also as the runtime's missing manifest
    assert problem.code == "NO_RUNTIME_FOR_PLATFORM"
    assert "'model-armv7' of m runs on tvm, and linux/arm has no runtime for it: no manifest of rt.Tvm" in problem.message
    # the model component alone is only files: nothing runs them, nothing to refuse
    alone = preflight(GroupDeployment("thinggroup/line-1", {"m": "1.0.0"}), [], [ARM], store)
    assert not alone.failed


def test_a_refused_preflight_lists_one_line_per_device_and_reason() -> None:
    store = model_store({"model-x86_64": build("x86_64", "tvm", "amd64", CpuFeatures=["avx512f"])}, [{"os": "linux"}])
    pis = [PI.model_copy(update={"thing": f"pi-{i}", "platform": {**PI.platform, "cpuFeatures": "neon"}}) for i in (1, 2)]
    report = preflight(GroupDeployment("thinggroup/line-1", {"m.Inference": "1.0.0"}), [], [*pis, GW], store)
    assert [line.split(": ")[:2] for line in report.lines()] == [
        ["pi-1", "WRONG_ARCHITECTURE"],
        ["pi-1", "MISSING_CPU_FEATURES"],
        ["pi-2", "WRONG_ARCHITECTURE"],
        ["pi-2", "MISSING_CPU_FEATURES"],
    ]
    with pytest.raises(ResolutionError) as caught:
        report.raise_for_problems()
    assert "(and 1 more device); nothing was deployed" in str(caught.value) and "\n" not in str(caught.value)
    assert caught.value.lines == report.lines()
