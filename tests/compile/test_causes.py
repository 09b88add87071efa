"""Causes kept: an error edgekit wraps carries the root cause's own line (the linker's, the converter's, ONNX
Runtime's), and -v prints the whole chain. Real parts: a real cross linker, skl2onnx, ONNX Runtime."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import pytest
import yaml
from helpers import make_mlp, requires
from onnx import TensorProto, helper
from sklearn.base import BaseEstimator, TransformerMixin

import edgekit
from edgekit.cli import main
from edgekit.errors import ModelConversionError, last_line
from edgekit.profiles import load_profile


@requires("aarch64-linux-gnu-g++")
def test_a_cross_link_failure_keeps_the_linkers_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A profile that links with the aarch64 linker but has TVM generate x86-64 code: the linker refuses the objects.
    profile = yaml.safe_load(Path(load_profile("rasp4b").source).read_text())
    profile.update(name="mislinked", tvm={"target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu"}})
    (tmp_path / "mislinked.yaml").write_text(yaml.safe_dump(profile))
    onnx.save(make_mlp(), str(tmp_path / "mlp.onnx"))
    args = ["compile", str(tmp_path / "mlp.onnx"), "-t", str(tmp_path / "mislinked.yaml"), "-o", str(tmp_path / "b"), "-b", "tvm"]
    assert main(args) == 7  # ToolchainError
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: linking the TVM library with 'aarch64-linux-gnu-g++' failed: ")
    assert "ld: " in err[-1] and "file in wrong format" in err[-1] and "Command line" not in err[-1]

    assert main([*args, "-v"]) == 7
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: linking the TVM library")
    chain = "\n".join(err[:-1])
    assert "caused by" in chain and "collect2: error: ld returned 1 exit status" in chain and "Command line:" in chain


def test_an_onnx_runtime_failure_keeps_its_own_line_past_the_source_location(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["a", "s"], ["c"], name="r")],
        "reshape",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [4]), helper.make_tensor_value_info("s", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "reshape.onnx"))
    samples = {"a": np.ones((2, 4), np.float32), "s": np.array([[3], [3]], np.int64)}  # 4 values can't become 3
    with pytest.raises(edgekit.EdgekitError) as err:
        edgekit.compile(tmp_path / "reshape.onnx", "x86_64", tmp_path / "b", backend="onnxruntime", samples=samples)
    message = str(err.value)
    assert "\n" not in message and "Reshape" in message
    assert "The input tensor cannot be reshaped to the requested shape" in message  # ORT's own words, after its C++ frame


class Flagged(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """An estimator with its own skl2onnx converter, which sets a list attribute holding a bool (as skl2onnx's
    HistGradientBoosting converter did with some scikit-learn releases): protobuf refuses it."""

    def fit(self, x: np.ndarray, y: Any = None) -> Flagged:
        self.n_features_in_ = x.shape[1]
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return x


def _register_flagged() -> None:
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_regressor_output_shapes

    def convert(scope: Any, operator: Any, container: Any) -> None:
        container.add_node(
            "Identity", operator.inputs[0].full_name, operator.outputs[0].full_name, name="flagged", flags=[np.uint8(1), False]
        )

    update_registered_converter(Flagged, "EdgekitTestFlagged", calculate_linear_regressor_output_shapes, convert)


def test_a_converter_failure_keeps_the_cause_it_wraps(tmp_path: Path) -> None:
    _register_flagged()
    path = tmp_path / "flagged.joblib"
    joblib.dump(Flagged().fit(np.zeros((4, 3), np.float32)), path)
    with pytest.raises(ModelConversionError) as err:
        edgekit.compile(path, "x86_64", tmp_path / "b", backend="onnxruntime", trust_unknown_types=True)
    message = str(err.value)
    assert "\n" not in message and "skl2onnx cannot convert Flagged: Unable to create node 'Identity'" in message
    assert "(cause: TypeError: " in message and "got a boolean" in message  # protobuf's line, which skl2onnx wrapped
    assert isinstance(err.value.__cause__, ValueError) and isinstance(err.value.__cause__.__cause__, TypeError)


def test_a_long_line_keeps_its_start_and_its_end() -> None:
    line = "[ONNXRuntimeError] : 1 : FAIL : " + "x" * 500 + " the part that says what is wrong"
    cut = last_line(RuntimeError(line), 200)
    assert len(cut) <= 200 and cut.startswith("[ONNXRuntimeError]") and cut.endswith("the part that says what is wrong")


def test_tvms_native_log_goes_to_edgekits_log_not_the_terminal(
    tmp_path: Path, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    # An mcpu LLVM doesn't know: TVM's C++ logs an 'Error: ... using default -mcpu=generic' line to descriptor 2.
    profile = yaml.safe_load(Path(load_profile("x86_64").source).read_text())
    profile.update(name="oddcpu", tvm={"target": {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "notacpu"}})
    (tmp_path / "oddcpu.yaml").write_text(yaml.safe_dump(profile))
    onnx.save(make_mlp(), str(tmp_path / "mlp.onnx"))
    args = ["compile", str(tmp_path / "mlp.onnx"), "-t", str(tmp_path / "oddcpu.yaml"), "-o", str(tmp_path / "b"), "-b", "tvm"]
    caplog.set_level(logging.INFO, "edgekit")
    assert main([*args, "--no-cache"]) == 0
    err = capfd.readouterr().err
    assert "llvm_instance.cc" not in err  # not on the terminal
    assert "tvm: importing ONNX into Relax" in err  # while Python's own progress lines still are
    logged = [r for r in caplog.records if "llvm_instance.cc" in r.getMessage()]  # in edgekit's log: shown with -v
    assert logged and all(r.name == "edgekit.compiler.backends.tvm" and r.levelname == "INFO" for r in logged)
    assert logged[0].getMessage().startswith("tvm: ") and "-mcpu=notacpu" in logged[0].getMessage()


@pytest.mark.slow  # ~75 s on the shared build machine: ONNX's test cases and a fresh interpreter with TVM
def test_a_failed_tvm_import_leaves_no_blockbuilder_warning_at_exit(tmp_path: Path) -> None:
    """TVM's importer failing half-way leaves a BlockBuilder in its frames; TVM warns 'BlockBuilder destroyed with
    remaining blocks' when it goes — which was at interpreter exit, on the terminal. It goes to edgekit's log now."""
    import subprocess
    import sys
    import warnings

    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the test generators overflow casts on purpose
        case = next(c for c in collect_testcases() if c.name == "test_attention_3d_diff_heads_sizes_softcap_expanded")
    assert case.model is not None
    onnx.save(case.model, str(tmp_path / "m.onnx"))
    script = (
        "import sys, edgekit\n"
        "from edgekit.errors import CompilationError\n"
        "try:\n"
        f"    edgekit.compile({str(tmp_path / 'm.onnx')!r}, 'x86_64', {str(tmp_path / 'b')!r}, backend='tvm', use_cache=False)\n"
        "except CompilationError as exc:\n"
        "    print('refused:', exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False)
    assert "refused: " in done.stdout and "TVM's ONNX importer failed" in done.stdout  # the import did fail half-way
    assert "BlockBuilder" not in done.stderr, done.stderr[-500:]
