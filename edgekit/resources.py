"""Where the user-editable folders (devices/, compiler/, components/, recipes/) live.

In a source checkout (or an editable install) they are the top-level folders of the
repository; in an installed wheel they are shipped as ``edgekit/_data/<name>``.
See docs/architecture.md.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

__all__ = ["bundled_dir", "cache_dir"]

_PACKAGE_DIR = Path(__file__).resolve().parent


def bundled_dir(name: str) -> Path:
    """The bundled folder ``name`` (``devices``, ``compiler``, ``components`` or ``recipes``)."""
    shipped = _PACKAGE_DIR / "_data" / name
    if shipped.is_dir():
        return shipped
    return _PACKAGE_DIR.parent / name


def cache_dir() -> Path:
    """edgekit's cache folder: ``$EDGEKIT_CACHE_DIR`` or the platform's user cache dir."""
    env = os.environ.get("EDGEKIT_CACHE_DIR")
    return Path(env) if env else Path(platformdirs.user_cache_dir("edgekit"))
