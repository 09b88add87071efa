"""The errors of :mod:`edgekit.device`, all under :class:`edgekit.errors.EdgekitError`::

    EdgekitError
    └── DeviceError               a deployment step failed on the device; ``stack`` is the nucleus's
        │                         error-code hierarchy (least specific first), ``code`` its last entry
        ├── ArtifactDownloadError an artifact could not be fetched or its SHA-256 never matched
        └── UnsafeArchiveError    a ZIP artifact was refused: absolute path, '..', symlink, special
                                  file, duplicate entry, or more than the size cap (a zip bomb)

Error codes are the Greengrass nucleus's own (``DeploymentErrorCode``): ``ARTIFACT_CHECKSUM_MISMATCH``,
``IO_UNZIP_ERROR``, ``NETWORK_ERROR``, ``COMPONENT_BROKEN``, ... so a fleet view reads the same codes
for a simulated device as for a real core device.
"""

from __future__ import annotations

from collections.abc import Sequence

from edgekit.errors import EdgekitError

__all__ = ["ArtifactDownloadError", "DeviceError", "UnsafeArchiveError"]


class DeviceError(EdgekitError):
    """A deployment step failed on the device.

    ``stack`` lists the nucleus error codes from the least to the most specific
    (``["ARTIFACT_DOWNLOAD_ERROR", "ARTIFACT_CHECKSUM_MISMATCH"]``); ``code`` is the most specific one.
    """

    exit_code = 20

    def __init__(self, stack: str | Sequence[str], message: str) -> None:
        self.stack: tuple[str, ...] = (stack,) if isinstance(stack, str) else tuple(stack)
        if not self.stack:
            raise ValueError("a DeviceError needs at least one error code")
        self.detail = message
        super().__init__(f"{self.code}: {message}")

    @property
    def code(self) -> str:
        return self.stack[-1]


class ArtifactDownloadError(DeviceError):
    """An artifact could not be downloaded, or its digest never matched the recipe's."""


class UnsafeArchiveError(DeviceError):
    """A ZIP artifact was refused as a whole; nothing of it stays extracted."""

    def __init__(self, message: str) -> None:
        super().__init__(("IO_ERROR", "IO_UNZIP_ERROR"), message)
