"""Greengrass IPC on edgekit's device agent: components written for the nucleus, unmodified, talk to it.

The same eventstream RPC over a Unix domain socket that ``awsiotsdk``'s ``GreengrassCoreIPCClientV2`` speaks
(:mod:`~edgekit.device.ipc.eventstream`, :mod:`~edgekit.device.ipc.socket_server`), the same operations and errors
(:mod:`~edgekit.device.ipc.handler`, :mod:`~edgekit.device.ipc.component_ops`), the same ``accessControl``
policies (:mod:`~edgekit.device.ipc.policy`). One handler serves both the socket and in-process components
(:mod:`~edgekit.device.ipc.inprocess`). IoT Core publishes go through a durable spool
(:mod:`~edgekit.device.ipc.iotcore`). What is supported, the limits and what is left out: ``docs/ipc.md``.
"""

from edgekit.device.ipc.device_ipc import SOCKET_ENV, DeviceIpc
from edgekit.device.ipc.errors import (
    ConflictError,
    FailedUpdateConditionCheckError,
    InvalidArgumentsError,
    IpcError,
    IpcServerError,
    ResourceNotFoundError,
    ServiceError,
    UnauthorizedError,
)
from edgekit.device.ipc.handler import ComponentHost, EventSink, IpcHandler, Reply
from edgekit.device.ipc.inprocess import InProcessIpc, InProcessStream
from edgekit.device.ipc.socket_server import IpcServer

__all__ = [
    "SOCKET_ENV",
    "ComponentHost",
    "ConflictError",
    "DeviceIpc",
    "EventSink",
    "FailedUpdateConditionCheckError",
    "InProcessIpc",
    "InProcessStream",
    "InvalidArgumentsError",
    "IpcError",
    "IpcHandler",
    "IpcServer",
    "IpcServerError",
    "Reply",
    "ResourceNotFoundError",
    "ServiceError",
    "UnauthorizedError",
]
