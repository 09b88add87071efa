"""The errors of :mod:`edgekit.device` (exit codes 20 and 18), carrying the nucleus's error codes. See docs/errors.md."""

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
