"""The lean TVM runtime component: the official libtvm_runtime.so per platform, no apache-tvm wheel on the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import PackagingError
from edgekit.greengrass.package import package, runtime_component
from edgekit.greengrass.tvm_library import TVM_VERSION, runtime_library

TVM_ONLY = Pipeline.model_validate(
    {"name": "tvm", "candidates": [{"name": "tvm", "backend": "tvm"}], "measure": {"samples": 2, "warmup": 0, "repeat": 2}}
)
NAME = "com.example.Lean"
RUNTIME = runtime_component("tvm")
_ELF_MACHINE = {"amd64": 62, "aarch64": 183}  # e_machine: EM_X86_64, EM_AARCH64


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    return int.from_bytes(data[18:20], "little")


def test_tvm_runtime_carries_the_library_per_platform(mlp_onnx: Path, tmp_path: Path) -> None:
    art = edgekit.compile(mlp_onnx, "x86_64", tmp_path / "build", pipeline=TVM_ONLY).artifact_dir
    result = package([art], name=NAME, version="1.0.0", output=tmp_path / "gg")
    runtime = result.component(RUNTIME)
    recipe = json.loads(runtime.recipe_path.read_text())
    assert [m["Platform"] for m in recipe["Manifests"]] == [
        {"os": "linux", "architecture": "amd64"},
        {"os": "linux", "architecture": "aarch64"},
    ]
    for manifest in recipe["Manifests"]:
        arch = manifest["Platform"]["architecture"]
        uris = [a["URI"].rsplit("/", 1)[-1] for a in manifest["Artifacts"]]
        assert uris == ["runtime.zip", f"tvm-runtime-{arch}.zip"]
        with zipfile.ZipFile(runtime.artifacts[0].parent / f"tvm-runtime-{arch}.zip") as zf:
            assert zf.namelist() == ["libtvm_runtime.so"]
            assert _elf_machine(zf.read("libtvm_runtime.so")) == _ELF_MACHINE[arch]
    with zipfile.ZipFile(runtime.artifacts[0].parent / "runtime.zip") as zf:
        requirements = zf.read("requirements-tvm.txt").decode()
    pins = [ln.split("#")[0].strip() for ln in requirements.splitlines() if ln.split("#")[0].strip()]
    assert "apache-tvm-ffi==0.1.14.post1" in pins and not any(p.startswith("apache-tvm=") for p in pins)
    inference = json.loads(result.component(f"{NAME}.Inference").recipe_path.read_text())
    env = inference["Manifests"][0]["Lifecycle"]["Setenv"]
    assert env["EDGEKIT_TVM_RUNTIME"] == f"{{{RUNTIME}:artifacts:decompressedPath}}/tvm-runtime-amd64/libtvm_runtime.so"


def test_tvm_artifact_runs_with_the_component_library_and_no_apache_tvm(mlp_onnx: Path, tmp_path: Path) -> None:
    """Unzip as a device would; run the inference script where `import tvm` fails: the library comes from the component."""
    art = edgekit.compile(mlp_onnx, "x86_64", tmp_path / "build", pipeline=TVM_ONLY).artifact_dir
    result = package([art], name=NAME, version="1.0.0", output=tmp_path / "gg")
    device = tmp_path / "device"
    for comp in result.components:
        for z in comp.artifacts:
            if "aarch64" not in z.name:
                with zipfile.ZipFile(z) as zf:
                    zf.extractall(device / comp.name / z.stem)
    # the device's site-packages: what the host has, less apache-tvm (the runtime component doesn't install it)
    host_site = Path(next(p for p in sys.path if p.endswith("site-packages")))
    site = tmp_path / "site"
    site.mkdir()
    for entry in host_site.iterdir():
        if entry.name != "tvm" and not entry.name.startswith("apache_tvm-") and entry.suffix != ".pth":
            (site / entry.name).symlink_to(entry)
    lib = device / RUNTIME / "tvm-runtime-amd64" / "libtvm_runtime.so"
    env = {**os.environ, "PYTHONPATH": f"{device / RUNTIME / 'runtime'}{os.pathsep}{site}", "EDGEKIT_TVM_RUNTIME": str(lib)}
    no_tvm = subprocess.run([sys.executable, "-S", "-c", "import tvm"], env=env, capture_output=True, text=True)
    assert no_tvm.returncode != 0
    proc = subprocess.run(
        [sys.executable, "-S", "-u", str(device / f"{NAME}.Inference" / "inference" / "inference.py"),
         str(device / NAME / "model-x86_64"), "--max-inferences", "3", "--window-seconds", "0", "--interval-seconds", "0",
         "--output-path", str(tmp_path / "out.jsonl")],
        env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "self-test passed" in proc.stdout


def test_library_is_cached_and_offline_failure_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    offline = {
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
        "PIP_FIND_LINKS": "",
        "PIP_RETRIES": "0",
    }
    for key, value in offline.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("EDGEKIT_WHEELHOUSE", str(tmp_path / "empty-house"))
    with pytest.raises(
        PackagingError, match=rf"apache-tvm {TVM_VERSION} wheel for linux/aarch64 .*copy the \.whl into .*empty-house"
    ):
        runtime_library("aarch64", tmp_path / "cache")
    with pytest.raises(PackagingError, match=r"no official TVM runtime for the architecture 'armv7l'"):
        runtime_library("armv7l", tmp_path / "cache")
    # a wheel placed where the error says is used without the network, and the library is kept once extracted
    house = tmp_path / "empty-house"
    wheel = house / f"apache_tvm-{TVM_VERSION}-py3-none-manylinux_2_28_aarch64.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("tvm/lib/libtvm_runtime.so", b"\x7fELF stand-in")  # only read back, never loaded
    lib = runtime_library("aarch64", tmp_path / "cache")
    assert lib.read_bytes() == b"\x7fELF stand-in"
    wheel.unlink()
    assert runtime_library("aarch64", tmp_path / "cache") == lib
