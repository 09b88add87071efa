"""The inference loop: readings from a source → the local model (or the cloud fallback) → windows → the uplink.

One loop runs in the packaged inference component (a process under the nucleus or edgekit's agent,
``components/inference/inference.py`` → :func:`edgekit.edge.component.run_component`) and in every simulated
in-process device (inside the device's event loop, ``edgekit.sim.inference``): the same :class:`InferenceLoop`, the
same arguments (:func:`edgekit.edge.component.parse_args`). Its windows and their summaries are
:mod:`edgekit.edge.windows`. See docs/edge-runtime.md (the inference loop).
"""

from __future__ import annotations

import asyncio
import collections
import io
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgekit.clock import SYSTEM_CLOCK, Clock
from edgekit.edge.errors import EdgeError
from edgekit.edge.fallback import CircuitBreaker, CloudFallback
from edgekit.edge.sources import InputSource, MqttSource, Reading, parse_source
from edgekit.edge.uplink import Uplink
from edgekit.edge.windows import CLOUD, LOCAL, NONE, Tumbling, Window, summarize, top_class
from edgekit.errors import EdgekitError
from edgekit.manifest import TensorSpec
from edgekit.wire.summary import ReadingErrors, UnansweredHeader, UplinkCounts, encode_summary

__all__ = ["Checkpoint", "Infer", "InferenceLoop", "LoopOptions"]

Infer = Callable[[list[Reading]], Awaitable[tuple[list[list[np.ndarray]], float] | None]]
"""A loop's model for several readings at once: (each reading's outputs, the milliseconds the model took for them),
or ``None`` when it can't answer these (the loop then runs ``predict`` on each, as without it). A reading's answer
must be what ``predict`` gives for that reading alone."""

log = logging.getLogger(__name__)

_BATCH: Final = 256  # readings handled between two yields to the event loop
_MAX_OUTBOX: Final = 10_000
_MAX_ERROR: Final = 500  # characters of an error kept per unanswered reading
_KIND = re.compile(r"[a-z][a-z0-9_]{0,31}")


@dataclass
class LoopOptions:
    """The component's arguments (the recipe passes its configuration as them); see
    :func:`edgekit.edge.component.argument_parser`."""

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
    max_sleep_s: float = 0.5  # sleep at most this long between readings (a stop or a checkpoint waits up to this)
    max_unanswered_bytes: int = 96 * 1024
    checkpoint_dir: str = ""  # after each window, write the loop's Checkpoint here as JSON (a fleet harness reads it)


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
    abandoned: int = 0  # readings in the open window when the loop crashed (in ``readings``, never summarised)


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
    ``options`` would make; ``sleep`` waits between readings (default :func:`asyncio.sleep`; a simulator's shared
    tick, :class:`edgekit.sim.inference.SharedTick`, wakes thousands of loops from one timer); ``infer`` answers a
    wake-up's readings in one go (:data:`Infer`; a simulator's batcher runs the readings of every loop woken by one
    tick as one model call, :class:`edgekit.sim.inference.TickBatcher`). Live configuration (``MinConfidence``,
    ``WindowSeconds``, ``IntervalSeconds``) applies from the next reading.
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
        source: InputSource | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        infer: Infer | None = None,
    ) -> None:
        self.options = replace(options)
        self._sleep: Callable[[float], Awaitable[None]] = sleep or asyncio.sleep
        self._infer = infer
        self.predict: Callable[[Any], list[np.ndarray]] = model.predict
        self.specs: list[TensorSpec] = list(model.manifest.inputs)
        self.name = str(model.manifest.name)
        self.uplink = uplink
        self.thing = thing
        self.component = component or options.component
        self.clock = clock
        self.source: InputSource = source if source is not None else parse_source(options.source, self.specs, thing=thing)
        if fallback is None and options.fallback_url:
            from edgekit.edge import fallback as fallback_module

            make = getattr(fallback_module, "make_fallback", None)  # sagemaker:// where this edgekit has it
            name = options.fallback_model or self.name
            fallback = (
                make(options.fallback_url, name, timeout_s=options.fallback_timeout_s, breaker=CircuitBreaker(clock=clock))
                if make is not None
                else CloudFallback(
                    options.fallback_url, name, timeout_s=options.fallback_timeout_s, breaker=CircuitBreaker(clock=clock)
                )
            )
        self.fallback = fallback
        self.local = CircuitBreaker(3, options.health_interval_s, clock)
        self.run_id = uuid.uuid4().hex[:12]
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
        self.windows = Tumbling(clock)
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

    @property
    def seq(self) -> int:
        """Windows closed so far (the last one's number)."""
        return self.windows.closed

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
            self.windows.open.count if self._abandoned and not self._running else 0,
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
                    await self._sleep(min(opts.max_sleep_s, max(opts.tick_s, epoch + epoch_count * interval - now)))
                    continue
                # fell behind by over a second: a sensor would not queue that up
                if due > max(2.0, 1.0 / interval, 2 * opts.tick_s / interval):
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
        windows = self.windows
        w = windows.open
        elapsed = clock.now() - self._started
        readings: list[Reading] = []
        for _ in range(n):
            reading = take(elapsed)
            if reading is None:
                break
            readings.append(reading)
        done = len(readings)
        answers: list[list[np.ndarray]] | None = None
        model_ms = 0.0
        if self._infer is not None and readings and self._healthy:
            answered = await self._infer(readings)
            if answered is not None:
                answers, model_ms = answered
                w = windows.open  # (a checkpoint can't close it meanwhile: cuts are taken between batches)
        for i, reading in enumerate(readings):
            t0 = perf()
            label: int | None = None
            conf: float | None = None
            local_error = ""
            if self._healthy or self.local.allow():
                try:
                    label, conf = top_class((answers[i] if answers is not None else predict(reading))[-1])
                    if not self._healthy:
                        self.local.success()
                        self._healthy = True
                except EdgekitError as exc:
                    local_error = str(exc) or type(exc).__name__
                    if self._healthy:
                        log.warning("%s: the local model failed: %s", self.component, local_error)
                    self.local.failure()
                    self._healthy = False
                    w.local_errors += 1
            else:
                local_error = "the local model is failing; it is tried again at its next health check"
            source = NONE if local_error else LOCAL
            if fallback is not None and (local_error or (conf is not None and conf < min_conf)):
                answer, fallback_error = await self._ask_cloud(reading, w)
                if answer is not None:
                    label, conf = answer
                    source = CLOUD
                    ms = (perf() - t0) * 1e3
                    w.cloud_ms.append(ms)
                    if len(self.stats.cloud_ms) < 100_000:
                        self.stats.cloud_ms.append(ms)
                elif source == NONE:
                    w.unanswered.append((reading, local_error, fallback_error))
            elif source == NONE:
                w.unanswered.append((reading, local_error, ""))
            w.record(source, label, conf, (perf() - t0) * 1e3 + model_ms)
            if window_s <= 0:
                self._close_window()
                w = windows.open
        self.readings += done
        if windows.due(window_s):
            self._close_window()
        return done

    async def _ask_cloud(self, reading: Reading, w: Window) -> tuple[tuple[int | None, float | None] | None, str]:
        """(the cloud's top class and probability, or ``None`` and why not); failures counted by kind in ``w``."""
        fallback = self.fallback
        assert fallback is not None
        if fallback.breaker.state == "open":
            kind, error = "breaker_open", "the cloud fallback's circuit breaker is open"
        else:
            try:
                outputs = await asyncio.get_running_loop().run_in_executor(None, fallback.infer, reading)
                return top_class(np.asarray(outputs[-1])), ""
            except EdgeError as exc:
                kind, error = str(getattr(exc, "kind", "error")), str(exc) or type(exc).__name__
            except Exception as exc:  # a client bug must not end the loop: counted like any failure
                log.warning("%s: cloud fallback failed: %s", self.component, exc)
                kind, error = "error", f"{type(exc).__name__}: {exc}"
        if not _KIND.fullmatch(kind):
            kind = "error"
        w.errors[kind] = w.errors.get(kind, 0) + 1
        self.stats.fallback_errors[kind] += 1
        return None, error

    # ------------------------------------------------------------------ windows and the uplink

    def _cut(self) -> None:
        self._close_window()
        point = self._checkpoint()
        cuts, self._cuts = self._cuts, []
        for cut in cuts:
            if not cut.done():
                cut.set_result(point)

    def _close_window(self) -> None:
        w = self.windows.close()
        if w is None:
            return
        for name, i in (("local", LOCAL), ("cloud", CLOUD), ("none", NONE)):
            self.answered[name] += w.answered[i]
        if w.unanswered:
            self._queue_unanswered(w.unanswered)
        stats = self.stats
        summary = summarize(
            w,
            run=self.run_id,
            thing=self.thing,
            component=self.component,
            model=self.name,
            healthy=self._healthy,
            uplink=UplinkCounts(
                sent=stats.sent,
                pending=len(self.outbox),
                failures=stats.send_failures,
                unanswered_messages=stats.unanswered_messages,
            ),
            breaker=self.fallback.breaker.state if self.fallback is not None else None,
        )
        line = encode_summary(summary)
        if self.options.checkpoint_dir:
            self._write_checkpoint(Path(self.options.checkpoint_dir))
        if self.options.output_path or self.uplink is None:
            self._write_line(line)
        if self.uplink is not None and self.options.topic:
            self._queue(self.options.topic, line.encode())

    def _write_checkpoint(self, folder: Path) -> None:
        """The loop's :class:`Checkpoint` as of the window just closed, replaced whole (a reader never sees half)."""
        name = f"{self.thing or 'device'}.{self.component or 'component'}.{self.run_id}.json"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            scratch = folder / f".{name}.tmp"
            scratch.write_text(json.dumps(asdict(self._checkpoint())))
            os.replace(scratch, folder / name)
        except OSError as exc:
            log.warning("%s: can't write its checkpoint to %s: %s", self.component, folder, exc)

    def _write_line(self, line: str) -> None:
        if not self.options.output_path:
            print(line, flush=True)
            return
        try:
            with open(self.options.output_path, "a") as out:
                out.write(line + "\n")
        except OSError as exc:
            log.warning("%s: can't write %s: %s", self.component, self.options.output_path, exc)

    def _queue_unanswered(self, items: list[tuple[Reading, str, str]]) -> None:
        """Unanswered readings go out as ``.npz``: inputs stacked, ``__errors__`` (a JSON list of
        :class:`~edgekit.wire.summary.ReadingErrors`) and ``__window__`` (an :class:`~edgekit.wire.summary.UnansweredHeader`)
        beside, at most ``max_unanswered_bytes`` each."""
        if self.uplink is None or not self.options.topic:
            return
        per = max(1, sum(int(v.nbytes) for v in items[0][0].values()))
        chunk = max(1, self.options.max_unanswered_bytes // per)
        header = UnansweredHeader(thing=self.thing, component=self.component, run=self.run_id, window=self.seq)
        for i in range(0, len(items), chunk):
            part = items[i : i + chunk]
            arrays: dict[str, Any] = {name: np.stack([r[name] for r, _, _ in part]) for name in part[0][0]}
            errors = [ReadingErrors(local=local[:_MAX_ERROR], fallback=cloud[:_MAX_ERROR]) for _, local, cloud in part]
            arrays["__errors__"] = np.array(json.dumps([e.model_dump(by_alias=True) for e in errors]))
            arrays["__window__"] = np.array(header.model_dump_json(by_alias=True))
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
