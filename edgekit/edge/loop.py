"""The inference loop: readings from a source → the local model (or the cloud fallback) → windows → the uplink.

One loop runs in the packaged inference component (a process under the nucleus or edgekit's agent,
``components/inference/inference.py``) and in every simulated in-process device (inside the device's event
loop, ``edgekit.sim.inference``): the same :class:`InferenceLoop`, the same arguments (:func:`parse_args`).
See docs/edge-runtime.md (the inference loop).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import json
import logging
import math
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgekit.clock import SYSTEM_CLOCK, Clock
from edgekit.edge.errors import EdgeError
from edgekit.edge.fallback import CircuitBreaker, CloudFallback
from edgekit.edge.sources import MqttSource, Reading, Source, parse_source
from edgekit.edge.uplink import Uplink
from edgekit.errors import EdgekitError
from edgekit.manifest import TensorSpec

__all__ = ["SUMMARY_TYPE", "Checkpoint", "InferenceLoop", "LoopOptions", "argument_parser", "parse_args", "top_class"]

log = logging.getLogger(__name__)

SUMMARY_TYPE: Final = "edgekit.inference.window"
"""The ``type`` of a window summary (what the fleet service ingests)."""
_BATCH: Final = 256  # readings handled between two yields to the event loop
_MAX_OUTBOX: Final = 10_000


@dataclass
class LoopOptions:
    """The component's arguments (the recipe passes its configuration as them); see :func:`argument_parser`."""

    source: str = "synthetic"
    window_s: float = 10.0
    interval_s: float = 0.1
    max_readings: int = 0
    topic: str = ""
    component: str = ""
    output_path: str = ""
    min_confidence: float = 0.0
    fallback_url: str = ""
    fallback_model: str = ""
    fallback_timeout_s: float = 2.0
    health_interval_s: float = 5.0
    tick_s: float = 0.0  # wake at most this often and take the readings due (0: wake for each reading)
    max_unanswered_bytes: int = 96 * 1024


def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inference.py", description="edgekit inference component (docs/edge-runtime.md)")
    p.add_argument("model_dir", type=Path)
    p.add_argument("--input-source", dest="source", default="synthetic", help="synthetic[:k=v,...], file:<path>, mqtt:<topic>")
    p.add_argument("--window-seconds", dest="window_s", type=float, default=10.0, help="one summary per window (0: per reading)")
    p.add_argument("--interval-seconds", dest="interval_s", type=float, default=0.1, help="between readings (0: as fast as it goes)")
    p.add_argument("--max-inferences", dest="max_readings", type=int, default=0, help="stop after N readings (0: never)")
    p.add_argument("--topic", default="", help="IoT Core topic of the summaries (unanswered readings: <topic>/unanswered)")
    p.add_argument("--component", default="", help="the component's name (in its summaries)")
    p.add_argument("--output-path", default="", help="also append each summary to this JSON-lines file")
    p.add_argument("--min-confidence", type=float, default=0.0, help="below this top-class probability the cloud is asked")
    p.add_argument("--fallback-url", default="", help="an Open Inference Protocol server (KServe v2); '' = none")
    p.add_argument("--fallback-model", default="", help="the model's name there ('' = the artifact's name)")
    p.add_argument("--fallback-timeout-seconds", dest="fallback_timeout_s", type=float, default=2.0)
    p.add_argument("--tick-seconds", dest="tick_s", type=float, default=0.0,
                   help="wake at most this often and take the readings due (0: for each reading)")  # fmt: skip
    p.add_argument("--health-interval-seconds", dest="health_interval_s", type=float, default=5.0,
                   help="a failing local model is tried again after this long")  # fmt: skip
    return p


def parse_args(argv: Sequence[str]) -> tuple[Path, LoopOptions]:
    """(model folder, options) from the component's command line; bad values raise :class:`EdgeError`."""
    parser = argument_parser()
    parser.exit_on_error = False
    try:
        ns = parser.parse_args(list(argv))
    except (argparse.ArgumentError, SystemExit) as exc:
        raise EdgeError(f"inference component arguments {list(argv)}: {exc}") from None
    values = vars(ns)
    model_dir = values.pop("model_dir")
    options = LoopOptions(**values)
    if not 0.0 <= options.min_confidence <= 1.0:
        raise EdgeError(f"--min-confidence {options.min_confidence}: must be within [0, 1]")
    return model_dir, options


def top_class(output: np.ndarray) -> tuple[int | None, float | None]:
    """(top class, its probability) of a classifier's first output row (softmax unless it already is one)."""
    if output.size < 2:
        return None, None
    vals = output.reshape(-1, output.shape[-1])[0].tolist() if output.ndim > 1 else output.tolist()
    if len(vals) < 2:
        return None, None
    best = max(vals)
    label = vals.index(best)
    if min(vals) >= 0.0 and abs(math.fsum(vals) - 1.0) < 1e-3:
        return label, float(best)
    return label, 1.0 / math.fsum(math.exp(v - best) for v in vals)


def _pct(values: list[float], qs: Sequence[int]) -> dict[str, float]:
    if not values:
        return {}
    arr = np.asarray(values)
    return {f"p{q}": round(float(np.percentile(arr, q)), 3) for q in qs} | {"max": round(float(arr.max()), 3)}


class _Window:
    __slots__ = ("answered", "classes", "cloud_ms", "conf", "errors", "local_errors", "ms", "start", "unanswered")

    def __init__(self, start: float) -> None:
        self.start = start
        self.answered = [0, 0, 0]  # local, cloud, none
        self.classes: dict[int, int] = {}
        self.conf: list[float] = []
        self.ms: list[float] = []
        self.cloud_ms: list[float] = []
        self.errors: dict[str, int] = {}
        self.local_errors = 0
        self.unanswered: list[tuple[Reading, str]] = []

    @property
    def count(self) -> int:
        return self.answered[0] + self.answered[1] + self.answered[2]


@dataclass(frozen=True)
class Checkpoint:
    """Where a loop stands: every reading it produced up to ``readings`` is in its windows up to ``window``."""

    thing: str
    component: str
    run: str
    window: int
    readings: int
    windows_sent: int = 0
    unsent: int = 0
    unanswered: int = 0


@dataclass
class _Stats:
    sent: int = 0
    send_failures: int = 0
    unanswered_messages: int = 0
    outbox_dropped: int = 0
    fallback_errors: collections.Counter[str] = field(default_factory=collections.Counter)
    cloud_ms: list[float] = field(default_factory=list)  # every cloud answer's latency (the first 100,000)


class InferenceLoop:
    """Reads, infers, aggregates and sends until :meth:`stop` (or ``max_readings``); see the module docstring.

    ``model``: a loaded artifact (shared read-only by every loop that runs it); ``uplink``: where summaries go
    (``None``: only ``output_path`` / stdout); ``clock`` paces readings and windows; ``fallback`` replaces the one
    ``options`` would make. Live configuration (``MinConfidence``, ``WindowSeconds``, ``IntervalSeconds``) applies
    from the next reading.
    """

    def __init__(
        self,
        model: Any,
        options: LoopOptions,
        *,
        uplink: Uplink | None = None,
        thing: str = "",
        component: str = "",
        clock: Clock = SYSTEM_CLOCK,
        fallback: CloudFallback | None = None,
        source: Source | None = None,
    ) -> None:
        self.options = replace(options)
        self.predict: Callable[[Any], list[np.ndarray]] = model.predict
        self.specs: list[TensorSpec] = list(model.manifest.inputs)
        self.name = str(model.manifest.name)
        self.uplink = uplink
        self.thing = thing
        self.component = component or options.component
        self.clock = clock
        self.source: Source = source if source is not None else parse_source(options.source, self.specs)
        if fallback is None and options.fallback_url:
            from edgekit.edge import fallback as fallback_module

            make = getattr(fallback_module, "make_fallback", None)  # sagemaker:// where this edgekit has it
            name = options.fallback_model or self.name
            fallback = (
                make(options.fallback_url, name, timeout_s=options.fallback_timeout_s, breaker=CircuitBreaker(clock=clock))
                if make is not None
                else CloudFallback(options.fallback_url, name, timeout_s=options.fallback_timeout_s, breaker=CircuitBreaker(clock=clock))
            )
        self.fallback = fallback
        self.local = CircuitBreaker(3, options.health_interval_s, clock)
        self.run_id = uuid.uuid4().hex[:12]
        self.seq = 0
        self.readings = 0
        self.answered = {"local": 0, "cloud": 0, "none": 0}
        self.stats = _Stats()
        self.outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._started = clock.now()
        self._healthy = True
        self._stopping = False
        self._abandoned = False
        self._running = False
        self._cuts: list[asyncio.Future[Checkpoint]] = []
        self._retry_at = 0.0
        self._window = _Window(clock.now())
        self._config_task: asyncio.Task[None] | None = None
        self.finished: Checkpoint | None = None

    # ------------------------------------------------------------------ control

    def abandon(self) -> None:
        """A crash: end without summarising the open window or handing anything over (those are lost)."""
        self._abandoned = True
        self._stopping = True

    def stop(self) -> None:
        """Ask the loop to end: it closes its window, hands what it holds to the uplink and returns."""
        self._stopping = True

    async def checkpoint(self) -> Checkpoint:
        """Close the current window now (between two readings) and say what the loop has produced so far."""
        if not self._running:
            return self.finished or self._checkpoint()
        future: asyncio.Future[Checkpoint] = asyncio.get_running_loop().create_future()
        self._cuts.append(future)
        return await future

    def _checkpoint(self) -> Checkpoint:
        return Checkpoint(
            self.thing,
            self.component,
            self.run_id,
            self.seq,
            self.source.produced,
            self.stats.sent,
            len(self.outbox),
            self.answered["none"],
        )

    def configure(self, settings: Mapping[str, Any]) -> None:
        """Apply the live settings found in a component configuration (others are ignored)."""
        for key, attr in (("MinConfidence", "min_confidence"), ("WindowSeconds", "window_s"), ("IntervalSeconds", "interval_s")):
            if key not in settings:
                continue
            try:
                value = float(settings[key])
            except (TypeError, ValueError):
                log.warning("%s: configuration %s=%r is not a number; ignored", self.component, key, settings[key])
                continue
            if attr == "min_confidence" and not 0.0 <= value <= 1.0:
                continue
            setattr(self.options, attr, value)

    async def _follow(self) -> None:
        uplink = self.uplink
        if uplink is None:
            return
        self.configure(await uplink.configuration())

        def changed() -> None:
            task = asyncio.get_running_loop().create_task(uplink.configuration())
            task.add_done_callback(lambda t: self.configure(t.result()) if not t.cancelled() and t.exception() is None else None)

        await uplink.follow_configuration(changed)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> Checkpoint:
        """Run until stopped; returns the final :class:`Checkpoint` (every reading in a window handed over)."""
        self._running = True
        try:
            if self.uplink is not None:
                try:
                    await self._follow()
                except Exception as exc:  # no configuration service: the arguments stand
                    log.warning("%s: can't follow the configuration: %s", self.component, exc)
                if isinstance(self.source, MqttSource):
                    await self.uplink.subscribe(self.source.topic, self.source.put)
            await self._loop()
        finally:
            self._running = False
            if not self._abandoned:
                self._close_window()
                await self._send(final=True)
            self.finished = self._checkpoint()
            for cut in self._cuts:
                if not cut.done():
                    cut.set_result(self.finished)
            self._cuts.clear()
        return self.finished

    async def _loop(self) -> None:
        opts, clock = self.options, self.clock
        limit = opts.max_readings
        epoch, epoch_count = clock.monotonic(), 0
        interval = opts.interval_s
        while not self._stopping and (limit == 0 or self.source.produced < limit):
            if opts.interval_s != interval:  # changed live: pace from now on
                interval, epoch, epoch_count = opts.interval_s, clock.monotonic(), 0
            if interval > 0:
                now = clock.monotonic()
                due = int((now - epoch) / interval) + 1 - epoch_count
                if due <= 0:
                    await asyncio.sleep(min(0.5, max(opts.tick_s, epoch + epoch_count * interval - now)))
                    continue
                if due > max(2.0, 1.0 / interval, 2 * opts.tick_s / interval):  # fell behind by over a second: a sensor would not queue that up
                    epoch, epoch_count, due = now, 0, 1
                n = min(due, _BATCH)
            else:
                n = _BATCH
            if limit:
                n = min(n, limit - self.source.produced)
            done = await self._batch(n)
            epoch_count += done
            if done < n and interval == 0:
                await asyncio.sleep(0.01)  # an mqtt: source with nothing waiting
            if self._cuts:
                self._cut()
            if self.outbox and clock.monotonic() >= self._retry_at:
                await self._send()
            if interval == 0:
                await asyncio.sleep(0)  # unpaced: let the rest of the event loop run between batches

    async def _batch(self, n: int) -> int:
        """Handle up to ``n`` readings; returns how many the source had."""
        predict, take, clock = self.predict, self.source.take, self.clock
        window_s = self.options.window_s
        min_conf = self.options.min_confidence
        fallback = self.fallback
        perf = time.perf_counter
        w = self._window
        elapsed = clock.now() - self._started
        done = 0
        for _ in range(n):
            t0 = perf()
            reading = take(elapsed)
            if reading is None:
                break
            done += 1
            label: int | None = None
            conf: float | None = None
            local_error = ""
            if self._healthy or self.local.allow():
                try:
                    label, conf = top_class(predict(reading)[-1])
                    if not self._healthy:
                        self.local.success()
                        self._healthy = True
                except EdgekitError as exc:
                    local_error = str(exc) or type(exc).__name__
                    self.local.failure()
                    self._healthy = False
                    w.local_errors += 1
            else:
                local_error = "the local model is failing; it is tried again at its next health check"
            source = 2 if local_error else 0
            if fallback is not None and (local_error or (conf is not None and conf < min_conf)):
                answer = await self._ask_cloud(reading, w)
                if answer is not None:
                    label, conf = answer
                    source = 1
                    ms = (perf() - t0) * 1e3
                    w.cloud_ms.append(ms)
                    if len(self.stats.cloud_ms) < 100_000:
                        self.stats.cloud_ms.append(ms)
                elif source == 2:
                    w.unanswered.append((reading, local_error))
            elif source == 2:
                w.unanswered.append((reading, local_error))
            w.answered[source] += 1
            if source != 2:
                if label is not None:
                    w.classes[label] = w.classes.get(label, 0) + 1
                if conf is not None:
                    w.conf.append(conf)
            w.ms.append((perf() - t0) * 1e3)
            if window_s <= 0:
                self._close_window()
                w = self._window
        self.readings += done
        if window_s > 0 and clock.now() - w.start >= window_s:
            self._close_window()
        return done

    async def _ask_cloud(self, reading: Reading, w: _Window) -> tuple[int | None, float | None] | None:
        fallback = self.fallback
        assert fallback is not None
        if fallback.breaker.state == "open":
            kind = "breaker_open"
        else:
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(None, fallback.infer, reading)
                return top_class(np.asarray(outputs[-1]))
            except EdgeError as exc:
                kind = str(getattr(exc, "kind", "error"))
            except Exception as exc:  # a client bug must not end the loop: counted like any failure
                log.warning("%s: cloud fallback failed: %s", self.component, exc)
                kind = "error"
        w.errors[kind] = w.errors.get(kind, 0) + 1
        self.stats.fallback_errors[kind] += 1
        return None

    # ------------------------------------------------------------------ windows and the uplink

    def _cut(self) -> None:
        self._close_window()
        point = self._checkpoint()
        cuts, self._cuts = self._cuts, []
        for cut in cuts:
            if not cut.done():
                cut.set_result(point)

    def _close_window(self) -> None:
        w = self._window
        end = self.clock.now()
        self._window = _Window(end)
        if not w.count:
            return
        self.seq += 1
        for name, i in (("local", 0), ("cloud", 1), ("none", 2)):
            self.answered[name] += w.answered[i]
        if w.unanswered:
            self._queue_unanswered(w.unanswered)
        summary: dict[str, Any] = {
            "schemaVersion": 1,
            "type": SUMMARY_TYPE,
            "thing": self.thing,
            "component": self.component,
            "model": self.name,
            "run": self.run_id,
            "window": self.seq,
            "windowStart": round(w.start, 3),
            "windowEnd": round(end, 3),
            "count": w.count,
            "classes": {str(k): v for k, v in sorted(w.classes.items())},
            "answeredBy": {"local": w.answered[0], "cloud": w.answered[1], "none": w.answered[2]},
            "latencyMs": _pct(w.ms, (50, 90)),
            "local": {"errors": w.local_errors, "healthy": self._healthy},
            "uplink": {
                "sent": self.stats.sent,
                "pending": len(self.outbox),
                "failures": self.stats.send_failures,
                "unansweredMessages": self.stats.unanswered_messages,
            },
        }
        if w.conf:
            summary["confidence"] = {
                "mean": round(sum(w.conf) / len(w.conf), 4),
                "min": round(min(w.conf), 4),
                "max": round(max(w.conf), 4),
            }
        if self.fallback is not None:
            summary["fallback"] = {
                "errors": dict(sorted(w.errors.items())),
                "breaker": self.fallback.breaker.state,
                "latencyMs": _pct(w.cloud_ms, (50, 99)),
            }
        line = json.dumps(summary, separators=(",", ":"))
        if self.options.output_path or self.uplink is None:
            self._write_line(line)
        if self.uplink is not None and self.options.topic:
            self._queue(self.options.topic, line.encode())

    def _write_line(self, line: str) -> None:
        if not self.options.output_path:
            print(line, flush=True)
            return
        try:
            with open(self.options.output_path, "a") as out:
                out.write(line + "\n")
        except OSError as exc:
            log.warning("%s: can't write %s: %s", self.component, self.options.output_path, exc)

    def _queue_unanswered(self, items: list[tuple[Reading, str]]) -> None:
        """Unanswered readings go out as ``.npz`` (inputs stacked, errors beside), at most ``max_unanswered_bytes`` each."""
        if self.uplink is None or not self.options.topic:
            return
        per = max(1, sum(int(v.nbytes) for v in items[0][0].values()))
        chunk = max(1, self.options.max_unanswered_bytes // per)
        for i in range(0, len(items), chunk):
            part = items[i : i + chunk]
            arrays: dict[str, Any] = {name: np.stack([r[name] for r, _ in part]) for name in part[0][0]}
            arrays["__errors__"] = np.array(json.dumps([e for _, e in part]))
            arrays["__window__"] = np.array(json.dumps({"thing": self.thing, "run": self.run_id, "window": self.seq}))
            buf = io.BytesIO()
            np.savez(buf, **arrays)
            self._queue(f"{self.options.topic}/unanswered", buf.getvalue())
            self.stats.unanswered_messages += 1

    def _queue(self, topic: str, payload: bytes) -> None:
        if len(self.outbox) >= _MAX_OUTBOX:
            self.outbox.popleft()
            self.stats.outbox_dropped += 1
            log.error("%s: %d messages could not be handed to the uplink; the oldest was dropped", self.component, _MAX_OUTBOX)
        self.outbox.append((topic, payload))

    async def _send(self, *, final: bool = False) -> None:
        """Hand the outbox to the uplink, oldest first; on a refusal keep the rest and try again later."""
        uplink = self.uplink
        if uplink is None:
            self.outbox.clear()
            return
        failures = 0
        while self.outbox:
            topic, payload = self.outbox[0]
            try:
                await uplink.publish(topic, payload)
            except Exception as exc:
                self.stats.send_failures += 1
                failures += 1
                log.warning("%s: the uplink did not take a message for %s: %s", self.component, topic, exc)
                if not final or failures >= 3:
                    self._retry_at = self.clock.monotonic() + min(30.0, 2.0 ** min(self.stats.send_failures, 5))
                    return
                await asyncio.sleep(0.2)
                continue
            self.outbox.popleft()
            self.stats.sent += 1


async def run_component(argv: Sequence[str], *, thing: str = "", component: str = "", ipc: bool = True) -> int:
    """The packaged component's main: load the artifact, self-test, report over IPC, run the loop until SIGTERM."""
    import signal

    import edgekit

    try:
        model_dir, options = parse_args(argv)
        model = edgekit.load(model_dir)
    except EdgekitError as exc:
        print(f"edgekit inference: {exc}", file=sys.stderr, flush=True)
        return 2
    uplink: Uplink | None = None
    if ipc:
        from edgekit.edge.uplink import GreengrassUplink

        uplink = GreengrassUplink()
    check = model.selftest()
    print(
        f"edgekit inference: loaded {model}; self-test {'passed' if check.passed else 'FAILED'} (max abs error {check.max_abs_error:.3g})",
        flush=True,
    )
    if uplink is not None:
        await uplink.report("RUNNING" if check.passed else "ERRORED")
    if not check.passed:
        return 1
    loop = InferenceLoop(model, options, uplink=uplink, thing=thing, component=component)
    running = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            running.add_signal_handler(sig, loop.stop)
    try:
        final = await loop.run()
    finally:
        if uplink is not None:
            with contextlib.suppress(Exception):
                await uplink.close()
    print(
        f"edgekit inference: {final.readings} readings in {final.window} windows; {final.windows_sent} messages handed over, "
        f"{final.unsent} not",
        flush=True,
    )
    return 0
