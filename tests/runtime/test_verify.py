"""edgekit verify: an aarch64 artifact run under qemu against the source model's outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skops.io as sio

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.digests import file_sha256
from edgekit.errors import VerificationError
from edgekit.verify.compare import verify_artifact

ORT_ONLY = Pipeline.model_validate(
    {
        "name": "ort",
        "candidates": [{"name": "ort", "backend": "onnxruntime"}],
        "measure": {"samples": 3, "warmup": 1, "repeat": 3},
    }
)
QUICK = Pipeline.model_validate(
    {"name": "quick", "candidates": [{"name": "tvm", "backend": "tvm"}], "measure": {"samples": 3, "warmup": 1, "repeat": 3}}
)


def _tamper_outputs(art: Path, change: Any) -> None:
    """Change the golden outputs of ``art`` and record their new digest, so only the comparison can catch it."""
    path = art / "selftest.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    for k in arrays:
        if "/out/" in k and arrays[k].dtype.kind == "f":
            arrays[k] = change(arrays[k])
    np.savez(path, **arrays)
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["digests"]["selftest.npz"] = file_sha256(path)
    (art / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.slow
def test_aarch64_artifact_agrees_under_qemu(mlp_onnx: Path, out_dir: Path, sysroot_cache: Path) -> None:
    art = edgekit.compile(mlp_onnx, "rasp4b", out_dir, pipeline=QUICK).artifact_dir
    report = verify_artifact(art, cache_dir=sysroot_cache)
    assert report.result.passed and report.result.samples == 3
    assert report.result.max_abs_error < 1e-5
    assert "PASS" in report.summary() and "qemu-aarch64" in report.summary()


@pytest.mark.slow
def test_verify_catches_a_disagreement(mlp_onnx: Path, out_dir: Path, sysroot_cache: Path) -> None:
    art = edgekit.compile(mlp_onnx, "imx8mplus", out_dir, pipeline=QUICK).artifact_dir
    _tamper_outputs(art, lambda a: a[..., ::-1].copy())  # expected outputs no longer match the model
    with pytest.raises(VerificationError, match=r"FAIL: .* max abs error"):
        verify_artifact(art, cache_dir=sysroot_cache)


@pytest.mark.slow
def test_onnxruntime_artifact_of_a_sklearn_model_agrees_under_qemu(tmp_path: Path, sysroot_cache: Path) -> None:
    """A scikit-learn model (ai.onnx.ml operators: ONNX Runtime only) compiled for rasp4b is checked under qemu."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300)).fit(x, (x[:, 0] > 0).astype(int))
    path = tmp_path / "model.skops"
    sio.dump(model, path)
    art = edgekit.compile(path, "rasp4b", tmp_path / "out", pipeline=ORT_ONLY, input_shapes={"input": [1, 4]})
    assert art.manifest.backend.name == "onnxruntime"
    report = verify_artifact(art.artifact_dir, cache_dir=sysroot_cache)
    assert report.result.passed and report.result.samples >= 1
    assert "PASS" in report.summary() and "qemu-aarch64" in report.summary()
    # and a wrong golden output is caught: the outputs really come from the emulated run
    _tamper_outputs(art.artifact_dir, lambda a: a + 1.0)
    with pytest.raises(VerificationError, match=r"FAIL: .* max abs error"):
        verify_artifact(art.artifact_dir, cache_dir=sysroot_cache)


def test_verify_refuses_what_it_cannot_check(mlp_onnx: Path, out_dir: Path) -> None:
    host = edgekit.compile(mlp_onnx, "x86_64", out_dir, pipeline=QUICK).artifact_dir
    with pytest.raises(VerificationError, match=r"built for amd64.*edgekit run"):
        verify_artifact(host)


@pytest.mark.slow
def test_verify_prepare_builds_the_root_once_and_prints_its_folder(
    sysroot_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgekit.cli import main

    monkeypatch.setenv("EDGEKIT_SYSROOT_CACHE", str(sysroot_cache))
    assert main(["verify", "--prepare"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("aarch64 root ready: ")
    folder = Path(out.removeprefix("aarch64 root ready: "))
    assert folder.is_relative_to(sysroot_cache.resolve()) and (folder / "edgekit-sysroot.json").is_file()
    built = (folder / "edgekit-sysroot.json").stat().st_mtime_ns
    assert main(["verify", "--prepare", "-q"]) == 0  # once: the second finds it built
    assert (folder / "edgekit-sysroot.json").stat().st_mtime_ns == built


def test_verify_without_an_artifact_or_prepare_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    from edgekit.cli import main

    assert main(["verify"]) == 2
    assert "give an artifact folder to verify, or --prepare" in capsys.readouterr().err
