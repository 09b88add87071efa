"""The errors of :mod:`edgekit.mqtt` (exit codes 18, 19 and 2). See docs/errors.md."""

from __future__ import annotations

from edgekit.errors import ConfigError, EdgekitError

__all__ = ["BrokerError", "ConnectError", "MqttTimeoutError", "NotConnectedError", "PayloadError", "TopicError"]


class BrokerError(EdgekitError):
    """The broker could not be started or reached, or an MQTT operation failed."""

    exit_code = 18


class ConnectError(BrokerError):
    """The broker refused the connection, or it could not be established in time.

    ``reason_code`` is the MQTT 5 CONNACK reason (135 = not authorized, 134 = bad user name or password),
    or ``None`` when the refusal came from TCP or TLS before any CONNACK.
    """

    def __init__(self, message: str, reason_code: int | None = None) -> None:
        self.reason_code = reason_code
        super().__init__(message)


class NotConnectedError(BrokerError):
    """The client is not connected (yet, any more, or it was closed)."""


class MqttTimeoutError(BrokerError, TimeoutError):
    """The broker did not answer in time (no CONNACK, SUBACK or PUBACK)."""


class PayloadError(EdgekitError):
    """An MQTT payload can't be encoded or decoded; the message names the model and the field."""

    exit_code = 19


class TopicError(ConfigError):
    """A topic name or filter breaks AWS IoT Core's rules."""
