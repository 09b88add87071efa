"""The edge runtime: what runs beside the model on a device, in the inference component.

The component's entry (:mod:`edgekit.edge.component`) runs one :class:`~edgekit.edge.loop.InferenceLoop`: readings
from a source (:mod:`~edgekit.edge.sources`) → the local model, or the cloud fallback (:mod:`~edgekit.edge.fallback`)
→ tumbling windows (:mod:`~edgekit.edge.windows`, summaries typed in :mod:`edgekit.wire.summary`) → the uplink
(:mod:`~edgekit.edge.uplink`: Greengrass IPC, or a local spool). Store and forward, what the device agent's uplink is
made of too, is :mod:`edgekit.edge.store` (:class:`Spool`, :class:`SpoolPublisher`).

Names here are imported when first used, so ``import edgekit.edge.store`` (the agent) loads neither the loop nor
numpy, and :class:`SpoolPublisher` (and with it paho-mqtt) only when asked for. See docs/edge-runtime.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgekit.edge.errors import EdgeError, FallbackError, FallbackUnavailable, SpoolFullError

if TYPE_CHECKING:
    from edgekit.edge.fallback import CircuitBreaker, CloudFallback
    from edgekit.edge.loop import Checkpoint, InferenceLoop, LoopOptions
    from edgekit.edge.store.publisher import SpoolPublisher
    from edgekit.edge.store.spool import Spool, SpoolItem

__all__ = [
    "Checkpoint",
    "CircuitBreaker",
    "CloudFallback",
    "EdgeError",
    "FallbackError",
    "FallbackUnavailable",
    "InferenceLoop",
    "LoopOptions",
    "Spool",
    "SpoolFullError",
    "SpoolItem",
    "SpoolPublisher",
]

_LAZY = {
    "Checkpoint": "edgekit.edge.loop",
    "CircuitBreaker": "edgekit.edge.fallback",
    "CloudFallback": "edgekit.edge.fallback",
    "InferenceLoop": "edgekit.edge.loop",
    "LoopOptions": "edgekit.edge.loop",
    "Spool": "edgekit.edge.store.spool",
    "SpoolItem": "edgekit.edge.store.spool",
    "SpoolPublisher": "edgekit.edge.store.publisher",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekit.edge' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
