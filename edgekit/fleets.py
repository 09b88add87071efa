"""Fleet files (``devices/fleets/<name>.yaml``): which devices exist, of which profile, in which thing groups."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.errors import ConfigError
from edgekit.profiles import load_profile
from edgekit.resources import bundled_dir

__all__ = ["Device", "DeviceEntry", "Fleet", "load_fleet"]


class DeviceEntry(BaseModel):
    """One device (``name``) or ``count`` devices named ``<prefix><nn>``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = None
    prefix: str | None = None
    count: int = Field(1, ge=1, le=100_000)
    profile: str
    groups: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _named(self) -> DeviceEntry:
        if (self.name is None) == (self.prefix is None):
            raise ValueError("give either 'name' (one device) or 'prefix' with 'count'")
        return self


class Device(BaseModel):
    """A device as a deployment sees it: its thing name, groups and Greengrass platform."""

    model_config = ConfigDict(frozen=True)
    thing: str
    profile: str
    groups: tuple[str, ...]
    platform: dict[str, str]


class Fleet(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_version: Literal[1] = Field(1, alias="schemaVersion")
    name: str
    devices: list[DeviceEntry]

    def expand(self) -> list[Device]:
        out: list[Device] = []
        for entry in self.devices:
            profile = load_profile(entry.profile)
            platform = {"os": profile.greengrass.os, "architecture": profile.greengrass.architecture}
            width = len(str(entry.count))
            names = [entry.name] if entry.name else [f"{entry.prefix}{i:0{max(2, width)}d}" for i in range(1, entry.count + 1)]
            out += [Device(thing=n, profile=profile.name, groups=tuple(entry.groups), platform=platform) for n in names if n]
        seen: set[str] = set()
        for d in out:
            if d.thing in seen:
                raise ConfigError(f"fleet '{self.name}': device '{d.thing}' is listed twice")
            seen.add(d.thing)
        return out


def load_fleet(name_or_path: str | Path) -> Fleet:
    text = str(name_or_path)
    path = Path(text) if text.endswith((".yaml", ".yml")) else bundled_dir("devices") / "fleets" / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"fleet file '{path}' does not exist")
    try:
        return Fleet.model_validate(yaml.safe_load(path.read_text()))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"{path}: field '{where}': {err['msg']}") from exc
