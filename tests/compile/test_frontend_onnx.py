"""ONNX frontend: validation, input shapes, external data, corrupt files."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from helpers import make_mlp

from edgekit.compiler.frontends import load_source, parse_input_shapes
from edgekit.errors import InputShapeError, ModelLoadError


def test_loads_checks_and_pins_shapes(mlp_onnx: Path, tmp_path: Path) -> None:
    src = load_source(mlp_onnx, tmp_path / "w")
    assert src.format == "onnx" and src.opset == 17
    assert [(s.name, s.shape, s.dtype) for s in src.inputs] == [("x", [1, 8], "float32")]
    assert src.onnx_path.is_file()
    assert len(src.sha256) == 64


def test_dynamic_batch_needs_a_shape(tmp_path: Path) -> None:
    path = tmp_path / "dyn.onnx"
    onnx.save(make_mlp(batch="N"), str(path))
    with pytest.raises(InputShapeError, match=r"input 'x' has dynamic dimensions \['N', 8\].*--input-shape x:1,8"):
        load_source(path, tmp_path / "w")
    src = load_source(path, tmp_path / "w2", {"x": [4, 8]})
    assert src.inputs[0].shape == [4, 8]
    src = load_source(path, tmp_path / "w3", parse_input_shapes(["2,8"]))  # unnamed: the only input
    assert src.inputs[0].shape == [2, 8]


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        ({"y": [1, 8]}, r"names \['y'\], but the model's inputs are \['x'\]"),
        ({"x": [1, 8, 1]}, r"rank 2 .* gives \[1, 8, 1\]"),
        ({"x": [1, 9]}, r"dimension 1 is fixed to 8 .* gives 9"),
    ],
)
def test_wrong_input_shapes(mlp_onnx: Path, tmp_path: Path, shapes: dict[str, list[int]], message: str) -> None:
    with pytest.raises(InputShapeError, match=message):
        load_source(mlp_onnx, tmp_path / "w", shapes)


@pytest.mark.parametrize("spec", ["x:", "x:1,2a", "x:0,3", ":", "x:1,-2", "x:[1,2] y", '{"x": 3}'])
def test_malformed_input_shape_flag(spec: str) -> None:
    with pytest.raises(InputShapeError, match="NAME:D1,D2"):
        parse_input_shapes([spec])


def test_corrupt_truncated_empty_and_missing_files(mlp_onnx: Path, tmp_path: Path) -> None:
    data = mlp_onnx.read_bytes()
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(data[: len(data) // 3])
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\xff\xff\xff this is not protobuf" * 10)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for path in (truncated, garbage):
        with pytest.raises(ModelLoadError, match=path.name):
            load_source(path, tmp_path / "w")
    with pytest.raises(ModelLoadError, match="is empty"):
        load_source(empty, tmp_path / "w")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_source(tmp_path / "nope.onnx", tmp_path / "w")


def test_unknown_suffix() -> None:
    with pytest.raises(ModelLoadError, match=r"suffix '\.mlmodel'"):  # .h5 is a Keras model now
        load_source("model.mlmodel", Path("/tmp"))


def test_external_data_is_embedded_and_missing_data_is_reported(tmp_path: Path) -> None:
    model = make_mlp(in_features=64, hidden=64)
    path = tmp_path / "ext" / "model.onnx"
    path.parent.mkdir()
    onnx.save(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0
    )
    assert (path.parent / "model.onnx.data").is_file()
    src = load_source(path, tmp_path / "w")
    reloaded = onnx.load(str(src.onnx_path))
    assert all(not t.external_data for t in reloaded.graph.initializer)  # self-contained
    (path.parent / "model.onnx.data").unlink()
    with pytest.raises(ModelLoadError, match="external data"):
        load_source(path, tmp_path / "w2")


def test_checker_rejects_invalid_graph(tmp_path: Path) -> None:
    model = make_mlp()
    model.graph.node[0].input[1] = "does_not_exist"
    path = tmp_path / "invalid.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="invalid.onnx"):
        load_source(path, tmp_path / "w")
