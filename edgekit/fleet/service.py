"""The local fleet service: things, thing groups, deployments as IoT jobs, rollout, abort and timeouts.

Every change goes to the SQLite state and time comes from an injected clock; nothing here sleeps,
talks MQTT or runs a thread (:mod:`edgekit.fleet.jobs_api` does the wiring). See docs/local-fleet.md (deployments as jobs).
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal, NamedTuple

from pydantic import TypeAdapter, ValidationError

from edgekit.clock import Clock, SystemClock
from edgekit.errors import ConfigError, DeploymentError
from edgekit.fleet.errors import JobRejected, NotFoundError
from edgekit.fleet.jobs import (
    DEVICE_STATUSES,
    TERMINAL_STATUSES,
    Target,
    job_document,
    parse_target,
    target_key,
)
from edgekit.fleet.rollout import WINDOW_SECONDS, AbortDecision, RolloutPolicy, evaluate_abort
from edgekit.fleet.state import DeploymentRecord, ExecutionRecord, FleetState
from edgekit.fleet_file import FleetDevice
from edgekit.greengrass.deployment import DeploymentSpec
from edgekit.mqtt.payloads import JobDocument, JobExecution, JobExecutionState, JobExecutionSummary, StatusDetails

__all__ = [
    "DeploymentSummary",
    "ExecutionEvent",
    "FleetService",
    "FleetSummary",
    "GroupSummary",
    "Notification",
    "PendingJobs",
    "ThingSummary",
    "UpdateResult",
]

log = logging.getLogger(__name__)

NEXT_JOB: Final = "$next"
_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
_JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_DETAILS: TypeAdapter[dict[str, str]] = TypeAdapter(StatusDetails)
_LIVE: Final = ("ACTIVE", "COMPLETED")


class Notification(NamedTuple):
    """An execution the rollout allows to notify now."""

    thing: str
    job_id: str


EventKind = Literal["queued", "notified", "updated", "canceled", "timed_out"]


class ExecutionEvent(NamedTuple):
    """A committed change of one execution: ``kind`` is queued, notified, updated, canceled or timed_out."""

    thing: str
    job_id: str
    status: str
    version_number: int
    kind: EventKind


@dataclass(frozen=True)
class PendingJobs:
    """What GetPendingJobExecutions answers: the thing's released, unfinished executions, oldest first."""

    in_progress: list[JobExecutionSummary]
    queued: list[JobExecutionSummary]


@dataclass(frozen=True)
class UpdateResult:
    """The outcome of an accepted UpdateJobExecution."""

    state: JobExecutionState
    deployment_status: str
    abort: AbortDecision | None = None
    canceled: tuple[str, ...] = ()
    """Things whose queued executions the abort canceled."""


@dataclass(frozen=True)
class DeploymentSummary:
    id: str
    target: str
    status: str
    created_at: float
    counts: dict[str, int]
    replaced_by: str | None = None
    reason: str | None = None

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @classmethod
    def of(cls, record: DeploymentRecord, counts: dict[str, int]) -> DeploymentSummary:
        """The summary of a stored deployment with its executions' ``counts`` by status."""
        return cls(
            id=record.id,
            target=record.target,
            status=record.status,
            created_at=record.created_at,
            counts=counts,
            replaced_by=record.replaced_by,
            reason=str(record.status_reason.get("reason")) if record.status_reason else None,
        )


@dataclass(frozen=True)
class GroupSummary:
    """A group, its members and the counts of its latest deployment's executions."""

    name: str
    members: int
    deployment_id: str | None
    deployment_status: str | None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class ThingSummary:
    """A thing and the status of its most recently changed execution."""

    name: str
    groups: tuple[str, ...]
    last_status: str | None
    deployment_id: str | None
    last_seen: float | None


@dataclass(frozen=True)
class FleetSummary:
    deployments: list[DeploymentSummary]
    groups: list[GroupSummary]
    things: list[ThingSummary]


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"'{name}' is not a valid {what} name: use 1-128 characters from a-z A-Z 0-9 : _ - (AWS IoT's pattern)")
    return name


def _seconds(t: float | None) -> int | None:
    return None if t is None else int(t)


class FleetService:
    """Deployments to a local fleet as IoT jobs; see docs/local-fleet.md (deployments as jobs).

    Whoever wires the MQTT side (:class:`~edgekit.fleet.jobs_api.FleetMqttBridge`) calls, per tick (any interval up
    to :data:`~edgekit.fleet.rollout.BURST_SECONDS`, 10 s, keeps the full rate)::

        for thing, job_id in service.due_notifications():   # rollout-paced
            publish notify(thing) ...; service.mark_notified(thing, job_id)
        service.expire()                                    # in-progress timeouts

    and answers the Jobs API topics with :meth:`pending_jobs`, :meth:`describe` and :meth:`update_execution`
    (:class:`~edgekit.fleet.errors.JobRejected` → the ``rejected`` reply). :meth:`subscribe` reports every
    execution change after it is committed (e.g. to notify a device whose queued job was canceled).

    ``new_id`` makes deployment ids (UUIDs by default): tests inject it for stable ids.
    """

    def __init__(self, state: FleetState, clock: Clock | None = None, *, new_id: Callable[[], str] | None = None) -> None:
        self.state = state
        self.clock: Clock = clock or SystemClock()
        self._new_id = new_id or (lambda: str(uuid.uuid4()))
        self._listeners: list[Callable[[ExecutionEvent], None]] = []
        self._specs: dict[str, DeploymentSpec] = {}
        self._documents: dict[str, JobDocument] = {}

    # ------------------------------------------------------------------ plumbing

    def subscribe(self, listener: Callable[[ExecutionEvent], None]) -> None:
        """Call ``listener`` with every execution change, after it is committed."""
        self._listeners.append(listener)

    def _emit(self, events: list[ExecutionEvent]) -> None:
        """Report ``events`` to the listeners once they are committed (at once, or when an outer transaction commits)."""
        if events and self._listeners:
            self.state.after_commit(lambda: self._dispatch(list(events)))

    def _dispatch(self, events: list[ExecutionEvent]) -> None:
        for event in events:
            for listener in self._listeners:
                try:
                    listener(event)
                except Exception:
                    log.exception("fleet listener %r failed on %s", listener, event)

    def _spec(self, record: DeploymentRecord) -> DeploymentSpec:
        spec = self._specs.get(record.id)
        if spec is None:
            spec = self._specs[record.id] = DeploymentSpec.from_dict(record.spec)
        return spec

    def _deployment(self, deployment_id: str) -> DeploymentRecord:
        record = self.state.get_deployment(deployment_id)
        if record is None:
            raise NotFoundError(f"no deployment '{deployment_id}' in the local fleet")
        return record

    def _write(self, record: ExecutionRecord, events: list[ExecutionEvent], kind: EventKind) -> None:
        self.state.write_execution(record)
        events.append(ExecutionEvent(record.thing, record.deployment_id, record.status, record.version_number, kind))

    def _now(self) -> float:
        return self.clock.now()

    # ------------------------------------------------------------------ things and groups

    def register_thing(
        self, name: str, profile: str = "", platform: Mapping[str, str] | None = None, groups: Iterable[str] = ()
    ) -> list[str]:
        """Register (or update) a thing and add it to ``groups`` (created if new).

        Returns the job ids queued for it: the latest live deployment of each of its groups it had none of.
        """
        _check_name(name, "thing")
        wanted = [_check_name(g, "thing group") for g in groups]
        now, events = self._now(), list[ExecutionEvent]()
        with self.state.transaction():
            created = self.state.upsert_thing(name, profile, dict(platform or {}), now)
            for group in wanted:
                if self.state.ensure_group(group, now):
                    log.info("thing group %s created", group)
                if self.state.add_member(group, name, now):
                    log.info("thing %s added to group %s", name, group)
            queued = self._catch_up(name, now, events)
        log.info(
            "thing %s %s (profile %s, groups %s)", name, "registered" if created else "updated", profile or "-", wanted or "-"
        )
        self._emit(events)
        return queued

    def register_devices(self, devices: Iterable[FleetDevice]) -> None:
        """Register every device of a fleet file (:meth:`edgekit.fleet_file.FleetFile.expand`) in one transaction."""
        with self.state.transaction():
            for device in devices:
                self.register_thing(device.thing, device.profile, device.platform, device.groups)

    def add_to_group(self, thing: str, group: str) -> list[str]:
        """Put a registered ``thing`` in ``group`` (created if new); returns the job ids queued for it."""
        _check_name(group, "thing group")
        now, events = self._now(), list[ExecutionEvent]()
        with self.state.transaction():
            if self.state.get_thing(thing) is None:
                raise NotFoundError(f"thing '{thing}' is not registered; register_thing it first")
            if self.state.ensure_group(group, now):
                log.info("thing group %s created", group)
            if self.state.add_member(group, thing, now):
                log.info("thing %s added to group %s", thing, group)
            queued = self._catch_up(thing, now, events)
        self._emit(events)
        return queued

    def remove_from_group(self, thing: str, group: str) -> None:
        """Take ``thing`` out of ``group``; its QUEUED executions of the group's deployments are CANCELED."""
        now, events = self._now(), list[ExecutionEvent]()
        with self.state.transaction():
            if not self.state.remove_member(group, thing):
                return
            key = target_key(("thinggroup", group))
            for deployment in self.state.deployments(target=key):
                record = self.state.get_execution(deployment.id, thing)
                if record is not None and record.status == "QUEUED":
                    self._write(
                        replace(record, status="CANCELED", version_number=record.version_number + 1, updated_at=now),
                        events,
                        "canceled",
                    )
            log.info("thing %s removed from group %s", thing, group)
        self._emit(events)

    def touch(self, thing: str) -> None:
        """Note that ``thing`` was heard from (the Jobs API calls do this themselves)."""
        self.state.touch_thing(thing, self._now())

    def _live(self, key: str) -> DeploymentRecord | None:
        latest = self.state.latest_deployment(key)
        return latest if latest is not None and latest.status in _LIVE else None

    def _catch_up(self, thing: str, now: float, events: list[ExecutionEvent]) -> list[str]:
        """Queue, for ``thing``, the live deployment of each of its groups it has no execution of."""
        queued = []
        for group in self.state.groups_of(thing):
            deployment = self._live(target_key(("thinggroup", group)))
            if deployment is None or not self.state.insert_execution(deployment.id, thing, now):
                continue
            queued.append(deployment.id)
            events.append(ExecutionEvent(thing, deployment.id, "QUEUED", 1, "queued"))
            log.info("job %s queued for %s, which joined group %s", deployment.id, thing, group)
            if deployment.status == "COMPLETED":
                self.state.set_deployment_status(deployment.id, "ACTIVE", now)
                log.info("deployment %s ACTIVE again: %s joined %s", deployment.id, thing, group)
        return queued

    # ------------------------------------------------------------------ deployments

    def create_deployment(self, spec: DeploymentSpec | Mapping[str, Any], *, require_published: bool = True) -> str:
        """Create a deployment (the spec of ``edgekit.greengrass.deploy``) and queue its job executions.

        The target's previous deployment is replaced. With ``require_published`` (the default) every
        component version must be published in the local registry. Returns the deployment id (= job id).
        """
        if not isinstance(spec, DeploymentSpec):
            spec = DeploymentSpec.from_dict(spec)
        target: Target = parse_target(spec.target_arn)
        key = target_key(target)
        if require_published:
            missing = [
                f"{name} {c.component_version}"
                for name, c in spec.components.items()
                if self.state.get_component(name, c.component_version) is None
            ]
            if missing:
                raise DeploymentError(
                    f"component version(s) not published in the local fleet: {', '.join(missing)}; publish them first "
                    "(publish_local) or deploy versions that exist"
                )
        now, events = self._now(), list[ExecutionEvent]()
        with self.state.transaction():
            if target[0] == "thing":
                if self.state.get_thing(target[1]) is None:
                    raise DeploymentError(f"target thing '{target[1]}' is not registered in the local fleet")
                things = [target[1]]
            else:
                if not self.state.group_exists(target[1]):
                    raise DeploymentError(f"target thing group '{target[1]}' does not exist in the local fleet")
                things = self.state.members(target[1])
            deployment_id = self._new_id()
            if not _JOB_ID.match(deployment_id):
                raise DeploymentError(f"deployment id '{deployment_id}' is not a valid job id (1-64 of a-z A-Z 0-9 _ -)")
            previous = self.state.deployments(target=key, statuses=_LIVE)
            body = spec.model_dump(by_alias=True, exclude_none=True, mode="json")
            self.state.insert_deployment(deployment_id, key, body, now)
            for old in previous:
                self.state.set_deployment_status(old.id, "INACTIVE", now, replaced_by=deployment_id)
                canceled = self._cancel_queued(old.id, now, events)
                log.info(
                    "deployment %s INACTIVE: replaced by %s (%d queued execution(s) canceled)",
                    old.id,
                    deployment_id,
                    len(canceled),
                )
            for thing in things:
                self.state.insert_execution(deployment_id, thing, now)
                events.append(ExecutionEvent(thing, deployment_id, "QUEUED", 1, "queued"))
        self._specs[deployment_id] = spec
        log.info(
            "deployment %s ACTIVE for %s: %d thing(s), components %s",
            deployment_id,
            key,
            len(things),
            {n: c.component_version for n, c in spec.components.items()},
        )
        self._emit(events)
        return deployment_id

    def cancel_deployment(self, deployment_id: str) -> list[str]:
        """Cancel a live deployment: CANCELED, its QUEUED executions too. Returns the things canceled."""
        now, events = self._now(), list[ExecutionEvent]()
        with self.state.transaction():
            record = self._deployment(deployment_id)
            if record.status not in _LIVE:
                return []
            self.state.set_deployment_status(deployment_id, "CANCELED", now, reason={"reason": "canceled by request"})
            canceled = self._cancel_queued(deployment_id, now, events)
        log.info("deployment %s CANCELED by request (%d queued execution(s) canceled)", deployment_id, len(canceled))
        self._emit(events)
        return canceled

    def _cancel_queued(self, deployment_id: str, now: float, events: list[ExecutionEvent]) -> list[str]:
        things = []
        for record in self.state.executions(deployment_id=deployment_id, statuses=("QUEUED",)):
            self._write(
                replace(record, status="CANCELED", version_number=record.version_number + 1, updated_at=now), events, "canceled"
            )
            things.append(record.thing)
        return things

    def deployment(self, deployment_id: str) -> DeploymentRecord:
        """The stored deployment (status, target, spec, replaced_by, status_reason)."""
        return self._deployment(deployment_id)

    def job_document(self, job_id: str) -> JobDocument:
        """The job document of a deployment."""
        document = self._documents.get(job_id)
        if document is None:
            record = self._deployment(job_id)
            document = self._documents[job_id] = job_document(record.id, self._spec(record), record.created_at)
        return document

    # ------------------------------------------------------------------ rollout

    def _rate(self, record: DeploymentRecord) -> tuple[RolloutPolicy, float]:
        policy = RolloutPolicy.from_spec(self._spec(record))
        if policy.base_per_minute is None:
            return policy, policy.rate(0, 0)
        succeeded = self.state.status_counts(record.id).get("SUCCEEDED", 0) if policy.increase_on == "succeeded" else 0
        notified = self.state.notified_count(record.id) if policy.increase_on == "notified" else 0
        return policy, policy.rate(notified, succeeded)

    def rollout_rate(self, deployment_id: str) -> float:
        """The deployment's rollout rate now, in things per minute."""
        return self._rate(self._deployment(deployment_id))[1]

    def due_notifications(self) -> list[Notification]:
        """The QUEUED executions the rollout allows to notify now (pure: call :meth:`mark_notified` for each sent)."""
        now = self._now()
        due: list[Notification] = []
        for record in self.state.deployments(statuses=("ACTIVE",)):
            policy, rate = self._rate(record)
            tokens = policy.tokens(record.rollout_tokens, record.rollout_at, rate, now)
            in_window = self.state.notified_count(record.id, since=now - WINDOW_SECONDS)
            allowed = policy.allowance(tokens, rate, in_window)
            if allowed:
                due += [Notification(e.thing, record.id) for e in self.state.unnotified(record.id, allowed)]
        return due

    def mark_notified(self, thing: str, job_id: str) -> bool:
        """Record that ``thing`` was notified of ``job_id``: the execution is released and takes a rollout token.

        False (and nothing changes) if the execution was notified already or is no longer QUEUED.
        """
        now, events = self._now(), list[ExecutionEvent]()
        with self.state.transaction():
            record = self.state.get_execution(job_id, thing)
            if record is None:
                raise NotFoundError(f"no job execution of {job_id} for thing '{thing}'")
            if record.notified_at is not None or record.status != "QUEUED":
                return False
            deployment = self._deployment(job_id)
            policy, rate = self._rate(deployment)
            tokens, refill_from = policy.take(deployment.rollout_tokens, deployment.rollout_at, rate, now)
            self.state.set_rollout_bucket(job_id, tokens, refill_from)
            self._write(replace(record, notified_at=now), events, "notified")
        log.debug("job %s released to %s", job_id, thing)
        self._emit(events)
        return True

    def notify_due(self) -> list[Notification]:
        """:meth:`due_notifications`, each marked notified: what a service tick with a reliable publish does."""
        due = self.due_notifications()
        return [n for n in due if self.mark_notified(n.thing, n.job_id)]

    # ------------------------------------------------------------------ the Jobs API

    def _summary(self, record: ExecutionRecord) -> JobExecutionSummary:
        return JobExecutionSummary(
            job_id=record.deployment_id,
            execution_number=record.execution_number,
            version_number=record.version_number,
            queued_at=_seconds(record.queued_at),
            started_at=_seconds(record.started_at),
            last_updated_at=_seconds(record.updated_at),
        )

    def _state(self, record: ExecutionRecord) -> JobExecutionState:
        return JobExecutionState(
            status=record.status, status_details=record.status_details or None, version_number=record.version_number
        )

    def _visible(self, thing: str) -> list[ExecutionRecord]:
        records = self.state.executions(thing=thing, statuses=("QUEUED", "IN_PROGRESS"))
        return [r for r in records if r.notified_at is not None or r.status == "IN_PROGRESS"]

    def pending_jobs(self, thing: str) -> PendingJobs:
        """GetPendingJobExecutions: the thing's released QUEUED and IN_PROGRESS executions (what a device asks on reconnect)."""
        self.touch(thing)
        visible = self._visible(thing)
        return PendingJobs(
            in_progress=[self._summary(r) for r in visible if r.status == "IN_PROGRESS"],
            queued=[self._summary(r) for r in visible if r.status == "QUEUED"],
        )

    def _released(self, thing: str, job_id: str) -> ExecutionRecord:
        record = self.state.get_execution(job_id, thing) if _JOB_ID.match(job_id) else None
        if record is None or (record.notified_at is None and record.status == "QUEUED"):
            raise JobRejected("ResourceNotFound", f"no job execution of job '{job_id}' for thing '{thing}'")
        return record

    def describe(self, thing: str, job_id: str = NEXT_JOB, *, include_document: bool = True) -> JobExecution | None:
        """DescribeJobExecution, with the job document. ``$next``: the next pending execution, or None when there is none."""
        self.touch(thing)
        if job_id == NEXT_JOB:
            visible = self._visible(thing)
            pending = [r for r in visible if r.status == "IN_PROGRESS"] + [r for r in visible if r.status == "QUEUED"]
            if not pending:
                return None
            record = pending[0]
        else:
            record = self._released(thing, job_id)
        return JobExecution(
            job_id=record.deployment_id,
            thing_name=thing,
            status=record.status,
            job_document=self.job_document(record.deployment_id) if include_document else None,
            status_details=record.status_details or None,
            queued_at=_seconds(record.queued_at),
            started_at=_seconds(record.started_at),
            last_updated_at=_seconds(record.updated_at),
            version_number=record.version_number,
            execution_number=record.execution_number,
        )

    def update_execution(
        self,
        thing: str,
        job_id: str,
        status: str,
        status_details: Mapping[str, str] | None = None,
        expected_version: int | None = None,
    ) -> UpdateResult:
        """UpdateJobExecution from a device, as IoT Jobs checks it; raises :class:`JobRejected` when refused.

        ``status`` is IN_PROGRESS, SUCCEEDED, FAILED or REJECTED; ``status_details`` replaces the stored details
        (kept when None); ``expected_version`` makes the update a compare-and-set (``VersionMismatch``
        otherwise). A terminal execution never changes (``TerminalStateReached``). After the update the
        deployment's abort criteria are evaluated (and may cancel it) and its completion checked.
        """
        self.touch(thing)
        if status not in DEVICE_STATUSES:
            raise JobRejected("InvalidRequest", f"a device can't set status {status}; report one of {', '.join(DEVICE_STATUSES)}")
        details: dict[str, str] | None = None
        if status_details is not None:
            try:
                details = _DETAILS.validate_python(dict(status_details))
            except ValidationError as exc:
                problem = exc.errors()[0]
                raise JobRejected(
                    "InvalidRequest", f"statusDetails {'.'.join(map(str, problem['loc']))}: {problem['msg']}"
                ) from exc
        now, events = self._now(), list[ExecutionEvent]()
        with self.state.transaction():
            record = self._released(thing, job_id)
            if record.status in TERMINAL_STATUSES:
                raise JobRejected(
                    "TerminalStateReached",
                    f"job {job_id} for {thing} is already {record.status}; a finished execution never changes",
                    self._state(record),
                )
            if expected_version is not None and expected_version != record.version_number:
                raise JobRejected(
                    "VersionMismatch",
                    f"expected version {expected_version} of job {job_id} for {thing}, but it is at version "
                    f"{record.version_number} (status {record.status}); describe it again and retry",
                    self._state(record),
                )
            updated = replace(
                record,
                status=status,
                version_number=record.version_number + 1,
                status_details=details if details is not None else record.status_details,
                started_at=record.started_at if record.started_at is not None or status != "IN_PROGRESS" else now,
                updated_at=now,
            )
            self._write(updated, events, "updated")
            log.info("job %s on %s: %s -> %s (version %d)", job_id, thing, record.status, status, updated.version_number)
            abort, canceled = self._after_change(job_id, now, events)
            deployment_status = self._deployment(job_id).status
        self._emit(events)
        return UpdateResult(self._state(updated), deployment_status, abort, tuple(canceled))

    def _after_change(
        self, deployment_id: str, now: float, events: list[ExecutionEvent]
    ) -> tuple[AbortDecision | None, list[str]]:
        """Abort or complete an ACTIVE deployment after one of its executions changed (inside the transaction)."""
        record = self._deployment(deployment_id)
        if record.status != "ACTIVE":
            return None, []
        counts = self.state.status_counts(deployment_id)
        job = self._spec(record).iot_job_configuration
        criteria = job.abort_config.criteria_list if job is not None and job.abort_config is not None else []
        decision = evaluate_abort(criteria, counts)
        if decision is not None:
            self.state.set_deployment_status(deployment_id, "CANCELED", now, reason=decision.as_dict())
            canceled = self._cancel_queued(deployment_id, now, events)
            log.warning(
                "deployment %s CANCELED: %s; %d queued execution(s) canceled", deployment_id, decision.describe(), len(canceled)
            )
            return decision, canceled
        if counts and all(status in TERMINAL_STATUSES for status in counts):
            self.state.set_deployment_status(deployment_id, "COMPLETED", now)
            log.info("deployment %s COMPLETED: %s", deployment_id, counts)
        return None, []

    # ------------------------------------------------------------------ time

    def expire(self, now: float | None = None) -> list[Notification]:
        """Set TIMED_OUT every IN_PROGRESS execution older than its ``inProgressTimeoutInMinutes``; returns them.

        Timed-out executions count toward the abort criteria like failures reported by devices.
        """
        now = self._now() if now is None else now
        timed_out: list[Notification] = []
        events: list[ExecutionEvent] = []
        with self.state.transaction():
            for deployment in self.state.deployments():
                job = self._spec(deployment).iot_job_configuration
                if job is None or job.timeout_config is None:
                    continue
                limit = job.timeout_config.in_progress_timeout_in_minutes * 60.0
                expired = [
                    r
                    for r in self.state.executions(deployment_id=deployment.id, statuses=("IN_PROGRESS",))
                    if r.started_at is not None and now - r.started_at >= limit
                ]
                for record in expired:
                    self._write(
                        replace(record, status="TIMED_OUT", version_number=record.version_number + 1, updated_at=now),
                        events,
                        "timed_out",
                    )
                    timed_out.append(Notification(record.thing, deployment.id))
                    log.warning("job %s on %s TIMED_OUT after %g minute(s) in progress", deployment.id, record.thing, limit / 60)
                if expired:
                    self._after_change(deployment.id, now, events)
        self._emit(events)
        return timed_out

    # ------------------------------------------------------------------ status

    def summary(self) -> FleetSummary:
        """Counts by status per deployment and per group (its latest deployment), and each thing's last status."""
        deployments = [DeploymentSummary.of(d, self.state.status_counts(d.id)) for d in self.state.deployments()]
        by_id = {d.id: d for d in deployments}
        groups = []
        for name in self.state.groups():
            latest = self.state.latest_deployment(target_key(("thinggroup", name)))
            groups.append(
                GroupSummary(
                    name=name,
                    members=len(self.state.members(name)),
                    deployment_id=latest.id if latest else None,
                    deployment_status=latest.status if latest else None,
                    counts=dict(by_id[latest.id].counts) if latest else {},
                )
            )
        last: dict[str, ExecutionRecord] = {}
        for record in self.state.executions():
            current = last.get(record.thing)
            if current is None or (record.updated_at, record.queued_at) >= (current.updated_at, current.queued_at):
                last[record.thing] = record
        things = [
            ThingSummary(
                name=t.name,
                groups=tuple(self.state.groups_of(t.name)),
                last_status=last[t.name].status if t.name in last else None,
                deployment_id=last[t.name].deployment_id if t.name in last else None,
                last_seen=t.last_seen,
            )
            for t in self.state.things()
        ]
        return FleetSummary(deployments, groups, things)
