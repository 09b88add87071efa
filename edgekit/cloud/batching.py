"""Adaptive batching in ``edgekit serve``: concurrent requests to one model merged into one run, then split back.

A model is batched when its inputs and outputs all have a dynamic first (batch) dimension in the manifest
(``dynamicDims`` ``{"0": ...}``, compiled with ``-s NAME:-1,...``) and its policy is on: a request's records wait
in a queue of their own **shape group** (the inputs' dimensions after the first, and dtypes: requests of other
sequence lengths are never stacked together) until the group holds ``max_batch_size`` records, or the first of
them has waited ``max_delay_ms``, or (``run_when_idle``, the default) no run of the model is in progress — a
request to an idle model runs at once, and those that come while it runs are merged when it ends (or when the
delay is up, if a slot is free) — and a run slot is free (at most ``slots`` batches of a model run at once); then
the group's requests run as one (their inputs concatenated on the first dimension, in arrival order) and each
caller gets exactly its own rows of every output. A request of ``max_batch_size`` records or more runs alone, as
it came; a request is never split across two runs.

Failures stay with their request: a request's bad input is refused before it is queued (its own 400), and when a
merged run raises, **each request of it is run again alone**, so each caller gets its own answer or its own error,
never another's (counted in ``edgekit_batch_retries_total``). The same happens when an output has no row per
record to split (a model that reduces over its batch).

Everything runs on the server's event loop (one thread): the queues need no locks. See docs/cloud.md.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from edgekit.cloud.content import is_dynamic
from edgekit.errors import ServeError
from edgekit.manifest import TensorSpec

__all__ = [
    "DELAY_ENV",
    "OFF",
    "SIZE_ENV",
    "BatchPolicy",
    "ModelBatcher",
    "batchable",
    "parse_policy",
    "policy_from_env",
]

log = logging.getLogger(__name__)

# the container's environment (CreateModel's Environment): edgekit's names first, then SageMaker's TorchServe ones
SIZE_ENV = ("EDGEKIT_MAX_BATCH_SIZE", "SAGEMAKER_TS_BATCH_SIZE")
DELAY_ENV = ("EDGEKIT_MAX_BATCH_DELAY_MS", "SAGEMAKER_TS_MAX_BATCH_DELAY")

Feeds = dict[str, np.ndarray]
Run = Callable[[Feeds, int], Awaitable[Feeds]]  # (inputs, records) -> outputs; raises what the caller should get


@dataclass(frozen=True)
class BatchPolicy:
    """How one model's requests are merged (MLServer's ``max_batch_size``/``max_batch_time``, Triton's
    ``max_batch_size``/``max_queue_delay_microseconds``). ``max_batch_size`` ≤ 1: off."""

    max_batch_size: int = 32  # records in one run at most
    max_delay_ms: float = 2.0  # how long the first request of a batch waits for more
    run_when_idle: bool = True  # False: always wait the delay (MLServer's, Triton's max_queue_delay) for a fuller batch

    def __post_init__(self) -> None:
        if self.max_batch_size < 0 or not math.isfinite(self.max_delay_ms) or self.max_delay_ms < 0:
            raise ServeError(
                f"batching {self.max_batch_size} records / {self.max_delay_ms} ms: give a size ≥ 0 (0 or 1: off) "
                "and a delay ≥ 0 ms"
            )

    @property
    def enabled(self) -> bool:
        return self.max_batch_size > 1


OFF = BatchPolicy(0, 0.0)


def _env_number(names: Sequence[str], environ: Mapping[str, str]) -> tuple[str, float] | None:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            try:
                number = float(value)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):  # 'nan', 'inf', '1e400' too: int() of them would raise past this line
                raise ServeError(f"${name}={value[:40]!r} is not a number; unset it or give one") from None
            return name, number
    return None


def policy_from_env(environ: Mapping[str, str] | None = None) -> BatchPolicy:
    """The default policy from the environment (``EDGEKIT_MAX_BATCH_SIZE`` or ``SAGEMAKER_TS_BATCH_SIZE``: records,
    0 or 1 switch batching off; ``EDGEKIT_MAX_BATCH_DELAY_MS`` or ``SAGEMAKER_TS_MAX_BATCH_DELAY``: ms), else 32 / 2 ms."""
    env = os.environ if environ is None else environ
    default = BatchPolicy()
    size, delay = _env_number(SIZE_ENV, env), _env_number(DELAY_ENV, env)
    if size is not None and (size[1] != int(size[1]) or size[1] < 0):
        raise ServeError(f"${size[0]}={size[1]:g}: give a whole number of records (0 or 1: no batching)")
    return BatchPolicy(
        int(size[1]) if size is not None else default.max_batch_size,
        delay[1] if delay is not None else default.max_delay_ms,
    )


def parse_policy(text: str, default: BatchPolicy, what: str = "--model-batching") -> BatchPolicy:
    """``SIZE[,DELAY_MS]`` (``off``, ``0``: no batching) as a policy; the delay left out is ``default``'s."""
    value = text.strip().lower()
    if value in ("off", "0", "false", "no"):
        return OFF
    size, _, delay = value.partition(",")
    try:
        return BatchPolicy(int(size), float(delay) if delay else default.max_delay_ms)
    except ValueError:
        raise ServeError(f"{what} '{text[:60]}': expected SIZE[,DELAY_MS] (e.g. 16,5) or off") from None


def batchable(inputs: Sequence[TensorSpec] | None, outputs: Sequence[TensorSpec] | None) -> bool:
    """Whether a model's runs can hold many requests: every input and output has a dynamic first dimension (so an
    output has a row per record to hand back)."""
    if not inputs or not outputs:
        return False
    return all(spec.shape and is_dynamic(spec, 0) for spec in [*inputs, *outputs])


@dataclass
class _Waiting:
    feeds: Feeds
    records: int
    future: asyncio.Future[Feeds]
    since: float  # the loop's clock when it was queued


Observe = Callable[[int, int, list[float]], None]  # (records in the run, requests merged, each one's wait in s)


class ModelBatcher:
    """The queues of one model; :meth:`submit` is what a request awaits instead of running the model itself."""

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        run: Run,
        *,
        slots: int,
        observe: Observe | None = None,
        on_retry: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.policy = policy
        self.slots = max(1, slots)
        self.retries = 0  # merged runs that failed (or could not be split) and were run again request by request
        self._run = run
        self._observe = observe or (lambda _records, _requests, _waits: None)
        self._on_retry = on_retry or (lambda: None)
        self._groups: dict[tuple[object, ...], deque[_Waiting]] = {}
        self._queued: dict[tuple[object, ...], int] = {}
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    @property
    def queued(self) -> int:
        """Records waiting now."""
        return sum(self._queued.values())

    async def submit(self, feeds: Feeds, records: int) -> Feeds:
        """The outputs of ``feeds`` (``records`` records on their first dimension), run with whatever else comes."""
        if records >= self.policy.max_batch_size:  # nothing could join it
            self._observe(records, 1, [0.0])
            return await self._run(feeds, records)
        if self._running == 0 and self.policy.run_when_idle and not self._groups:  # idle: run it now, no queue hop
            self._running += 1
            try:
                self._observe(records, 1, [0.0])
                return await self._run(feeds, records)
            finally:
                self._running -= 1
                self._kick()
        loop = asyncio.get_running_loop()
        key = tuple((name, arr.shape[1:], arr.dtype.str) for name, arr in feeds.items())
        waiting = _Waiting(feeds, records, loop.create_future(), loop.time())
        self._groups.setdefault(key, deque()).append(waiting)
        self._queued[key] = self._queued.get(key, 0) + records
        self._kick()
        return await waiting.future

    # ------------------------------------------------------------------ scheduling

    def _kick(self) -> None:
        """Start every batch that is ready (full, or its first request waited long enough) while slots are free;
        then wake up when the next one will be."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        delay = self.policy.max_delay_ms / 1000
        while self._running < self.slots:
            idle = self._running == 0 and self.policy.run_when_idle  # nothing would come of waiting: run
            ready = [
                key
                for key, group in self._groups.items()
                if idle or self._queued[key] >= self.policy.max_batch_size or now - group[0].since >= delay
            ]
            if not ready:
                break
            key = min(ready, key=lambda k: self._groups[k][0].since)  # the longest waiting first
            batch = self._take(key)
            if batch:
                self._running += 1
                task = loop.create_task(self._dispatch(batch, now))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        if self._running < self.slots and self._groups:
            at = min(group[0].since for group in self._groups.values()) + delay
            if self._timer is None or at < self._timer_at:
                if self._timer is not None:
                    self._timer.cancel()
                self._timer, self._timer_at = loop.call_at(at, self._wake), at

    def _wake(self) -> None:
        self._timer, self._timer_at = None, math.inf
        self._kick()

    def _take(self, key: tuple[object, ...]) -> list[_Waiting]:
        """Requests from the front of a group, in order, up to ``max_batch_size`` records (at least one request)."""
        group = self._groups[key]
        batch: list[_Waiting] = []
        total = 0
        while group and (not batch or total + group[0].records <= self.policy.max_batch_size):
            waiting = group.popleft()
            self._queued[key] -= waiting.records
            if waiting.future.done():  # its caller went away
                continue
            batch.append(waiting)
            total += waiting.records
        if not group:
            del self._groups[key], self._queued[key]
        return batch

    # ------------------------------------------------------------------ running

    async def _dispatch(self, batch: list[_Waiting], now: float) -> None:
        try:
            total = sum(w.records for w in batch)
            self._observe(total, len(batch), [now - w.since for w in batch])
            if len(batch) == 1:
                await self._alone(batch[0])
                return
            names = list(batch[0].feeds)
            feeds = {name: np.concatenate([w.feeds[name] for w in batch]) for name in names}
            try:
                outputs = await self._run(feeds, total)
            except Exception as exc:  # whatever it was, each request is retried alone
                log.info("model %s failed on a batch of %d requests (%s); running each alone", self.name, len(batch), exc)
                await self._retry(batch)
                return
            parts = self._split(outputs, batch, total)
            if parts is None:
                log.info("model %s: an output has no row per record of the batch; running each request alone", self.name)
                await self._retry(batch)
                return
            for waiting, part in zip(batch, parts, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result(part)
        finally:
            self._running -= 1
            self._kick()

    async def _retry(self, batch: list[_Waiting]) -> None:
        self.retries += 1
        self._on_retry()
        for waiting in batch:
            await self._alone(waiting)

    async def _alone(self, waiting: _Waiting) -> None:
        try:
            outputs = await self._run(waiting.feeds, waiting.records)
        except Exception as exc:  # handed to its own caller
            if not waiting.future.done():
                waiting.future.set_exception(exc)
            return
        if not waiting.future.done():
            waiting.future.set_result(outputs)

    @staticmethod
    def _split(outputs: Feeds, batch: list[_Waiting], total: int) -> list[Feeds] | None:
        """Each request's rows of every output, in order; None when an output has no row per record."""
        if any(np.ndim(arr) == 0 or np.shape(arr)[0] != total for arr in outputs.values()):
            return None
        parts: list[Feeds] = []
        start = 0
        for waiting in batch:
            end = start + waiting.records
            parts.append({name: arr[start:end] for name, arr in outputs.items()})
            start = end
        return parts
