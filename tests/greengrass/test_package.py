"""edgekit package: three Greengrass components in the GDK layout, reproducible, checked."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from helpers import QUICK, InferServer

import edgekit
from edgekit.device.ipc import DeviceIpc
from edgekit.edge import Spool
from edgekit.errors import PackagingError
from edgekit.greengrass.package import package, runtime_component
from edgekit.greengrass.recipe import load_recipe

RUNTIME_COMPONENT = runtime_component("onnxruntime")  # the ONNX Runtime artifacts below get this runtime
NAME = "com.example.Classifier"


@pytest.fixture
def artifacts(mlp_onnx: Path, tmp_path: Path) -> list[Path]:
    out = tmp_path / "build"
    return [edgekit.compile(mlp_onnx, t, out, pipeline=QUICK).artifact_dir for t in ("x86_64", "rasp4b")]


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_three_components_in_gdk_layout(artifacts: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "greengrass-build"
    result = package(artifacts, name=NAME, version="1.2.3", output=out)
    assert sorted(_snapshot(out)) == sorted(
        [
            f"recipes/{RUNTIME_COMPONENT}-{edgekit.__version__}.json",
            f"recipes/{NAME}-1.2.3.json",
            f"recipes/{NAME}.Inference-1.2.3.json",
            f"artifacts/{RUNTIME_COMPONENT}/{edgekit.__version__}/runtime.zip",
            f"artifacts/{NAME}/1.2.3/model-x86_64.zip",
            f"artifacts/{NAME}/1.2.3/model-rasp4b.zip",
            f"artifacts/{NAME}.Inference/1.2.3/inference.zip",
            "SHA256SUMS",
        ]
    )
    model = load_recipe(result.component(NAME).recipe_path)
    assert model["RecipeFormatVersion"] == "2020-01-25" and model["ComponentVersion"] == "1.2.3"
    platforms = [(m["Platform"]["architecture"], m["Artifacts"][0]["URI"]) for m in model["Manifests"]]
    # the x86 build only on linux/amd64, the rasp4b build only on linux/aarch64
    assert platforms == [
        ("amd64", "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/model-x86_64.zip"),
        ("aarch64", "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION/model-rasp4b.zip"),
    ]
    assert all(m["Artifacts"][0]["Unarchive"] == "ZIP" for m in model["Manifests"])
    inference = load_recipe(result.component(f"{NAME}.Inference").recipe_path)
    deps = inference["ComponentDependencies"]
    assert deps[NAME] == {"VersionRequirement": "1.2.3", "DependencyType": "HARD"}
    assert deps[RUNTIME_COMPONENT]["DependencyType"] == "HARD"
    config = inference["ComponentConfiguration"]["DefaultConfiguration"]
    assert {"InputSource", "WindowSeconds", "OutputTopic", "FallbackEndpoint"} <= config.keys()
    assert all(isinstance(v, str) for k, v in config.items() if k != "accessControl")  # numbers may come back as floats
    (policy,) = config["accessControl"]["aws.greengrass.ipc.mqttproxy"].values()  # what its PublishToIoTCore needs
    assert policy["operations"] == ["aws.greengrass#PublishToIoTCore"] and policy["resources"] == ["devices/{iot:thingName}/#"]
    scripts = {m["Platform"]["architecture"]: m["Lifecycle"]["Run"]["Script"] for m in inference["Manifests"]}
    assert f"{{{NAME}:artifacts:decompressedPath}}/model-rasp4b" in scripts["aarch64"]
    assert f"{{{NAME}:artifacts:decompressedPath}}/model-x86_64" in scripts["amd64"]
    runtime = load_recipe(result.component(RUNTIME_COMPONENT).recipe_path)
    assert runtime["ComponentConfiguration"]["DefaultConfiguration"]["Backend"] == "onnxruntime"
    assert "Install" in runtime["Manifests"][0]["Lifecycle"]


def test_digests_match_the_zips(artifacts: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "gg"
    result = package(artifacts, name=NAME, version="1.0.0", output=out)
    sums = {name: digest for digest, name in (line.split("  ", 1) for line in (out / "SHA256SUMS").read_text().splitlines())}
    named = set()
    for comp in result.components:
        recipe = load_recipe(comp.recipe_path)
        for manifest in recipe["Manifests"]:
            for art in manifest["Artifacts"]:
                assert "Digest" not in art and "Algorithm" not in art  # the service computes them
                rel = f"artifacts/{comp.name}/{comp.version}/{art['URI'].rsplit('/', 1)[1]}"
                assert sums[rel] == hashlib.sha256((out / rel).read_bytes()).hexdigest()
                named.add(rel)
    assert named == set(sums)  # every artifact file is listed, and only those
    check = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    with zipfile.ZipFile(out / "artifacts" / NAME / "1.0.0" / "model-rasp4b.zip") as zf:
        assert sorted(zf.namelist()) == ["manifest.json", "model.onnx", "selftest.npz"]
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_packaging_twice_is_byte_identical(artifacts: list[Path], tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    package(artifacts, name=NAME, version="2.0.0", output=a)
    os.utime(artifacts[0] / "manifest.json", (1, 1))  # file times must not leak into the zips
    package(list(reversed(artifacts)), name=NAME, version="2.0.0", output=b)
    assert _snapshot(a) == _snapshot(b)


def test_next_patch(artifacts: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "gg"
    assert package(artifacts, name=NAME, output=out).component(NAME).version == "1.0.0"
    assert package(artifacts, name=NAME, output=out).component(NAME).version == "1.0.1"
    assert package(artifacts, name=NAME, output=out, known_versions=["1.4.9"]).component(NAME).version == "1.4.10"


def test_components_run_outside_edgekit(artifacts: list[Path], tmp_path: Path) -> None:
    """Unzip the three components as a device would and run the inference script on the runtime subset alone."""
    result = package(artifacts, name=NAME, version="1.0.0", output=tmp_path / "gg")
    device = tmp_path / "device"
    for comp in result.components:
        for z in comp.artifacts:
            if "rasp4b" in z.name:
                continue
            with zipfile.ZipFile(z) as zf:
                zf.extractall(device / comp.name / z.stem)
    runtime_dir = device / RUNTIME_COMPONENT / "runtime"  # {artifacts:decompressedPath}/runtime
    assert (runtime_dir / "requirements-onnxruntime.txt").is_file()
    script = device / f"{NAME}.Inference" / "inference" / "inference.py"
    model_dir = device / NAME / "model-x86_64"
    out = tmp_path / "aggregates.jsonl"
    # -S: no .pth files, so this checkout's editable install can't shadow the zipped runtime; only the
    # third-party packages (numpy, pydantic, onnxruntime) come from site-packages, as from the device's venv.
    site = next(p for p in sys.path if p.endswith("site-packages"))
    env = {**os.environ, "PYTHONPATH": f"{runtime_dir}{os.pathsep}{site}"}
    check = subprocess.run(
        [sys.executable, "-S", "-c", "import edgekit, sys; print(edgekit.__file__)"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert check.stdout.strip().startswith(str(runtime_dir))  # the zipped runtime, not this checkout
    proc = subprocess.run(
        [sys.executable, "-S", "-u", str(script), str(model_dir), "--max-inferences", "7", "--window-seconds", "0",
         "--interval-seconds", "0", "--output-path", str(out)],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "self-test passed" in proc.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(r["count"] for r in rows) == 7
    assert sum(r["answeredBy"]["local"] for r in rows) == 7

    # the same script with a cloud fallback that is asked for every reading (min confidence 1.0), then with the
    # cloud gone: the breaker's failures leave the local answers standing. Under an IPC server (what the device
    # agent runs; the component gets SVCUID and the socket as from a nucleus) each summary goes to PublishToIoTCore.
    model = edgekit.load(model_dir)
    cloud = InferServer("big", model.predict)
    inference_name = f"{NAME}.Inference"
    recipe = json.loads((tmp_path / "gg" / "recipes" / f"{inference_name}-1.0.0.json").read_text())
    config = {**recipe["ComponentConfiguration"]["DefaultConfiguration"], "WindowSeconds": "0", "IntervalSeconds": "0"}
    host = _Host({inference_name: {**config, "MinConfidence": "1.0"}})  # as a deployment's merge would set them
    states: list[str] = host.states

    async def under_ipc(out_file: Path) -> list[dict[str, Any]]:
        ipc = DeviceIpc(tmp_path / "ipc", host)
        await ipc.start()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-S", "-u", str(script), str(model_dir), "--max-inferences", "5", "--window-seconds", "0",
                "--interval-seconds", "0", "--output-path", str(out_file), "--fallback-url", cloud.url,
                "--fallback-model", "big", "--min-confidence", "1.0", "--topic", "devices/dev-1/inference",
                env={**env, **ipc.environment(inference_name), "AWS_IOT_THING_NAME": "dev-1"}, cwd=tmp_path,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), 120)
            assert proc.returncode == 0, err.decode()
            uplink.extend(json.loads(i.payload) for i in ipc.iot_core.spool.peek(100) if i.topic == "devices/dev-1/inference")
        finally:
            await ipc.close()
        return [json.loads(line) for line in out_file.read_text().splitlines()]

    uplink: list[dict[str, Any]] = []
    try:
        asked = asyncio.run(under_ipc(tmp_path / "cloud.jsonl"))
        assert sum(r["answeredBy"]["cloud"] for r in asked) == 5 and cloud.requests == 5
        cloud.mode = "error"
        away = asyncio.run(under_ipc(tmp_path / "away.jsonl"))
        assert sum(r["answeredBy"]["local"] for r in away) == 5
        assert sum(r["fallback"]["errors"].get("http", 0) for r in away) == 3  # failures counted by kind ...
        assert sum(r["fallback"]["errors"].get("breaker_open", 0) for r in away) == 2
        assert away[-1]["fallback"]["breaker"] == "open"  # ... and the breaker's state in every summary
        assert cloud.requests == 5 + 3  # the breaker opened after 3 failures: 2 readings didn't wait for the cloud
    finally:
        cloud.close()
    # the uplink spool is the same file across both runs: every window summary of both, in order
    assert [r["count"] for r in uplink[-10:]] == [1] * 10 and len(Spool(tmp_path / "ipc" / "config" / "uplink.db")) == 10
    assert states == ["RUNNING", "RUNNING"]  # UpdateState after each self-test


class _Host:
    """The agent's side of the IPC handler, in memory: one component's configuration."""

    thing = "dev-1"

    def __init__(self, configs: dict[str, dict[str, Any]]) -> None:
        self.configs = configs
        self.states: list[str] = []

    def configuration(self, component: str) -> dict[str, Any] | None:
        return self.configs.get(component)

    def set_configuration(self, component: str, configuration: dict[str, Any]) -> None:
        self.configs[component] = configuration

    def report_state(self, component: str, state: str) -> None:
        self.states.append(state)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "does not exist"),
        ("file-gone", r"files \['model.onnx'\] named in its manifest.json are missing"),
        ("same-platform", r"two artifacts for linux/aarch64"),
        ("bad-name", "not a valid component name"),
        ("dash-name", "no '-'"),
        ("reserved-name", "not a valid component name"),
        ("bad-version", "is not semver"),
        ("nothing", "at least one"),
    ],
)
def test_bad_input_writes_nothing(artifacts: list[Path], mlp_onnx: Path, tmp_path: Path, case: str, message: str) -> None:
    name, version, arts = NAME, "1.0.0", list(artifacts)
    if case == "missing":
        arts.append(tmp_path / "nope")
    elif case == "file-gone":
        (artifacts[1] / "model.onnx").unlink()
    elif case == "same-platform":
        arts.append(edgekit.compile(mlp_onnx, "imx8mplus", tmp_path / "build", pipeline=QUICK).artifact_dir)
    elif case == "bad-name":
        name = "com example/Classifier"
    elif case == "dash-name":
        name = "com.example.my-model"
    elif case == "reserved-name":
        name = "aws.greengrass.Mine"
    elif case == "bad-version":
        version = "1.0"
    elif case == "nothing":
        arts = []
    out = tmp_path / "gg"
    with pytest.raises(PackagingError, match=message):
        package(arts, name=name, version=version, output=out)
    assert not out.exists() or not any(out.rglob("*"))


def test_mixed_backends_make_one_model_component(mlp_onnx: Path, tmp_path: Path) -> None:
    """TVM for the Raspberry Pi, ONNX Runtime for x86_64 in one model component (issue 18 turned the refusal into
    this): a manifest per platform, each inference manifest running on its own backend's runtime component, the
    inference component depending on both (Greengrass dependencies are per component, not per manifest)."""
    from edgekit.greengrass.lint import lint_paths

    tvm = edgekit.compile(mlp_onnx, "rasp4b", tmp_path / "b", pipeline=QUICK.only_backend("tvm")).artifact_dir
    ort = edgekit.compile(mlp_onnx, "x86_64", tmp_path / "b", pipeline=QUICK).artifact_dir
    out = tmp_path / "gg"
    package([tvm, ort], name=NAME, version="1.0.0", output=out)
    assert [str(f) for f in lint_paths([out / "recipes"])] == []
    tvm_runtime, ort_runtime = runtime_component("tvm"), runtime_component("onnxruntime")
    assert (out / "recipes" / f"{tvm_runtime}-{edgekit.__version__}.json").is_file()
    assert (out / "recipes" / f"{ort_runtime}-{edgekit.__version__}.json").is_file()
    inference = load_recipe(out / "recipes" / f"{NAME}.Inference-1.0.0.json")
    assert set(inference["ComponentDependencies"]) == {NAME, tvm_runtime, ort_runtime}
    by_arch = {m["Platform"]["architecture"]: m for m in inference["Manifests"]}
    assert f"{{{ort_runtime}:work:path}}" in by_arch["amd64"]["Lifecycle"]["Run"]["Script"]
    assert tvm_runtime not in json.dumps(by_arch["amd64"])
    assert f"{{{tvm_runtime}:work:path}}" in by_arch["aarch64"]["Lifecycle"]["Run"]["Script"]
    assert "EDGEKIT_TVM_RUNTIME" in by_arch["aarch64"]["Lifecycle"]["Setenv"]
    model = load_recipe(out / "recipes" / f"{NAME}-1.0.0.json")
    builds = model["ComponentConfiguration"]["DefaultConfiguration"]["Builds"]
    assert builds["model-rasp4b"] == {
        "Target": "rasp4b",
        "Backend": "tvm",
        "Runtime": tvm_runtime,
        "Architecture": "aarch64",
        "HostTwin": os.uname().machine,
    }
    assert builds["model-x86_64"] == {"Target": "x86_64", "Backend": "onnxruntime", "Runtime": ort_runtime, "Architecture": "*"}
    with pytest.raises(PackagingError, match=r"names one runtime, and the artifacts use 2 backends"):
        package([tvm, ort], name=NAME, version="1.0.1", output=out, runtime_name="com.example.Runtime")


def test_packaged_recipes_lint_clean(artifacts: list[Path], tmp_path: Path) -> None:
    from edgekit.greengrass.lint import lint_paths

    out = tmp_path / "gg"
    package(artifacts, name=NAME, version="1.0.0", output=out)
    assert [str(f) for f in lint_paths([out / "recipes"])] == []


def test_a_modified_artifact_is_not_packaged(artifacts: list[Path], tmp_path: Path) -> None:
    model = artifacts[0] / "model.onnx"
    model.write_bytes(model.read_bytes() + b"\0")
    out = tmp_path / "gg"
    with pytest.raises(PackagingError, match=r"'model.onnx' does not match its SHA-256 in manifest.json"):
        package(artifacts, name=NAME, version="1.0.0", output=out)
    assert not out.exists() or not any(out.rglob("*"))
