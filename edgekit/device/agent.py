"""The device agent: applies deployments (IoT Jobs documents) the way the Greengrass nucleus does.

Prepare (resolve, download, verify), then apply (stop, install, start, settle), roll back on failure,
and resume after a restart. See docs/device-agent.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import shutil
import signal
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgekit.clock import Clock, SystemClock
from edgekit.device.agent_ipc import AgentHost, restart_needed
from edgekit.device.agent_state import (
    DeviceLayout,
    DeviceState,
    InProgress,
    InstalledComponent,
    StateStore,
    StateWriter,
    TargetRecord,
)
from edgekit.device.configuration import next_configuration
from edgekit.device.download import (
    DEFAULT_MAX_UNZIPPED_BYTES,
    ArtifactFetcher,
    ArtifactShare,
    artifact_file_name,
    permission_modes,
    place,
    safe_unzip,
)
from edgekit.device.errors import DeviceError
from edgekit.device.executor import Executor, InProcessExecutor, SubprocessExecutor, kill_group, owned_group, wait_group_gone
from edgekit.device.fleet_store import RegistryClient, RegistryStore
from edgekit.device.ipc.device_ipc import DeviceIpc
from edgekit.device.lifecycle import StateCallback, Supervisor, dependency_layers
from edgekit.device.outcome import ComponentOutcome, DeploymentOutcome, DeploymentStatus
from edgekit.errors import RecipeError, ResolutionError
from edgekit.greengrass.resolve import CoreDevice, GroupDeployment, resolve_device
from edgekit.mqtt.payloads import ComponentState, DeploymentResultCode, JobDocument

__all__ = ["DeviceAgent", "parse_target"]

logger = logging.getLogger(__name__)

# component names and versions become folder names: nothing that could climb out of them
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")
_STAGING = re.compile(r"\..+\.(?:unzip-)?[0-9a-f]{8}")  # download.place / safe_unzip: .<name>.<8 hex>[ / unzip-<8 hex>]


def _declared_names(record: InstalledComponent) -> set[str]:
    """The file and folder names ``record``'s recipe puts in its artifact folders (never garbage, however named)."""
    out: set[str] = set()
    for artifact in record.manifest.get("Artifacts") or []:
        uri = str(artifact.get("URI") or "") if isinstance(artifact, Mapping) else ""
        if not uri:
            continue
        try:
            file_name = artifact_file_name(uri)
        except DeviceError:
            continue
        out |= {file_name, Path(urllib.parse.unquote(file_name)).stem}
    return out


def parse_target(target: str) -> str:
    """``thing/NAME`` or ``thinggroup/NAME`` from a job's target (a full ARN is accepted)."""
    text = target
    if text.startswith("arn:"):
        parts = text.split(":", 5)
        text = parts[5] if len(parts) == 6 else ""
    kind, _, name = text.partition("/")
    if kind not in ("thing", "thinggroup") or not name:
        raise DeviceError(
            "DEPLOYMENT_DOCUMENT_NOT_VALID", f"job target '{target}' is not thing/<name>, thinggroup/<name> or an IoT ARN of one"
        )
    return f"{kind}/{name}"


@dataclass
class _Changes:
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    reconfigured: list[str] = field(default_factory=list)  # new configuration, kept running (IPC tells them)

    @property
    def touched(self) -> list[str]:
        return [*self.removed, *self.changed, *self.added, *self.restarted, *self.reconfigured]


class DeviceAgent:
    """A Greengrass-nucleus-like runtime for one device, rooted in one folder (see docs/device-agent.md).

    ``platform`` is the device's Greengrass platform (``{"os": "linux", "architecture": "amd64"}``);
    ``groups`` the thing groups it is in; ``report(component, old, new, detail)`` hears every lifecycle
    transition. ``mode="in_process"`` runs no scripts (see :mod:`edgekit.device.executor`); ``executor``
    replaces the step runner altogether. ``share`` (simulated devices of one process only): one download, unpack and
    recipe fetch for them all (:class:`~edgekit.device.download.ArtifactShare`; each device still verifies what it
    installs).
    ``ipc`` (default: on in ``subprocess`` mode) serves Greengrass IPC (:attr:`ipc`, :mod:`edgekit.device.ipc`);
    in ``in_process`` mode it has no socket, only the in-process transport. ``region`` is what components
    get as ``AWS_REGION``.
    """

    def __init__(
        self,
        thing: str,
        root: str | Path,
        platform: Mapping[str, str],
        registry_base_url: str,
        groups: Iterable[str] = (),
        *,
        clock: Clock | None = None,
        report: StateCallback | None = None,
        mode: Literal["subprocess", "in_process"] = "subprocess",
        executor: Executor | None = None,
        env: Mapping[str, str] | None = None,
        cache_dir: str | Path | None = None,
        download_attempts: int = 10,
        download_backoff_s: float = 0.05,
        http_timeout_s: float = 30.0,
        max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES,
        deployment_timeout_s: float = 600.0,
        settle_s: float = 1.0,
        kill_grace_s: float = 2.0,
        fsync: bool = True,
        ipc: bool | None = None,
        region: str = "us-east-1",
        share: ArtifactShare | None = None,
    ) -> None:
        self.thing = thing
        self.platform = dict(platform)
        self.groups: set[str] = set(groups)
        self.layout = DeviceLayout(root, cache_dir)
        self.clock: Clock = clock or SystemClock()
        self.deployment_timeout_s = deployment_timeout_s
        self.settle_s = settle_s
        self.max_unzipped_bytes = max_unzipped_bytes
        self._store = StateStore(self.layout, fsync=fsync)
        self._writer = StateWriter(self._store, lambda: self._state, label=thing)
        self._client = RegistryClient(registry_base_url, thing, timeout_s=http_timeout_s)
        self._fetcher = ArtifactFetcher(
            self.layout.cache_dir,
            headers=self._client.headers,
            attempts=download_attempts,
            backoff_s=download_backoff_s,
            timeout_s=http_timeout_s,
            share=share,
        )
        self._share = share
        if executor is None:
            executor = InProcessExecutor() if mode == "in_process" else SubprocessExecutor(kill_grace=kill_grace_s)
        self._sup = Supervisor(
            thing=thing,
            layout=self.layout,
            executor=executor,
            clock=self.clock,
            report=report,
            persist=self._save,
            env=env,
            kill_grace=kill_grace_s,
        )
        self._state = DeviceState(thing=thing)
        self.ipc: DeviceIpc | None = None
        """The device's Greengrass IPC (None when off)."""
        if ipc if ipc is not None else mode == "subprocess":
            host = AgentHost(thing, lambda: self._state.components, self._sup, self._save)
            self.ipc = DeviceIpc(self.layout.root, host, region=region, serve_socket=mode == "subprocess", durable=fsync)
            self._sup.env_for = self.ipc.environment
        self._lock = asyncio.Lock()
        self._started = False
        self._dead = False
        self._applying: asyncio.Task[Any] | None = None

    # ------------------------------------------------------------------ views

    @property
    def state(self) -> DeviceState:
        """The device state as the agent holds it (don't modify it)."""
        return self._state

    @property
    def fetcher(self) -> ArtifactFetcher:
        """The agent's downloader (verified by digest, cached): also what a benchmark request downloads with."""
        return self._fetcher

    @property
    def last_deployment(self) -> DeploymentOutcome | None:
        return self._state.last_deployment

    def component_states(self) -> list[ComponentState]:
        """Every component's lifecycle state, for a :class:`edgekit.mqtt.payloads.DeviceStatus`."""
        return [
            ComponentState(
                name=r.name, version=r.version, state=r.state, status_codes=list(r.status_codes), status_reason=r.status_reason
            )
            for r in sorted(self._state.components.values(), key=lambda r: r.name)
        ]

    async def wait_for(self, component: str, states: Iterable[str], timeout_s: float) -> bool:
        """Whether ``component`` reaches one of ``states`` within ``timeout_s`` seconds."""
        return await self._sup.wait_for(component, states, timeout_s)

    # ------------------------------------------------------------------ persistence

    @property
    def state_writes(self) -> int:
        """How many times this agent wrote ``state.json`` (coalesced: see :class:`~edgekit.device.agent_state.StateWriter`)."""
        return self._writer.writes

    def _save(self) -> None:
        """The state changed: written soon, off the event loop, with the other changes of this loop turn."""
        if not self._dead:
            self._writer.request()

    async def _persist(self) -> None:
        """The state changed and must be on disk before going on (a deployment's start, an outcome to report)."""
        self._save()
        await self._writer.flush()

    def _gc(self) -> None:
        """Delete package folders of versions no component (nor the deployment's previous set) uses."""
        records = list(self._state.components.values())
        if self._state.in_progress is not None:
            records += list(self._state.in_progress.previous_components.values())
        keep = {(r.name, r.version) for r in records}
        declared = {(r.name, r.version): _declared_names(r) for r in records}
        names = {r.name for r in records}
        for base in (self.layout.artifacts_root, self.layout.unarchived_root):
            if not base.is_dir():
                continue
            for name_dir in base.iterdir():
                for version_dir in name_dir.iterdir() if name_dir.is_dir() else []:
                    if (name_dir.name, version_dir.name) not in keep:
                        shutil.rmtree(version_dir, ignore_errors=True)
                    else:
                        for leftover in version_dir.glob(".*"):  # staging of an interrupted download / unzip
                            if leftover.name in declared[(name_dir.name, version_dir.name)]:
                                continue  # a hidden artifact the recipe declares (.env, .assets.zip): not staging
                            if not _STAGING.fullmatch(leftover.name):
                                continue  # not a name the downloader stages under: not ours to delete
                            if leftover.is_dir():
                                shutil.rmtree(leftover, ignore_errors=True)
                            else:
                                leftover.unlink(missing_ok=True)
                if name_dir.is_dir() and not any(name_dir.iterdir()):
                    name_dir.rmdir()
        if self.layout.work_root.is_dir():
            for work in self.layout.work_root.iterdir():
                if work.name not in names:
                    shutil.rmtree(work, ignore_errors=True)

    # ------------------------------------------------------------------ outcomes

    def _outcome(
        self,
        job: JobDocument,
        target: str,
        status: DeploymentStatus,
        result: DeploymentResultCode,
        error: DeviceError | None = None,
        message: str = "",
    ) -> DeploymentOutcome:
        stack: list[str] = []
        if error is not None:
            stack = ["DEPLOYMENT_REJECTED" if status == "REJECTED" else "DEPLOYMENT_FAILURE", *error.stack]
        return DeploymentOutcome(
            deployment_id=job.deployment_id,
            target=target,
            status=status,
            result=result,
            error_code=error.code if error is not None else None,
            error_stack=stack,
            message=message or (error.detail if error is not None else ""),
            components={
                r.name: ComponentOutcome(
                    version=r.version, state=r.state, status_codes=list(r.status_codes), status_reason=r.status_reason
                )
                for r in sorted(self._state.components.values(), key=lambda r: r.name)
            },
            finished_at=self.clock.now(),
        )

    # ------------------------------------------------------------------ resume / stop / kill

    async def resume(self, *, redo_interrupted: bool = True) -> DeploymentOutcome | None:
        """Reload the state after a restart and bring back what was running (see docs/device-agent.md: resume).

        Returns the outcome of the deployment that was interrupted, if one was, else ``None``.
        """
        async with self._lock:
            if self._started:
                return None
            self._applying = asyncio.current_task()
            try:
                interrupted = await self._resume_locked()
                if interrupted is None:
                    return None
                if redo_interrupted:
                    return await self._apply_locked(interrupted)
                outcome = self._finish_interrupted(interrupted)
                await self._writer.flush()
                return outcome
            finally:
                self._applying = None

    async def _resume_locked(self) -> JobDocument | None:
        self._dead = False
        self._writer.active = True
        self._sup.persist_enabled = True
        state = self._store.load(self.thing)
        leftovers = {g: s for r in state.components.values() for g, s in r.take_groups().items()}
        interrupted: JobDocument | None = None
        if state.in_progress is not None:
            leftovers |= {g: s for r in state.in_progress.previous_components.values() for g, s in r.take_groups().items()}
            interrupted = JobDocument.model_validate(state.in_progress.job)
            logger.warning(
                "%s: deployment %s was interrupted; putting the previous components back", self.thing, interrupted.deployment_id
            )
            state.components = {n: r.model_copy(deep=True) for n, r in state.in_progress.previous_components.items()}
            state.targets = {t: r.model_copy(deep=True) for t, r in state.in_progress.previous_targets.items()}
        await _kill_leftovers(leftovers)
        for record in state.components.values():
            record.take_groups()
            if record.state not in ("FINISHED", "BROKEN"):
                record.state = "NEW"  # the launch state; Install is skipped when it already ran for this version
        self._state = state
        self._sup.components.clear()
        for record in state.components.values():
            self._sup.add(record)
        self._save()
        self._gc()
        if self.ipc is not None:
            await self.ipc.start()
        self._started = True
        await self._sup.start([r.name for r in state.components.values() if r.state == "NEW"])
        return interrupted

    def _finish_interrupted(self, job: JobDocument) -> DeploymentOutcome:
        try:
            target = parse_target(job.target)
        except DeviceError:
            target = job.target
        error = DeviceError(
            "DEPLOYMENT_INTERRUPTED", "the agent stopped during the deployment; the previous components were restored"
        )
        outcome = self._outcome(job, target, "FAILED", "FAILED_ROLLBACK_COMPLETE", error)
        self._state.in_progress = None
        self._state.remember(outcome)
        self._save()
        return outcome

    async def stop(self) -> None:
        """Stop every component (Shutdown, dependents first) and the agent's tasks.

        The stops are not saved: ``state.json`` keeps what was running, for :meth:`resume`.
        Cancel a running :meth:`apply` before calling this. What was saved before is on disk when this returns.
        """
        await self._writer.flush()
        self._sup.persist_enabled = False
        try:
            await self._sup.stop(list(self._sup.components))
        finally:
            self._sup.kill(leave_processes=False)
            await self._sup.drain()
            if self.ipc is not None:
                await self.ipc.close()
            self._started = False

    async def kill(self, *, leave_processes: bool = False) -> None:
        """A crash: cancel the deployment in flight and every task, run no Shutdown, write nothing.

        Process groups get SIGKILL unless ``leave_processes`` (then a later :meth:`resume` kills them, as
        after the agent's own process was killed). A step running in the cancelled deployment is always killed.
        The state writes asked for before the crash finish first (a crash once the writer caught up; each file is
        replaced atomically in any case).
        """
        await self._writer.flush()
        self._dead = True
        self._writer.active = False
        self._sup.persist_enabled = False
        applying = self._applying
        if applying is not None and applying is not asyncio.current_task() and not applying.done():
            applying.cancel()
            await asyncio.gather(applying, return_exceptions=True)
        self._sup.kill(leave_processes=leave_processes)
        await self._sup.drain()
        if self.ipc is not None:
            await self.ipc.close()
        self._started = False

    # ------------------------------------------------------------------ deployments

    async def apply(self, job: JobDocument) -> DeploymentOutcome:
        """Apply one deployment and return its outcome (see docs/device-agent.md: a deployment, in two phases). One at a time."""
        async with self._lock:
            self._applying = asyncio.current_task()
            try:
                if not self._started:
                    interrupted = await self._resume_locked()
                    if interrupted is not None and interrupted.deployment_id != job.deployment_id:
                        await self._apply_locked(interrupted)
                    elif interrupted is not None:
                        return await self._apply_locked(interrupted)
                return await self._apply_locked(job)
            finally:
                self._applying = None

    def _applies(self, target: str, job_target: str) -> bool:
        kind, _, name = target.partition("/")
        if target == job_target:
            return True
        return (kind == "thing" and name == self.thing) or (kind == "thinggroup" and name in self.groups)

    async def _apply_locked(self, job: JobDocument) -> DeploymentOutcome:
        done = self._state.outcomes.get(job.deployment_id)
        if done is not None:
            logger.info("%s: deployment %s was already processed (%s)", self.thing, job.deployment_id, done.result)
            return done
        try:
            target = parse_target(job.target)
            kind, _, name = target.partition("/")
            if kind == "thing" and name != self.thing:
                raise DeviceError("DEPLOYMENT_DOCUMENT_NOT_VALID", f"job for {target} reached thing '{self.thing}'")
            known = self._state.targets.get(target)
            if (
                known
                and known.creation_timestamp
                and job.creation_timestamp
                and job.creation_timestamp < known.creation_timestamp
            ):
                raise DeviceError(
                    "REJECTED_STALE_DEPLOYMENT",
                    f"{target} already runs deployment {known.deployment_id}, newer than {job.deployment_id}",
                )
        except DeviceError as exc:
            outcome = self._outcome(job, job.target, "REJECTED", "REJECTED", exc)
            self._state.remember(outcome)
            await self._persist()
            return outcome
        self._state.in_progress = InProgress(
            job=job.model_dump(mode="json", by_alias=True),
            previous_components={n: r.model_copy(deep=True) for n, r in self._state.components.items()},
            previous_targets={t: r.model_copy(deep=True) for t, r in self._state.targets.items()},
        )
        await self._persist()  # on disk before anything changes: a restart then puts the previous components back
        logger.info("%s: applying deployment %s for %s", self.thing, job.deployment_id, target)
        outcome = await self._deploy(job, target, self._state.in_progress)
        self._state.in_progress = None
        self._state.remember(outcome)
        await self._persist()  # on disk before the outcome is reported
        self._gc()
        logger.info("%s: deployment %s: %s %s", self.thing, job.deployment_id, outcome.result, outcome.error_code or "")
        return outcome

    async def _deploy(self, job: JobDocument, target: str, progress: InProgress) -> DeploymentOutcome:
        loop = asyncio.get_running_loop()
        minutes = job.timeouts.in_progress_timeout_in_minutes
        deadline = loop.time() + (minutes * 60.0 if minutes else self.deployment_timeout_s)
        targets = {t: r for t, r in self._state.targets.items() if self._applies(t, target)}
        targets[target] = TargetRecord(
            deployment_id=job.deployment_id,
            creation_timestamp=job.creation_timestamp,
            components={n: spec.version for n, spec in job.components.items()},
        )
        # 1. prepare: resolve, configure, download. Nothing running changes.
        try:
            plan = await self._plan(job, target, targets)
            for record in plan.values():
                current = self._state.components.get(record.name)
                if current is None or current.version != record.version:
                    await self._fetch(record)
        except (DeviceError, OSError) as exc:
            self._gc()
            error = exc if isinstance(exc, DeviceError) else DeviceError(("IO_ERROR", "IO_WRITE_ERROR"), str(exc))
            return self._outcome(job, target, "FAILED", "FAILED_NO_STATE_CHANGE", error)

        # 2. apply
        progress.phase = "apply"
        self._save()
        changes = _Changes()
        failure: DeviceError | None = None
        try:
            await self._notify_update(job, plan)
            changes = await self._switch(plan)
            remaining = max(0.0, deadline - loop.time())
            with contextlib.suppress(TimeoutError):  # wait_settled then says which component is late
                await asyncio.wait_for(self._sup.start(list(plan)), remaining)
            unsettled = await self._sup.wait_settled(list(plan), max(0.0, deadline - loop.time()), self.settle_s)
            if unsettled is not None:
                stack = (
                    ("COMPONENT_UPDATE_ERROR", "COMPONENT_BROKEN") if unsettled.kind == "BROKEN" else ("COMPONENT_UPDATE_ERROR",)
                )
                failure = DeviceError(stack, unsettled.message)
        except DeviceError as exc:
            failure = exc
        except OSError as exc:
            failure = DeviceError(("IO_ERROR", "IO_WRITE_ERROR"), str(exc))
        if self.ipc is not None and job.component_update_policy.action == "NOTIFY_COMPONENTS":
            self.ipc.after_update(job.deployment_id)
        if failure is None:
            self._state.targets = targets
            return self._outcome(job, target, "SUCCEEDED", "SUCCESSFUL")
        if job.failure_handling_policy == "DO_NOTHING":
            self._state.targets = targets
            return self._outcome(
                job, target, "FAILED", "FAILED_ROLLBACK_NOT_REQUESTED", failure, f"{failure.detail}; no rollback was requested"
            )
        progress.phase = "rollback"
        self._save()
        restored = await self._rollback(progress, changes)
        if restored is None:
            return self._outcome(
                job,
                target,
                "FAILED",
                "FAILED_ROLLBACK_COMPLETE",
                failure,
                f"{failure.detail}; the previous components were restored",
            )
        return self._outcome(
            job, target, "FAILED", "FAILED_UNABLE_TO_ROLLBACK", failure, f"{failure.detail}; rollback failed too: {restored}"
        )

    async def _plan(self, job: JobDocument, target: str, targets: Mapping[str, TargetRecord]) -> dict[str, InstalledComponent]:
        """Resolve the union of ``targets`` into the records the device should hold afterwards."""
        groups = set(self.groups) | {t.partition("/")[2] for t in targets if t.startswith("thinggroup/")}
        device = CoreDevice(self.thing, tuple(sorted(groups)), dict(self.platform))
        store = RegistryStore(self._client, [r.recipe for r in self._state.components.values()], share=self._share)
        deployments = [GroupDeployment(t, dict(r.components)) for t, r in targets.items()]
        try:
            resolution = await asyncio.to_thread(resolve_device, device, deployments, store)
        except ResolutionError as exc:
            raise DeviceError(exc.code, str(exc)) from exc
        except RecipeError as exc:
            raise DeviceError("RECIPE_PARSE_ERROR", str(exc)) from exc
        if resolution.problems:
            first = resolution.problems[0]
            more = f" (and {len(resolution.problems) - 1} more problem(s))" if len(resolution.problems) > 1 else ""
            raise DeviceError(first.code, f"{first.message}{more}")
        plan: dict[str, InstalledComponent] = {}
        for name, version in resolution.components.items():
            if not _SAFE_NAME.fullmatch(name) or not _SAFE_NAME.fullmatch(version):
                raise DeviceError(
                    "COMPONENT_METADATA_NOT_VALID_IN_DEPLOYMENT",
                    f"component '{name}' {version}: names and versions may use letters, digits, '.', '_', '-' and '+' only",
                )
            recipe = dict(store.recipe(name, version))
            default = (recipe.get("ComponentConfiguration") or {}).get("DefaultConfiguration") or {}
            current = self._state.components.get(name)
            spec = job.components.get(name)
            update = spec.configuration_update if spec is not None else None
            config = next_configuration(current.configuration if current else None, default, update)
            if (
                current is not None
                and current.version == version
                and current.configuration == config
                and current.state != "BROKEN"
            ):
                plan[name] = current
                continue
            plan[name] = InstalledComponent(
                name=name,
                version=version,
                recipe=recipe,
                manifest_index=resolution.manifests[name],
                configuration=config,
                installed=bool(current is not None and current.version == version and current.installed),
            )
        dependency_layers({n: r.dependencies() for n, r in plan.items()})  # refuses circular dependencies
        return plan

    async def _fetch(self, record: InstalledComponent) -> None:
        """Download, verify and unpack the artifacts of ``record``'s manifest."""
        art_dir = self.layout.artifacts(record.name, record.version)
        dec_dir = self.layout.decompressed(record.name, record.version)
        art_dir.mkdir(parents=True, exist_ok=True)
        dec_dir.mkdir(parents=True, exist_ok=True)
        for artifact in record.manifest.get("Artifacts") or []:
            uri = str(artifact.get("URI") or "")
            if not uri:
                raise DeviceError(
                    ("ARTIFACT_DOWNLOAD_ERROR", "EMPTY_ARTIFACT_URI"), f"{record.name} {record.version}: an artifact has no URI"
                )
            digest = artifact.get("Digest")
            if not digest:
                raise DeviceError(
                    ("ARTIFACT_DOWNLOAD_ERROR", "RECIPE_MISSING_ARTIFACT_HASH_ALGORITHM"),
                    f"{record.name} {record.version}: artifact {uri} has no Digest; the device verifies every download",
                )
            file_name = artifact_file_name(uri)
            file_mode, folder_mode = permission_modes(artifact.get("Permission"))
            cached = await self._fetcher.fetch(uri, str(digest), str(artifact.get("Algorithm") or "SHA-256"))
            dest = art_dir / file_name
            await asyncio.to_thread(place, cached, dest)
            if str(artifact.get("Unarchive") or "NONE").upper() == "ZIP":
                unpacked = dec_dir / Path(urllib.parse.unquote(file_name)).stem
                if unpacked.exists():
                    pass
                elif self._share is not None and self._share.share_unpacks:  # links to the share's one unpacked copy
                    await self._share.unpack(
                        cached,
                        cached.name,
                        unpacked,
                        max_bytes=self.max_unzipped_bytes,
                        file_mode=file_mode,
                        folder_mode=folder_mode,
                    )
                else:
                    await asyncio.to_thread(
                        safe_unzip,
                        dest,
                        unpacked,
                        max_bytes=self.max_unzipped_bytes,
                        file_mode=file_mode,
                        folder_mode=folder_mode,
                    )
            dest.chmod(file_mode)

    async def _notify_update(self, job: JobDocument, plan: Mapping[str, InstalledComponent]) -> None:
        """Tell IPC subscribers a deployment is about to change components, and wait out their deferrals."""
        current = self._state.components
        if self.ipc is None or job.component_update_policy.action != "NOTIFY_COMPONENTS":
            return
        if any(n not in plan or plan[n] is not r for n, r in current.items()):
            await self.ipc.before_update(job.deployment_id, float(job.component_update_policy.timeout_s))

    def _reconfigure(self, plan: dict[str, InstalledComponent], names: list[str]) -> list[str]:
        """Give running components their new configuration in place when no restart is needed; returns those."""
        current = self._state.components
        done: list[str] = []
        for name in names:
            old = current[name].configuration
            if plan[name].configuration != old and not restart_needed(self._sup, current[name], plan[name]):
                current[name].configuration = plan[name].configuration
                plan[name] = current[name]
                done.append(name)
            if self.ipc is not None and plan[name].configuration != old:
                self.ipc.configuration_changed(name, old, plan[name].configuration)
        return done

    async def _switch(self, plan: dict[str, InstalledComponent]) -> _Changes:
        """Stop what goes or changes (dependents first) and put the new records in place."""
        current = self._state.components
        changes = _Changes(
            removed=[n for n in current if n not in plan],
            changed=[n for n in plan if n in current and plan[n] is not current[n]],
            added=[n for n in plan if n not in current],
        )
        changes.reconfigured = self._reconfigure(plan, changes.changed)
        changes.changed = [n for n in changes.changed if n not in changes.reconfigured]
        hard_dependents = self._sup.dependents(changes.changed) - set(changes.changed) - set(changes.removed)
        changes.restarted = sorted(n for n in hard_dependents if current[n].state not in ("NEW", "INSTALLED", "BROKEN"))
        await self._sup.stop(changes.restarted, then="INSTALLED")
        await self._sup.stop([*changes.removed, *changes.changed])
        for name in changes.removed:
            self._sup.remove(name)
            del current[name]
            if self.ipc is not None:
                self.ipc.forget(name)
        for name in [*changes.changed, *changes.added]:
            self._sup.remove(name)
            current[name] = plan[name]
            self._sup.add(plan[name])
        self._save()
        return changes

    async def _rollback(self, progress: InProgress, changes: _Changes) -> str | None:
        """Put the previous components back; ``None`` when they came up, else why not."""
        touched = [n for n in dict.fromkeys(changes.touched) if n in self._sup.components]
        try:
            await self._sup.stop(touched)
        except DeviceError as exc:  # can't order them (shouldn't happen): stop one by one
            logger.warning("%s: %s", self.thing, exc)
            for name in touched:
                await self._sup.components[name].stop()
        current = self._state.components
        for name in touched:
            self._sup.remove(name)
            current.pop(name, None)
        starting: list[str] = []
        for name in dict.fromkeys(changes.touched):
            previous = progress.previous_components.get(name)
            if previous is None:
                continue
            record = previous.model_copy(deep=True)
            record.take_groups()
            if record.state not in ("FINISHED", "BROKEN"):
                record.state = "NEW"
                starting.append(name)
            current[name] = record
            self._sup.add(record)
        self._state.targets = {t: r.model_copy(deep=True) for t, r in progress.previous_targets.items()}
        self._save()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._sup.start(starting), self.deployment_timeout_s)
        unsettled = await self._sup.wait_settled(starting, self.deployment_timeout_s, self.settle_s)
        return None if unsettled is None else unsettled.message


async def _kill_leftovers(groups: dict[int, str | None], wait_s: float = 5.0) -> None:
    """SIGKILL process groups a previous agent started and left behind: only those still the processes it started
    (:func:`~edgekit.device.executor.owned_group`: the leader's boot id and start time; a recycled pid is left alone)."""
    killed: list[int] = []
    for pgid, stamp in groups.items():
        if owned_group(pgid, stamp) and kill_group(pgid, signal.SIGKILL):
            logger.warning("killed process group %d left by a previous agent", pgid)
            killed.append(pgid)
        elif stamp is None:
            logger.warning("process group %d was recorded without a start time: left alone (it can't be told apart)", pgid)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    for pgid in killed:  # gone before anything starts again: a step never runs beside itself
        await wait_group_gone(pgid, max(0.0, deadline - loop.time()))
