"""TFLite, Keras and SavedModel end to end: a small CNN trained here on scikit-learn's digits, saved three ways,
compiled through tf2onnx, and compared with the framework's own predictions (TFLite interpreter, Keras predict,
the serving signature) on held-out images."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_digits

import edgekit
from edgekit.compiler import compile_model
from edgekit.compiler.pipeline import CandidateSpec, MeasureSpec, Pipeline
from edgekit.errors import InputShapeError, ModelLoadError

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras  # the dev extra installs the tensorflow extra: a missing one is a failure, not a skip
import tensorflow as tf

FAST = Pipeline(
    name="test-fast",
    candidates=[
        CandidateSpec(name="ort", backend="onnxruntime", options={"optimization": "extended"}),
        CandidateSpec(name="tvm", backend="tvm", options={"opt_level": 3}),
    ],
    measure=MeasureSpec(samples=3, warmup=0, repeat=3),
)
ORT_ONLY = Pipeline(name="test-ort", candidates=[FAST.candidates[0]], measure=FAST.measure)
HELD_OUT = 24
# TensorFlow 2.21's variables implement numpy's __array__ without numpy 2's copy keyword (saving and converting
# hit it); the frontend hides TensorFlow's notices itself, the training here needs this.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")


class Digits:
    def __init__(self, folder: Path) -> None:
        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype(np.float32).reshape(-1, 8, 8, 1)  # NHWC, as Keras and TFLite take images
        self.x, self.y, self.xt, self.yt = x[::2], y[::2], x[1::2][:HELD_OUT], y[1::2][:HELD_OUT]
        keras.utils.set_random_seed(0)
        net = keras.Sequential(
            [
                keras.Input((8, 8, 1), name="image"),
                keras.layers.Conv2D(8, 3, activation="relu"),
                keras.layers.MaxPooling2D(),
                keras.layers.Flatten(),
                keras.layers.Dense(10, activation="softmax", name="probs"),
            ]
        )
        net.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        net.fit(self.x, self.y, epochs=30, batch_size=32, verbose=0)
        self.net = net
        self.keras_file = folder / "digits.keras"
        net.save(self.keras_file)
        self.saved_model = folder / "digits_savedmodel"
        net.export(self.saved_model, verbose=False)
        self.tflite = folder / "digits.tflite"
        self.tflite.write_bytes(tf.lite.TFLiteConverter.from_keras_model(net).convert())
        # the usual on-device form: full-integer quantized, int8 in and out
        converter = tf.lite.TFLiteConverter.from_keras_model(net)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([self.x[i : i + 1]] for i in range(64))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
        self.int8_tflite = folder / "digits_int8.tflite"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected": the representative data gives them
            self.int8_tflite.write_bytes(converter.convert())


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    return Digits(tmp_path_factory.mktemp("digits"))


def compiled(path: Path, out_dir: Path, pipeline: Pipeline = ORT_ONLY, **kwargs: Any) -> edgekit.runtime.LoadedModel:
    result = compile_model(path, "x86_64", out_dir, pipeline=pipeline, **kwargs)
    loaded = edgekit.load(result.artifact_dir)
    assert loaded.selftest().passed
    return loaded


def _accurate(probs: np.ndarray, labels: np.ndarray) -> None:
    assert probs.shape == (len(labels), 10)
    assert np.mean(np.argmax(probs, axis=1) == labels) > 0.8  # a trained model, not noise


def test_tflite_matches_the_interpreter(digits: Digits, out_dir: Path) -> None:
    loaded = compiled(digits.tflite, out_dir, input_shapes={"image": [HELD_OUT, 8, 8, 1]})
    m = loaded.manifest
    assert m.source.format == "tflite" and m.source.framework.startswith(f"tensorflow {tf.__version__} TFLite")
    assert m.measured is not None and "TFLite interpreter" in m.measured.accuracy.reference
    assert [(s.name, s.shape) for s in m.inputs] == [("image", [HELD_OUT, 8, 8, 1])]  # the signature's own name

    (got,) = loaded.predict(digits.xt)
    want = _interpret(digits.tflite, digits.xt)
    np.testing.assert_allclose(got, want, atol=1e-5)
    _accurate(got, digits.yt)


def _interpret(path: Path, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tf.lite.Interpreter: moving to ai_edge_litert
        interpreter = tf.lite.Interpreter(model_path=str(path))
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(index, x)
    interpreter.invoke()
    out: np.ndarray = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    return out


def test_int8_tflite_matches_the_interpreter(digits: Digits, out_dir: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        details = tf.lite.Interpreter(model_path=str(digits.int8_tflite)).get_input_details()[0]
    scale, zero = details["quantization"]
    xq = np.clip(np.round(digits.xt / scale + zero), -128, 127).astype(np.int8)
    loaded = compiled(digits.int8_tflite, out_dir, input_shapes={"image": [HELD_OUT, 8, 8, 1]})
    assert [s.dtype for s in loaded.manifest.inputs] == ["int8"]
    (got,) = loaded.predict(xq)
    want = _interpret(digits.int8_tflite, xq)
    assert got.dtype == np.int8
    np.testing.assert_allclose(got.astype(int), want.astype(int), atol=1)  # one quantization step at most
    assert np.mean(np.argmax(got, axis=1) == digits.yt) > 0.8


def test_keras_file_matches_predict_on_both_backends(digits: Digits, out_dir: Path) -> None:
    loaded = compiled(digits.keras_file, out_dir, FAST)  # batch 1 by default: the input's only dynamic dimension
    m = loaded.manifest
    assert m.source.format == "keras" and "Keras predict" in (m.measured.accuracy.reference if m.measured else "")
    assert loaded.outputs == ["probs"]
    assert sorted(c.name for c in m.candidates if c.status in ("chosen", "rejected")) == ["ort", "tvm"]
    want = digits.net.predict(digits.xt, verbose=0)
    got = np.concatenate([loaded.predict(digits.xt[i : i + 1])[0] for i in range(HELD_OUT)])
    np.testing.assert_allclose(got, want, atol=1e-5)
    _accurate(got, digits.yt)


def test_saved_model_matches_its_serving_signature(digits: Digits, out_dir: Path) -> None:
    loaded = compiled(digits.saved_model, out_dir, input_shapes={"": [HELD_OUT, 8, 8, 1]})
    m = loaded.manifest
    assert m.source.format == "tensorflow" and m.source.path == str(digits.saved_model)
    assert m.measured is not None and "serving signature" in m.measured.accuracy.reference
    serve = tf.saved_model.load(str(digits.saved_model)).signatures["serving_default"]
    (key,) = serve.structured_input_signature[1]
    (out_key,) = serve.structured_outputs
    assert loaded.outputs == [out_key] and [s.name for s in m.inputs] == [key]
    (got,) = loaded.predict(digits.xt)
    want = serve(**{key: tf.constant(digits.xt)})[out_key].numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    _accurate(got, digits.yt)


def test_saved_model_edit_changes_the_fingerprint(digits: Digits, tmp_path: Path, out_dir: Path) -> None:
    """A SavedModel folder has no single file: its digest covers every file, so an edit is a new compile."""
    first = compiled(digits.saved_model, out_dir, name="sm")
    copy = tmp_path / "sm_copy"
    shutil.copytree(digits.saved_model, copy)
    (copy / "assets").mkdir(exist_ok=True)
    (copy / "assets" / "note.txt").write_text("changed")
    second = compiled(copy, out_dir, name="sm2")
    assert first.manifest.source.sha256 != second.manifest.source.sha256


def test_bad_files_are_one_line(tmp_path: Path, out_dir: Path) -> None:
    bad = tmp_path / "broken.tflite"
    bad.write_bytes(b"not a flatbuffer at all")
    with pytest.raises(ModelLoadError, match=r"broken.tflite' is not a readable TFLite model") as exc:
        compile_model(bad, "x86_64", out_dir, pipeline=ORT_ONLY)
    assert "\n" not in str(exc.value)
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ModelLoadError, match=r"broken.keras' is not a loadable Keras model") as exc:
        compile_model(bad, "x86_64", out_dir, pipeline=ORT_ONLY)
    assert "\n" not in str(exc.value)


def test_wrong_shape_names_the_input(digits: Digits, out_dir: Path) -> None:
    with pytest.raises(InputShapeError, match=r"'image' dimension 1 is fixed to 8"):
        compile_model(digits.tflite, "x86_64", out_dir, pipeline=ORT_ONLY, input_shapes={"image": [1, 9, 8, 1]})


@pytest.mark.slow  # a fresh interpreter importing TensorFlow: ~20-40 s on the shared build machine
def test_tflites_xnnpack_info_line_goes_to_the_log_not_the_terminal(digits: Digits, tmp_path: Path) -> None:
    """TFLite's C++ prints 'INFO: Created TensorFlow Lite XNNPACK delegate for CPU.' once per process, whatever
    TF_CPP_MIN_LOG_LEVEL says: in a fresh process (this one printed it already) it must not reach the terminal."""
    import subprocess
    import sys

    script = (
        "import edgekit\n"
        f"r = edgekit.compile({str(digits.tflite)!r}, 'x86_64', {str(tmp_path / 'b')!r}, backend='onnxruntime', "
        "use_cache=False, input_shapes={'image': [1, 8, 8, 1]})\n"
        "print('compiled', r.artifact_dir.name)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0 and "compiled " in done.stdout, done.stderr[-500:]
    assert "XNNPACK" not in done.stderr, done.stderr[-500:]
