"""MqttClient.publish_many (what the spool drain sends a batch with) against a real mosquitto: in order, each
message its own result, refusals and timeouts per message."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import requires

from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import NO_MATCHING_SUBSCRIBERS, SUCCESS, connect
from edgekit.mqtt.errors import MqttTimeoutError, NotConnectedError, PayloadError, TopicError

pytestmark = requires("mosquitto")


@pytest.mark.anyio
async def test_a_batch_arrives_in_order_and_each_message_gets_its_own_result(tmp_path: Path) -> None:
    with MosquittoBroker(tmp_path / "broker") as broker:
        async with await connect(broker.url, "sub") as sub, await connect(broker.url, "pub") as pub:
            await sub.subscribe("devices/dev-1/#", qos=1)
            batch = [(f"devices/dev-1/n{i}", str(i).encode()) for i in range(120)]  # past paho's 20 in flight
            batch[7] = ("devices/dev-1/+", b"wildcard")  # can never be sent
            batch[50] = ("devices/dev-1/big", b"x" * (128 * 1024 + 1))  # over IoT Core's payload limit
            results = await pub.publish_many(batch, timeout=10)
            assert isinstance(results[7], TopicError) and isinstance(results[50], PayloadError)
            sent = [i for i, result in enumerate(results) if i not in (7, 50)]
            assert all(results[i] == SUCCESS for i in sent)
            got = [await sub.get_message(timeout=5) for _ in sent]
            assert [message.payload for message in got] == [batch[i][1] for i in sent]  # in the order given
            assert await pub.publish_many([("nobody/listens", b"x")]) == [NO_MATCHING_SUBSCRIBERS]
            assert await pub.publish_many([]) == []
            assert not pub._pending_pub  # nothing left waiting

            # the broker gone: the PUBACKs never come, each message times out (and stays the caller's to resend)
            broker.stop()
            lost = await pub.publish_many([("devices/dev-1/late", b"1"), ("devices/dev-1/late", b"2")], timeout=0.5)
            assert all(isinstance(result, MqttTimeoutError | NotConnectedError) for result in lost)
            assert not pub._pending_pub
