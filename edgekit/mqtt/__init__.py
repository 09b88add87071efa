"""MQTT for edgekit: brokers, TLS material, the Jobs topics and payloads, and the one asyncio client.

Names are imported lazily, so ``import edgekit.mqtt.payloads`` does not load paho or cryptography.
See docs/local-fleet.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekit.mqtt.broker import Broker, EmbeddedBroker, ExternalBroker, MosquittoBroker, start_broker
    from edgekit.mqtt.client import Backoff, MqttClient, MqttMessage, connect
    from edgekit.mqtt.errors import BrokerError, ConnectError, MqttTimeoutError, NotConnectedError, PayloadError, TopicError
    from edgekit.mqtt.payloads import decode, encode
    from edgekit.mqtt.tls import TlsFiles, TlsMaterial

__all__ = [
    "Backoff",
    "Broker",
    "BrokerError",
    "ConnectError",
    "EmbeddedBroker",
    "ExternalBroker",
    "MosquittoBroker",
    "MqttClient",
    "MqttMessage",
    "MqttTimeoutError",
    "NotConnectedError",
    "PayloadError",
    "TlsFiles",
    "TlsMaterial",
    "TopicError",
    "connect",
    "decode",
    "encode",
    "start_broker",
]

_WHERE = {
    "Broker": "broker",
    "EmbeddedBroker": "broker",
    "ExternalBroker": "broker",
    "MosquittoBroker": "broker",
    "start_broker": "broker",
    "Backoff": "client",
    "MqttMessage": "client",
    "MqttClient": "client",
    "connect": "client",
    "BrokerError": "errors",
    "ConnectError": "errors",
    "MqttTimeoutError": "errors",
    "NotConnectedError": "errors",
    "PayloadError": "errors",
    "TopicError": "errors",
    "decode": "payloads",
    "encode": "payloads",
    "TlsFiles": "tls",
    "TlsMaterial": "tls",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'edgekit.mqtt' has no attribute '{name}'")
    return getattr(importlib.import_module(f"edgekit.mqtt.{module}"), name)
