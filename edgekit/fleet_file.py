"""Fleet files (``devices/fleets/<name>.yaml``): which devices exist, of which profile, in which thing groups.

For the simulator a fleet file also says how its devices run (``mode``, ``tls``) and what goes wrong
with them (``faults``). See docs/local-fleet.md (fleet files).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from edgekit.errors import ConfigError, first_problem
from edgekit.parsing import MAX_FILE_BYTES, ParseError, loads_yaml
from edgekit.profiles import DeviceProfile, load_profile
from edgekit.resources import bundled_dir

__all__ = [
    "FAULT_KINDS",
    "IN_PROCESS_ABOVE",
    "DeviceEntry",
    "Fault",
    "FleetDevice",
    "FleetFile",
    "device_platform",
    "load_fleet",
]

IN_PROCESS_ABOVE = 50
"""A fleet file without ``mode`` runs in_process when it has more devices than this, else subprocess."""

FaultKind = Literal["cut_network", "kill_device", "restart_device", "corrupt_downloads", "restart_broker"]
FAULT_KINDS: tuple[str, ...] = ("cut_network", "kill_device", "restart_device", "corrupt_downloads", "restart_broker")


class DeviceEntry(BaseModel):
    """One device (``name``) or ``count`` devices named ``<prefix><nn>``.

    ``mode: emulated``: each runs as its own process, the device agent in an aarch64 Python under qemu-user, and
    installs the real aarch64 build (only aarch64 profiles; see docs/local-fleet.md, emulated devices). Without it
    the device runs as the fleet's ``mode`` says.

    ``scenario`` (``ood=0.3,drift=0.05``: the keys of a ``synthetic:`` input source) changes these devices'
    generated sensor stream over what the inference component's ``InputSource`` says, in the simulator's
    in-process devices (checked when the simulation starts). Every device's synthetic stream is seeded by its thing name anyway (unless a ``seed`` is
    given), so no two devices send the same readings.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str | None = None
    prefix: str | None = None
    count: int = Field(1, ge=1, le=100_000)
    profile: str
    groups: list[str] = Field(default_factory=list)
    mode: Literal["emulated"] | None = None
    scenario: str | None = Field(None, max_length=512)

    @model_validator(mode="after")
    def _named(self) -> DeviceEntry:
        if (self.name is None) == (self.prefix is None):
            raise ValueError("give either 'name' (one device) or 'prefix' with 'count'")
        return self


def device_platform(profile: DeviceProfile) -> dict[str, str]:
    """The Greengrass platform of a device of ``profile``: ``os``, ``architecture`` and, where the profile lists CPU
    flags, ``cpuFeatures`` (space separated: a custom platform attribute, which the pre-flight checks builds against)."""
    platform: dict[str, str] = {"os": profile.greengrass.os, "architecture": profile.greengrass.architecture}
    if profile.cpu_flags:
        platform["cpuFeatures"] = " ".join(sorted(profile.cpu_flags))
    return platform


class FleetDevice(BaseModel):
    """A device as a deployment sees it: its thing name, groups and Greengrass platform (and whether the simulator
    emulates it: an aarch64 agent process under qemu-user)."""

    model_config = ConfigDict(frozen=True)
    thing: str
    profile: str
    groups: tuple[str, ...]
    platform: dict[str, str]
    emulated: bool = False
    scenario: str | None = None
    """Its synthetic stream's parameters over the component's (``ood=0.3,...``), or None."""


class Fault(BaseModel):
    """A fault the simulator injects ``at`` seconds into the simulation.

    * ``cut_network`` (``seconds`` required): the devices' MQTT connections drop and reconnects fail that long;
    * ``kill_device``: the agent crashes and stays down (``seconds``: comes back after that long);
    * ``restart_device``: the agent crashes and a fresh one resumes from the same folder at once;
    * ``corrupt_downloads``: the next ``count`` artifact downloads of each device come back corrupted
      (a device gives up after 10 mismatches: ``ARTIFACT_CHECKSUM_MISMATCH``);
    * ``restart_broker``: the broker stops and starts again on the same port (no ``things``); with ``seconds`` it
      stays down that long (a broker outage).

    ``things`` (names) or ``fraction`` (of the fleet, picked at random with a fixed seed) say which devices;
    neither means every device.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
    at: float = Field(0.0, ge=0)
    fault: FaultKind
    things: list[str] | None = None
    fraction: float | None = Field(None, gt=0, le=1)
    seconds: float | None = Field(None, gt=0)
    count: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> Fault:
        if self.things is not None and self.fraction is not None:
            raise ValueError("give either 'things' or 'fraction', not both")
        if self.fault == "cut_network" and self.seconds is None:
            raise ValueError("cut_network needs 'seconds' (how long the devices stay offline)")
        if self.fault == "restart_broker" and (self.things is not None or self.fraction is not None):
            raise ValueError("restart_broker applies to the broker, not to devices: drop 'things' / 'fraction'")
        return self


class FleetFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_version: Literal[1] = Field(1, alias="schemaVersion")
    name: str
    devices: list[DeviceEntry]
    mode: Literal["in_process", "subprocess"] | None = None
    tls: bool = False
    faults: list[Fault] = Field(default_factory=list)

    @property
    def size(self) -> int:
        """How many devices the fleet has."""
        return sum(entry.count for entry in self.devices)

    def run_mode(self) -> Literal["in_process", "subprocess"]:
        """``mode`` if given, else in_process above :data:`IN_PROCESS_ABOVE` devices and subprocess up to it."""
        if self.mode is not None:
            return self.mode
        return "in_process" if self.size > IN_PROCESS_ABOVE else "subprocess"

    def scaled(self, devices: int) -> FleetFile:
        """This fleet with ``devices`` devices: named devices kept, the ``prefix`` entries' counts scaled to fill the rest."""
        named = sum(1 for e in self.devices if e.name is not None)
        counted = [e for e in self.devices if e.prefix is not None]
        if devices < named + len(counted) or not counted:
            raise ConfigError(
                f"fleet '{self.name}' can't have {devices} device(s): it names {named} device(s) and has "
                f"{len(counted)} prefix entries (each keeps at least one device)"
            )
        total, room = sum(e.count for e in counted), devices - named
        counts = [max(1, room * e.count // total) for e in counted]
        i = 0
        while sum(counts) != room:  # hand out (or take back) what the rounding left, entry by entry
            step = 1 if sum(counts) < room else -1
            if counts[i % len(counts)] + step >= 1:
                counts[i % len(counts)] += step
            i += 1
        scaled = iter(counts)
        entries = [e if e.prefix is None else e.model_copy(update={"count": next(scaled)}) for e in self.devices]
        return self.model_copy(update={"devices": entries})

    def expand(self) -> list[FleetDevice]:
        out: list[FleetDevice] = []
        for entry in self.devices:
            profile = load_profile(entry.profile)
            platform = device_platform(profile)
            emulated = entry.mode == "emulated"
            if emulated and profile.greengrass.architecture != "aarch64":
                raise ConfigError(
                    f"fleet '{self.name}': profile '{profile.name}' is {profile.greengrass.architecture}; "
                    "only aarch64 devices can be emulated (mode: emulated)"
                )
            width = len(str(entry.count))
            names = [entry.name] if entry.name else [f"{entry.prefix}{i:0{max(2, width)}d}" for i in range(1, entry.count + 1)]
            out += [
                FleetDevice(
                    thing=n,
                    profile=profile.name,
                    groups=tuple(entry.groups),
                    platform=platform,
                    emulated=emulated,
                    scenario=entry.scenario,
                )
                for n in names
                if n
            ]
        seen: set[str] = set()
        for d in out:
            if d.thing in seen:
                raise ConfigError(f"fleet '{self.name}': device '{d.thing}' is listed twice")
            seen.add(d.thing)
        return out


def load_fleet(name_or_path: str | Path) -> FleetFile:
    text = str(name_or_path)
    path = Path(text) if text.endswith((".yaml", ".yml")) else bundled_dir("devices") / "fleets" / f"{text}.yaml"
    if not path.is_file():
        raise ConfigError(f"fleet file '{path}' does not exist")
    try:
        return FleetFile.model_validate(loads_yaml(path.read_bytes(), max_bytes=MAX_FILE_BYTES))
    except ParseError as exc:
        raise ConfigError(f"{path}: the fleet file {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_problem(exc)}") from exc
