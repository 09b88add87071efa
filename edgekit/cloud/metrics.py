"""Prometheus metrics of ``edgekit serve`` (``GET /metrics``), on a registry of the server's own.

* ``edgekit_requests_total{model, route, code}``          every answered request
* ``edgekit_request_errors_total{model, route, code}``    those answered 4xx/5xx
* ``edgekit_request_duration_seconds{model}``             histogram of the time to answer an inference
* ``edgekit_models_loaded`` / ``edgekit_model_memory_bytes`` / ``edgekit_memory_budget_bytes``
* ``edgekit_model_events_total{event}``                   load / evict / unload
* ``process_*``                                            resident memory, CPU seconds (prometheus_client's own)

Label children are cached per (model, route, code): the hot path adds two counter increments and
one histogram observation. See docs/cloud.md.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter("edgekit_requests", "Requests answered", ["model", "route", "code"], registry=self.registry)
        self.errors = Counter(
            "edgekit_request_errors",
            "Requests answered with an error (4xx/5xx)",
            ["model", "route", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "edgekit_request_duration_seconds",
            "Time to answer an inference request",
            ["model"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.loaded = Gauge("edgekit_models_loaded", "Models loaded now", registry=self.registry)
        self.memory = Gauge("edgekit_model_memory_bytes", "Memory counted for the loaded models", registry=self.registry)
        self.budget = Gauge("edgekit_memory_budget_bytes", "The memory budget for models (0: none)", registry=self.registry)
        self.events = Counter("edgekit_model_events", "Models loaded, evicted and unloaded", ["event"], registry=self.registry)
        self._counted: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._timers: dict[str, Any] = {}

    def observe(self, model: str, route: str, code: int, seconds: float | None) -> None:
        key = (model, route, code)
        children = self._counted.get(key)
        if children is None:
            labels = (model, route, str(code))
            children = (self.requests.labels(*labels), self.errors.labels(*labels) if code >= 400 else None)
            self._counted[key] = children
        children[0].inc()
        if children[1] is not None:
            children[1].inc()
        if seconds is not None:
            timer = self._timers.get(model)
            if timer is None:
                timer = self._timers[model] = self.latency.labels(model)
            timer.observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)
