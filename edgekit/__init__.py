"""edgekit: compile a model for an edge device, package it for Greengrass v2, roll it out.

Importing edgekit is cheap: TVM, PyTorch, scikit-learn and boto3 load only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit._version import __version__
from edgekit.errors import EdgekitError

if TYPE_CHECKING:
    from edgekit.cloud.advisor import Advice
    from edgekit.compiler import CompileResult
    from edgekit.profiles import DeviceProfile
    from edgekit.runtime import LoadedModel

__all__ = ["EdgekitError", "__version__", "advise", "compile", "load", "serve", "targets"]


def compile(model: Any, target: Any, output_dir: Any = "build", **kwargs: Any) -> CompileResult:
    """Compile ``model`` for a device profile; see :func:`edgekit.compiler.compile_model`."""
    from edgekit.compiler import compile_model

    return compile_model(model, target, output_dir, **kwargs)


def load(artifact_dir: Any, threads: int = 0) -> LoadedModel:
    """Load a compiled artifact: ``edgekit.load(dir).predict(inputs)``."""
    from edgekit.runtime import load as _load

    return _load(artifact_dir, threads)


def targets() -> list[DeviceProfile]:
    """The device profiles edgekit knows (bundled, ./devices and $EDGEKIT_DEVICES)."""
    from edgekit.profiles import list_profiles

    return list_profiles()


def serve(models: Any = (), **kwargs: Any) -> None:
    """Serve artifacts over SageMaker's contracts, KServe v2 and /metrics until SIGTERM; see :func:`edgekit.cloud.server.serve`."""
    from edgekit.cloud.server import serve as _serve

    _serve(models, **kwargs)


def advise(artifact: Any = None, workload: Any = None, **kwargs: Any) -> Advice:
    """Where and how to run a model, by AWS's deployment guide; see :func:`edgekit.cloud.advisor.advise`."""
    from edgekit.cloud.advisor import advise as _advise

    return _advise(artifact, workload, **kwargs)
