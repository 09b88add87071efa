"""Names that end up in topics and ACLs: AWS IoT thing names and job ids (no crypto, no paho: cheap to import).

See docs/local-fleet.md.
"""

from __future__ import annotations

import re

from edgekit.errors import ConfigError

__all__ = ["JOB_ID", "THING_NAME", "check_thing_name"]

THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]{1,128}$")
"""AWS IoT's ThingName pattern; it also keeps ``/ + #`` out of the broker ACL's ``%u``."""

JOB_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
"""AWS IoT's JobId pattern."""


def check_thing_name(thing: str) -> str:
    """Return ``thing`` if it is a valid AWS IoT thing name, else raise :class:`ConfigError`."""
    if not THING_NAME.match(thing):
        raise ConfigError(
            f"'{thing}' is not a valid thing name: use 1-128 characters from a-z A-Z 0-9 : _ - "
            "(AWS IoT's ThingName pattern; '/', '+', '#' would break the broker's per-device ACL)"
        )
    return thing
