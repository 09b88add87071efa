"""The device agent as a process of its own: ``python -m edgekit.device --config <folder>/config.yaml``.

The config file says who the device is (thing name, groups, Greengrass platform), where it keeps its state, where
its fleet is (the registry's URL, the broker's URL) and its certificate; relative paths are read from the config
file's folder. The process connects (client id = thing name, as the broker's ACL wants), resumes what ran, follows
its jobs until SIGTERM / SIGINT, then stops its components (their Shutdown steps run) and disconnects. It prints
one line when connected (:data:`READY`) so that whoever started it can tell. Only the device side is imported:
no typer, no fleet. The simulator runs emulated devices with it, under qemu-user (docs/local-fleet.md); a real
device runs the same. See docs/device-agent.md (a device agent of its own).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from edgekit.errors import ConfigError, EdgekitError, first_problem
from edgekit.parsing import MAX_FILE_BYTES, ParseError, loads_yaml

__all__ = ["READY", "AgentProcessConfig", "TlsFilePaths", "load_agent_config", "main", "serve"]

log = logging.getLogger(__name__)

READY: Final = "edgekit agent: connected"
"""The start of the line the process prints once its MQTT connection is up."""


class _Part(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="forbid")


class TlsFilePaths(_Part):
    """The device's certificate, its key and the CA that signed the broker's certificate (PEM files)."""

    ca: Path
    cert: Path
    key: Path


class AgentProcessConfig(_Part):
    """A device agent's config file (YAML, camelCase keys)."""

    thing: str = Field(min_length=1, max_length=128, pattern=r"^[a-zA-Z0-9:_-]+$")
    root: Path
    """The agent's folder: its state, components' work folders and logs."""
    platform: dict[str, str]
    """What the recipes' manifests are matched against, e.g. ``{os: linux, architecture: aarch64}``."""
    groups: list[str] = Field(default_factory=list)
    registry_url: str
    broker_url: str
    tls: TlsFilePaths | None = None
    env: dict[str, str] = Field(default_factory=dict)
    """More environment for every lifecycle step (e.g. ``EDGEKIT_HOST_PYTHON``: the runtime component's Python)."""
    agent: dict[str, Any] = Field(default_factory=dict)
    """Options of :class:`~edgekit.device.DeviceAgent` (``settle_s``, ``fsync``, ``deployment_timeout_s`` ...)."""


def load_agent_config(path: str | Path) -> AgentProcessConfig:
    """Read a config file; relative paths in it are relative to its folder. Raises :class:`ConfigError`."""
    path = Path(path)
    try:
        raw = loads_yaml(path.read_bytes(), max_bytes=MAX_FILE_BYTES)
        config = AgentProcessConfig.model_validate(raw)
    except OSError as exc:
        raise ConfigError(f"cannot read the agent config {path}: {exc.strerror or exc}") from None
    except ParseError as exc:
        raise ConfigError(f"{path}: the agent config {exc}") from None
    except ValidationError as exc:
        raise ConfigError(f"{path}: {first_problem(exc)}") from None
    here = path.resolve().parent
    update: dict[str, Any] = {"root": here / config.root}
    if config.tls is not None:
        update["tls"] = TlsFilePaths(ca=here / config.tls.ca, cert=here / config.tls.cert, key=here / config.tls.key)
    return config.model_copy(update=update)


async def serve(config: AgentProcessConfig, stop: asyncio.Event | None = None) -> None:
    """Run the agent of ``config`` until ``stop`` is set (or SIGTERM / SIGINT), then stop it cleanly."""
    from edgekit.device.jobs_runner import run_device

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tls = (str(config.tls.ca), str(config.tls.cert), str(config.tls.key)) if config.tls is not None else None
    options: dict[str, Any] = dict(config.agent)
    options["env"] = {**config.env, **dict(options.get("env") or {})}
    runner = await run_device(
        config.thing,
        config.root,
        config.platform,
        config.registry_url,
        config.broker_url,
        tls=tls,
        groups=config.groups,
        agent_options=options,
    )
    print(f"{READY} {config.thing} to {config.broker_url}", flush=True)
    try:
        await stop.wait()
    finally:
        print(f"edgekit agent: {config.thing} stopping", flush=True)
        await runner.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m edgekit.device --config FILE [-v]``: 0 after a clean stop, 2 for a bad config, 1 otherwise."""
    parser = argparse.ArgumentParser(prog="python -m edgekit.device", description="edgekit's device agent (docs/device-agent.md)")
    parser.add_argument("--config", required=True, type=Path, help="the agent's config file (YAML)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = load_agent_config(args.config)
    except ConfigError as exc:
        print(f"edgekit agent: {exc}", file=sys.stderr, flush=True)
        return 2
    try:
        asyncio.run(serve(config))
    except EdgekitError as exc:
        print(f"edgekit agent: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
