"""The component lifecycle of the Greengrass nucleus (``Lifecycle.java``), on asyncio: no thread per component or device.

See docs/device-agent.md (lifecycle, configuration, variables).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from edgekit.clock import Clock
from edgekit.device.agent_state import DeviceLayout, InstalledComponent
from edgekit.device.errors import DeviceError
from edgekit.device.executor import Executor, RunningProcess, StepResult, StepSpec, kill_owned_group, process_stamp
from edgekit.device.variables import ComponentView, VariableContext, interpolate
from edgekit.greengrass.recipe import nucleus_bool
from edgekit.mqtt.payloads import LifecycleState

__all__ = [
    "ACTIVE",
    "Component",
    "StateCallback",
    "Supervisor",
    "Unsettled",
    "dependency_layers",
    "last_log_line",
    "should_skip",
]

logger = logging.getLogger(__name__)

ACTIVE: frozenset[str] = frozenset({"RUNNING", "FINISHED"})
"""States in which a component counts as up (a dependency is ready, a deployment has reached its goal)."""
MAX_CONTINUAL_ERRORS = 3
ERROR_RESET_S = 3600.0
LAST_LINE_CHARS = 300
"""How much of a failed component's last log line goes into its status reason (and the deployment's cause)."""
DEFAULT_TIMEOUTS: dict[str, float] = {"Bootstrap": 120.0, "Install": 120.0, "Startup": 120.0, "Shutdown": 15.0, "Recover": 60.0}
_STEP_KEYS = ("Script", "RequiresPrivilege", "Skipif", "Timeout", "Setenv")

StateCallback = Callable[[str, str, str, str], None]
"""``report(component, old_state, new_state, detail)``; ``detail`` is the status reason ("" for plain transitions)."""


def _find(mapping: Mapping[str, Any], key: str) -> Any:
    """``mapping[key]``, matching the key case-insensitively (the nucleus reads recipes that way)."""
    if key in mapping:
        return mapping[key]
    lower = key.lower()
    return next((v for k, v in mapping.items() if str(k).lower() == lower), None)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _truthy(value: Any) -> bool:
    """As the nucleus reads a recipe's boolean (Coerce.toBoolean): ``"true"``, ``"yes"``, a non-zero number..."""
    return nucleus_bool(value) is True


def should_skip(expression: str, path: str | None, cwd: Path) -> bool:
    """Evaluate a ``Skipif``: ``onpath CMD`` (CMD is on PATH) or ``exists FILE``; a leading ``!`` negates."""
    expr = expression.strip()
    negate = expr.startswith("!")
    if negate:
        expr = expr[1:].strip()
    m = re.fullmatch(r"(onpath|exists)\s+(.+)", expr)
    if not m:
        raise ValueError(f"Skipif '{expression}' must be 'onpath <command>' or 'exists <file>'")
    arg = m.group(2).strip()
    if m.group(1) == "onpath":
        hit = shutil.which(arg, path=path) is not None
    else:
        target = Path(os.path.expanduser(arg))
        hit = (target if target.is_absolute() else cwd / target).exists()
    return hit != negate


def dependency_layers(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Names in start order: each layer depends only on earlier ones (edges outside ``graph`` are ignored)."""
    pending = {n: {d for d in deps if d in graph and d != n} for n, deps in graph.items()}
    layers: list[list[str]] = []
    while pending:
        ready = sorted(n for n, deps in pending.items() if not deps)
        if not ready:
            raise DeviceError(
                "COMPONENT_CIRCULAR_DEPENDENCY_ERROR", f"components {sorted(pending)} depend on each other in a circle"
            )
        layers.append(ready)
        for n in ready:
            del pending[n]
        for deps in pending.values():
            deps.difference_update(ready)
    return layers


async def _end_group(pgid: int, stamp: str | None, grace: float) -> None:
    """SIGTERM a process group, SIGKILL it if anything is left after ``grace`` seconds (only while it is still ours)."""
    if not kill_owned_group(pgid, stamp, signal.SIGTERM):
        return
    loop = asyncio.get_running_loop()
    end = loop.time() + grace
    while loop.time() < end:
        await asyncio.sleep(0.02)
        if not kill_owned_group(pgid, stamp, 0):
            return
    kill_owned_group(pgid, stamp, signal.SIGKILL)


class Component:
    """One component's lifecycle; operations are serialized by a lock, the Run process watched by a task."""

    def __init__(self, record: InstalledComponent, supervisor: Supervisor) -> None:
        self.record = record
        self._sup = supervisor
        self._lock = asyncio.Lock()
        self._gen = 0  # bumped whenever the current Run process stops being ours to watch
        self._proc: RunningProcess | None = None
        self.last_change = 0.0  # event-loop time of the last transition

    def __repr__(self) -> str:
        return f"<Component {self.name} {self.version} {self.state}>"

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def version(self) -> str:
        return self.record.version

    @property
    def state(self) -> LifecycleState:
        return self.record.state

    @property
    def work_dir(self) -> Path:
        return self._sup.layout.work(self.name)

    # ------------------------------------------------------------------ recipe access

    def lifecycle(self) -> dict[str, Any]:
        """The lifecycle of the chosen manifest (or the recipe's global one, by ``Selections``)."""
        manifest = self.record.manifest
        own = manifest.get("Lifecycle")
        if isinstance(own, dict):
            return own
        glob = self.record.recipe.get("Lifecycle")
        if not isinstance(glob, dict):
            return {}
        selections = manifest.get("Selections")
        if isinstance(selections, list) and selections:
            for sel in [*selections, "all"]:
                chosen = _find(glob, str(sel))
                if isinstance(chosen, dict):
                    return chosen
            return {}
        return glob

    def step(self, name: str) -> dict[str, Any] | None:
        body = _find(self.lifecycle(), name)
        if body is None:
            return None
        if isinstance(body, str):
            return {"Script": body}
        if isinstance(body, dict):
            return {key: _find(body, key) for key in _STEP_KEYS if _find(body, key) is not None}
        return {"Script": None}

    # ------------------------------------------------------------------ transitions

    def _set(self, new: LifecycleState, code: str | None = None, reason: str | None = None) -> None:
        old = self.record.state
        if new == old and code is None:
            return
        if new not in ("ERRORED", "BROKEN"):
            self.record.errors.pop(old, None)  # a clean transition out of a state ends its run of errors
        self.record.state = new
        self.record.status_codes = [code] if code else []
        self.record.status_reason = reason
        self._sup.transition(self, old, new, reason or "")

    def _count_error(self, from_state: str) -> bool:
        """Record an error from ``from_state``; True when it is the one that makes the component BROKEN."""
        now = self._sup.clock.now()
        marks = list(self.record.errors.get(from_state, []))
        if marks and now - marks[-1] >= ERROR_RESET_S:
            marks = []
        marks.append(now)
        self.record.errors[from_state] = marks
        return len(marks) >= MAX_CONTINUAL_ERRORS

    async def _fail(self, from_state: Literal["NEW", "STARTING", "RUNNING"], code: str, reason: str) -> None:
        said = last_log_line(self._sup.layout.log(self.name))
        if said and said not in reason:  # the component's own last word: what fleet status shows beside the code
            reason = f"{reason}: {said}"
        logger.warning("%s %s: %s (%s)", self.name, self.version, reason, code)
        if self._count_error(from_state):
            self._set("BROKEN", code, reason)
            if from_state != "NEW":
                await self._shutdown()
            return
        self._set("ERRORED", code, reason)
        recovered = await self._run("Recover")
        if recovered is not None and not recovered.ok:
            logger.warning("%s: %s", self.name, recovered.describe("Recover"))
        if from_state == "NEW":
            self._set("NEW")
        else:
            self._set("STOPPING")
            await self._shutdown()
            self._set("INSTALLED")

    # ------------------------------------------------------------------ steps

    def _env(self, step: Mapping[str, Any], ctx: VariableContext) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self._sup.env)
        env["AWS_IOT_THING_NAME"] = self._sup.thing
        if self._sup.env_for is not None:  # the nucleus's IPC variables (SVCUID, the socket, the region)
            env.update(self._sup.env_for(self.name))
        for source in (_find(self.lifecycle(), "Setenv"), step.get("Setenv")):
            if isinstance(source, Mapping):
                env.update({str(k): interpolate(_text(v), ctx) for k, v in source.items()})
        return env

    def _prepare(self, name: str) -> tuple[StepSpec, float | None] | StepResult | None:
        """The step ready to run, a StepResult when it is skipped or invalid, None when the recipe has none."""
        step = self.step(name)
        if step is None:
            return None
        script = step.get("Script")
        if not isinstance(script, str) or not script.strip():
            return StepResult(None, error=f"the {name} step has no Script")
        ctx = self._sup.variables(self)
        env = self._env(step, ctx)
        skipif = step.get("Skipif")
        if skipif is not None:
            try:
                skip = should_skip(interpolate(str(skipif), ctx), env.get("PATH"), self.work_dir)
            except ValueError as exc:
                return StepResult(None, error=str(exc))
            if skip:
                logger.info("%s: %s skipped (Skipif '%s')", self.name, name, skipif)
                return StepResult(0, skipped=True)
        if _truthy(step.get("RequiresPrivilege")) and os.geteuid() != 0:
            logger.info("%s: %s has RequiresPrivilege, ignored: the agent runs as uid %d", self.name, name, os.geteuid())
        timeout: float | None = DEFAULT_TIMEOUTS.get(name)
        if step.get("Timeout") is not None:
            try:
                timeout = float(step["Timeout"]) if float(step["Timeout"]) > 0 else timeout
            except (TypeError, ValueError):
                logger.warning("%s: %s Timeout '%s' is not a number; using %s", self.name, name, step["Timeout"], timeout)
        spec = StepSpec(self.name, name, interpolate(script, ctx), env, self.work_dir, self._sup.layout.log(self.name))
        return spec, timeout

    async def _run(self, name: str) -> StepResult | None:
        prepared = self._prepare(name)
        if prepared is None or isinstance(prepared, StepResult):
            return prepared
        spec, timeout = prepared
        spawned: list[int] = []

        def record(pgid: int) -> None:  # saved before the wait: an agent killed meanwhile kills it on resume, not twice
            spawned.append(pgid)
            self.record.add_group(pgid, process_stamp(pgid))
            self._sup.save()

        spec = dataclasses.replace(spec, on_spawn=record)
        result = await self._sup.executor.run(spec, timeout)
        if name != "Startup":  # Startup's group is its background service, ended by Shutdown
            for pgid in spawned:
                self.record.drop_group(pgid)
        if name == "Bootstrap" and result.exit_code in (100, 101):
            logger.info(
                "%s: Bootstrap asked for a %s; this agent restarts nothing",
                self.name,
                "restart" if result.exit_code == 100 else "reboot",
            )
            return StepResult(0, pgid=result.pgid)
        return result

    # ------------------------------------------------------------------ operations

    async def install(self) -> bool:
        """NEW → INSTALLED (retrying after Recover); False if the component is BROKEN."""
        async with self._lock:
            return await self._install_locked()

    async def _install_locked(self) -> bool:
        while True:
            if self.state == "BROKEN":
                return False
            if self.state != "NEW":
                return True
            try:
                self.work_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                await self._fail("NEW", "INSTALL_IO_ERROR", f"can't make {self.work_dir}: {exc}")
                continue
            if self.record.installed:
                self._set("INSTALLED")
                return True
            failed: tuple[str, str] | None = None
            for step in ("Bootstrap", "Install"):
                result = await self._run(step)
                if result is not None and not result.ok:
                    code = "INSTALL_TIMEOUT" if result.timed_out else ("INSTALL_IO_ERROR" if result.error else "INSTALL_ERRORED")
                    failed = (code, result.describe(step))
                    break
            if failed is None:
                self.record.installed = True
                self._set("INSTALLED")
                return True
            await self._fail("NEW", *failed)

    async def start(self) -> LifecycleState:
        """Bring the component up; returns RUNNING, FINISHED or BROKEN (INSTALLED if a dependency is not up)."""
        async with self._lock:
            return await self._start_locked()

    async def _start_locked(self) -> LifecycleState:
        while True:
            state = self.state
            if state in ACTIVE or state == "BROKEN":
                return state
            if state == "NEW":
                if not await self._install_locked():
                    return "BROKEN"
                continue
            if not self._sup.dependencies_ready(self):
                if state != "INSTALLED":
                    self._set("INSTALLED")
                return "INSTALLED"
            self._set("STARTING")
            if self.step("Startup") is not None:
                result = await self._run("Startup")
                assert result is not None
                if result.pgid is not None and result.pgid not in self.record.process_groups:
                    self.record.add_group(result.pgid, process_stamp(result.pgid))  # its background service
                if result.ok:
                    self._set("RUNNING")
                    return "RUNNING"
                code = "STARTUP_TIMEOUT" if result.timed_out else ("STARTUP_IO_ERROR" if result.error else "STARTUP_ERRORED")
                await self._fail("STARTING", code, result.describe("Startup"))
                continue
            prepared = self._prepare("Run")
            if prepared is None or (isinstance(prepared, StepResult) and prepared.skipped):
                self._set("FINISHED")
                return "FINISHED"
            if isinstance(prepared, StepResult):
                await self._fail("STARTING", "RUN_INVALID_CONFIG", prepared.describe("Run"))
                continue
            spec, timeout = prepared
            try:
                proc = await self._sup.executor.start(spec)
            except OSError as exc:
                await self._fail("STARTING", "RUN_IO_ERROR", f"Run could not start: {exc}")
                continue
            self._gen += 1
            self._proc = proc
            if proc.pid is not None:
                self.record.add_group(proc.pid, process_stamp(proc.pid))
            self._set("RUNNING")
            self._sup.spawn(self._watch(proc, self._gen, timeout), f"watch {self.name}")
            return "RUNNING"

    async def _watch(self, proc: RunningProcess, gen: int, timeout: float | None) -> None:
        timed_out = False
        code: int | None = None
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            timed_out = True
        async with self._lock:
            if gen != self._gen or self.state != "RUNNING":
                return  # stopped or restarted meanwhile: not ours any more
            if timed_out:
                await proc.stop(self._sup.kill_grace)
            self._proc = None
            self._gen += 1
            if proc.pid is not None:
                self.record.drop_group(proc.pid)
            if code == 0 and not timed_out:
                self._set("STOPPING")
                await self._shutdown()
                self._set("FINISHED")
                return
            reason = f"Run timed out after {timeout:g} s and was killed" if timed_out else f"Run exited with code {code}"
            await self._fail("RUNNING", "RUN_TIMEOUT" if timed_out else "RUN_ERRORED", reason)
            after: str = self.state
            if after == "INSTALLED":
                await self._start_locked()

    async def _shutdown(self) -> None:
        """Run Shutdown (if any), then end the Run process and every process group the component started."""
        result = await self._run("Shutdown")
        if result is not None and not result.ok:
            logger.warning("%s: %s", self.name, result.describe("Shutdown"))
        self._gen += 1
        proc, self._proc = self._proc, None
        if proc is not None:
            await proc.stop(self._sup.kill_grace)
        groups = self.record.take_groups()
        await asyncio.gather(*(_end_group(pgid, stamp, self._sup.kill_grace) for pgid, stamp in groups.items()))

    async def stop(self, then: Literal["FINISHED", "INSTALLED"] = "FINISHED") -> None:
        """Shutdown and end the processes; ``then`` is FINISHED (stop) or INSTALLED (to start again)."""
        async with self._lock:
            state = self.state
            if state in ("RUNNING", "STARTING", "ERRORED", "STOPPING"):
                self._set("STOPPING")
                await self._shutdown()
                self._set(then)
            elif state == "FINISHED" and then == "INSTALLED":
                self._set("INSTALLED")
            elif self.record.process_groups:  # BROKEN / NEW / INSTALLED with leftovers
                await self._shutdown()

    async def report_errored(self) -> None:
        """The component said ERRORED over IPC (``UpdateState``): its Run errored, as if it had exited non-zero."""
        async with self._lock:
            if self.state != "RUNNING":
                return
            self._gen += 1  # the watcher of the current Run process stands down
            await self._fail("RUNNING", "RUN_ERRORED", "the component reported ERRORED over IPC")
            after: str = self.state
            if after == "INSTALLED":
                await self._start_locked()

    def kill(self, *, leave_processes: bool = False) -> None:
        """A crash: forget everything in memory; SIGKILL the process groups unless ``leave_processes``."""
        self._gen += 1
        self._proc = None
        if not leave_processes:
            for pgid in self.record.process_groups:
                kill_owned_group(pgid, self.record.process_stamps.get(pgid), signal.SIGKILL)

    async def restart(self) -> LifecycleState:
        await self.stop(then="INSTALLED")
        return await self.start()


def last_log_line(path: Path, limit: int = LAST_LINE_CHARS) -> str | None:
    """The last non-empty line the latest step wrote to a component's log (after that step's ``--- `` header),
    at most ``limit`` characters; None when it wrote nothing or there is no log."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read()
    except OSError:
        return None
    for line in reversed(tail.decode(errors="replace").splitlines()):
        if line.startswith("--- "):
            return None
        if line.strip():
            text = line.strip()
            return text if len(text) <= limit else text[: limit - 3] + "..."
    return None


@dataclass(frozen=True)
class Unsettled:
    """Why components did not settle: one is BROKEN, or the deadline passed."""

    component: str
    kind: Literal["BROKEN", "TIMEOUT"]
    message: str


class Supervisor:
    """The components of one device: ordering, dependency readiness, HARD-dependency restarts, transitions."""

    def __init__(
        self,
        *,
        thing: str,
        layout: DeviceLayout,
        executor: Executor,
        clock: Clock,
        report: StateCallback | None,
        persist: Callable[[], None],
        env: Mapping[str, str] | None = None,
        kill_grace: float = 2.0,
        env_for: Callable[[str], Mapping[str, str]] | None = None,
    ) -> None:
        self.thing = thing
        self.env_for = env_for
        """Extra variables for one component's steps (the agent's IPC: ``SVCUID``, the socket path, the region)."""
        self.layout = layout
        self.executor = executor
        self.clock = clock
        self.env = dict(env or {})
        self.kill_grace = kill_grace
        self.persist_enabled = True
        self.components: dict[str, Component] = {}
        self._report = report
        self._persist = persist
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._restarting: set[str] = set()

    # ------------------------------------------------------------------ membership

    def add(self, record: InstalledComponent) -> Component:
        comp = Component(record, self)
        self.components[record.name] = comp
        return comp

    def remove(self, name: str) -> None:
        self.components.pop(name, None)

    def dependencies_ready(self, comp: Component) -> bool:
        return all(self.components[d].state in ACTIVE for d in comp.record.dependencies() if d in self.components)

    def dependents(self, names: Iterable[str], *, hard_only: bool = True) -> set[str]:
        """Every component depending (transitively; HARD edges only by default) on one of ``names``."""
        found: set[str] = set()
        frontier = set(names)
        while frontier:
            nxt: set[str] = set()
            for comp in self.components.values():
                deps = comp.record.dependencies()
                if comp.name not in found and any(d in frontier and (not hard_only or t == "HARD") for d, t in deps.items()):
                    nxt.add(comp.name)
            found |= nxt
            frontier = nxt
        return found

    def layers(self, names: Iterable[str]) -> list[list[str]]:
        wanted = {n for n in names if n in self.components}
        return dependency_layers({n: self.components[n].record.dependencies() for n in wanted})

    def variables(self, comp: Component) -> VariableContext:
        deps = {n: self._view(self.components[n].record) for n in comp.record.dependencies() if n in self.components}
        return VariableContext(comp.name, self.thing, self.layout.root, self._view(comp.record), deps)

    def _view(self, record: InstalledComponent) -> ComponentView:
        return ComponentView(
            artifacts=self.layout.artifacts(record.name, record.version),
            decompressed=self.layout.decompressed(record.name, record.version),
            work=self.layout.work(record.name),
            configuration=record.configuration,
        )

    # ------------------------------------------------------------------ transitions and tasks

    def save(self) -> None:
        """Persist the state now (a process group was recorded), unless persisting is off (the agent is dying)."""
        if self.persist_enabled:
            self._persist()

    def transition(self, comp: Component, old: str, new: str, detail: str) -> None:
        comp.last_change = asyncio.get_running_loop().time()
        logger.debug("%s: %s -> %s %s", comp.name, old, new, detail)
        if self.persist_enabled:
            self._persist()
        if self._report is not None:
            try:
                self._report(comp.name, old, new, detail)
            except Exception:
                logger.exception("the state callback failed on %s %s -> %s", comp.name, old, new)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        if old == "RUNNING" and new in ("ERRORED", "BROKEN"):
            self._restart_dependents(comp.name)

    async def changed(self, timeout: float | None) -> None:
        """Wait for the next transition of any component (or ``timeout`` seconds)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), timeout)

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("supervisor task %s failed", task.get_name(), exc_info=task.exception())

    def _restart_dependents(self, name: str) -> None:
        for comp in list(self.components.values()):
            if comp.record.dependencies().get(name) == "HARD" and comp.state in ACTIVE and comp.name not in self._restarting:
                self._restarting.add(comp.name)
                self.spawn(self._restart_when_ready(comp), f"restart {comp.name}")

    async def _restart_when_ready(self, comp: Component) -> None:
        try:
            logger.info("%s: a HARD dependency errored; restarting it", comp.name)
            await comp.stop(then="INSTALLED")
            while self.components.get(comp.name) is comp:
                deps = [self.components[d] for d in comp.record.dependencies() if d in self.components]
                if any(d.state == "BROKEN" for d in deps):
                    return
                if all(d.state in ACTIVE for d in deps):
                    await comp.start()
                    return
                await self.changed(None)
        finally:
            self._restarting.discard(comp.name)

    # ------------------------------------------------------------------ many components at once

    async def start(self, names: Iterable[str]) -> None:
        """Install every one (concurrently), then start them layer by layer, dependencies first."""
        wanted = [n for n in dict.fromkeys(names) if n in self.components]
        layers = self.layers(wanted)
        await asyncio.gather(*(self.components[n].install() for n in wanted))
        for layer in layers:
            await asyncio.gather(*(self.components[n].start() for n in layer if self.components[n].state not in ACTIVE))

    async def stop(self, names: Iterable[str], then: Literal["FINISHED", "INSTALLED"] = "FINISHED") -> None:
        """Stop in reverse dependency order (dependents first)."""
        for layer in reversed(self.layers(names)):
            await asyncio.gather(*(self.components[n].stop(then) for n in layer))

    async def wait_settled(self, names: Iterable[str], timeout_s: float, settle_s: float) -> Unsettled | None:
        """Wait until every one of ``names`` is RUNNING or FINISHED and none moved for ``settle_s`` seconds.

        Returns ``None`` then; an :class:`Unsettled` as soon as one is BROKEN, or when ``timeout_s`` passes.
        """
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        wanted = list(dict.fromkeys(names))
        while True:
            comps = [self.components[n] for n in wanted if n in self.components]
            for c in comps:
                if c.state == "BROKEN":
                    why = c.record.status_reason or ""
                    code = ",".join(c.record.status_codes)
                    return Unsettled(c.name, "BROKEN", f"{c.name} {c.version} is BROKEN after 3 errors: {why} ({code})")
            now = loop.time()
            waiting = [c for c in comps if c.state not in ACTIVE]
            if not waiting:
                quiet = now - max((c.last_change for c in comps), default=0.0)
                if quiet >= settle_s:
                    return None
                pause = settle_s - quiet
            else:
                pause = end - now
            if now >= end:
                c = waiting[0] if waiting else comps[0]
                return Unsettled(c.name, "TIMEOUT", f"{c.name} {c.version} is still {c.state} after {timeout_s:g} s")
            await self.changed(min(pause, end - now))

    async def wait_for(self, name: str, states: Iterable[str], timeout_s: float) -> bool:
        """Whether component ``name`` reaches one of ``states`` within ``timeout_s`` seconds."""
        wanted = set(states)
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout_s
        while True:
            comp = self.components.get(name)
            if comp is not None and comp.state in wanted:
                return True
            if loop.time() >= end:
                return False
            await self.changed(end - loop.time())

    async def drain(self) -> None:
        """Wait for the background tasks (watchers, restarts) to end."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    def kill(self, *, leave_processes: bool = False) -> None:
        for comp in self.components.values():
            comp.kill(leave_processes=leave_processes)
        for task in list(self._tasks):
            task.cancel()
