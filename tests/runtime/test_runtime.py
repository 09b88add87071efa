"""The loader: one predict() for every backend, strict inputs, the lean TVM path, corrupt artifacts."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import edgekit
from edgekit.compiler.pipeline import Pipeline
from edgekit.errors import ArtifactError, InferenceError
from edgekit.manifest import artifact_digests, read_manifest

QUICK = Pipeline.model_validate(
    {
        "name": "quick",
        "candidates": [{"name": "tvm", "backend": "tvm"}, {"name": "ort", "backend": "onnxruntime"}],
        "measure": {"samples": 2, "warmup": 1, "repeat": 3},
    }
)


@pytest.fixture
def tvm_artifact(mlp_onnx: Path, out_dir: Path) -> Path:
    return edgekit.compile(mlp_onnx, "x86_64", out_dir, pipeline=QUICK, backend="tvm").artifact_dir


@pytest.fixture
def ort_artifact(mlp_onnx: Path, out_dir: Path) -> Path:
    return edgekit.compile(mlp_onnx, "x86_64", out_dir, pipeline=QUICK, backend="onnxruntime").artifact_dir


def test_backends_agree_through_one_api(tvm_artifact: Path, ort_artifact: Path) -> None:
    a, b = edgekit.load(tvm_artifact), edgekit.load(ort_artifact)
    assert a.inputs == b.inputs == ["x"] and a.outputs == b.outputs == ["probs"]
    x = np.random.default_rng(3).standard_normal((1, 8)).astype(np.float32)
    (pa,), (pb,) = a.predict(x), b.predict({"x": x})
    np.testing.assert_allclose(pa, pb, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pa.sum(), 1.0, rtol=1e-5)  # softmax output
    # outputs are copies: a second call doesn't overwrite the first result
    (pa2,) = a.predict(x + 1)
    assert not np.allclose(pa, pa2)


def test_unaligned_and_noncontiguous_inputs_are_fine(tvm_artifact: Path) -> None:
    model = edgekit.load(tvm_artifact)
    big = np.random.default_rng(0).standard_normal((1, 17)).astype(np.float32)
    x = big[:, 1:9]  # offset by 4 bytes: not 64-byte aligned
    (got,) = model.predict(x)
    (want,) = model.predict(np.ascontiguousarray(x))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    ("feeds", "message"),
    [
        ({"x": np.zeros((1, 9), np.float32)}, r"input 'x' expects shape \[1, 8\] float32, got \[1, 9\]"),
        ({"x": np.zeros((2, 8), np.float32)}, r"--input-shape x:2,8"),
        ({"y": np.zeros((1, 8), np.float32)}, r"missing input 'x'"),
        ({"x": np.zeros((1, 8), np.float32), "z": np.zeros(1)}, r"unknown input\(s\) \['z'\]"),
        ({"x": np.zeros((1, 8), np.complex64)}, r"expects dtype float32, got complex64"),
    ],
)
def test_wrong_inputs_are_clear_errors(tvm_artifact: Path, feeds: dict[str, np.ndarray], message: str) -> None:
    with pytest.raises(InferenceError, match=message):
        edgekit.load(tvm_artifact).predict(feeds)


def test_float64_input_is_cast(ort_artifact: Path) -> None:
    x = np.random.default_rng(0).standard_normal((1, 8))
    (a,) = edgekit.load(ort_artifact).predict(x)
    (b,) = edgekit.load(ort_artifact).predict(x.astype(np.float32))
    np.testing.assert_array_equal(a, b)


def test_selftest_detects_a_wrong_model(tvm_artifact: Path, tmp_path: Path) -> None:
    model = edgekit.load(tvm_artifact)
    result = model.selftest()
    assert result.passed and result.samples >= 1 and result.max_abs_error < 1e-5
    # tamper with the golden outputs: the self-test must notice
    path = tvm_artifact / "selftest.npz"
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files}
    key = next(k for k in arrays if "/out/" in k)
    arrays[key] = arrays[key] + 0.5
    np.savez(path, **arrays)
    with pytest.raises(ArtifactError, match="'selftest.npz' does not match its SHA-256 in manifest.json"):
        edgekit.load(tvm_artifact)  # a file changed after compiling is refused ...
    manifest = read_manifest(tvm_artifact, check_files=False)
    manifest.digests = artifact_digests(tvm_artifact)  # ... so re-sign it, as a wrong build would be signed
    manifest.write(tvm_artifact)
    assert not edgekit.load(tvm_artifact).selftest().passed


def test_a_tampered_or_escaping_artifact_is_refused(tvm_artifact: Path) -> None:
    library = tvm_artifact / "model.so"
    original = library.read_bytes()
    library.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit
    with pytest.raises(ArtifactError, match="'model.so' does not match its SHA-256"):
        edgekit.load(tvm_artifact)
    library.write_bytes(original)
    manifest_path = tvm_artifact / "manifest.json"
    clean = manifest_path.read_text()
    for field, value in [("entry", "../../../../etc/passwd"), ("entry", "/etc/passwd"), ("files", ["../x.so"])]:
        data = json.loads(clean)
        data["backend"][field] = value
        manifest_path.write_text(json.dumps(data))
        with pytest.raises(ArtifactError, match="is not a file inside the artifact folder"):
            edgekit.load(tvm_artifact)
    data = json.loads(clean)
    data["digests"] = {}
    manifest_path.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="no per-file digests"):
        edgekit.load(tvm_artifact)
    manifest_path.write_text(clean)
    library.unlink()
    library.symlink_to("/etc/passwd")  # a symlink out of the folder
    with pytest.raises(ArtifactError, match="'model.so' leads outside the artifact folder"):
        edgekit.load(tvm_artifact)


def test_corrupt_or_incomplete_artifacts(tvm_artifact: Path, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        edgekit.load(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ArtifactError, match="has no manifest.json"):
        edgekit.load(empty)
    manifest = tvm_artifact / "manifest.json"
    original = manifest.read_text()
    manifest.write_text(original[: len(original) // 2])
    with pytest.raises(ArtifactError, match="unreadable manifest"):
        edgekit.load(tvm_artifact)
    data = json.loads(original)
    data["schemaVersion"] = 99
    manifest.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="schemaVersion 99 is not supported"):
        edgekit.load(tvm_artifact)
    data["schemaVersion"] = 1
    del data["inputs"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="field 'inputs'"):
        edgekit.load(tvm_artifact)
    manifest.write_text(original)
    (tvm_artifact / "model.so").write_bytes(b"\x7fELF garbage")
    with pytest.raises(ArtifactError, match="'model.so' does not match its SHA-256"):
        edgekit.load(tvm_artifact)
    signed = read_manifest(tvm_artifact, check_files=False)
    signed.digests = artifact_digests(tvm_artifact)  # a garbage library that its manifest vouches for
    signed.write(tvm_artifact)
    with pytest.raises(ArtifactError, match="cannot load this library"):
        edgekit.load(tvm_artifact)
    (tvm_artifact / "model.so").unlink()
    with pytest.raises(ArtifactError, match="'model.so' listed in manifest.json is missing"):
        edgekit.load(tvm_artifact)


def test_tvm_artifact_runs_without_the_compiler(tvm_artifact: Path) -> None:
    """The device path: libtvm_runtime + tvm_ffi only; `import tvm` (the 248 MB compiler) never happens."""
    script = textwrap.dedent(
        f"""
        import sys, numpy as np, edgekit
        m = edgekit.load({str(tvm_artifact)!r})
        out = m.predict(np.ones((1, 8), np.float32))
        assert out[0].shape == (1, 4)
        assert m.selftest().passed
        # (tvm_ffi itself imports torch when torch is installed: a device has no torch.)
        heavy = sorted(k for k in sys.modules if k.split('.')[0] in ('tvm', 'onnxruntime', 'sklearn'))
        print(heavy)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_import_edgekit_is_cheap() -> None:
    script = (
        "import sys, edgekit, edgekit.cli; "
        "print(sorted(k for k in sys.modules if k.split('.')[0] in ('tvm','tvm_ffi','torch','onnxruntime','sklearn','boto3')))"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
