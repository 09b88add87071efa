"""A device's on-disk state, all under one root folder (the nucleus's ``config/``, ``packages/``, ``work/``).

``state.json`` is written whole (temporary file, ``fsync``, rename), never half: by :class:`StateWriter`, off the
event loop, once for the changes of one loop turn (or of one write's time), and only when what a restart reads changed.
See docs/device-agent.md (state on disk, resume).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.device.errors import DeviceError
from edgekit.device.outcome import DeploymentOutcome
from edgekit.mqtt.payloads import LifecycleState
from edgekit.parsing import ParseError, loads_json

__all__ = [
    "DeviceLayout",
    "DeviceState",
    "InProgress",
    "InstalledComponent",
    "StateStore",
    "StateWriter",
    "TargetRecord",
]

STATE_SCHEMA_VERSION: Final = 1
MAX_OUTCOMES = 50  # processed deployment ids remembered (a redelivered job gets its stored outcome)

logger = logging.getLogger(__name__)


class DeviceLayout:
    """Every path of one device, derived from its root folder."""

    def __init__(self, root: str | Path, cache_dir: str | Path | None = None) -> None:
        self.root = Path(root).absolute()
        self.config_dir = self.root / "config"
        self.state_file = self.config_dir / "state.json"
        self.packages = self.root / "packages"
        self.artifacts_root = self.packages / "artifacts"
        self.unarchived_root = self.packages / "artifacts-unarchived"
        self.cache_dir = Path(cache_dir).absolute() if cache_dir is not None else self.packages / "cache"
        self.work_root = self.root / "work"
        self.logs_dir = self.root / "logs"

    def artifacts(self, name: str, version: str) -> Path:
        return self.artifacts_root / name / version

    def decompressed(self, name: str, version: str) -> Path:
        return self.unarchived_root / name / version

    def work(self, name: str) -> Path:
        return self.work_root / name

    def log(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"


class InstalledComponent(BaseModel):
    """One installed component: what it is, how it is configured, where its lifecycle stands."""

    model_config = ConfigDict(extra="forbid")
    name: str
    version: str
    recipe: dict[str, Any]
    manifest_index: int = Field(ge=0)
    configuration: dict[str, Any] = Field(default_factory=dict)
    state: LifecycleState = "NEW"
    installed: bool = False  # Install (and Bootstrap) succeeded for this version: not run again
    errors: dict[str, list[float]] = Field(default_factory=dict)  # state → times it went ERRORED from there
    status_codes: list[str] = Field(default_factory=list)
    status_reason: str | None = None
    process_groups: list[int] = Field(default_factory=list)  # live process groups: Run, Startup, a step in flight
    process_stamps: dict[int, str] = Field(default_factory=dict)  # group → its leader's "<boot id>/<start time>"

    def add_group(self, pgid: int, stamp: str | None) -> None:
        """Record a process group the agent started (killed on resume only while its leader is still that process)."""
        if pgid not in self.process_groups:
            self.process_groups.append(pgid)
        if stamp is not None:
            self.process_stamps[pgid] = stamp

    def drop_group(self, pgid: int) -> None:
        if pgid in self.process_groups:
            self.process_groups.remove(pgid)
        self.process_stamps.pop(pgid, None)

    def take_groups(self) -> dict[int, str | None]:
        """Forget every recorded group; returns them with their stamps."""
        groups = {g: self.process_stamps.get(g) for g in self.process_groups}
        self.process_groups, self.process_stamps = [], {}
        return groups

    @property
    def manifest(self) -> dict[str, Any]:
        manifests = self.recipe.get("Manifests") or []
        return dict(manifests[self.manifest_index]) if self.manifest_index < len(manifests) else {}

    def dependencies(self) -> dict[str, str]:
        """Direct dependencies: name → ``HARD`` or ``SOFT``."""
        deps = self.recipe.get("ComponentDependencies") or {}
        return {str(n): str((spec or {}).get("DependencyType", "HARD")).upper() for n, spec in deps.items()}


class TargetRecord(BaseModel):
    """The latest deployment applied for one target (``thing/NAME`` or ``thinggroup/NAME``)."""

    model_config = ConfigDict(extra="forbid")
    deployment_id: str
    creation_timestamp: int | None = None
    components: dict[str, str] = Field(default_factory=dict)  # root components: name → version


class InProgress(BaseModel):
    """A deployment being applied, with what the device ran before it (to roll back or resume)."""

    model_config = ConfigDict(extra="forbid")
    job: dict[str, Any]  # the JobDocument as JSON (camelCase)
    phase: Literal["prepare", "apply", "rollback"] = "prepare"
    previous_components: dict[str, InstalledComponent] = Field(default_factory=dict)
    previous_targets: dict[str, TargetRecord] = Field(default_factory=dict)


class DeviceState(BaseModel):
    """Everything a device must remember across restarts."""

    model_config = ConfigDict(extra="forbid")
    schema_version: Literal[1] = STATE_SCHEMA_VERSION
    thing: str
    components: dict[str, InstalledComponent] = Field(default_factory=dict)
    targets: dict[str, TargetRecord] = Field(default_factory=dict)
    in_progress: InProgress | None = None
    last_deployment: DeploymentOutcome | None = None
    outcomes: dict[str, DeploymentOutcome] = Field(default_factory=dict)  # processed deployment id → outcome

    def remember(self, outcome: DeploymentOutcome) -> None:
        self.last_deployment = outcome
        self.outcomes.pop(outcome.deployment_id, None)
        self.outcomes[outcome.deployment_id] = outcome
        while len(self.outcomes) > MAX_OUTCOMES:
            del self.outcomes[next(iter(self.outcomes))]


class StateStore:
    """Reads and atomically writes ``<root>/config/state.json``."""

    def __init__(self, layout: DeviceLayout, *, fsync: bool = True) -> None:
        self.layout = layout
        self.fsync = fsync

    def load(self, thing: str) -> DeviceState:
        """The saved state, or a fresh one for a new device; a state of another thing is refused."""
        path = self.layout.state_file
        if not path.is_file():
            return DeviceState(thing=thing)
        try:
            data = loads_json(path.read_bytes())
            state = DeviceState.model_validate(data)
        except (OSError, ParseError, ValidationError) as exc:
            raise DeviceError(
                ("IO_ERROR", "IO_READ_ERROR"),
                f"{path} is not a readable edgekit device state ({exc}); move it away to start this device afresh",
            ) from exc
        if state.thing != thing:
            raise DeviceError(
                "IO_READ_ERROR", f"{path} belongs to thing '{state.thing}', not '{thing}'; give each device its own root"
            )
        return state

    def save(self, state: DeviceState) -> None:
        self.write(state.model_dump_json(indent=1).encode())

    def write(self, data: bytes) -> None:
        """Replace the state file with ``data`` atomically (a temporary file, ``fsync`` unless off, a rename)."""
        path = self.layout.state_file
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                if self.fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)


_RESUMED_AS_IS: Final = ("FINISHED", "BROKEN")  # lifecycle states a restart keeps; every other one starts over as NEW


def restart_view(data: dict[str, Any]) -> tuple[str, frozenset[tuple[str, int]]]:
    """What a restart reads of a dumped :class:`DeviceState` (``model_dump(mode="json")``): as text to compare, and
    the live process groups apart (component, group).

    Resume starts every component over from ``NEW`` unless it is ``FINISHED`` or ``BROKEN``, so the steps between
    (``INSTALLED``, ``STARTING``, ``RUNNING`` ...) are not in the text. While a deployment is in progress a restart
    puts the previous components and targets back (the phase is not read), so of the current components only their
    process groups count. A group recorded and not yet on disk needs a write (resume kills what is left of it); a
    group gone needs none (resume leaves a group alone once its leader is no longer the process it started).
    """
    comps: dict[str, Any] = data.get("components") or {}
    groups = frozenset((n, int(g)) for n, c in comps.items() for g in c.get("process_groups") or [])
    view = dict(data)
    progress = data.get("in_progress")
    if progress is not None:
        view["in_progress"] = {k: v for k, v in progress.items() if k != "phase"}
        view["targets"] = None
        view["components"] = None
    else:
        view["components"] = {
            n: {
                **c,
                "state": c.get("state") if c.get("state") in _RESUMED_AS_IS else "NEW",
                "process_groups": None,
                "process_stamps": None,
            }
            for n, c in comps.items()
        }
    return json.dumps(view, sort_keys=True), groups


class StateWriter:
    """Writes one device's state file off the event loop, coalescing: the in-memory state is the truth.

    :meth:`request` (from the event loop) asks for a write; the write happens in a worker thread on a later loop
    turn, so the changes of one turn — and those made while a write is in flight — go out as one file. A state
    whose :func:`restart_view` equals the last written one is not written at all. :meth:`flush` waits until
    everything requested is on disk (the agent does before it reports an outcome and before a deployment changes
    anything). Each file is still replaced atomically (:meth:`StateStore.write`): a crash leaves the previous one or
    the next one, never half of one. Without a running loop, :meth:`request` writes at once.
    """

    def __init__(self, store: StateStore, state: Callable[[], DeviceState], *, label: str = "") -> None:
        self.store = store
        self.writes = 0
        """State files written (for tests and benchmarks: the count per deployment is bounded)."""
        self.active = True
        """Off: nothing more is written (the agent died); requests are dropped."""
        self._state = state
        self._label = label
        self._dirty = False
        self._task: asyncio.Task[None] | None = None
        self._last_view: str | None = None
        self._last_groups: frozenset[tuple[str, int]] = frozenset()

    def request(self) -> None:
        """The state changed: write it soon (once for every change until then)."""
        if not self.active:
            return
        self._dirty = True
        if self._task is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write_now()
            return
        self._task = loop.create_task(self._run(), name=f"state-writer {self._label}")

    async def flush(self) -> None:
        """Return once every change requested so far is on disk (or, when a write fails, logged)."""
        while self._task is not None:
            await asyncio.shield(self._task)

    def _snapshot(self) -> tuple[tuple[str, frozenset[tuple[str, int]]], bytes] | None:
        """The restart view and the file's bytes, or None when the file already holds what a restart needs."""
        data = self._state().model_dump(mode="json")
        view = restart_view(data)
        if view[0] == self._last_view and view[1] <= self._last_groups:
            return None
        return view, json.dumps(data, indent=1).encode()

    def _write_now(self) -> None:
        self._dirty = False
        snap = self._snapshot()
        if snap is not None:
            self._write(*snap)

    def _write(self, view: tuple[str, frozenset[tuple[str, int]]], data: bytes) -> None:
        try:
            self.store.write(data)
        except OSError as exc:
            logger.error("%s: can't write %s: %s", self._label, self.store.layout.state_file, exc)
            return
        self._last_view, self._last_groups = view
        self.writes += 1

    async def _run(self) -> None:
        try:
            while self._dirty and self.active:
                self._dirty = False
                snap = self._snapshot()  # in the loop: the state doesn't change under it
                if snap is not None:
                    await asyncio.to_thread(self._write, *snap)
        finally:
            self._task = None
