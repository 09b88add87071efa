"""Errors of the IPC server: what a component gets back (:class:`IpcError`), and what the agent's owner gets.

:class:`IpcError` and its subclasses are the nucleus's modeled errors: each travels to the component as an
``APPLICATION_ERROR`` whose ``service-model-type`` names it (``aws.greengrass#UnauthorizedError``, ...), and
``awsiotsdk`` raises the class of that name. They are not :class:`~edgekit.errors.EdgekitError`\\ s: nothing
on the device's side failed.

:class:`IpcServerError` (an :class:`~edgekit.errors.EdgekitError`, exit code 24) is the agent's: the socket
can't be made, or a setting is wrong. See ``docs/ipc.md``.
"""

from __future__ import annotations

from typing import Any

from edgekit.errors import EdgekitError

__all__ = [
    "ConflictError",
    "FailedUpdateConditionCheckError",
    "InvalidArgumentsError",
    "IpcError",
    "IpcServerError",
    "ResourceNotFoundError",
    "ServiceError",
    "UnauthorizedError",
]

SERVICE = "aws.greengrass#GreengrassCoreIPC"


class IpcServerError(EdgekitError):
    """The IPC server can't start (socket path, permissions) or was given a wrong setting."""

    exit_code = 24


class IpcError(Exception):
    """A modeled IPC error; ``model`` is its ``service-model-type``."""

    model = "aws.greengrass#ServiceError"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields

    @property
    def code(self) -> str:
        return self.model.partition("#")[2]

    def payload(self) -> dict[str, Any]:
        """The error's JSON, as the Java nucleus writes it (its model's fields plus ``_service``/``_message``/``_errorCode``)."""
        return {"_service": SERVICE, "_message": self.message, "_errorCode": self.code, "message": self.message, **self.fields}


class ServiceError(IpcError):
    model = "aws.greengrass#ServiceError"


class UnauthorizedError(IpcError):
    model = "aws.greengrass#UnauthorizedError"


class InvalidArgumentsError(IpcError):
    model = "aws.greengrass#InvalidArgumentsError"


class ResourceNotFoundError(IpcError):
    model = "aws.greengrass#ResourceNotFoundError"


class FailedUpdateConditionCheckError(IpcError):
    model = "aws.greengrass#FailedUpdateConditionCheckError"


class ConflictError(IpcError):
    model = "aws.greengrass#ConflictError"
