"""The fleet service's Jobs requests on a connection of their own: answered while the telemetry ingest is stalled.

mosquitto keeps one queue per client and sends a client at most ``max_inflight_messages`` (100) messages it has not
acknowledged; the telemetry ingest acknowledges a summary only once it is committed. When the Jobs bridge shared the
ingest's connection, a stalled ingest (a saturated machine: issue 23's 10,000-device deployment) filled that window
and every Jobs request waited behind the whole telemetry backlog. And a fleet folder of that time keeps a session
under the service's id that holds both kinds of subscriptions: what it queued is still handled, and it stops getting
telemetry. Real mosquitto, the real FleetServer and ingest, raw MQTT clients as the devices and the old service.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from helpers import eventually

from edgekit.fleet.fleet_server import FleetServer
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet.jobs_api import FleetMqttBridge
from edgekit.fleet.telemetry import TELEMETRY_FILTER
from edgekit.fleet_file import FleetFile
from edgekit.mqtt import topics
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import MqttClient, MqttMessage
from edgekit.mqtt.payloads import GetPendingJobExecutionsRequest, GetPendingJobExecutionsResponse, decode
from edgekit.mqtt.tls import SERVICE_IDENTITY
from edgekit.wire.summary import AnsweredBy, WindowSummary, encode_summary

SENT = 150  # more than the broker's in-flight window to one client (100): the rest wait in its queue


def _summary(thing: str, window: int) -> bytes:
    return encode_summary(
        WindowSummary(
            thing=thing, component="c", model="m", run="r", window=window, window_start=float(window),
            window_end=float(window + 1), count=10, classes={"0": 10}, answered_by=AnsweredBy(local=10, cloud=0, none=0),
        )
    ).encode()  # fmt: skip


def _devices(count: int) -> FleetFile:
    return FleetFile.model_validate(
        {"name": "j", "devices": [{"prefix": "d-", "count": count, "profile": "x86_64", "groups": ["all"]}]}
    )


async def _replies(device: MqttClient, thing: str) -> asyncio.Queue[MqttMessage]:
    """The replies to ``thing``'s GetPendingJobExecutions requests, as they come."""
    replies: asyncio.Queue[MqttMessage] = asyncio.Queue()
    await device.subscribe(topics.accepted(topics.get_pending(thing)), 1, replies.put_nowait)
    return replies


async def _answered_while_stalled(folder: Path) -> tuple[str | None, int, int]:
    """(the reply's client token, or None; windows stored when it came; windows stored once the ingest caught up)."""
    async with FleetServer(FleetFolder.at(folder), devices=_devices(2).expand(), name="j", tls=False) as server:
        ingest, state = server.telemetry, server.state
        assert ingest is not None and ingest._task is not None and state is not None
        ingest._task.cancel()  # the ingest stalls (as on a saturated machine): nothing stored, nothing acknowledged
        await asyncio.gather(ingest._task, return_exceptions=True)
        telemetry = MqttClient("d-1")
        device = MqttClient("d-2")
        await telemetry.connect(server.broker_url)
        await device.connect(server.broker_url)
        try:
            sent = await telemetry.publish_many([("devices/d-1/inference", _summary("d-1", w)) for w in range(1, SENT + 1)])
            assert sent == [0] * SENT  # the broker took every one
            await eventually(lambda: ingest.stats.messages >= 100, 10, "the ingest's in-flight window to fill")
            replies = await _replies(device, "d-2")
            await device.publish(topics.get_pending("d-2"), GetPendingJobExecutionsRequest(client_token="while-stalled"))
            try:
                reply: MqttMessage | None = await asyncio.wait_for(replies.get(), 15.0)
            except TimeoutError:
                reply = None  # on one connection the request waits until the ingest acknowledges the window
            stored_then = state.window_totals("d-1", "c", "r", SENT).windows
            idle = 0
            # the ingest catches up: store and acknowledge until all are stored, or nothing more came for 2 s
            while idle < 40 and state.window_totals("d-1", "c", "r", SENT).windows < SENT:
                await asyncio.sleep(0.05)
                idle = 0 if ingest.flush() else idle + 1
        finally:
            await telemetry.disconnect()
            await device.disconnect()
        token = decode(GetPendingJobExecutionsResponse, reply.payload).client_token if reply is not None else None
        return token, stored_then, state.window_totals("d-1", "c", "r", SENT).windows


def test_jobs_requests_are_answered_while_the_telemetry_ingest_is_stalled(tmp_path: Path) -> None:
    token, stored_then, stored = asyncio.run(_answered_while_stalled(tmp_path / "fleet"))
    assert token == "while-stalled"  # answered ...
    assert stored_then == 0  # ... while the ingest still held every summary unacknowledged
    assert stored == SENT  # and nothing acknowledged was lost


async def _old_session(folder: FleetFolder) -> None:
    """What a fleet service of one connection left on the broker: its session (telemetry and Jobs subscriptions),
    with summaries and a Jobs request queued for it while no server ran."""
    broker = MosquittoBroker(folder.broker)
    await asyncio.to_thread(broker.start)
    try:
        old = MqttClient(SERVICE_IDENTITY)
        await old.connect(broker.url)
        for topic_filter in (*FleetMqttBridge.FILTERS, TELEMETRY_FILTER):
            await old.subscribe(topic_filter)
        await old.disconnect()  # its session stays (persistent): the broker queues for it
        device = MqttClient("d-1")
        await device.connect(broker.url)
        await _replies(device, "d-1")  # in d-1's session: the reply waits for it there
        assert await device.publish_many([("devices/d-1/inference", _summary("d-1", w)) for w in (1, 2, 3)]) == [0, 0, 0]
        await device.publish(topics.get_pending("d-1"), GetPendingJobExecutionsRequest(client_token="queued"))
        await device.disconnect()
    finally:
        await asyncio.to_thread(broker.stop)  # mosquitto saves the sessions and their queues


async def _restart_on_old_folder(root: Path) -> tuple[str | None, int, int, int]:
    folder = FleetFolder.at(root)
    await _old_session(folder)
    async with FleetServer(folder, devices=_devices(1).expand(), name="j", tls=False) as server:
        ingest, state = server.telemetry, server.state
        assert ingest is not None and state is not None
        await eventually(lambda: state.window_totals("d-1", "c", "r", 4).windows == 3, 15, "the queued summaries stored")
        device = MqttClient("d-1")
        replies = await _replies(device, "d-1")
        await device.connect(server.broker_url)  # its session: the reply to the request queued while no server ran
        try:
            try:
                reply: MqttMessage | None = await asyncio.wait_for(replies.get(), 15.0)
            except TimeoutError:
                reply = None
            assert await device.publish("devices/d-1/inference", _summary("d-1", 4)) == 0
            await eventually(lambda: state.window_totals("d-1", "c", "r", 4).windows == 4, 15, "the new summary stored")
            await asyncio.sleep(0.5)  # a second delivery (the old session's) would come by now
        finally:
            await device.disconnect()
        token = decode(GetPendingJobExecutionsResponse, reply.payload).client_token if reply is not None else None
        return token, state.window_totals("d-1", "c", "r", 4).windows, ingest.stats.duplicates, ingest.stats.messages


def test_a_session_of_the_one_connection_service_is_handled_then_gets_no_telemetry(tmp_path: Path) -> None:
    token, windows, duplicates, messages = asyncio.run(_restart_on_old_folder(tmp_path / "fleet"))
    assert token == "queued"  # the request queued for the old session was answered
    assert windows == 4  # the summaries it queued were stored (taken over), and the new one
    assert (messages, duplicates) == (4, 0)  # the new summary came once: the old session no longer subscribes
