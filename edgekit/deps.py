"""Optional dependencies: imported when used, never at ``import edgekit``.

See docs/architecture.md (extras by role) and docs/errors.md (``MissingDependencyError``).
"""

from __future__ import annotations

import importlib
import importlib.metadata
from types import ModuleType

from edgekit.errors import MissingDependencyError

__all__ = ["EXTRAS", "TVM_FFI_VERSION", "TVM_VERSION", "package_version", "require"]

TVM_VERSION = "0.27.0.post1"  # the compiler's version: a device's libtvm_runtime must match it
TVM_FFI_VERSION = "0.1.14.post1"  # 0.1.15 breaks TVM 0.27 (also pinned in pyproject and components/runtime/requirements-tvm.txt)

# import name -> (distribution name, edgekit extra that installs it)
EXTRAS: dict[str, tuple[str, str]] = {
    "tvm": ("apache-tvm", "tvm"),
    "tvm_ffi": ("apache-tvm-ffi", "tvm"),
    "torch": ("torch", "torch"),
    "sklearn": ("scikit-learn", "sklearn"),
    "skl2onnx": ("skl2onnx", "sklearn"),
    "joblib": ("joblib", "sklearn"),
    "skops": ("skops", "sklearn"),
    "xgboost": ("xgboost-cpu", "xgboost"),
    "lightgbm": ("lightgbm", "lightgbm"),
    "onnxmltools": ("onnxmltools", "xgboost"),  # also in the lightgbm extra: callers name theirs
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "keras": ("keras", "tensorflow"),
    "tf2onnx": ("tf2onnx", "tensorflow"),
    "boto3": ("boto3", "aws"),
    "paho": ("paho-mqtt", "device"),
    "cryptography": ("cryptography", "fleet"),
    "prometheus_client": ("prometheus-client", "fleet"),
    "starlette": ("starlette", "serve"),
    "uvicorn": ("uvicorn", "serve"),
}


def require(module: str, purpose: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the extra to install (``extra`` if given)."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the package is there but is itself broken: show the real cause
        _dist, default = EXTRAS.get(top, (top, "all"))
        raise MissingDependencyError(top, extra or default, purpose) from exc


def package_version(dist: str) -> str:
    """Installed version of a distribution, without importing it ('not installed' if absent)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
