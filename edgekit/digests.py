"""SHA-256 of files, streamed: one place for every stage that hashes artifacts and models.

See docs/architecture.md.
"""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

__all__ = ["file_sha256", "file_sha256_b64"]


def _digest(path: Path) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file (model hashes, S3 metadata, SHA256SUMS)."""
    return _digest(path).hex()


def file_sha256_b64(path: Path) -> str:
    """Base64 SHA-256 of a file: the form of a Greengrass recipe's artifact ``Digest``."""
    return base64.b64encode(_digest(path)).decode("ascii")
