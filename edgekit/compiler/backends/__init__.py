"""Backend registry: one line per backend."""

from __future__ import annotations

from typing import Any

from edgekit.compiler.backends.backend import Backend, BackendOptions, Built, UnsupportedOp
from edgekit.errors import ConfigError

__all__ = ["BACKENDS", "Backend", "BackendOptions", "Built", "UnsupportedOp", "get_backend"]

BACKENDS: dict[str, str] = {
    "onnxruntime": "edgekit.compiler.backends.onnxruntime:OnnxRuntimeBackend",
    "tvm": "edgekit.compiler.backends.tvm:TvmBackend",
}
_ALIASES = {"ort": "onnxruntime"}


def get_backend(name: str) -> Backend[Any]:
    import importlib

    key = _ALIASES.get(name, name)
    if key not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}'; known backends: {', '.join(sorted(BACKENDS))}")
    module, _, cls = BACKENDS[key].partition(":")
    backend: Backend[Any] = getattr(importlib.import_module(module), cls)()
    return backend
