"""Prometheus metrics of ``edgekit serve`` (``GET /metrics``), on a registry of the server's own.

* ``edgekit_requests_total{model, route, code}``          every answered request
* ``edgekit_request_errors_total{model, route, code}``    those answered 4xx/5xx
* ``edgekit_request_duration_seconds{model}``             histogram of the time to answer an inference
* ``edgekit_models_loaded`` / ``edgekit_model_memory_bytes`` / ``edgekit_memory_budget_bytes``
* ``edgekit_model_events_total{event}``                   load / evict / unload
* ``process_*``                                            resident memory, CPU seconds (prometheus_client's own)

The per-request series are plain counts kept by the server's event loop (the only thread that answers
requests) and turned into Prometheus families when scraped: a request costs a dict increment and a
bisect, not prometheus_client's locks (3.5 µs a request, measured). See docs/cloud.md.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

__all__ = ["CONTENT_TYPE_LATEST", "ServeMetrics"]

_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.loaded = Gauge("edgekit_models_loaded", "Models loaded now", registry=self.registry)
        self.memory = Gauge("edgekit_model_memory_bytes", "Memory counted for the loaded models", registry=self.registry)
        self.budget = Gauge("edgekit_memory_budget_bytes", "The memory budget for models (0: none)", registry=self.registry)
        self.events = Counter("edgekit_model_events", "Models loaded, evicted and unloaded", ["event"], registry=self.registry)
        self.counts: dict[tuple[str, str, int], int] = {}
        self.timings: dict[str, tuple[list[int], list[float]]] = {}  # model -> (count per bucket, [sum])
        self.registry.register(self)  # a custom collector: collect() below

    def observe(self, model: str, route: str, code: int, seconds: float | None) -> None:
        key = (model, route, code)
        self.counts[key] = self.counts.get(key, 0) + 1
        if seconds is not None:
            timing = self.timings.get(model)
            if timing is None:
                timing = self.timings[model] = ([0] * (len(_BUCKETS) + 1), [0.0])
            timing[0][bisect_left(_BUCKETS, seconds)] += 1  # the first bucket whose bound is >= seconds
            timing[1][0] += seconds

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "route", "code"]
        requests = CounterMetricFamily("edgekit_requests", "Requests answered", labels=labels)
        errors = CounterMetricFamily("edgekit_request_errors", "Requests answered with an error (4xx/5xx)", labels=labels)
        for (model, route, code), n in sorted(self.counts.items()):
            requests.add_metric([model, route, str(code)], n)
            if code >= 400:
                errors.add_metric([model, route, str(code)], n)
        latency = HistogramMetricFamily(
            "edgekit_request_duration_seconds", "Time to answer an inference request", labels=["model"]
        )
        for model, (counts, total) in sorted(self.timings.items()):
            cumulative, buckets = 0, []
            for bound, n in zip([*map(str, _BUCKETS), "+Inf"], counts, strict=True):
                cumulative += n
                buckets.append((bound, float(cumulative)))
            latency.add_metric([model], buckets, sum_value=total[0])
        yield from (requests, errors, latency)

    def text(self) -> bytes:
        return generate_latest(self.registry)
