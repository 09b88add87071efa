"""The PyTorch frontend end to end: TorchScript files and ``module:factory`` specs → artifact → predict."""

from __future__ import annotations

import os
import textwrap
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch  # the dev extra installs torch: a missing one is a failure, not a skip

# The tests build their TorchScript files with torch.jit.trace, which torch 2.13 deprecates (a warning in the
# test's own setup code, not in edgekit); the TorchScript format is still what users hand to edgekit.
import edgekit
from edgekit.cli import main
from edgekit.compiler import compile_model
from edgekit.compiler.frontends.torch import export_module
from edgekit.compiler.pipeline import CandidateSpec, MeasureSpec, Pipeline
from edgekit.errors import EXIT_CODES, InputShapeError, ModelConversionError, ModelLoadError

pytestmark = pytest.mark.filterwarnings(r"ignore:`torch\.jit\.trace(_method)?` is deprecated:DeprecationWarning")

# Both backends, few samples and timed runs: enough to measure agreement, quick on a 2-core machine.
FAST = Pipeline(
    name="test-fast",
    candidates=[
        CandidateSpec(name="ort", backend="onnxruntime", options={"optimization": "extended"}),
        CandidateSpec(name="tvm", backend="tvm", options={"opt_level": 3}),
    ],
    measure=MeasureSpec(samples=3, warmup=0, repeat=3),
)
ORT_ONLY = Pipeline(name="test-ort", candidates=[FAST.candidates[0]], measure=FAST.measure)


def make_mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4), torch.nn.Softmax(dim=-1)).eval()


class SmallCNN(torch.nn.Module):
    """Conv1d + ReLU + Linear + Softmax: exercises more than a matmul in both backends."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(3, 4, kernel_size=3)
        self.fc = torch.nn.Linear(4 * 14, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.fc(torch.relu(self.conv(x)).flatten(1)), dim=-1)


def eager(module: torch.nn.Module, *xs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = module(*(torch.from_numpy(x) for x in xs)).numpy()
    return out


def assert_no_artifact(out: Path) -> None:
    """A failed compile leaves nothing behind: no artifact dir, no archive, no temp dir."""
    left = sorted(p.name for p in out.iterdir()) if out.exists() else []
    assert left == [], f"leftovers in {out}: {left}"


def write_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    """A module file on sys.path with a unique name (imported modules stay cached in sys.modules)."""
    name = f"ek_factory_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text("import torch\n\n" + textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.fixture
def mlp_ts(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = make_mlp()
    path = tmp_path / "mlp.pt"
    torch.jit.trace(model, torch.randn(2, 8)).save(str(path))  # type: ignore[no-untyped-call]
    return path, model


# --------------------------------------------------------------------------- success paths


def test_torchscript_file_compiles_and_matches_eager(mlp_ts: tuple[Path, torch.nn.Module], out_dir: Path) -> None:
    path, model = mlp_ts
    result = compile_model(path, "x86_64", out_dir, pipeline=FAST, input_shapes={"input": [2, 8]})

    assert not result.cache_hit
    assert result.artifact_dir == out_dir / "mlp-x86_64"
    assert result.archive.is_file() and result.archive.name == "mlp-x86_64.tar.gz"
    assert not list(out_dir.glob(".edgekit-compile-*"))

    loaded = edgekit.load(result.artifact_dir)
    x = np.random.default_rng(123).standard_normal((2, 8)).astype(np.float32)  # not one of the measuring samples
    (got,) = loaded.predict(x)
    want = eager(model, x)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-4)  # softmax rows: a real model ran, not zeros
    # the same input by name gives the same answer
    np.testing.assert_allclose(loaded.predict({"input": x})[0], got, atol=0)

    m = loaded.manifest
    assert m.source.format == "torch"
    assert m.source.framework.startswith("torch ")
    assert m.source.framework.split()[1] == torch.__version__.split("+")[0]
    assert m.source.path == str(path)
    assert m.source.size_bytes == path.stat().st_size
    assert [(s.name, s.shape, s.dtype) for s in m.inputs] == [("input", [2, 8], "float32")]
    assert len(m.outputs) == 1 and m.outputs[0].shape == [2, 4] and m.outputs[0].dtype == "float32"
    assert loaded.outputs == [m.outputs[0].name]
    assert m.measured is not None
    assert "torch" in m.measured.accuracy.reference
    assert m.measured.accuracy.max_abs_error < 1e-4
    assert m.selftest is not None and "torch" in m.selftest.reference
    assert {c.backend for c in m.candidates} == {"onnxruntime", "tvm"}
    assert all(c.status in ("chosen", "rejected") for c in m.candidates)

    st = loaded.selftest()
    assert st.passed and st.samples == m.selftest.samples


def test_factory_spec_compiles_and_runs_in_eval_mode(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The factory returns a module in training mode with Dropout: the frontend must export (and compare) eval mode.
    mod = write_factory(
        tmp_path,
        monkeypatch,
        """
        def make_model():
            torch.manual_seed(0)
            return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(12, 3))
        """,
    )
    spec = f"{mod}:make_model"
    result = compile_model(spec, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"": [4, 6]})

    assert result.artifact_dir.name == "make_model-x86_64"
    loaded = edgekit.load(result.artifact_dir)
    assert loaded.manifest.source.format == "torch"
    assert loaded.manifest.source.path == spec
    assert [(s.name, s.shape) for s in loaded.manifest.inputs] == [("input", [4, 6])]

    import importlib

    reference = importlib.import_module(mod).make_model().eval()
    x = np.random.default_rng(5).standard_normal((4, 6)).astype(np.float32)
    np.testing.assert_allclose(loaded.predict(x)[0], eager(reference, x), atol=1e-4)


TWO_INPUTS = """
class Combine(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, a, b):
        return self.fc(a) * 2.0 - b

def make():
    return Combine()
"""


@pytest.mark.parametrize(
    ("shapes", "bind"),
    [
        pytest.param({"a": [1, 8], "b": [1, 3]}, {"a": "a", "b": "b"}, id="forward-order"),
        # named after forward()'s parameters but given in another order: bound by name
        pytest.param({"b": [1, 3], "a": [1, 8]}, {"a": "a", "b": "b"}, id="reversed-names"),
        # names that are not forward()'s parameters: bound by position
        pytest.param({"feat": [1, 8], "bias": [1, 3]}, {"a": "feat", "b": "bias"}, id="positional-names"),
    ],
)
def test_factory_with_two_inputs_respects_input_order(
    tmp_path: Path,
    out_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    shapes: dict[str, list[int]],
    bind: dict[str, str],
) -> None:
    mod = write_factory(tmp_path, monkeypatch, TWO_INPUTS)
    result = compile_model(f"{mod}:make", "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes=shapes)
    loaded = edgekit.load(result.artifact_dir)

    specs = {s.name: s.shape for s in loaded.manifest.inputs}
    assert specs == {bind["a"]: [1, 8], bind["b"]: [1, 3]}

    import importlib

    module = importlib.import_module(mod).make().eval()
    rng = np.random.default_rng(7)
    a = rng.standard_normal((1, 8)).astype(np.float32)
    b = rng.standard_normal((1, 3)).astype(np.float32)
    want = eager(module, a, b)
    got = loaded.predict({bind["b"]: b, bind["a"]: a})[0]  # dict order must not matter
    np.testing.assert_allclose(got, want, atol=1e-4)
    # and a swapped binding would be detectably different
    assert not np.allclose(eager(module, a, -b), want, atol=1e-4)


def test_same_shape_inputs_given_out_of_order_are_not_swapped(
    tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a and b have the same shape: a positional mix-up would export fine and silently compute b*2 - a.
    mod = write_factory(
        tmp_path,
        monkeypatch,
        """
        class Sub(torch.nn.Module):
            def forward(self, a, b):
                return a * 2.0 - b

        def make():
            return Sub()
        """,
    )
    result = compile_model(f"{mod}:make", "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"b": [1, 5], "a": [1, 5]})
    loaded = edgekit.load(result.artifact_dir)
    a = np.arange(5, dtype=np.float32).reshape(1, 5)
    b = np.full((1, 5), 10.0, dtype=np.float32)
    np.testing.assert_allclose(loaded.predict({"a": a, "b": b})[0], a * 2 - b, atol=1e-6)


def test_nested_tuple_outputs_are_flattened(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = write_factory(
        tmp_path,
        monkeypatch,
        """
        class Heads(torch.nn.Module):
            def forward(self, x):
                return x + 1.0, (x * 2.0, {"neg": -x})

        def make():
            return Heads()
        """,
    )
    result = compile_model(f"{mod}:make", "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"x": [2, 3]})
    loaded = edgekit.load(result.artifact_dir)
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    got = loaded.predict(x)
    assert len(got) == 3 == len(loaded.manifest.outputs)
    for g, w in zip(got, [x + 1, x * 2, -x], strict=True):
        np.testing.assert_allclose(g, w, atol=1e-6)


@pytest.mark.parametrize("backend", ["tvm", "onnxruntime"])
def test_each_backend_agrees_with_torch(tmp_path: Path, out_dir: Path, backend: str) -> None:
    torch.manual_seed(3)
    model = SmallCNN().eval()
    path = tmp_path / "cnn.pt"
    torch.jit.trace(model, torch.randn(2, 3, 16)).save(str(path))  # type: ignore[no-untyped-call]

    result = compile_model(path, "x86_64", out_dir, pipeline=FAST, backend=backend, input_shapes={"input": [2, 3, 16]})
    loaded = edgekit.load(result.artifact_dir)
    assert loaded.manifest.backend.name == backend
    assert [c.backend for c in loaded.manifest.candidates] == [backend]
    x = np.random.default_rng(11).standard_normal((2, 3, 16)).astype(np.float32)
    (got,) = loaded.predict(x)
    np.testing.assert_allclose(got, eager(model, x), atol=1e-4)
    assert got.shape == (2, 5)
    assert loaded.selftest().passed


# --------------------------------------------------------------------------- failures


def test_missing_input_shape(mlp_ts: tuple[Path, torch.nn.Module], out_dir: Path) -> None:
    path, _ = mlp_ts
    with pytest.raises(InputShapeError) as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY)
    assert "--input-shape" in str(exc.value)
    assert str(path) in str(exc.value)
    assert_no_artifact(out_dir)


def _state_dict(p: Path) -> None:
    torch.save(make_mlp().state_dict(), str(p))


def _pickled_module(p: Path) -> None:
    torch.save(make_mlp(), str(p))


def _empty(p: Path) -> None:
    p.write_bytes(b"")


def _random_bytes(p: Path) -> None:
    p.write_bytes(np.random.default_rng(0).bytes(4096))


def _truncated(p: Path) -> None:
    full = p.with_suffix(".full")
    torch.jit.trace(make_mlp(), torch.randn(1, 8)).save(str(full))  # type: ignore[no-untyped-call]
    p.write_bytes(full.read_bytes()[: full.stat().st_size // 2])


@pytest.mark.parametrize(
    ("suffix", "make"),
    [
        (".pt", _state_dict),
        (".pth", _pickled_module),
        (".pt", _empty),
        (".ts", _random_bytes),
        (".pt", _truncated),
    ],
    ids=["state-dict", "torch.save-module", "empty", "random-bytes", "truncated-torchscript"],
)
def test_file_that_is_not_torchscript(tmp_path: Path, out_dir: Path, suffix: str, make: Callable[[Path], None]) -> None:
    path = tmp_path / f"model{suffix}"
    make(path)
    with pytest.raises(ModelLoadError) as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [1, 8]})
    msg = str(exc.value)
    assert str(path) in msg
    assert "torch.jit" in msg
    assert_no_artifact(out_dir)


FACTORIES = """
def boom():
    raise RuntimeError("kaboom: weights not found")

def not_a_module():
    return {"weights": 1}

MODEL = torch.nn.Linear(4, 2)
"""


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        ("does_not_exist", ["has no attribute 'does_not_exist'"]),
        ("boom", ["raised RuntimeError", "kaboom: weights not found"]),
        ("not_a_module", ["returned dict", "torch.nn.Module"]),
    ],
)
def test_bad_factory(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch, attr: str, expected: list[str]) -> None:
    mod = write_factory(tmp_path, monkeypatch, FACTORIES)
    spec = f"{mod}:{attr}"
    with pytest.raises(ModelLoadError) as exc:
        compile_model(spec, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [1, 4]})
    msg = str(exc.value)
    assert spec in msg
    for part in expected:
        assert part in msg
    assert_no_artifact(out_dir)


def test_factory_module_not_importable(out_dir: Path) -> None:
    spec = f"ek_no_such_module_{uuid.uuid4().hex[:8]}:make"
    with pytest.raises(ModelLoadError) as exc:
        compile_model(spec, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [1, 4]})
    assert spec in str(exc.value)
    assert "No module named" in str(exc.value)
    assert_no_artifact(out_dir)


def test_factory_may_be_a_module_instance(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = write_factory(tmp_path, monkeypatch, FACTORIES)
    result = compile_model(f"{mod}:MODEL", "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [3, 4]})
    import importlib

    module = importlib.import_module(mod).MODEL
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(edgekit.load(result.artifact_dir).predict(x)[0], eager(module, x), atol=1e-5)


@pytest.mark.parametrize(
    "shapes",
    [{"a": [1, 8]}, {"a": [1, 8], "b": [1, 3], "c": [1, 3]}],
    ids=["too-few", "too-many"],
)
def test_wrong_number_of_shapes_for_forward(
    tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch, shapes: dict[str, list[int]]
) -> None:
    mod = write_factory(tmp_path, monkeypatch, TWO_INPUTS)
    with pytest.raises(ModelConversionError) as exc:
        compile_model(f"{mod}:make", "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes=shapes)
    msg = str(exc.value)
    assert f"{mod}:make" in msg
    assert "forward()" in msg and "--input-shape" in msg
    assert_no_artifact(out_dir)


def test_shape_that_does_not_fit_the_model(mlp_ts: tuple[Path, torch.nn.Module], out_dir: Path) -> None:
    path, _ = mlp_ts
    with pytest.raises(ModelConversionError) as exc:
        compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [1, 5]})  # model takes 8 features
    assert str(path) in str(exc.value) and "forward() fails on inputs of shapes [[1, 5]]" in str(exc.value)
    assert_no_artifact(out_dir)


def test_op_the_exporter_cannot_handle(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = write_factory(
        tmp_path,
        monkeypatch,
        """
        class Inverse(torch.nn.Module):
            def forward(self, x):
                return torch.linalg.inv(x)

        def make():
            return Inverse()
        """,
    )
    with pytest.raises(ModelConversionError) as exc:
        compile_model(f"{mod}:make", "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"x": [3, 3]})
    assert "linalg_inv" in str(exc.value)
    assert_no_artifact(out_dir)


# --------------------------------------------------------------------------- CLI


def test_cli_compile(mlp_ts: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, model = mlp_ts
    out = tmp_path / "cli-out"
    rc = main(["compile", str(path), "-t", "x86_64", "-o", str(out), "-s", "input:1,8"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    artifact = out / "mlp-x86_64"
    assert (artifact / "manifest.json").is_file()
    assert (out / "mlp-x86_64.tar.gz").is_file()
    assert str(artifact) in captured.out
    loaded = edgekit.load(artifact)
    assert loaded.manifest.source.format == "torch"
    assert {c.name for c in loaded.manifest.candidates} == {"ort", "tvm"}  # the bundled default pipeline
    x = np.ones((1, 8), dtype=np.float32)
    np.testing.assert_allclose(loaded.predict(x)[0], eager(model, x), atol=1e-4)


def test_cli_errors_exit_codes(mlp_ts: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = mlp_ts
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(os.urandom(64))
    out = tmp_path / "cli-out"
    cases = [
        ([str(path)], InputShapeError, "--input-shape"),  # no -s
        ([str(path), "-s", "input:1.5,8"], InputShapeError, "input:1.5,8"),
        ([str(bogus), "-s", "input:1,8"], ModelLoadError, "torch.jit"),
    ]
    for args, cls, needle in cases:
        rc = main(["compile", *args, "-t", "x86_64", "-o", str(out)])
        err = capsys.readouterr().err
        assert rc == EXIT_CODES[cls] != 0, (args, rc, err)
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, err
        assert needle in lines[0]
        assert "Traceback" not in err
        assert_no_artifact(out)


def test_cli_usage_error_exit_code(
    mlp_ts: tuple[Path, torch.nn.Module], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = mlp_ts
    rc = main(["compile", str(path), "-o", str(tmp_path / "cli-out"), "-s", "input:1,8"])  # no --target
    err = capsys.readouterr().err
    assert rc == 2
    assert "--target" in err


def test_shapes_named_after_later_forward_parameters_only(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # forward(x, scale=None) given only 'scale': exporting by position would silently feed it to x.
    mod = write_factory(
        tmp_path,
        monkeypatch,
        """
        class Scaled(torch.nn.Module):
            def forward(self, x, scale=None):
                return x if scale is None else x * scale

        def make():
            return Scaled()
        """,
    )
    with pytest.raises(InputShapeError) as exc:
        compile_model(f"{mod}:make", "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"scale": [1, 3]})
    assert "['x', 'scale']" in str(exc.value) and "scale" in str(exc.value)
    assert_no_artifact(out_dir)


# --------------------------------------------------------------------------- samples: stacked on the batch axis, integer ids


class Conv2dNet(torch.nn.Module):
    """Conv2d + flatten(1) + Linear: runs only on [batch, 3, 8, 8], never on one unbatched [3, 8, 8] image."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(torch.relu(self.conv(x)).flatten(1))
        return out


@pytest.mark.parametrize("stacking", ["batch-axis", "new-axis"])
def test_torchscript_takes_samples_stacked_on_the_batch_axis_like_its_onnx_export(
    tmp_path: Path, out_dir: Path, stacking: str
) -> None:
    model = Conv2dNet().eval()
    ts = tmp_path / "conv.pt"
    torch.jit.trace(model, torch.randn(1, 3, 8, 8)).save(str(ts))  # type: ignore[no-untyped-call]
    onnx_path = tmp_path / "conv.onnx"
    onnx_path.write_bytes(export_module(model, (torch.randn(1, 3, 8, 8),), ["input"], 1, "conv"))
    x = np.random.default_rng(1).standard_normal((12, 3, 8, 8)).astype(np.float32)
    labels = eager(model, x).argmax(axis=1)
    stacked = x if stacking == "batch-axis" else x[:, None]  # [12, 3, 8, 8] or [12, 1, 3, 8, 8]
    samples = {"input": stacked, "labels": labels}
    from_ts = compile_model(ts, "x86_64", out_dir / "ts", pipeline=ORT_ONLY, samples=samples)
    from_onnx = compile_model(onnx_path, "x86_64", out_dir / "onnx", pipeline=ORT_ONLY, samples=samples)
    for result in (from_ts, from_onnx):
        m = result.manifest
        assert [(s.name, s.shape) for s in m.inputs] == [("input", [1, 3, 8, 8])]
        assert m.measured is not None and m.measured.accuracy.top1_accuracy == 1.0  # labels are the model's own
    loaded = edgekit.load(from_ts.artifact_dir)
    np.testing.assert_allclose(loaded.predict(x[:1])[0], eager(model, x[:1]), atol=1e-4)


def test_a_mlp_with_samples_along_the_batch_axis_keeps_its_batch_axis(
    mlp_ts: tuple[Path, torch.nn.Module], out_dir: Path
) -> None:
    path, model = mlp_ts
    x = np.random.default_rng(2).standard_normal((10, 8))  # float64, as numpy makes them
    labels = eager(model, x.astype(np.float32)).argmax(1)
    result = compile_model(path, "x86_64", out_dir, pipeline=ORT_ONLY, samples={"input": x, "labels": labels})
    assert [(s.shape, s.dtype) for s in result.manifest.inputs] == [
        ([1, 8], "float32")
    ]  # not [8]: a torch model's first axis is its batch
    assert [s.shape for s in result.manifest.outputs] == [[1, 4]]


def test_torchscript_forward_errors_keep_their_cause(tmp_path: Path, out_dir: Path) -> None:
    ts = tmp_path / "conv.pt"
    torch.jit.trace(Conv2dNet().eval(), torch.randn(1, 3, 8, 8)).save(str(ts))  # type: ignore[no-untyped-call]
    with pytest.raises(ModelConversionError) as exc:
        compile_model(ts, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"input": [1, 5, 8, 8]})
    msg = str(exc.value)
    assert "\n" not in msg and "TorchScript interpreter" not in msg
    assert "expected input[1, 5, 8, 8] to have 3 channels, but got 5" in msg, msg


TOKENS = """
class TokenClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(50, 8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(dim=1))


def make():
    return TokenClassifier().eval()
"""


def test_a_token_id_model_exports_with_int64_inputs(tmp_path: Path, out_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mod = write_factory(tmp_path, monkeypatch, TOKENS)
    ids = np.random.default_rng(3).integers(0, 50, size=(16, 6)).astype(np.int64)
    import importlib

    model = importlib.import_module(mod).make()
    labels = eager(model, ids).argmax(axis=1)
    result = compile_model(f"{mod}:make", "x86_64", out_dir / "s", pipeline=FAST, samples={"ids": ids, "labels": labels})
    m = result.manifest
    assert [(s.name, s.shape, s.dtype) for s in m.inputs] == [("ids", [1, 6], "int64")]
    assert m.measured is not None and m.measured.accuracy.top1_accuracy == 1.0
    assert all(c.measured is not None for c in m.candidates), [(c.name, c.status, c.reason) for c in m.candidates]
    assert {c.backend for c in m.candidates} == {"onnxruntime", "tvm"}  # both measured against torch on the ids
    loaded = edgekit.load(result.artifact_dir)
    for row in ids[:4]:
        np.testing.assert_allclose(loaded.predict({"ids": row[None]})[0], eager(model, row[None]), atol=1e-5)
    assert loaded.selftest().passed
    # without samples: float examples fail in the embedding, int64 ones export; inputs are then synthesized in range
    plain = compile_model(f"{mod}:make", "x86_64", out_dir / "p", pipeline=ORT_ONLY, input_shapes={"ids": [2, 6]})
    assert [s.dtype for s in plain.manifest.inputs] == ["int64"]
    got = edgekit.load(plain.artifact_dir).predict({"ids": ids[:2]})[0]
    np.testing.assert_allclose(got, eager(model, ids[:2]), atol=1e-5)


SEEN_BATCHES = """
SEEN = []


class Net(torch.nn.Module):
    def __init__(self, mix):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm, self.fc = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Linear(8, 4)
        self.mix = mix

    def forward(self, x):
        SEEN.append(x.shape[0])
        y = torch.relu(self.norm(self.conv(x))).mean((2, 3))
        return self.fc(y - y.mean(0) if self.mix else y)  # mix: each sample's output depends on the batch's others


def plain():
    return Net(False).eval()


def mixing():
    return Net(True).eval()
"""


@pytest.mark.parametrize(("factory", "batched"), [("plain", True), ("mixing", False)])
def test_the_torch_reference_runs_the_samples_in_batches_and_gives_what_one_at_a_time_gives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, factory: str, batched: bool
) -> None:
    # 70 samples: batches of 32, 32 and 6, after the first and last sample alone (what the batches must agree with).
    # A model whose outputs mix the samples of a batch (or one that refuses a batch) is run one sample at a time.
    import importlib

    from edgekit.compiler.frontends.torch import load_torch
    from edgekit.compiler.phases.reference import reference_outputs
    from edgekit.compiler.samples import SampleSet

    mod = write_factory(tmp_path, monkeypatch, SEEN_BATCHES)
    source = load_torch(f"{mod}:{factory}", tmp_path / "work", {"x": [1, 3, 6, 6]})
    seen = importlib.import_module(mod).SEEN
    seen.clear()
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((1, 3, 6, 6)).astype(np.float32)} for _ in range(70)]
    ref = reference_outputs(source, MeasureSpec(), SampleSet(feeds, [np.array([i % 4]) for i in range(70)], None))

    assert seen == ([1, 1, 32, 32, 6] if batched else [1, 1, 32, *[1] * 70])
    model = getattr(importlib.import_module(mod), factory)()
    for feed, outs in zip(feeds, ref.expected, strict=True):
        assert len(outs) == 1 and outs[0].shape == (1, 4)
        np.testing.assert_allclose(outs[0], eager(model, feed["x"]), rtol=1e-5, atol=1e-6)
    assert ref.truth is not None and ref.source_score is not None and ref.source_score.top1 is not None
