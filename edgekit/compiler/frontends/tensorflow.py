"""TensorFlow frontends: a ``.tflite`` file, a Keras ``.keras``/``.h5`` file or a SavedModel folder, converted with tf2onnx.

Needs the ``tensorflow`` extra (``pip install 'edgekit[tensorflow]'``: tensorflow-cpu and tf2onnx), kept out of
the default install. Each model is checked against its own framework: the TFLite interpreter, Keras ``predict``
or the SavedModel's serving signature. Inputs and outputs keep the model's own names (a signature's keys, a
Keras layer's name); a dynamic batch dimension is 1 unless ``--input-shape`` or the samples say otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx

from edgekit.compiler.backends.native_log import native_stderr_to_log
from edgekit.compiler.frontends.frontend import Format, Reference, SourceModel
from edgekit.compiler.frontends.onnx import finish_onnx
from edgekit.deps import require
from edgekit.digests import file_sha256
from edgekit.errors import ModelConversionError, ModelLoadError, last_line

__all__ = ["load_tensorflow"]

log = logging.getLogger(__name__)

OPSET = 17
_WHAT = {"tflite": "a TFLite model", "keras": "a Keras model", "tensorflow": "a TensorFlow SavedModel"}
Converted = tuple[onnx.ModelProto, Reference, dict[str, str], str]  # model, reference, ONNX name -> wanted name, framework
Shapes = dict[str, list[int]]


def _tensorflow(purpose: str) -> tuple[ModuleType, ModuleType]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter; errors still show
    tf = require("tensorflow", purpose, "tensorflow")
    tf2onnx = require("tf2onnx", purpose, "tensorflow")
    return tf, tf2onnx


@contextlib.contextmanager
def _quiet(tf: ModuleType) -> Iterator[None]:
    """TensorFlow's and tf2onnx's deprecation notices and progress lines, kept out of the user's terminal."""
    loggers = [tf.get_logger(), logging.getLogger("tf2onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def folder_sha256(path: Path) -> tuple[str, int]:
    """SHA-256 over a folder's files (relative paths and contents, in sorted order) and their total size."""
    h = hashlib.sha256()
    size = 0
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + file_sha256(f).encode())
        size += f.stat().st_size
    return h.hexdigest(), size


def load_tensorflow(path: Path, fmt: Format, workdir: Path, input_shapes: dict[str, list[int]] | None) -> SourceModel:
    what = _WHAT[fmt]
    if not path.exists():
        raise ModelLoadError(f"model {'folder' if fmt == 'tensorflow' else 'file'} '{path}' does not exist")
    tf, tf2onnx = _tensorflow(f"loading {what}")
    convert = {"tflite": _from_tflite, "keras": _from_keras, "tensorflow": _from_saved_model}[fmt]
    with _quiet(tf):
        model, reference, names, framework = convert(path, tf, tf2onnx, dict(input_shapes or {}))
    reference_name = {"tflite": "the TFLite interpreter", "keras": "Keras predict", "tensorflow": "the serving signature"}[fmt]
    _rename(model, names)
    sha, size = folder_sha256(path) if path.is_dir() else (file_sha256(path), path.stat().st_size)
    source = finish_onnx(
        model,
        workdir,
        _batch_of_one(model, input_shapes),
        where=str(path),
        path=str(path),
        fmt=fmt,
        framework=f"{framework} (tf2onnx {tf2onnx.__version__})",
        sha256=sha,
        size_bytes=size,
    )
    wanted = {new: old for old, new in names.items()}  # the reference takes the framework's own names

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with warnings.catch_warnings():  # TensorFlow's own deprecation notices (numpy 2's __array__ copy keyword, ...)
            warnings.simplefilter("ignore")
            return reference({wanted.get(k, k): v for k, v in feeds.items()})

    source.reference = run
    source.reference_name = f"{framework} {reference_name}"
    return source


def _converted(where: Path, what: str, run: Callable[[], Any]) -> Any:
    try:
        return run()
    except Exception as exc:  # tf2onnx raises ValueError, KeyError, RuntimeError, NotImplementedError, ...
        raise ModelConversionError(f"'{where}': tf2onnx cannot convert {what}: {type(exc).__name__}: {last_line(exc)}") from exc


def _clean(name: str) -> str:
    return re.sub(r":0$", "", name)


# --------------------------------------------------------------------------- TFLite


def _from_tflite(path: Path, tf: ModuleType, tf2onnx: ModuleType, _shapes: Shapes) -> Converted:
    try:
        # TFLite's C++ logs "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." to descriptor 2 (whatever
        # TF_CPP_MIN_LOG_LEVEL says) when it applies its default delegate: to edgekit's log, not the terminal.
        with native_stderr_to_log(log, "tflite: "):
            interpreter = tf.lite.Interpreter(model_path=str(path))
            interpreter.allocate_tensors()
    except Exception as exc:  # ValueError: Model provided has model identifier '...', should be 'TFL3'
        raise ModelLoadError(
            f"'{path}' is not a readable TFLite model ({last_line(exc)}); write it with tf.lite.TFLiteConverter"
        ) from None
    model, _ = _converted(path, "the TFLite model", lambda: tf2onnx.convert.from_tflite(str(path), opset=OPSET))
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    outputs = {d["name"]: d for d in interpreter.get_output_details()}
    names = {n: _clean(n) for n in [*inputs, *outputs]}
    signatures = interpreter.get_signature_list()
    if len(signatures) == 1:  # the signature's keys are the names the model was written with
        runner = interpreter.get_signature_runner(next(iter(signatures)))
        by_index = {d["index"]: n for n, d in [*inputs.items(), *outputs.items()]}
        for key, d in [*runner.get_input_details().items(), *runner.get_output_details().items()]:
            if d["index"] in by_index:
                names[by_index[d["index"]]] = key
    order = [o.name for o in model.graph.output]

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name, x in feeds.items():
                if list(inputs[name]["shape"]) != list(x.shape):
                    interpreter.resize_tensor_input(inputs[name]["index"], list(x.shape))
                    inputs[name]["shape"] = np.array(x.shape)
            interpreter.allocate_tensors()
            for name, x in feeds.items():
                interpreter.set_tensor(inputs[name]["index"], np.ascontiguousarray(x, dtype=inputs[name]["dtype"]))
            interpreter.invoke()
            return [np.array(interpreter.get_tensor(outputs[n]["index"])) for n in order]

    return model, reference, names, f"tensorflow {tf.__version__} TFLite"


# --------------------------------------------------------------------------- Keras


def _from_keras(path: Path, tf: ModuleType, tf2onnx: ModuleType, shapes: Shapes) -> Converted:
    keras = require("keras", "loading a Keras model", "tensorflow")
    try:
        net = keras.saving.load_model(str(path), compile=False)
    except Exception as exc:  # ValueError for an unknown layer or a damaged zip, OSError for a bad .h5
        raise ModelLoadError(
            f"'{path}' is not a loadable Keras model ({type(exc).__name__}: {last_line(exc)}); save it with model.save('model.keras')"
        ) from None
    tensors = list(net.inputs)
    in_names = _unique([str(getattr(t, "name", "") or f"input_{i}").split(":")[0] for i, t in enumerate(tensors)], "input")
    spec = [
        tf.TensorSpec(_static(t.shape, n, shapes, len(tensors)), t.dtype, name=n) for t, n in zip(tensors, in_names, strict=True)
    ]
    single = len(tensors) == 1

    @tf.function(input_signature=spec)  # type: ignore[untyped-decorator]
    def call(*xs: Any) -> Any:
        return tf.nest.flatten(net(xs[0] if single else list(xs), training=False))

    model, _ = _converted(path, "the Keras model", lambda: tf2onnx.convert.from_function(call, input_signature=spec, opset=OPSET))
    out_names = _unique(_keras_output_names(net), "output")
    names = {o.name: n for o, n in zip(model.graph.output, out_names, strict=True)}
    names |= {i.name: n for i, n in zip(model.graph.input, in_names, strict=False)}

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        xs = [feeds[n] for n in in_names]
        got = net.predict(xs[0] if single else xs, verbose=0)
        return [np.asarray(y) for y in tf.nest.flatten(got)]

    return model, reference, names, f"keras {keras.__version__}"


def _keras_output_names(net: Any) -> list[str]:
    """A functional model's output names, else the names of the layers giving the outputs (``dense_1``)."""
    given = getattr(net, "output_names", None)
    if given and len(given) == len(net.outputs):
        return [str(n) for n in given]
    history = [getattr(t, "_keras_history", None) for t in net.outputs]
    return [str(getattr(h[0], "name", "")) if h else "" for h in history]


def _unique(names: list[str], stem: str) -> list[str]:
    if all(names) and len(set(names)) == len(names):
        return names
    return [f"{stem}_{i}" for i in range(len(names))]


# --------------------------------------------------------------------------- SavedModel


def _from_saved_model(path: Path, tf: ModuleType, tf2onnx: ModuleType, shapes: Shapes) -> Converted:
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:  # OSError, ValueError, tf.errors.*
        raise ModelLoadError(
            f"'{path}' is not a loadable TensorFlow SavedModel ({type(exc).__name__}: {last_line(exc)})"
        ) from None
    signatures = dict(loaded.signatures)
    if "serving_default" not in signatures:
        raise ModelLoadError(
            f"'{path}': the SavedModel has no 'serving_default' signature (it has {sorted(signatures) or 'none'}); "
            "export it with model.export(path) or tf.saved_model.save(obj, path, signatures=...)"
        )
    sig = signatures["serving_default"]
    args, kwargs = sig.structured_input_signature
    in_keys = sorted(kwargs)
    out_keys = sorted(sig.structured_outputs)
    if args or not in_keys:
        raise ModelLoadError(f"'{path}': the serving signature takes positional inputs; edgekit needs named ones (model.export)")
    spec = [tf.TensorSpec(_static(kwargs[k].shape, k, shapes, len(in_keys)), kwargs[k].dtype, name=k) for k in in_keys]

    @tf.function(input_signature=spec)  # type: ignore[untyped-decorator]
    def call(*xs: Any) -> Any:
        out = sig(**dict(zip(in_keys, xs, strict=True)))
        return [out[k] for k in out_keys]

    model, _ = _converted(path, "the SavedModel", lambda: tf2onnx.convert.from_function(call, input_signature=spec, opset=OPSET))
    names = {o.name: k for o, k in zip(model.graph.output, out_keys, strict=True)}
    names |= {i.name: k for i, k in zip(model.graph.input, in_keys, strict=False)}

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = sig(**{k: tf.constant(feeds[k]) for k in in_keys})
        return [np.asarray(out[k]) for k in out_keys]

    return model, reference, names, f"tensorflow {tf.__version__} SavedModel"


# --------------------------------------------------------------------------- shared


def _static(shape: Any, name: str, given: Shapes, n_inputs: int) -> list[int | None]:
    """The shape to trace an input with: the given one, else batch 1 where only the batch is dynamic.

    Traced with static shapes, tf2onnx writes constant Reshape shapes (TVM's importer needs them).
    """
    dims: list[int | None] = list(shape.as_list() if hasattr(shape, "as_list") else shape)
    want = given.get(name, given.get("") if n_inputs == 1 else None)
    if want is not None:
        fits = len(want) == len(dims) and all(d is None or d == w for d, w in zip(dims, want, strict=True))
        return list(want) if fits else dims  # a misfit is named by the shape check after conversion
    if dims and dims[0] is None and all(d is not None for d in dims[1:]):
        return [1, *dims[1:]]
    return dims


def _rename(model: onnx.ModelProto, names: dict[str, str]) -> None:
    """Rename graph inputs and outputs (and every use of them) to the framework's own names, in place."""
    taken = {v for n in model.graph.node for v in [*n.input, *n.output]} | {i.name for i in model.graph.initializer}
    mapping = {old: new for old, new in names.items() if new and old != new and new not in taken}
    if not mapping:
        return
    for vi in [*model.graph.input, *model.graph.output]:
        vi.name = mapping.get(vi.name, vi.name)
    for node in model.graph.node:
        node.input[:] = [mapping.get(v, v) for v in node.input]
        node.output[:] = [mapping.get(v, v) for v in node.output]


def _batch_of_one(model: onnx.ModelProto, given: dict[str, list[int]] | None) -> dict[str, list[int]]:
    """``given``, plus batch 1 for each input whose only dynamic dimension is the first one."""
    shapes = dict(given or {})
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if "" in shapes and len(inputs) == 1:
        shapes = {inputs[0].name: shapes.pop("")} | shapes
    for vi in inputs:
        dims = vi.type.tensor_type.shape.dim
        static = [d.HasField("dim_value") and d.dim_value > 0 for d in dims]
        if vi.name not in shapes and dims and not static[0] and all(static[1:]):
            shapes[vi.name] = [1] + [int(d.dim_value) for d in dims[1:]]
    return shapes
