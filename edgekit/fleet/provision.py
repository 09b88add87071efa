"""Real devices in a local fleet: where ``edgekit fleet serve`` listens, and the device bundles of ``fleet add-device``.

::

    fleet = FleetServer(folder, devices=None, host="0.0.0.0", public_host="192.168.1.10", port=8883, http_port=8080)
    ...                                                       # edgekit fleet serve: save_endpoints(folder, ...)
    added = add_device(folder, "pi-01", groups=["line-1"], platform="rasp4b")
    # added.bundle: config.yaml + the fleet's CA certificate + pi-01's certificate and key; copy it to the device and
    # run 'edgekit agent --config config.yaml' there

A bundle is signed by the fleet's CA (``tls/ca.key``, made by the first ``fleet serve``; never copied into a bundle)
and names the addresses the last ``fleet serve`` listened on (``serve.json``). See docs/local-fleet.md (real devices).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgekit.atomic import install_dir, write_bytes
from edgekit.errors import ConfigError
from edgekit.fleet.folder import FleetFolder
from edgekit.fleet.service import FleetService
from edgekit.fleet.state import FleetState
from edgekit.mqtt.tls import SERVICE_IDENTITY, TlsMaterial, check_thing_name
from edgekit.profiles import load_profile
from edgekit.wire.device_bundle import BUNDLE_CA, BUNDLE_CERT, BUNDLE_CONFIG, BUNDLE_KEY, DeviceBundle

__all__ = ["DEFAULT_HTTP_PORT", "DEFAULT_MQTT_PORT", "AddedDevice", "ServeEndpoints", "add_device", "parse_platform"]

DEFAULT_MQTT_PORT: Final = 8883
DEFAULT_HTTP_PORT: Final = 8080


class ServeEndpoints(BaseModel):
    """``serve.json``: where ``edgekit fleet serve`` listened last, so bundles and the next run agree on it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, serialize_by_alias=True)
    fleet: str = "fleet"
    host: str
    public_host: str = Field(alias="publicHost")
    port: int = Field(ge=1, le=65535)
    http_port: int = Field(alias="httpPort", ge=1, le=65535)

    @property
    def broker_url(self) -> str:
        return f"mqtts://{_url_host(self.public_host)}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{_url_host(self.public_host)}:{self.http_port}"

    @classmethod
    def read(cls, folder: FleetFolder) -> ServeEndpoints | None:
        try:
            return cls.model_validate(json.loads(folder.serve_file.read_text()))
        except (OSError, ValueError, ValidationError):
            return None

    def write(self, folder: FleetFolder) -> None:
        write_bytes(folder.serve_file, json.dumps(self.model_dump(mode="json"), indent=1).encode())


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def parse_platform(platform: str) -> tuple[str, dict[str, str]]:
    """``(profile, platform)`` of ``--platform``: a device profile (``rasp4b``, see ``edgekit targets``) or
    ``OS/ARCHITECTURE`` (``linux/aarch64``: no profile)."""
    if "/" in platform and not platform.endswith((".yaml", ".yml")):
        os_name, _, arch = platform.partition("/")
        if not os_name or not arch or "/" in arch:
            raise ConfigError(
                f"--platform '{platform}': use a device profile (edgekit targets) or OS/ARCHITECTURE (linux/aarch64)"
            )
        return "", {"os": os_name, "architecture": arch}
    try:
        profile = load_profile(platform)
    except ConfigError as exc:
        raise ConfigError(f"--platform '{platform}': {exc}; or give OS/ARCHITECTURE (linux/aarch64)") from None
    return profile.name, {"os": profile.greengrass.os, "architecture": profile.greengrass.architecture}


@dataclass(frozen=True)
class AddedDevice:
    """A device added to a local fleet: its thing, groups and platform, and the bundle written for it."""

    thing: str
    groups: tuple[str, ...]
    profile: str
    platform: dict[str, str]
    bundle: Path
    broker_url: str
    http_url: str
    queued: list[str] = field(default_factory=list)
    """Job ids queued for it at once: the live deployments of its groups."""

    @property
    def config(self) -> Path:
        return self.bundle / BUNDLE_CONFIG

    def to_json(self) -> dict[str, Any]:
        return {
            "thing": self.thing,
            "groups": list(self.groups),
            "profile": self.profile,
            "platform": self.platform,
            "bundle": str(self.bundle),
            "config": str(self.config),
            "brokerUrl": self.broker_url,
            "registryUrl": self.http_url,
            "queued": self.queued,
        }


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the bundle")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"{out} is not empty; give another --out, or --force to replace the bundle there")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"can't write the bundle to {out}: {parent} is not writable")


def add_device(
    folder: FleetFolder,
    thing: str,
    *,
    groups: list[str] | tuple[str, ...] = (),
    platform: str,
    out: str | Path | None = None,
    root: str = "work",
    create_groups: bool = False,
    force: bool = False,
) -> AddedDevice:
    """Register ``thing`` in ``groups`` of the fleet in ``folder`` and write its device bundle to ``out`` (default
    ``<folder>/bundles/<thing>``): a certificate signed by the fleet's CA, its key, the CA's certificate and
    ``config.yaml`` (the broker and HTTP addresses of the last ``fleet serve``; ``root``: the agent's folder on the
    device, relative to the bundle or absolute). Works while the fleet runs: the broker trusts every certificate its
    CA signs.

    One :class:`ConfigError` line, and nothing written, for: no ``fleet serve`` yet on the folder, a bad thing name,
    a thing already registered (``force``: write its bundle again), a group the fleet doesn't have (``create_groups``:
    make it), a bad platform, an ``out`` that is not empty (``force``: replace it) or not writable.
    """
    check_thing_name(thing)
    if thing == SERVICE_IDENTITY:
        raise ConfigError(f"'{thing}' is the fleet service's identity; choose another thing name")
    endpoints = ServeEndpoints.read(folder)
    if endpoints is None or not (folder.tls / "ca.key").is_file() or not folder.exists():
        raise ConfigError(
            f"no fleet served from {folder.root} yet: run 'edgekit fleet serve --state {folder.root}' once first "
            "(it makes the fleet's CA and picks the addresses devices connect to)"
        )
    profile, device_platform = parse_platform(platform)
    bundle_dir = Path(out).absolute() if out is not None else folder.bundles / thing
    wanted = list(dict.fromkeys(groups))
    state = FleetState(folder.state_location)
    try:
        if state.get_thing(thing) is not None and not force:
            raise ConfigError(
                f"thing '{thing}' is already in the fleet in {folder.root} (groups {', '.join(state.groups_of(thing)) or '-'}); "
                "choose another name, or --force to write its bundle again"
            )
        unknown = [g for g in wanted if not state.group_exists(g)]
        if unknown and not create_groups:
            known = ", ".join(state.groups()) or "none yet"
            raise ConfigError(
                f"thing group '{unknown[0]}' does not exist in the fleet in {folder.root} (groups: {known}); "
                "add --create-group to make it"
            )
        _check_out(bundle_dir, force)
        material = TlsMaterial.open(folder.tls)
        files = material.add_device(thing)
        config = DeviceBundle(
            thing_name=thing,
            thing_groups=tuple(wanted),
            platform=device_platform,
            profile=profile,
            fleet=endpoints.fleet,
            broker_url=endpoints.broker_url,
            registry_url=endpoints.http_url,
            root_ca_path=BUNDLE_CA,
            certificate_file_path=BUNDLE_CERT,
            private_key_path=BUNDLE_KEY,
            rootpath=root,
        )
        _write_bundle(bundle_dir, config, files.ca, files.cert, files.key)
        queued = FleetService(state).register_thing(thing, profile, device_platform, wanted)
    finally:
        state.close()
    return AddedDevice(
        thing, tuple(wanted), profile, device_platform, bundle_dir, endpoints.broker_url, endpoints.http_url, queued
    )


def _write_bundle(out: Path, config: DeviceBundle, ca: Path, cert: Path, key: Path) -> None:
    """The bundle folder, whole or not at all: written beside ``out``, then renamed into place."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    except OSError as exc:
        raise ConfigError(f"can't write the bundle to {out}: {exc.strerror or exc}") from None
    try:
        shutil.copyfile(ca, staged / BUNDLE_CA)
        shutil.copyfile(cert, staged / BUNDLE_CERT)
        fd = os.open(staged / BUNDLE_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.read_bytes())
        (staged / BUNDLE_CONFIG).write_text(config.to_yaml())
        staged.chmod(0o755)
        install_dir(staged, out)
    except OSError as exc:
        raise ConfigError(f"can't write the bundle to {out}: {exc.strerror or exc}") from None
    finally:
        shutil.rmtree(staged, ignore_errors=True)
