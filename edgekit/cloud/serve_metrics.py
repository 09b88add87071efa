"""Prometheus metrics of ``edgekit serve`` (``GET /metrics``), on a registry of the server's own.

* ``edgekit_requests_total{model, route, code}``          every answered request
* ``edgekit_request_errors_total{model, route, code}``    those answered 4xx/5xx
* ``edgekit_request_duration_seconds{model}``             histogram of the time to answer an inference
* ``edgekit_models_loaded`` / ``edgekit_model_memory_bytes`` / ``edgekit_memory_budget_bytes``
* ``edgekit_model_events_total{event}``                   load / evict / unload
* ``edgekit_batch_size{model}``                           histogram of the records in each run of a batched model
* ``edgekit_batch_requests{model}``                       histogram of the requests merged into each run
* ``edgekit_batch_wait_seconds{model}``                   histogram of the time a request waited for its batch
* ``edgekit_batch_retries_total{model}``                  merged runs that failed and were run request by request
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
_SIZES = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0)
_WAITS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


class _Histogram:
    """Counts per bucket and their sum, kept by the event loop; a Prometheus family when scraped."""

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...]) -> None:
        self.name, self.documentation, self.bounds = name, documentation, bounds
        self.series: dict[str, tuple[list[int], list[float]]] = {}  # model -> (count per bucket, [sum])

    def observe(self, model: str, value: float) -> None:
        series = self.series.get(model)
        if series is None:
            series = self.series[model] = ([0] * (len(self.bounds) + 1), [0.0])
        series[0][bisect_left(self.bounds, value)] += 1  # the first bucket whose bound is >= value
        series[1][0] += value

    def family(self) -> HistogramMetricFamily:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["model"])
        for model, (counts, total) in sorted(self.series.items()):
            cumulative, buckets = 0, []
            for bound, n in zip([*map(str, self.bounds), "+Inf"], counts, strict=True):
                cumulative += n
                buckets.append((bound, float(cumulative)))
            family.add_metric([model], buckets, sum_value=total[0])
        return family


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
        self.batch_size = _Histogram("edgekit_batch_size", "Records in each run of a batched model", _SIZES)
        self.batch_requests = _Histogram("edgekit_batch_requests", "Requests merged into each run of a batched model", _SIZES)
        self.batch_wait = _Histogram("edgekit_batch_wait_seconds", "Time a request waited for its batch to run", _WAITS)
        self.batch_retries: dict[str, int] = {}
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

    def observe_batch(self, model: str, records: int, requests: int, waits: list[float]) -> None:
        """One run of a batched model: its records, the requests merged into it and how long each waited."""
        self.batch_size.observe(model, records)
        self.batch_requests.observe(model, requests)
        for wait in waits:
            self.batch_wait.observe(model, wait)

    def retried(self, model: str) -> None:
        self.batch_retries[model] = self.batch_retries.get(model, 0) + 1

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
        retries = CounterMetricFamily(
            "edgekit_batch_retries", "Merged runs that failed and were run again request by request", labels=["model"]
        )
        for model, n in sorted(self.batch_retries.items()):
            retries.add_metric([model], n)
        yield from (requests, errors, latency)
        yield from (self.batch_size.family(), self.batch_requests.family(), self.batch_wait.family(), retries)

    def text(self) -> bytes:
        return generate_latest(self.registry)
