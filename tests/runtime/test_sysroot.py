"""The aarch64 sysroot: build it, run a host-compiled aarch64 TVM model under qemu, compare."""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgekit.errors import ToolchainError
from edgekit.verify import sysroot as sysroot_mod
from edgekit.verify.sysroot import Sysroot, ensure_sysroot, run_python

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)
B = RNG.standard_normal(3).astype(np.float32)
X = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)


@pytest.fixture(scope="session")
def cache_dir(sysroot_cache: Path) -> Path:
    return sysroot_cache


@pytest.fixture(scope="session")
def sysroot(cache_dir: Path) -> Sysroot:
    return ensure_sysroot(cache_dir)


def _onnx_model() -> Any:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["mm"]),
            helper.make_node("Add", ["mm", "B"], ["add"]),
            helper.make_node("Relu", ["add"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        initializer=[numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "B")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _compile_aarch64(path: Path) -> None:
    import tvm

    assert shutil.which("aarch64-linux-gnu-g++"), "install g++-aarch64-linux-gnu (make system-deps)"
    from tvm.relax.frontend.onnx import from_onnx
    from tvm.support import cc

    mod = from_onnx(_onnx_model(), shape_dict={"x": [1, 4]})
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]})
    ex = tvm.compile(mod, target=target)
    ex.export_library(str(path), fcompile=cc.cross_compiler("aarch64-linux-gnu-g++"))


RUN_MODEL = textwrap.dedent(
    """\
    import ctypes, os, platform, sys
    assert platform.machine() == "aarch64", platform.machine()
    import numpy as np
    ctypes.CDLL(os.environ["EDGEKIT_TVM_RUNTIME"], ctypes.RTLD_GLOBAL)
    import tvm_ffi

    lib, x_path, out_path = sys.argv[1:4]
    m = tvm_ffi.load_module(os.path.abspath(lib))
    vm = m["vm_load_executable"]()
    vm["vm_initialization"](1, 0, 2, 1, 0, 2)

    src = np.load(x_path)
    buf = np.empty(src.nbytes + 64, dtype=np.uint8)  # TVM kernels assume 64-byte aligned inputs
    off = (-buf.ctypes.data) % 64
    x = buf[off:off + src.nbytes].view(np.float32).reshape(src.shape)
    x[...] = src
    assert x.ctypes.data % 64 == 0

    out = vm["main"](tvm_ffi.from_dlpack(x))
    np.save(out_path, np.from_dlpack(out))
    print("ran on", platform.machine())
    """
)


@pytest.mark.slow
def test_model_compiled_on_host_runs_under_qemu(sysroot: Sysroot, tmp_path: Path) -> None:
    lib = tmp_path / "model_aarch64.so"
    _compile_aarch64(lib)
    script = tmp_path / "run_model.py"
    script.write_text(RUN_MODEL)
    np.save(tmp_path / "x.npy", X)

    started = time.monotonic()
    proc = run_python(sysroot, script, [str(lib), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")], timeout=300)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "ran on aarch64" in proc.stdout
    print(f"aarch64 model run under qemu: {elapsed:.2f} s")

    got = np.load(tmp_path / "y.npy")
    expected = np.maximum(X @ W + B, 0.0)
    assert got.shape == (1, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_second_ensure_is_cached(sysroot: Sysroot, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached sysroot must not be built again")

    monkeypatch.setattr("edgekit.verify.sysroot._build", must_not_build)
    again = ensure_sysroot(cache_dir)
    assert again == sysroot
    assert sysroot.root.joinpath("usr", "bin", "python3").exists()
    assert sysroot.runtime_lib.is_file() and sysroot.runtime_lib.is_relative_to(sysroot.site)
    # no leftovers of the build next to the cached folder
    assert not list(sysroot.root.parent.parent.glob("*.tmp-*"))


@pytest.mark.slow
def test_run_python_clean_environment(sysroot: Sysroot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONHOME", "/nonexistent")
    monkeypatch.setenv("PYTHONPATH", "/nonexistent")
    script = tmp_path / "env.py"
    script.write_text("import os, sys\nprint(os.environ.get('PYTHONHOME'), os.environ['PYTHONPATH'])\nsys.exit(3)\n")
    proc = run_python(sysroot, script)
    assert proc.returncode == 3  # the script's own failure is returned, not raised
    assert proc.stdout.split() == ["None", str(sysroot.site)]


def test_run_python_with_missing_qemu_path(tmp_path: Path) -> None:
    script = tmp_path / "s.py"
    script.write_text("print(1)\n")
    bogus = Sysroot(root=tmp_path, site=tmp_path, runtime_lib=tmp_path / "x.so", qemu="/nonexistent/qemu-aarch64-static")
    with pytest.raises(ToolchainError, match=r"qemu-aarch64-static not found.*apt-get install -y qemu-user-static"):
        run_python(bogus, script)


def test_qemu_missing_from_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # qemu is installed here: a PATH without it is how it goes missing
    sr = Sysroot(root=tmp_path, site=tmp_path, runtime_lib=tmp_path / "x.so", qemu="qemu-aarch64-static")
    with pytest.raises(ToolchainError, match=r"qemu-aarch64-static not found.*apt-get install"):
        run_python(sr, tmp_path / "s.py")
    with pytest.raises(ToolchainError, match=r"qemu-aarch64-static not found.*apt-get install"):
        ensure_sysroot(tmp_path / "cache")
    assert not (tmp_path / "cache" / "sysroots" / sysroot_mod.SYSROOT_NAME).exists()


def test_interrupted_build_leaves_nothing_valid(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A build interrupted (Ctrl-C) or failing (no network) half-way leaves no sysroot that would pass as built. The
    build is replaced by one that fails on cue: a real one takes minutes and the network (test_sysroot's slow tests)."""
    monkeypatch.setattr(sysroot_mod, "_find_qemu", lambda: "/usr/bin/qemu-aarch64-static")  # never run: qemu need not be here

    def broken_build(tmp: Path, qemu: str, report: object) -> None:
        (tmp / "root").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setattr(sysroot_mod, "_build", broken_build)
    with pytest.raises(KeyboardInterrupt):
        ensure_sysroot(tmp_path)
    sysroots = tmp_path / "sysroots"
    assert [p.name for p in sysroots.iterdir()] == [f"{sysroot_mod.SYSROOT_NAME}.lock"]

    def failing_download(tmp: Path, qemu: str, report: object) -> None:
        raise ToolchainError("download of Debian package libc6 failed; the network to deb.debian.org is needed")

    monkeypatch.setattr(sysroot_mod, "_build", failing_download)
    with pytest.raises(ToolchainError, match="libc6"):
        ensure_sysroot(tmp_path)
    assert not (sysroots / sysroot_mod.SYSROOT_NAME).exists()
