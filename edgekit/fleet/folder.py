"""Where a local fleet keeps its files, and opening its state. See docs/local-fleet.md (the fleet folder)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from edgekit.errors import ConfigError

if TYPE_CHECKING:
    from edgekit.fleet.state import FleetState

__all__ = ["DEFAULT_STATE_DIR", "FleetFolder"]

DEFAULT_STATE_DIR: Final = Path(".edgekit") / "fleet"


@dataclass(frozen=True)
class FleetFolder:
    """Where a local fleet keeps its files (see docs/local-fleet.md: the fleet folder)."""

    root: Path

    @classmethod
    def at(cls, root: str | Path | None = None) -> FleetFolder:
        """The folder ``root`` (default ``./.edgekit/fleet``), made absolute: mosquitto runs with its own working folder."""
        return cls((Path(root) if root is not None else DEFAULT_STATE_DIR).absolute())

    @property
    def database(self) -> Path:
        return self.root / "fleet.db"

    @property
    def database_url_file(self) -> Path:
        """Where ``edgekit fleet serve --database`` leaves the fleet's ``postgresql://`` URL (mode 0600: it may hold a
        password), so every command on the folder opens the same database."""
        return self.root / "database.url"

    @property
    def state_location(self) -> str | Path:
        """The fleet's state: the PostgreSQL URL the folder names, else its SQLite file (:attr:`database`)."""
        try:
            url = self.database_url_file.read_text().strip()
        except FileNotFoundError:
            return self.database
        return url or self.database

    def use_database(self, url: str | None) -> None:
        """Keep the fleet's state at ``url`` (``postgresql://...``) from now on; ``None`` changes nothing."""
        from edgekit.fleet.state import is_database_url

        if url is None:
            return
        if not is_database_url(url):
            raise ConfigError(f"--database {url!r}: give a postgresql://USER[:PASSWORD]@HOST[:PORT]/DATABASE URL")
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.database_url_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(url + "\n")

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def broker(self) -> Path:
        return self.root / "broker"

    @property
    def tls(self) -> Path:
        return self.root / "tls"

    @property
    def devices(self) -> Path:
        return self.root / "devices"

    @property
    def running_file(self) -> Path:
        return self.root / "simulation.json"

    @property
    def presence_file(self) -> Path:
        """Who is connected, while a fleet runs (written by :class:`~edgekit.fleet.presence.PresenceTracker`)."""
        return self.root / "presence.json"

    @property
    def serve_file(self) -> Path:
        """Where ``edgekit fleet serve`` listens, kept between runs: the addresses device bundles name."""
        return self.root / "serve.json"

    @property
    def bundles(self) -> Path:
        """Device bundles ``edgekit fleet add-device`` writes (unless told another folder)."""
        return self.root / "bundles"

    def device(self, thing: str) -> Path:
        return self.devices / thing

    def exists(self) -> bool:
        return self.database.is_file() or self.database_url_file.is_file()

    def open_state(self) -> FleetState:
        """The fleet's state; :class:`~edgekit.errors.ConfigError` naming the commands that make one when there is none."""
        from edgekit.fleet.state import FleetState

        if not self.exists():
            raise ConfigError(
                f"no local fleet in {self.root} (no {self.database.name}); start one with 'edgekit simulate --state {self.root}' "
                f"or publish to it with 'edgekit publish --local --state {self.root}'"
            )
        return FleetState(self.state_location)

    def running(self) -> dict[str, Any] | None:
        """What ``simulation.json`` says about a running simulation (``None`` when none runs, or it died)."""
        try:
            info = json.loads(self.running_file.read_text())
        except (OSError, ValueError):
            return None
        pid = info.get("pid") if isinstance(info, dict) else None
        if not isinstance(pid, int):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return dict(info)
