"""The edge runtime: what runs beside the model on a device.

- :class:`Spool` — a durable, ordered, bounded queue of outgoing messages (write-ahead: nothing is
  lost between an inference and the broker's acknowledgement).
- :class:`Aggregator` — tumbling windows of answers summarized into one message each.
- :class:`CloudFallback` + :class:`CircuitBreaker` — an Open Inference Protocol (KServe v2 / Triton)
  client used when the local model can't answer, that stops trying while the cloud is down.
- :class:`EdgeInference` — local first, cloud when needed, the reading spooled when neither answers.
- :class:`SpoolPublisher` — sends the spool over MQTT (QoS 1) oldest first, whenever the device is online.

The publisher (and with it paho-mqtt) is imported only when used: a component that only spools and
aggregates runs on the device runtime's dependencies alone.
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
