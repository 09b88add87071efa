"""A device bundle: what ``edgekit fleet add-device`` writes for one device and ``edgekit agent --config`` reads.

A bundle is a folder holding ``config.yaml`` (a :class:`DeviceBundle`), the fleet's CA certificate, the device's
certificate and its private key (mode 0600): never the CA's key. Paths in ``config.yaml`` are relative to its folder
(or absolute), so the folder can be copied to a device as it is::

    pi-01/
      config.yaml          # thingName, thingGroups, platform, brokerUrl, registryUrl, the paths below, rootPath
      AmazonRootCA1.pem    # not Amazon's: the fleet's CA (the nucleus's file name, so a Greengrass habit fits)
      device.pem.crt       # CN = thing name, signed by the fleet's CA
      private.pem.key      # 0600

The names of the keys follow the Greengrass nucleus's ``system`` section (``thingName``, ``certificateFilePath``,
``privateKeyPath``, ``rootCaPath``, ``rootpath``) where it has one. The fleet side writes this model and the device
side validates it (:func:`read_bundle`): one shape, defined here. See docs/device-agent.md (a device bundle).
"""

from __future__ import annotations

from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgekit.errors import ConfigError, first_problem
from edgekit.parsing import ParseError, loads_yaml

__all__ = [
    "BUNDLE_CA",
    "BUNDLE_CERT",
    "BUNDLE_CONFIG",
    "BUNDLE_KEY",
    "BUNDLE_SCHEMA_VERSION",
    "DeviceBundle",
    "read_bundle",
]

BUNDLE_SCHEMA_VERSION: Final = 1
BUNDLE_CONFIG: Final = "config.yaml"
BUNDLE_CA: Final = "AmazonRootCA1.pem"
BUNDLE_CERT: Final = "device.pem.crt"
BUNDLE_KEY: Final = "private.pem.key"
_MAX_CONFIG_BYTES: Final = 64 * 1024


class DeviceBundle(BaseModel):
    """``config.yaml`` of a device bundle (camelCase keys on disk; see the module's docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, serialize_by_alias=True)

    schema_version: Literal[1] = Field(BUNDLE_SCHEMA_VERSION, alias="schemaVersion")
    thing_name: str = Field(alias="thingName", min_length=1, max_length=128)
    thing_groups: tuple[str, ...] = Field((), alias="thingGroups")
    platform: dict[str, str]
    """The device's Greengrass platform (``os``, ``architecture``): what recipes are resolved against."""
    profile: str = ""
    """The device profile it was added with (``rasp4b``...), or empty."""
    fleet: str = "fleet"
    broker_url: str = Field(alias="brokerUrl", pattern=r"^mqtts?://[^/\s]+$")
    """Where the agent connects: ``mqtts://HOST:PORT`` (mTLS with the files below) or ``mqtt://`` (no TLS)."""
    registry_url: str = Field(alias="registryUrl", pattern=r"^https?://[^\s]+$")
    """The fleet's HTTP API: recipes and artifacts (``/v1/components/...``, ``/v1/artifacts/...``)."""
    root_ca_path: str | None = Field(None, alias="rootCaPath")
    certificate_file_path: str | None = Field(None, alias="certificateFilePath")
    private_key_path: str | None = Field(None, alias="privateKeyPath")
    rootpath: str = "work"
    """The agent's own folder (components, artifacts, logs, state), relative to the bundle or absolute."""

    @field_validator("platform")
    @classmethod
    def _platform(cls, value: dict[str, str]) -> dict[str, str]:
        if not value.get("os") or not value.get("architecture"):
            raise ValueError("platform needs 'os' and 'architecture' (e.g. {os: linux, architecture: aarch64})")
        return value

    @property
    def tls(self) -> bool:
        return self.broker_url.startswith("mqtts://")

    def path(self, folder: Path, value: str) -> Path:
        """``value`` (a path of this file) resolved against the bundle's ``folder``."""
        return (folder / value).resolve() if not Path(value).is_absolute() else Path(value)

    def tls_files(self, folder: Path) -> tuple[Path, Path, Path] | None:
        """``(ca, cert, key)`` of a bundle in ``folder`` (``None`` without TLS)."""
        if not self.tls:
            return None
        if not (self.root_ca_path and self.certificate_file_path and self.private_key_path):
            raise ConfigError(
                f"{folder / BUNDLE_CONFIG}: {self.broker_url} is mTLS: rootCaPath, certificateFilePath and privateKeyPath are needed"
            )
        return (
            self.path(folder, self.root_ca_path),
            self.path(folder, self.certificate_file_path),
            self.path(folder, self.private_key_path),
        )

    def root(self, folder: Path) -> Path:
        """The agent's folder of a bundle in ``folder``."""
        return self.path(folder, self.rootpath)

    def to_yaml(self) -> str:
        """The text of ``config.yaml`` (a comment line, then the keys in the model's order)."""
        import json

        # JSON is YAML: one key per line, every string quoted, nothing a YAML reader could take for a date or a bool
        data = self.model_dump(mode="json", exclude_none=True)
        lines = [f"# edgekit device bundle of thing '{self.thing_name}': run it with 'edgekit agent --config config.yaml'"]
        lines += [f"{key}: {json.dumps(value)}" for key, value in data.items()]
        return "\n".join(lines) + "\n"


def read_bundle(config: str | Path) -> tuple[DeviceBundle, Path]:
    """The bundle whose ``config.yaml`` is ``config`` (a file, or its folder) and its folder; :class:`ConfigError`
    with one line naming the file and the problem otherwise."""
    path = Path(config)
    if path.is_dir():
        path = path / BUNDLE_CONFIG
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"can't read the device bundle's config {path}: {exc.strerror or exc}; "
            "make one with 'edgekit fleet add-device THING --group GROUP --platform PROFILE'"
        ) from None
    try:
        raw = loads_yaml(data, max_bytes=_MAX_CONFIG_BYTES)
    except ParseError as exc:
        raise ConfigError(f"{path}: the device bundle's config {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the device bundle's config must be a mapping (thingName: ..., brokerUrl: ...)")
    try:
        bundle = DeviceBundle.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_problem(exc)}") from None
    return bundle, path.parent.resolve()
