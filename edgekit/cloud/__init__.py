"""The cloud side: ``edgekit serve`` (SageMaker container contract, multi-model endpoint, KServe v2,
Prometheus metrics), SageMaker endpoints deployed with boto3, and the deployment advisor.

Nothing heavy is imported here: the ASGI stack loads with :func:`serve`, boto3 with the SageMaker
client, the rule table with :func:`advise`. See docs/cloud.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.cloud.model_server import ModelServer, ServeOptions, serve

__all__ = ["ModelServer", "ServeOptions", "serve"]


def __getattr__(name: str) -> Any:
    if name in ("ModelServer", "ServeOptions", "serve"):
        from edgekit.cloud import model_server as server

        return getattr(server, name)
    raise AttributeError(f"module 'edgekit.cloud' has no attribute {name!r}")
