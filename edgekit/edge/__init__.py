"""The edge runtime: what runs beside the model on a device (spool, windows, cloud fallback, uplink).

:class:`SpoolPublisher` (and with it paho-mqtt) is imported only when used. See docs/edge-runtime.md.
"""

from typing import Any

from edgekit.edge.aggregate import Aggregator, Answer
from edgekit.edge.errors import EdgeError, FallbackError, FallbackUnavailable, SpoolFullError
from edgekit.edge.fallback import CircuitBreaker, CloudFallback
from edgekit.edge.runner import EdgeInference, Result, confidence_of
from edgekit.edge.spool import Spool, SpoolItem

__all__ = [
    "Aggregator",
    "Answer",
    "CircuitBreaker",
    "CloudFallback",
    "EdgeError",
    "EdgeInference",
    "FallbackError",
    "FallbackUnavailable",
    "Result",
    "Spool",
    "SpoolFullError",
    "SpoolItem",
    "SpoolPublisher",
    "confidence_of",
]


def __getattr__(name: str) -> Any:
    if name == "SpoolPublisher":
        from edgekit.edge.publisher import SpoolPublisher

        return SpoolPublisher
    raise AttributeError(f"module 'edgekit.edge' has no attribute {name!r}")
