"""In-process runners: a simulated device's Run step that starts a component's own code inside the device's event loop.

The :class:`~edgekit.sim.scripted_shell.SimulatedExecutor` recognises a Run script by the file it runs: a script whose
command runs a registered entry point (``inference.py``, the bundled inference component) is started as that
runner with the script's own arguments, instead of being interpreted as ``sh``. The inference runner runs
:class:`edgekit.edge.loop.InferenceLoop` (the packaged component's loop) with:

* the artifact loaded once per process and shared read-only by every device that runs it (keyed by the digest
  of its ``manifest.json``);
* the readings of every device woken by one tick of the :class:`SharedTick` that runs the same artifact answered by
  one batched model call (:class:`TickBatcher`), each device getting its own rows back — bit for bit what its own
  call would give; an artifact that can't be batched that way runs one call per reading;
* per device its own input stream, windows, fallback client, and uplink: the device's Greengrass IPC handler,
  reached through :class:`~edgekit.device.ipc.InProcessIpc` with the component's ``SVCUID``.

Stopping the component stops its loop (the open window is summarised and handed to the agent's spool);
a crashed device's loops end without that. See docs/local-fleet.md (what runs).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import math
import shlex
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from edgekit.device.executor import RunningProcess, StepSpec
from edgekit.device.ipc import InProcessIpc
from edgekit.device.ipc.device_ipc import DeviceIpc
from edgekit.device.ipc.errors import IpcError
from edgekit.device.ipc.handler import NS
from edgekit.device.ipc.inprocess import InProcessStream
from edgekit.edge.component import parse_args
from edgekit.edge.errors import EdgeError
from edgekit.edge.loop import Checkpoint, InferenceLoop
from edgekit.errors import EdgekitError

__all__ = [
    "SIMULATED_MAX_SLEEP_S",
    "SIMULATED_TICK_S",
    "InProcessRunners",
    "InProcessUplink",
    "InferenceRun",
    "ModelCache",
    "SharedTick",
    "TickBatcher",
]

SIMULATED_TICK_S = 0.2
"""An in-process loop wakes at most this often and takes the readings due (at 10/s: 2 a wake): 1,000 devices on one
event loop then cost 5,000 wake-ups a second, not 10,000 (unless the Run script passes --tick-seconds). Its wake-ups
fall on this grid (:class:`SharedTick`)."""
SIMULATED_MAX_SLEEP_S = 1.0
"""An in-process loop sleeps up to this long between readings (a packaged component's: 0.5 s): at 1 reading/s, one
wake-up a reading, not two. A stop or a checkpoint waits up to this for the loop to wake."""

log = logging.getLogger(__name__)

_PUBLISH: Final = NS + "PublishToIoTCore"


class InProcessUplink:
    """An :class:`edgekit.edge.uplink.Uplink` over the device's IPC handler, without a socket."""

    def __init__(self, ipc: InProcessIpc) -> None:
        self.ipc = ipc
        self._streams: list[InProcessStream] = []

    async def publish(self, topic: str, payload: bytes) -> None:
        """``PublishToIoTCore`` as the SDK sends it (the payload base64-encoded), straight to the handler: the request
        is strings only, so the JSON round trip :meth:`InProcessIpc.call` makes of any request would give it back
        unchanged. It returns once the agent has spooled the message (on disk, for a durable spool)."""
        request = {"topicName": topic, "qos": "1", "payload": base64.b64encode(payload).decode()}
        try:
            await self.ipc.handler.call(self.ipc.component, _PUBLISH, request)
        except IpcError as exc:
            raise EdgeError(f"PublishToIoTCore {topic}: {type(exc).__name__} {exc}") from None

    async def configuration(self) -> dict[str, Any]:
        reply = await self.ipc.call("GetConfiguration", {"keyPath": []})
        value = reply.get("value")
        return dict(value) if isinstance(value, dict) else {}

    async def follow_configuration(self, changed: Callable[[], None]) -> None:
        self._streams.append(
            await self.ipc.subscribe("SubscribeToConfigurationUpdate", {"keyPath": []}, lambda _m, _e: changed())
        )

    async def subscribe(self, topic: str, on_message: Callable[[bytes], None]) -> None:
        def event(_model: str, body: dict[str, Any]) -> None:
            on_message(base64.b64decode(body["message"]["payload"]))

        self._streams.append(await self.ipc.subscribe("SubscribeToIoTCore", {"topicName": topic, "qos": "1"}, event))

    async def report(self, state: str) -> None:
        await self.ipc.call("UpdateState", {"state": state})

    async def close(self) -> None:
        streams, self._streams = self._streams, []
        for stream in streams:
            with contextlib.suppress(Exception):
                await stream.close()


class SharedTick:
    """One timer for every in-process inference loop of this process (a shard's thousands of devices).

    A loop's :meth:`sleep` ends at the first tick at or after its own deadline (ticks: multiples of ``tick_s`` on
    the event loop's clock); the loops due at one tick are woken by that tick's one timer callback, in the order
    they went to sleep, instead of one timer each. Each loop still paces its own readings (it counts the readings
    due since its start), so a wake-up up to ``tick_s`` late takes the same readings, only later; none is skipped or
    added. :attr:`timers` counts the timers set, :attr:`wakeups` the sleeps they ended."""

    def __init__(self, tick_s: float = SIMULATED_TICK_S) -> None:
        if not tick_s > 0:
            raise EdgeError(f"the shared tick must be positive, got {tick_s}")
        self.tick_s = tick_s
        self.timers = 0
        self.wakeups = 0
        self._due: dict[int, list[asyncio.Future[None]]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def sleep(self, delay: float) -> None:
        """Sleep at least ``delay`` seconds, until the tick that ends it."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (another asyncio.run): the old one's timers are gone
            self._loop, self._due = loop, {}
        slot = math.ceil((loop.time() + max(0.0, delay)) / self.tick_s)
        future: asyncio.Future[None] = loop.create_future()
        waiting = self._due.get(slot)
        if waiting is None:
            self._due[slot] = waiting = []
            loop.call_at(slot * self.tick_s, self._fire, slot)
            self.timers += 1
        waiting.append(future)
        await future

    def _fire(self, slot: int) -> None:
        for future in self._due.pop(slot, ()):
            if not future.done():  # a cancelled sleeper's future is cancelled
                future.set_result(None)
                self.wakeups += 1

    @property
    def sleeping(self) -> int:
        """Loops asleep now."""
        return sum(1 for waiting in self._due.values() for f in waiting if not f.done())


_BATCH_CHECK_ROWS: Final = (1, 2, 3, 17, 64)
"""Batch sizes a batched copy is checked at, against one call per row, before it answers any device."""
_MAX_BATCHED_BYTES: Final = 64 << 20  # a larger model file is not copied: its devices run one call per reading


class TickBatcher:
    """One model call for the readings of every loop woken together (an :data:`edgekit.edge.loop.Infer`).

    The loops a :class:`SharedTick` tick wakes run one after the other in one turn of the event loop; each hands
    :meth:`infer` the readings it took, and after that turn one call runs them all, stacked along the batch axis,
    and each loop gets its own rows back. The call is a batched copy of the artifact's ONNX model (its batch axis
    made dynamic, loaded once per process) — so only an ONNX Runtime artifact whose every input and output has a
    batch axis of 1 (or a dynamic one) and a float input is batched, and only once the copy has given, bit for bit,
    what one call per row of the artifact gives (checked at :data:`_BATCH_CHECK_ROWS` rows); otherwise, and for a
    reading whose arrays aren't the inputs' shape and dtype, or when the batched call fails, each loop runs
    ``predict`` on each of its readings itself, as without a batcher. :attr:`calls` counts the batched calls,
    :attr:`rows` the readings they answered, :attr:`unbatched` the readings handed back to their loop."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.calls = 0
        self.rows = 0
        self.unbatched = 0
        self.why_not = ""
        """Why this artifact is not batched (empty while it is)."""
        self._pending: list[tuple[list[dict[str, np.ndarray]], asyncio.Future[tuple[list[list[np.ndarray]], float] | None]]] = []
        self._specs = [(spec.name, tuple(spec.shape), np.dtype(spec.dtype)) for spec in model.manifest.inputs]
        self._session: Any = None
        self._names: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        try:
            self._session, self._names = self._batched_copy()
            self._check()
        except Exception as exc:  # anything a copy can't do: one call per reading, as without a batcher
            self._session, self.why_not = None, str(exc) or type(exc).__name__
            log.info("%s: readings not batched across devices: %s", model, self.why_not)

    @property
    def batched(self) -> bool:
        return self._session is not None

    def _batched_copy(self) -> tuple[Any, list[str]]:
        runner: Any = getattr(self.model, "runner", None)
        manifest = self.model.manifest
        if getattr(runner, "backend", "") != "onnxruntime":
            raise EdgeError(f"a {manifest.backend.name} artifact (only ONNX Runtime ones are batched)")
        specs = [*manifest.inputs, *manifest.outputs]
        for spec in specs:
            dynamic = spec.dynamic_dims or {}
            if spec.is_sequence or not spec.shape or spec.shape[0] != 1 or any(i != 0 for i in dynamic):
                raise EdgeError(f"'{spec.name}' {spec.declared()} has no batch axis of 1")
        if not all(np.issubdtype(np.dtype(s.dtype), np.floating) for s in manifest.inputs):
            raise EdgeError("an input is not float (the batched copy is checked on random floats)")
        entry = Path(runner.entry)
        if entry.stat().st_size > _MAX_BATCHED_BYTES:
            raise EdgeError(f"{entry.name} is over {_MAX_BATCHED_BYTES >> 20} MiB (not copied)")
        import onnx
        import onnxruntime as ort

        proto = onnx.load(str(entry))
        for value in [*proto.graph.input, *proto.graph.output]:
            dims = value.type.tensor_type.shape.dim
            if dims:
                dims[0].Clear()
                dims[0].dim_param = "edgekit_rows"
        del proto.graph.value_info[:]  # shapes inferred at compile time pin the batch axis to 1
        options = ort.SessionOptions()
        at_load = str(manifest.backend.options.get("loadOptimization", "none"))
        options.graph_optimization_level = (
            ort.GraphOptimizationLevel.ORT_ENABLE_ALL if at_load == "all" else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        )
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(proto.SerializeToString(), sess_options=options, providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        if names != [s.name for s in manifest.outputs]:
            raise EdgeError(f"the model's outputs {names} are not the manifest's")
        return session, names

    def _check(self) -> None:
        """The batched copy against one call of the artifact per row, on random rows: the same bits, or not batched."""
        rng = np.random.default_rng(0)
        for rows in _BATCH_CHECK_ROWS:
            readings = [
                {name: rng.standard_normal(shape).astype(dtype) for name, shape, dtype in self._specs} for _ in range(rows)
            ]
            got = self._run(readings)
            for reading, answer in zip(readings, got, strict=True):
                own = self.model.predict(reading)
                if len(own) != len(answer) or not all(
                    a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
                    for a, b in zip(own, answer, strict=True)
                ):
                    raise EdgeError(f"the batched copy's outputs at {rows} rows differ from one call per row")

    def _run(self, readings: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        feeds = {name: np.concatenate([r[name] for r in readings]) for name, _, _ in self._specs}
        outs = self._session.run(self._names, feeds)
        n = len(readings)
        if any(not isinstance(o, np.ndarray) or o.shape[:1] != (n,) for o in outs):
            raise EdgeError(f"the batched call did not give {n} rows")
        return [[o[i : i + 1] for o in outs] for i in range(n)]

    def _fits(self, reading: dict[str, np.ndarray]) -> bool:
        if len(reading) != len(self._specs):
            return False
        for name, shape, dtype in self._specs:
            arr = reading.get(name)
            if not isinstance(arr, np.ndarray) or arr.shape != shape or arr.dtype != dtype:
                return False
        return True

    async def infer(self, readings: list[dict[str, np.ndarray]]) -> tuple[list[list[np.ndarray]], float] | None:
        """``readings``' outputs and the batched call's milliseconds, once every loop of this turn has handed its own;
        ``None``: run them one by one."""
        if self._session is None or not all(self._fits(r) for r in readings):
            self.unbatched += len(readings)
            return None
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (another asyncio.run): the old one's flush will never run
            self._loop, self._pending = loop, []
        future: asyncio.Future[tuple[list[list[np.ndarray]], float] | None] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)  # after the loops woken in this turn (they are ahead of it in the ready queue)
        self._pending.append((readings, future))
        return await future

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        waiting = [(readings, future) for readings, future in pending if not future.done()]  # a killed loop's is cancelled
        if not waiting:
            return
        rows = [r for readings, _ in waiting for r in readings]
        t0 = time.perf_counter()
        try:
            answers = self._run(rows)
        except Exception as exc:  # each loop runs its own calls (and meets its own error, as without a batcher)
            log.warning("%s: a batched call failed (%s); its readings run one by one", self.model, exc)
            self.unbatched += len(rows)
            for _, future in waiting:
                future.set_result(None)
            return
        ms = (time.perf_counter() - t0) * 1e3
        self.calls += 1
        self.rows += len(rows)
        start = 0
        for readings, future in waiting:
            future.set_result((answers[start : start + len(readings)], ms))
            start += len(readings)


class ModelCache:
    """Artifacts loaded once per process (by the digest of their manifest), self-tested once, shared read-only.

    This process stands in for every device: an artifact built for another platform runs as its host twin (the same
    candidate built for this host at compile time, self-tested with the same golden vectors), or its portable files;
    the model's ``stand_in`` says which (and the device's log)."""

    def __init__(self, *, batch: bool = True) -> None:
        self._models: dict[str, Any] = {}
        self._batchers: dict[int, TickBatcher] = {}
        self._lock = threading.Lock()
        self.batch = batch
        """Whether loops woken together share one model call (:class:`TickBatcher`); False: one call per reading."""

    def load(self, model_dir: Path) -> Any:
        import edgekit

        try:
            key = hashlib.sha256((model_dir / "manifest.json").read_bytes()).hexdigest()
        except OSError as exc:
            raise EdgeError(f"{model_dir}: not an artifact ({exc})") from None
        with self._lock:
            model = self._models.get(key)
            if model is None:
                model = edgekit.load(model_dir, threads=1, stand_in=True)
                check = model.selftest()
                if not check.passed:
                    raise EdgeError(f"{model_dir}: the self-test failed (max abs error {check.max_abs_error:.3g})")
                self._models[key] = model
            return model

    def batcher(self, model: Any) -> TickBatcher | None:
        """The :class:`TickBatcher` of a model this cache loaded (made once), or None when batching is off."""
        if not self.batch:
            return None
        with self._lock:
            batcher = self._batchers.get(id(model))
            if batcher is None:
                self._batchers[id(model)] = batcher = TickBatcher(model)
            return batcher

    @property
    def batchers(self) -> list[TickBatcher]:
        return list(self._batchers.values())

    def __len__(self) -> int:
        return len(self._models)


class _Exited:
    """A Run step that could not start its runner: it ends at once with ``code``."""

    def __init__(self, code: int) -> None:
        self.code = code

    @property
    def pid(self) -> int | None:
        return None

    async def wait(self) -> int:
        return self.code

    async def stop(self, grace: float) -> None:
        return None


class InferenceRun:
    """One in-process inference component's Run: its loop, as a :class:`~edgekit.device.executor.RunningProcess`."""

    def __init__(self, loop: InferenceLoop, uplink: InProcessUplink, model: Any = None) -> None:
        self.loop = loop
        self.uplink = uplink
        self.model = model
        """The loaded artifact it runs (its ``stand_in`` says when a host build runs in the device's place)."""
        self.crashed = False
        self.task: asyncio.Task[Checkpoint] = asyncio.get_running_loop().create_task(self._main(), name=f"inference {loop.thing}")

    async def _main(self) -> Checkpoint:
        try:
            return await self.loop.run()
        finally:
            await self.uplink.close()

    @property
    def pid(self) -> int | None:
        return None

    async def wait(self) -> int:
        try:
            await asyncio.shield(self.task)
        except asyncio.CancelledError:
            if self.task.cancelled():
                return -signal.SIGKILL
            raise
        except Exception as exc:
            log.warning("%s: inference loop failed: %s", self.loop.thing, exc)
            return 1
        return 0

    async def stop(self, grace: float) -> None:
        """Like SIGTERM: the loop summarises its open window and hands it over; cancelled after ``grace`` seconds."""
        self.loop.stop()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError, Exception):
            await asyncio.wait_for(asyncio.shield(self.task), max(grace, 5.0))
        if not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def kill(self) -> None:
        """Like SIGKILL: the loop ends where it is; its open window and unsent messages are lost."""
        self.crashed = True
        self.loop.abandon()
        self.task.cancel()


@dataclass
class InProcessRunners:
    """The runners a :class:`~edgekit.sim.scripted_shell.SimulatedExecutor` starts, by entry point, and what they need:
    each device's IPC (by thing name), the shared model cache, and every run so far (for accounting)."""

    devices: dict[str, DeviceIpc] = field(default_factory=dict)
    scenarios: dict[str, str] = field(default_factory=dict)
    """A device's own synthetic-stream parameters (the fleet file's ``scenario``), by thing name."""
    models: ModelCache = field(default_factory=ModelCache)
    tick: SharedTick = field(default_factory=SharedTick)
    """The one timer that wakes every in-process loop (:class:`SharedTick`)."""
    runs: dict[str, list[InferenceRun]] = field(default_factory=dict)

    def entry_point(self, script: str) -> tuple[str, list[str]] | None:
        """(entry point, its arguments) when ``script`` runs a registered one, else None."""
        try:
            words = shlex.split(script)
        except ValueError:
            return None
        for i, word in enumerate(words):
            name = word.rsplit("/", 1)[-1]
            if name in ENTRY_POINTS:
                rest = words[i + 1 :]
                if any(w in ("&&", "||", ";", "|") for w in rest):
                    return None
                return name, rest
        return None

    async def start(self, spec: StepSpec) -> RunningProcess | None:
        """Start ``spec``'s runner, or None when its script runs no registered entry point."""
        found = self.entry_point(spec.script)
        if found is None:
            return None
        name, args = found
        thing = spec.env.get("AWS_IOT_THING_NAME", "")
        return await ENTRY_POINTS[name](self, spec, args, self.devices.get(thing))

    def kill(self, thing: str) -> None:
        """A device crashed: its loops end without handing anything over."""
        for run in self.runs.get(thing, []):
            if not run.task.done():
                run.kill()

    def active(self) -> list[InferenceRun]:
        return [r for runs in self.runs.values() for r in runs if not r.task.done()]


def _log(spec: StepSpec, text: str) -> None:
    with contextlib.suppress(OSError):
        spec.log.parent.mkdir(parents=True, exist_ok=True)
        with open(spec.log, "a") as out:
            out.write(f"--- {spec.component} {spec.step} (in process)\n{text}\n")


async def _start_inference(runners: InProcessRunners, spec: StepSpec, args: list[str], ipc: DeviceIpc | None) -> RunningProcess:
    thing = spec.env.get("AWS_IOT_THING_NAME", "")
    token = spec.env.get("SVCUID", "")
    try:
        model_dir, options = parse_args(args)
        options.tick_s = options.tick_s or SIMULATED_TICK_S
        options.max_sleep_s = max(options.max_sleep_s, SIMULATED_MAX_SLEEP_S)
        own = runners.scenarios.get(thing)
        if own and options.source.partition(":")[0] == "synthetic":  # the device's keys after the component's: they win
            options.source = f"synthetic:{options.source.partition(':')[2]},{own}"
        if ipc is None or not token:
            raise EdgeError("the device has no IPC (DeviceAgent(ipc=True)); an in-process inference component needs it")
        model = runners.models.load(model_dir if model_dir.is_absolute() else spec.cwd / model_dir)
        uplink = InProcessUplink(InProcessIpc.connect(ipc.handler, token))
        batcher = runners.models.batcher(model)
        loop = InferenceLoop(
            model,
            options,
            uplink=uplink,
            thing=thing,
            component=options.component or spec.component,
            sleep=runners.tick.sleep,
            infer=batcher.infer if batcher is not None and batcher.batched else None,
        )
    except (EdgekitError, IpcError, OSError) as exc:
        _log(spec, f"edgekit inference: {exc}")
        log.warning("%s: %s could not start: %s", thing, spec.component, exc)
        return _Exited(1)
    run = InferenceRun(loop, uplink, model)
    runners.runs.setdefault(thing, []).append(run)
    standing = f"; a stand-in: {model.stand_in}" if model.stand_in else ""
    _log(spec, f"edgekit inference: {model} in process{standing}; run {loop.run_id}")
    return run


ENTRY_POINTS: dict[str, Callable[[InProcessRunners, StepSpec, list[str], DeviceIpc | None], Awaitable[RunningProcess]]] = {
    "inference.py": _start_inference,
}
"""Entry points run in process, by file name: a Run script that runs one of these starts it (see the module docstring)."""
