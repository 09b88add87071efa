"""scikit-learn frontend: a pickled estimator or pipeline, converted with skl2onnx.

Tested pairing: scikit-learn 1.9.x with skl2onnx 1.20.x (:data:`TESTED_PAIRING`); outside it a conversion logs one
warning line naming both versions, and a failed conversion says so. skl2onnx 1.20's HistGradientBoosting converter
passes Python ``bool``s in an integer attribute (``nodes_missing_value_tracks_true``), which protobuf >= 7.34 refuses
(``TypeError: ... Expected an int, got a boolean``): :class:`_IntAttributes` hands it ints instead.
"""

from __future__ import annotations

import importlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.compiler.frontends.frontend import SourceModel
from edgekit.compiler.frontends.onnx import finish_onnx
from edgekit.deps import require
from edgekit.digests import file_sha256
from edgekit.errors import InputShapeError, ModelConversionError, ModelLoadError, last_line

__all__ = ["NUMPY_SKLEARN_MODULES", "TESTED_PAIRING", "load_sklearn", "own_class", "pairing_problem"]

INPUT_NAME = "input"
# (scikit-learn, skl2onnx) major.minor: the versions this frontend is tested with (CI and `make test-floor` install them).
TESTED_PAIRING = ("1.9", "1.20")
# A .skops file's untrusted types that load without an opt-in: classes defined in these packages (skops itself distrusts
# e.g. sklearn.tree._tree.Tree, HistGradientBoosting's TreePredictor, MLP's AdamOptimizer). Functions never do.
NUMPY_SKLEARN_MODULES = ("sklearn", "numpy")
TRUST_FLAG = "--trust-unknown-types (trust_unknown_types=True)"

log = logging.getLogger(__name__)


def _load(path: Path, trust_unknown_types: bool) -> Any:
    if not path.is_file():
        raise ModelLoadError(f"model file '{path}' does not exist")
    require("sklearn", "loading a scikit-learn model")
    if path.suffix == ".skops":
        return _load_skops(path, trust_unknown_types)
    if not trust_unknown_types:
        raise ModelLoadError(
            f"'{path}' is a pickle: its types can't be checked and loading it runs whatever code it holds; pass "
            f"{TRUST_FLAG} if you made it or trust who did, or save the model with skops "
            "(skops.io.dump(model, 'model.skops')) or as ONNX"
        )
    joblib = require("joblib", "loading a scikit-learn model")
    try:
        return joblib.load(path)
    except Exception as exc:  # a corrupt pickle raises almost anything: struct.error, zlib.error, TypeError, ...
        raise ModelLoadError(
            f"'{path}' is not a readable scikit-learn pickle ({type(exc).__name__}: {exc}); "
            f"save the fitted estimator with joblib.dump(model, path)"
        ) from exc


def own_class(name: str) -> bool:
    """Whether ``name`` (``pkg.module.Class``) is a class that scikit-learn or numpy itself defines."""
    module, _, attr = name.rpartition(".")
    parts = module.split(".")
    if parts[0] not in NUMPY_SKLEARN_MODULES or any(p in ("tests", "conftest") for p in parts):
        return False  # nor a test module: importing one is not what loading a model should do
    try:
        found = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError, ValueError):
        return False
    # a class, defined there (not a re-export of, say, subprocess.Popen under a sklearn module's name)
    return isinstance(found, type) and str(getattr(found, "__module__", "")).split(".")[0] in NUMPY_SKLEARN_MODULES


def _load_skops(path: Path, trust_unknown_types: bool) -> Any:
    """A ``.skops`` file: skops' default types plus scikit-learn's and numpy's own classes load; the rest need the opt-in."""
    sio = require("skops.io", "loading a .skops model")
    try:
        untrusted = [str(t) for t in sio.get_untrusted_types(file=path)]
        foreign = [t for t in untrusted if not own_class(t)]
        if foreign and not trust_unknown_types:
            raise ModelLoadError(
                f"'{path}' holds types that are not scikit-learn's or numpy's own classes: {', '.join(foreign[:5])}; "
                f"pass {TRUST_FLAG} if you trust them"
            )
        return sio.load(path, trusted=untrusted)
    except ModelLoadError:
        raise
    except Exception as exc:  # a damaged file raises almost anything: zipfile.BadZipFile, KeyError, TypeError, ...
        raise ModelLoadError(f"'{path}' is not a readable .skops model ({type(exc).__name__}: {last_line(exc)})") from None


def load_sklearn(
    path: Path, workdir: Path, input_shapes: dict[str, list[int]] | None, trust_unknown_types: bool = False
) -> SourceModel:
    estimator = _load(path, trust_unknown_types)
    package = type(estimator).__module__.split(".")[0]
    if package == "xgboost":  # a pickled XGBClassifier/XGBRegressor: skl2onnx has no converter, onnxmltools has
        from edgekit.compiler.frontends.xgboost import load_xgboost

        return load_xgboost(path, workdir, input_shapes, estimator)
    if package == "lightgbm":
        from edgekit.compiler.frontends.lightgbm import load_lightgbm

        return load_lightgbm(path, workdir, input_shapes, estimator)
    skl2onnx = require("skl2onnx", "converting a scikit-learn model")
    sklearn = require("sklearn", "converting a scikit-learn model")
    from skl2onnx.common.data_types import FloatTensorType

    n_features = getattr(estimator, "n_features_in_", None)
    if n_features is None:
        raise ModelLoadError(f"'{path}': {type(estimator).__name__} is not a fitted scikit-learn estimator")
    shapes = dict(input_shapes or {})
    if "" in shapes:
        shapes = {INPUT_NAME: shapes.pop("")}
    batch = 1
    if shapes:
        if set(shapes) != {INPUT_NAME}:
            raise InputShapeError(f"'{path}': a scikit-learn model has one input, '{INPUT_NAME}'; got {sorted(shapes)}")
        shape = shapes[INPUT_NAME]
        if len(shape) != 2 or shape[1] != n_features:
            raise InputShapeError(f"'{path}': input '{INPUT_NAME}' must be [batch, {n_features}] for this model, got {shape}")
        batch = shape[0]
    # Every classifier (with or without predict_proba, e.g. SVC) gets its scores as a tensor, not a ZipMap.
    options = {id(estimator): {"zipmap": False}} if hasattr(estimator, "classes_") else None

    mismatch = pairing_problem(sklearn.__version__, skl2onnx.__version__)
    if mismatch:
        log.warning("%s", mismatch)
    custom = _int_attribute_converters()

    def convert(opts: dict[int, dict[str, Any]] | None) -> Any:
        return skl2onnx.convert_sklearn(
            estimator,
            initial_types=[(INPUT_NAME, FloatTensorType([None, int(n_features)]))],
            options=opts,
            target_opset={"": 17, "ai.onnx.ml": 3},
            custom_conversion_functions=custom,
        )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                model = convert(options)
            except NameError as exc:  # "Option 'zipmap' not in [...]": this converter never adds a ZipMap (LinearSVC)
                if options is None or "zipmap" not in str(exc):
                    raise
                model = convert(None)
    except Exception as exc:  # skl2onnx raises RuntimeError, NotImplementedError, MissingShapeCalculator, ...
        msg = last_line(exc, first=True)  # skl2onnx's own line comes first; a wrapped cause (protobuf's) follows it
        also = f" ({mismatch})" if mismatch else ""
        raise ModelConversionError(f"'{path}': skl2onnx cannot convert {type(estimator).__name__}: {msg}{also}") from exc
    source = finish_onnx(
        model,
        workdir,
        {INPUT_NAME: [batch, int(n_features)]},
        where=str(path),
        path=str(path),
        fmt="sklearn",
        framework=f"scikit-learn {sklearn.__version__}",
        sha256=file_sha256(path),
        size_bytes=path.stat().st_size,
    )
    return _with_reference(source, estimator, path, sklearn.__version__)


def pairing_problem(sklearn_version: str, skl2onnx_version: str) -> str:
    """One line naming both versions when they are not the tested pairing, else ``""``."""

    def minor(version: str) -> str:
        return ".".join(version.split("+")[0].split(".")[:2])

    if (minor(sklearn_version), minor(skl2onnx_version)) == TESTED_PAIRING:
        return ""
    want_sk, want_conv = TESTED_PAIRING
    return (
        f"scikit-learn {sklearn_version} with skl2onnx {skl2onnx_version} is outside the tested pairing "
        f"(scikit-learn {want_sk}.x with skl2onnx {want_conv}.x); install those ('pip install \"edgekit[sklearn]\"') "
        "if a conversion fails or disagrees"
    )


class _IntAttributes:
    """skl2onnx's converter container, but list attributes holding ``bool``s get ``int``s (protobuf >= 7.34 refuses a
    ``bool`` in an integer field; skl2onnx 1.20's HistGradientBoosting converter passes ``False`` for leaf nodes)."""

    def __init__(self, container: Any) -> None:
        self._container = container

    def __getattr__(self, name: str) -> Any:
        return getattr(self._container, name)

    def add_node(self, *args: Any, **attrs: Any) -> Any:
        for key, value in attrs.items():
            if isinstance(value, list) and any(isinstance(v, (bool, np.bool_)) for v in value):
                attrs[key] = [int(v) if isinstance(v, (bool, np.bool_, int, np.integer)) else v for v in value]
        return self._container.add_node(*args, **attrs)


def _int_attribute_converters() -> dict[type, Any]:
    """skl2onnx's own converters for the estimators that need :class:`_IntAttributes`, as ``custom_conversion_functions``."""
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import get_converter

    out: dict[type, Any] = {}
    for model_type, alias in sklearn_operator_name_map.items():
        if model_type.__name__ not in ("HistGradientBoostingClassifier", "HistGradientBoostingRegressor"):
            continue
        converter = get_converter(alias)

        def convert(scope: Any, operator: Any, container: Any, converter: Any = converter) -> Any:
            return converter(scope, operator, _IntAttributes(container))

        out[model_type] = convert
    return out


def _with_reference(source: SourceModel, estimator: Any, path: Path, version: str) -> SourceModel:
    """``source`` with the estimator's own methods as the reference the compiled candidates are checked against."""
    # One scikit-learn method per ONNX output. Where there is none (label + scores of LinearSVC, SVC without
    # probabilities, KMeans, IsolationForest, ...) the reference stays ONNX Runtime on the converted model.
    is_classifier = hasattr(estimator, "predict_proba") and hasattr(estimator, "classes_")
    n_outputs = len(source.model.graph.output)
    if is_classifier and n_outputs == 2:
        methods = ["predict", "predict_proba"]
    elif n_outputs == 1 and hasattr(estimator, "predict"):
        methods = ["predict"]
    elif n_outputs == 1 and hasattr(estimator, "transform"):
        methods = ["transform"]
    else:
        source.reference_name = f"onnxruntime (no graph optimisation) on the skl2onnx conversion of {type(estimator).__name__}"
        return source

    def reference(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds[INPUT_NAME]
        outs = []
        for method in methods:
            try:
                y = np.asarray(getattr(estimator, method)(x))
            except Exception as exc:  # the estimator's own code, on float32 input
                msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelConversionError(
                    f"'{path}': {type(estimator).__name__}.{method}() fails on a float32 input of shape {list(x.shape)}, "
                    f"so there is no reference to check the compiled model against: {msg}"
                ) from exc
            outs.append(y if is_classifier else y.reshape(len(x), -1))
        return outs

    source.reference = reference
    source.reference_name = f"scikit-learn {version} {'/'.join(methods)}"
    return source
