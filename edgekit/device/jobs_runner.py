"""A device on MQTT: receives deployments as IoT Jobs (Greengrass namespace) and runs them with a :class:`DeviceAgent`.

::

    runner = await run_device("gw-1", "/var/lib/edgekit/gw-1", {"os": "linux", "architecture": "amd64"},
                              "http://fleet:8080", "mqtts://broker:8883", tls=material.device("gw-1"), groups=["line-1"])
    await runner.stop()

See docs/device-agent.md (jobs over MQTT).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from edgekit.device.agent import DeviceAgent
from edgekit.device.outcome import DeploymentOutcome
from edgekit.mqtt import topics
from edgekit.mqtt.client import MqttClient, MqttMessage, TlsPaths
from edgekit.mqtt.errors import BrokerError, PayloadError
from edgekit.mqtt.names import JOB_ID
from edgekit.mqtt.payloads import (
    DescribeJobExecutionRequest,
    DescribeJobExecutionResponse,
    DeviceStatus,
    JobExecution,
    JobExecutionsChanged,
    JobsRejected,
    UpdateJobExecutionRequest,
    UpdateJobExecutionResponse,
    WireMessage,
    decode,
)

__all__ = ["DeviceMqttRunner", "JobRun", "RequestFailed", "run_device"]

log = logging.getLogger(__name__)

_UNHEALTHY: Final = frozenset({"ERRORED", "BROKEN"})
_MAX_JOBS_PER_ROUND: Final = 32
_SETTLED: Final = frozenset({"TerminalStateReached", "VersionMismatch", "ResourceNotFound"})
_Reply = DescribeJobExecutionResponse | UpdateJobExecutionResponse | JobsRejected
Trigger = Literal["NUCLEUS_LAUNCH", "RECONNECT", "COMPONENT_STATUS_CHANGE", "THING_GROUP_DEPLOYMENT", "THING_DEPLOYMENT"]


class RequestFailed(BrokerError):
    """A Jobs request got no reply after every attempt (the broker or the service is unreachable)."""


@dataclass(frozen=True)
class JobRun:
    """One job this device ran: its final status and how long it took (seconds, loop clock)."""

    job_id: str
    status: str
    result: str
    started: float
    """When ``$next`` returned it."""
    applied_s: float
    """Time in :meth:`DeviceAgent.apply`."""
    total_s: float
    """From ``$next`` returning it to the final update being accepted."""
    reported: bool
    """Whether the service accepted the final status."""


@dataclass(frozen=True)
class _Update:
    accepted: bool
    version: int | None
    code: str = ""
    why: str = ""

    @property
    def settled(self) -> bool:
        """Refused for good reasons the service will not repeat: the execution changed or ended meanwhile."""
        return self.code in _SETTLED


class DeviceMqttRunner:
    """Runs the deployments a device receives over MQTT with its :class:`DeviceAgent`; see docs/device-agent.md.

    The agent's ``report`` callback must reach :meth:`component_changed` for the transitions to be reported;
    the agent is made first, so pass a forwarder (what :func:`run_device` does)::

        runner: DeviceMqttRunner | None = None
        agent = DeviceAgent(..., report=lambda *change: runner.component_changed(*change) if runner else None)
        runner = DeviceMqttRunner(agent, client)

    ``owns_agent`` / ``owns_client``: :meth:`stop` also stops the agent / disconnects the client
    (:func:`run_device` sets both).
    """

    def __init__(
        self,
        agent: DeviceAgent,
        client: MqttClient,
        *,
        request_timeout_s: float = 10.0,
        request_attempts: int = 6,
        retry_delay_s: float = 0.5,
        status_debounce_s: float = 0.25,
        max_retry_s: float = 60.0,
        resume: bool = True,
        owns_agent: bool = False,
        owns_client: bool = False,
    ) -> None:
        if request_timeout_s <= 0 or request_attempts < 1:
            raise ValueError("request_timeout_s must be positive and request_attempts at least 1")
        self.agent = agent
        self.client = client
        self.thing = agent.thing
        self.request_timeout_s = request_timeout_s
        self.request_attempts = request_attempts
        self.retry_delay_s = retry_delay_s
        self.status_debounce_s = status_debounce_s
        self.max_retry_s = max_retry_s
        self.resume = resume
        self.owns_agent = owns_agent
        self.owns_client = owns_client
        self.history: list[JobRun] = []
        """Every job run here, oldest first."""
        self.requests_sent = 0
        self.statuses_sent = 0
        self._tokens = itertools.count(1)
        self._prefix = os.urandom(4).hex()
        self._waiters: dict[str, asyncio.Future[_Reply]] = {}
        self._wake = asyncio.Event()
        self._online = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._bench_lock = asyncio.Lock()
        self._status_handle: asyncio.TimerHandle | None = None
        self._status_trigger: Trigger = "COMPONENT_STATUS_CHANGE"
        self._status_seq = 0
        self._job_ids: dict[str, str] = {}  # deployment id -> job id
        self._filters: list[str] = []
        self._connects = 0
        self._applying: str | None = None
        self._running = False
        self._hooked = False
        self._loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------ public API

    @property
    def running(self) -> bool:
        return self._running

    @property
    def busy(self) -> bool:
        """Whether a deployment is being applied now."""
        return self._applying is not None

    @property
    def applying(self) -> str | None:
        """The job being applied now, if any."""
        return self._applying

    async def start(self) -> None:
        """Subscribe, hook the (re)connects, start the job worker (which first resumes the agent).

        With a client that is already connected, ``$next`` is asked at once; otherwise on its connect.
        """
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._running = True
        any_job = f"$aws/things/{self.thing}/jobs/+/namespace-{topics.NAMESPACE}"  # as the nucleus subscribes
        wanted = [
            (topics.notify(self.thing), self._on_notify),
            (f"{any_job}/get/+", self._on_reply),  # accepted and rejected
            (f"{any_job}/update/+", self._on_reply),
            (topics.device_topic(self.thing, "benchmark", "request"), self._on_benchmark),  # edgekit compile --measure-on
        ]
        try:
            for topic_filter, handler in wanted:
                await self.client.subscribe(topic_filter, 1, handler)
                self._filters.append(topic_filter)
        except BaseException:
            await self.stop()
            raise
        if not self._hooked:  # MqttClient has no way to remove a hook: one per runner, idle once stopped
            self.client.add_on_connect(self._on_connect)
            self._hooked = True
        self._worker = self._loop.create_task(self._work(), name=f"jobs-{self.thing}")
        if self.agent.ipc is not None:  # IPC PublishToIoTCore / SubscribeToIoTCore go over this connection
            self.agent.ipc.attach(self.client)
        if self.client.connected:
            self._on_connect(self.client, self.client.session_present)

    async def stop(self) -> None:
        """Stop taking jobs. A deployment in flight is interrupted (the agent puts the previous components back
        on its next start and runs it again); then the agent is stopped and the client disconnected if owned."""
        if not self._running:
            return
        self._running = False
        if self._status_handle is not None:
            self._status_handle.cancel()
            self._status_handle = None
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
        if self.agent.ipc is not None:
            await self.agent.ipc.detach()
        for future in self._waiters.values():
            future.cancel()
        self._waiters.clear()
        if self._tasks:
            _, late = await asyncio.wait(list(self._tasks), timeout=1.0)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.owns_client:
            await self.client.disconnect()
        else:
            for topic_filter in self._filters:
                with contextlib.suppress(BrokerError, TimeoutError):
                    await self.client.unsubscribe(topic_filter, timeout=2.0)
        self._filters.clear()
        if self.owns_agent:
            await self.agent.stop()

    def component_changed(self, component: str, old: str, new: str, detail: str) -> None:
        """The agent's ``report`` callback: schedule a debounced :class:`DeviceStatus`."""
        self._schedule_status("COMPONENT_STATUS_CHANGE")

    def device_status(self, trigger: Trigger = "COMPONENT_STATUS_CHANGE") -> DeviceStatus:
        """The device's status now, as it is reported."""
        components = self.agent.component_states()
        last = self.agent.last_deployment
        return DeviceStatus(
            thing_name=self.thing,
            sequence_number=self._status_seq,
            timestamp=int(self.agent.clock.now() * 1000),
            trigger=trigger,
            overall_status="UNHEALTHY" if any(c.state in _UNHEALTHY for c in components) else "HEALTHY",
            components=components,
            deployment=last.deployment_info(self._job_id_of(last)) if last is not None else None,
        )

    # ------------------------------------------------------------------ MQTT callbacks

    def _on_connect(self, client: MqttClient, session_present: bool) -> None:
        if not self._running:
            return
        self._connects += 1
        self._online.set()
        log.debug("%s: connected (session present: %s): asking for pending jobs", self.thing, session_present)
        self._wake.set()
        self._publish_status("NUCLEUS_LAUNCH" if self._connects == 1 else "RECONNECT")

    def _on_notify(self, message: MqttMessage) -> None:
        if not self._running:
            return
        try:
            changed = decode(JobExecutionsChanged, message.payload)
        except PayloadError as exc:
            log.warning("%s: unreadable job notification (%s); asking for pending jobs anyway", self.thing, exc)
            self._wake.set()
            return
        if any(changed.jobs.get(status) for status in ("QUEUED", "IN_PROGRESS")):
            self._wake.set()

    def _on_benchmark(self, message: MqttMessage) -> None:
        """A benchmark request from ``edgekit compile --measure-on``: time an artifact here, reply on ``.../reply``."""
        task = asyncio.ensure_future(self._benchmark(message.payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _benchmark(self, payload: bytes) -> None:
        reply: dict[str, Any] = {"id": None}
        try:
            request = json.loads(payload)
            if not isinstance(request, dict) or not isinstance(request.get("id"), str) or not isinstance(request.get("url"), str):
                raise ValueError("a benchmark request is {id, url, sha256, warmup, repeat}")
            reply["id"] = request["id"]
            with contextlib.suppress(Exception):  # at once: the compile side knows the device is there and working
                await self.client.publish(
                    topics.device_topic(self.thing, "benchmark", "reply"),
                    json.dumps({"id": request["id"], "accepted": True}),
                    qos=1,
                )
            async with self._bench_lock:  # one at a time: timings taken side by side would measure each other
                from edgekit.edge.benchmark import time_archive  # numpy and a runtime only when asked

                path = await self.agent.fetcher.fetch(request["url"], str(request.get("sha256", "")))
                log.info("%s: timing %s for a benchmark request", self.thing, request["url"])
                timing = await asyncio.to_thread(
                    time_archive, path, int(request.get("warmup", 3)), int(request.get("repeat", 30))
                )
            if timing.error:
                reply["error"] = timing.error
            else:
                reply.update(medianMs=timing.median_ms, p90Ms=timing.p90_ms, runs=timing.runs)
        except Exception as exc:  # any failure is the reply, never the runner's end
            reply["error"] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        log.info("%s: benchmark %s: %s", self.thing, reply["id"], reply.get("error") or f"{reply.get('medianMs')} ms median")
        with contextlib.suppress(Exception):
            await self.client.publish(
                topics.device_topic(self.thing, "benchmark", "reply"),
                json.dumps(reply),
                qos=1,
                timeout=self.request_timeout_s * 3,
            )

    def _on_reply(self, message: MqttMessage) -> None:
        parsed = topics.parse(message.topic)
        if parsed is None or parsed.reply is None:
            return
        try:
            reply: _Reply
            if parsed.reply == "rejected":
                reply = decode(JobsRejected, message.payload)
            elif parsed.kind == "get":
                reply = decode(DescribeJobExecutionResponse, message.payload)
            else:
                reply = decode(UpdateJobExecutionResponse, message.payload)
        except PayloadError as exc:
            log.warning("%s: unreadable reply on %s: %s", self.thing, message.topic, exc)
            return
        token = reply.client_token
        future = self._waiters.get(token) if token is not None else None
        if future is None:
            log.debug("%s: reply on %s for no request waiting (token %s)", self.thing, message.topic, token)
            return
        if not future.done():
            future.set_result(reply)

    # ------------------------------------------------------------------ requests

    async def _request(self, topic: str, body: WireMessage) -> _Reply:
        """Publish ``body`` with a fresh clientToken and wait for its reply, sending it again on a timeout.

        Attempts are counted while connected only: a request the client queued while offline goes out on the
        reconnect by itself, so it is waited for again rather than sent twice.
        """
        loop = asyncio.get_running_loop()
        token = f"{self._prefix}-{next(self._tokens)}"
        message = body.model_copy(update={"client_token": token})
        future: asyncio.Future[_Reply] = loop.create_future()
        self._waiters[token] = future  # one future for every attempt: a late reply to an earlier one counts
        attempt, send, last = 0, True, ""
        try:
            while True:
                queued = False  # handed to the client, which sends it (again) on a reconnect until the broker acks it
                if send:
                    attempt += 1
                    self.requests_sent += 1
                try:
                    async with asyncio.timeout(self.request_timeout_s):
                        if send:
                            send, queued = False, True
                            await self.client.publish(topic, message, qos=1, timeout=None)
                            queued = False  # acked: a lost reply means sending it again
                        return await asyncio.shield(future)
                except TimeoutError:
                    last = f"no reply within {self.request_timeout_s} s"
                except BrokerError as exc:  # closed, queue full, ...: nothing is queued
                    if not self._running:
                        raise RequestFailed(f"{self.thing}: {topic}: {exc}") from exc
                    queued, last = False, str(exc)
                if future.done():
                    return future.result()
                if await self._until_online() and queued:
                    continue  # queued while offline and sent on the reconnect: wait for its reply
                log.info("%s: %s: %s (attempt %d of %d)", self.thing, topic, last, attempt, self.request_attempts)
                if attempt >= self.request_attempts:
                    break
                await asyncio.sleep(self.retry_delay_s * attempt)
                send = True
        finally:
            self._waiters.pop(token, None)
        raise RequestFailed(f"{self.thing}: {topic}: {last} after {self.request_attempts} attempt(s)")

    async def _until_online(self) -> bool:
        """Wait for the client to be connected again if it is not (no attempt is spent offline); True if it waited."""
        if self.client.connected:
            return False
        self._online.clear()
        if self.client.connected:  # nothing ran since the check above: no reconnect can slip in between
            return False
        log.info("%s: offline; waiting for the reconnect", self.thing)
        await self._online.wait()
        return True

    async def _describe_next(self) -> _Reply:
        return await self._request(topics.get(self.thing), DescribeJobExecutionRequest(include_job_document=True))

    async def _update(
        self,
        job_id: str,
        status: Literal["IN_PROGRESS", "SUCCEEDED", "FAILED", "REJECTED"],
        version: int | None,
        details: Mapping[str, str] | None = None,
    ) -> _Update:
        """UpdateJobExecution, as a compare-and-set on ``version`` when given."""
        body = UpdateJobExecutionRequest(
            status=status,
            status_details=dict(details) if details else None,
            expected_version=version,
            include_job_execution_state=True,
        )
        reply = await self._request(topics.update(self.thing, job_id), body)
        if isinstance(reply, UpdateJobExecutionResponse):
            state = reply.execution_state
            return _Update(True, state.version_number if state is not None else None)
        if isinstance(reply, JobsRejected):
            state = reply.execution_state
            if state is not None and state.status == status and reply.code in ("VersionMismatch", "TerminalStateReached"):
                return _Update(True, state.version_number)  # our own earlier attempt went through; its reply was lost
            current = f" (execution {state.status}, version {state.version_number})" if state is not None else ""
            return _Update(False, state.version_number if state is not None else None, reply.code, f"{reply.message}{current}")
        return _Update(False, None, "InternalError", f"unexpected reply {type(reply).__name__}")

    # ------------------------------------------------------------------ the job loop

    async def _work(self) -> None:
        if self.resume:
            try:
                interrupted = await self.agent.resume()
            except Exception:
                log.exception("%s: resuming the agent failed", self.thing)
            else:
                if interrupted is not None:
                    log.info(
                        "%s: the interrupted deployment %s ended %s", self.thing, interrupted.deployment_id, interrupted.result
                    )
                self._schedule_status("COMPONENT_STATUS_CHANGE")
        failures = 0
        while self._running:
            if failures == 0:
                await self._wake.wait()
            else:  # the last round could not finish: nothing may ever wake us (the service thinks we are busy)
                delay = min(self.max_retry_s, self.retry_delay_s * 2**failures) * random.uniform(0.5, 1.0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            try:
                await self._drain()
                failures = 0
            except asyncio.CancelledError:
                raise
            except RequestFailed as exc:
                failures += 1
                log.warning("%s: %s; asking again soon", self.thing, exc)
            except Exception:
                failures += 1
                log.exception("%s: the job loop failed; asking again soon", self.thing)

    async def _drain(self) -> None:
        """Ask ``$next`` and run what it returns until nothing is pending."""
        for _ in range(_MAX_JOBS_PER_ROUND):
            self._wake.clear()  # what is pending now is what this answer says
            reply = await self._describe_next()
            if isinstance(reply, JobsRejected):
                log.warning("%s: $next rejected: %s %s", self.thing, reply.code, reply.message)
                return
            if not isinstance(reply, DescribeJobExecutionResponse) or reply.execution is None:
                return
            if not await self._run(reply.execution):
                raise RequestFailed(f"{self.thing}: job {reply.execution.job_id} could not be finished now")
        log.warning("%s: more than %d jobs in a row; pausing until the next notification", self.thing, _MAX_JOBS_PER_ROUND)

    async def _run(self, execution: JobExecution) -> bool:
        """Run one execution; False when it could not be finished now (the loop asks ``$next`` again later)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        job_id, document, version = execution.job_id, execution.job_document, execution.version_number
        if execution.status not in ("QUEUED", "IN_PROGRESS"):
            log.warning("%s: $next returned job %s in status %s", self.thing, job_id, execution.status)
            return False
        if document is None:
            log.warning("%s: job %s came without its document", self.thing, job_id)
            return False
        self._job_ids[document.deployment_id] = job_id
        if execution.status == "QUEUED":
            started_update = await self._update(job_id, "IN_PROGRESS", version)
            if not started_update.accepted:
                log.info("%s: job %s not started: %s %s", self.thing, job_id, started_update.code, started_update.why)
                return started_update.settled  # canceled or changed meanwhile: ask $next again
            version = started_update.version
        log.info("%s: applying job %s", self.thing, job_id)
        self._applying = job_id
        try:
            outcome: DeploymentOutcome = await self.agent.apply(document)
        finally:
            self._applying = None
        applied_s = loop.time() - started
        final = await self._update(job_id, outcome.status, version, outcome.status_details())
        if not final.accepted:
            log.warning(
                "%s: the service refused the %s of job %s: %s %s", self.thing, outcome.status, job_id, final.code, final.why
            )
        total_s = loop.time() - started
        self.history.append(JobRun(job_id, outcome.status, outcome.result, started, applied_s, total_s, final.accepted))
        trigger: Trigger = "THING_DEPLOYMENT" if outcome.target.startswith("thing/") else "THING_GROUP_DEPLOYMENT"
        self._publish_status(trigger)
        log.info("%s: job %s %s (%s) in %.2f s", self.thing, job_id, outcome.status, outcome.result, total_s)
        return final.accepted or final.settled

    # ------------------------------------------------------------------ status

    def _job_id_of(self, outcome: DeploymentOutcome) -> str | None:
        job_id = self._job_ids.get(outcome.deployment_id, outcome.deployment_id)
        return job_id if JOB_ID.match(job_id) else None

    def _schedule_status(self, trigger: Trigger) -> None:
        if not self._running or self._loop is None:
            return
        if self._status_handle is None:
            self._status_trigger = trigger
            self._status_handle = self._loop.call_later(self.status_debounce_s, self._flush_status)

    def _flush_status(self) -> None:
        self._status_handle = None
        self._publish_status(self._status_trigger)

    def _publish_status(self, trigger: Trigger) -> None:
        """Send the status now (a pending debounced one is folded into it)."""
        if not self._running:
            return
        if self._status_handle is not None:
            self._status_handle.cancel()
            self._status_handle = None
        try:
            status = self.device_status(trigger)
        except Exception:
            log.exception("%s: can't build the device status", self.thing)
            return
        self._status_seq += 1
        self.statuses_sent += 1
        task = asyncio.ensure_future(self._send_status(status))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_status(self, status: DeviceStatus) -> None:
        try:
            await self.client.publish(topics.status(self.thing), status, qos=1, timeout=self.request_timeout_s * 3)
        except Exception as exc:  # offline too long, closed, ...: the next status says it all again
            log.debug("%s: status %d not delivered: %s", self.thing, status.sequence_number, exc)


async def run_device(
    thing: str,
    root: str | Path,
    platform: Mapping[str, str],
    registry_url: str,
    broker_url: str,
    tls: TlsPaths | None = None,
    groups: Iterable[str] = (),
    mode: Literal["subprocess", "in_process"] = "subprocess",
    *,
    clean_start: bool = False,
    agent_options: Mapping[str, Any] | None = None,
    client_options: Mapping[str, Any] | None = None,
    runner_options: Mapping[str, Any] | None = None,
) -> DeviceMqttRunner:
    """Make a device (agent + MQTT client, client id = thing name) and start it; stop it with ``await runner.stop()``.

    ``agent_options`` go to :class:`DeviceAgent`, ``client_options`` to :class:`MqttClient`, ``runner_options``
    to :class:`DeviceMqttRunner`. Raises :class:`~edgekit.mqtt.errors.ConnectError` if the first connect fails
    (later connection losses are retried by the client).
    """
    runner: DeviceMqttRunner | None = None

    def report(component: str, old: str, new: str, detail: str) -> None:
        if runner is not None:
            runner.component_changed(component, old, new, detail)

    agent = DeviceAgent(thing, root, platform, registry_url, groups, mode=mode, report=report, **dict(agent_options or {}))
    client = MqttClient(thing, tls=tls, clean_start=clean_start, **dict(client_options or {}))
    runner = DeviceMqttRunner(agent, client, owns_agent=True, owns_client=True, **dict(runner_options or {}))
    await runner.start()
    try:
        await client.connect(broker_url)
    except BaseException:
        await runner.stop()
        raise
    return runner
