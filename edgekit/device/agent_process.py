"""The device agent as a process of its own: ``edgekit agent --config <bundle>/config.yaml`` on a real device.

::

    run_agent("/etc/edgekit/pi-01/config.yaml")         # until SIGTERM / SIGINT: 0 after a clean stop

It reads a device bundle (:mod:`edgekit.wire.device_bundle`), takes a lock on its root folder (one agent per folder),
makes the :class:`~edgekit.device.agent.DeviceAgent`, its MQTT client (client id = thing name, mTLS with the
bundle's files) and its :class:`~edgekit.device.jobs_runner.DeviceMqttRunner`, the same three the simulator wires
per simulated device, and runs them until SIGTERM or SIGINT: then the components' Shutdown steps run and the client
says DISCONNECT. A broker that is down (at the start too) is retried with backoff; after a reconnect the runner asks
for its pending jobs, as the nucleus does. It tells the fleet it is connected on :func:`edgekit.mqtt.topics.presence`,
with a will saying it is gone. Progress goes to ``progress`` (the CLI: stderr).

:func:`systemd_unit` writes the unit that runs it as a service (what the nucleus's ``--setup-system-service`` does).
Imports nothing of the fleet side: a device installs ``edgekit[device]``. See docs/device-agent.md (a real device).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

from edgekit.device.agent import DeviceAgent
from edgekit.device.jobs_runner import DeviceMqttRunner
from edgekit.errors import ConfigError
from edgekit.mqtt import topics
from edgekit.mqtt.client import Backoff, MqttClient
from edgekit.mqtt.errors import BrokerError
from edgekit.mqtt.payloads import DevicePresence, encode
from edgekit.progress import Progress
from edgekit.wire.device_bundle import BUNDLE_CONFIG, read_bundle

__all__ = [
    "AGENT_LOCK",
    "DEFAULT_UNIT",
    "AgentProcess",
    "run_agent",
    "setup_system_service",
    "systemd_unit",
    "write_systemd_unit",
]

log = logging.getLogger(__name__)

AGENT_LOCK: Final = "agent.lock"
DEFAULT_UNIT: Final = Path("/etc/systemd/system/edgekit-agent.service")
_WATCH_S: Final = 0.25


class AgentProcess:
    """One device's agent, client and runner from a bundle; :meth:`run` until :meth:`stop` (or a signal)."""

    def __init__(
        self,
        config: str | Path,
        *,
        progress: Progress | None = None,
        reconnect: Backoff | None = None,
        agent_options: dict[str, Any] | None = None,
    ) -> None:
        self.bundle, self.folder = read_bundle(config)
        self.root = self.bundle.root(self.folder)
        self.tls = self.bundle.tls_files(self.folder)
        for path in self.tls or ():
            if not path.is_file():
                raise ConfigError(f"{self.folder / BUNDLE_CONFIG}: {path} is missing (copy the whole bundle folder)")
        self.progress: Progress = progress or (lambda _m: None)
        self.reconnect = reconnect or Backoff(initial=0.5, maximum=15.0)
        self.agent_options = dict(agent_options or {})
        self.agent: DeviceAgent | None = None
        self.client: MqttClient | None = None
        self.runner: DeviceMqttRunner | None = None
        self._stop = asyncio.Event()
        self._lock: IO[bytes] | None = None

    @property
    def thing(self) -> str:
        return self.bundle.thing_name

    def stop(self) -> None:
        """Ask :meth:`run` to stop (cleanly); safe from a signal handler on the loop."""
        self._stop.set()

    def _take_lock(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = (self.root / AGENT_LOCK).open("a+b")
        except OSError as exc:
            raise ConfigError(f"can't use the agent's folder {self.root}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            other = handle.read().decode(errors="replace").strip() or "?"
            handle.close()
            raise ConfigError(f"another agent (pid {other}) runs on {self.root}; stop it first") from None
        handle.truncate(0)
        handle.write(str(os.getpid()).encode())
        handle.flush()
        self._lock = handle

    def _presence(self, connected: bool) -> bytes:
        return encode(DevicePresence(thing_name=self.thing, connected=connected))

    async def run(self) -> None:
        """Start, connect (retrying while the broker is unreachable), run jobs until :meth:`stop`, then stop cleanly."""
        self._take_lock()
        try:
            await self._run()
        finally:
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    async def _run(self) -> None:
        bundle = self.bundle
        runner: DeviceMqttRunner | None = None

        def report(component: str, old: str, new: str, detail: str) -> None:
            if runner is not None:
                runner.component_changed(component, old, new, detail)
            if new in ("RUNNING", "FINISHED", "ERRORED", "BROKEN"):
                self.progress(f"{component}: {new}" + (f" ({detail})" if detail and new in ("ERRORED", "BROKEN") else ""))

        self.agent = DeviceAgent(
            self.thing, self.root, bundle.platform, bundle.registry_url, bundle.thing_groups, report=report, **self.agent_options
        )
        self.client = MqttClient(
            self.thing, tls=self.tls, reconnect=self.reconnect, will=(topics.presence(self.thing), self._presence(False))
        )
        runner = self.runner = DeviceMqttRunner(self.agent, self.client, owns_agent=True, owns_client=True)
        self.client.add_on_connect(self._on_connect)
        self.progress(
            f"agent of thing '{self.thing}' (groups {', '.join(bundle.thing_groups) or '-'}; "
            f"{bundle.platform['os']}/{bundle.platform['architecture']}) in {self.root}"
        )
        await runner.start()  # resumes the agent from its folder first: what ran before runs again
        try:
            if await self._connect():
                await self._watch()
        finally:
            self.progress("stopping: components' Shutdown steps, then DISCONNECT")
            if self.client.connected:
                with contextlib.suppress(Exception):
                    await self.client.publish(topics.presence(self.thing), self._presence(False), qos=1, timeout=2.0)
            await runner.stop()
            self.progress("stopped")

    async def _connect(self) -> bool:
        """The first connect, retried with backoff until it works or :meth:`stop`; False when stopped first."""
        assert self.client is not None
        url = self.bundle.broker_url
        for attempt, delay in enumerate(self.reconnect.delays(), start=1):
            try:
                await self.client.connect(url)
                return True
            except (BrokerError, OSError, TimeoutError) as exc:
                if attempt == 1 or attempt % 10 == 0:
                    self.progress(f"can't connect to {url} ({exc}); retrying (attempt {attempt})")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                return False
        return False  # pragma: no cover - delays() never ends

    def _on_connect(self, client: MqttClient, session_present: bool) -> None:
        self.progress(
            f"connected to {self.bundle.broker_url} as '{self.thing}'" + (" (session resumed)" if session_present else "")
        )
        task = asyncio.ensure_future(client.publish(topics.presence(self.thing), self._presence(True), qos=1, timeout=10.0))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a lost one is sent again on the next connect

    async def _watch(self) -> None:
        """Until :meth:`stop`: say when the connection drops, and each job's result."""
        assert self.client is not None and self.runner is not None
        seen, online = 0, True
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), _WATCH_S)
            if online and not self.client.connected:
                self.progress(f"connection to {self.bundle.broker_url} lost; reconnecting")
            online = self.client.connected
            for run in self.runner.history[seen:]:
                self.progress(f"job {run.job_id}: {run.status} ({run.result}, {run.total_s:.1f} s)")
            seen = len(self.runner.history)


def run_agent(
    config: str | Path,
    *,
    progress: Progress | None = None,
    ready: Callable[[AgentProcess], None] | None = None,
) -> int:
    """Run the agent of the bundle ``config`` in the foreground until SIGTERM or SIGINT; 0 after a clean stop.

    Bad bundles fail at once with :class:`~edgekit.errors.ConfigError` (one line); an unreachable broker is retried.
    """
    process = AgentProcess(config, progress=progress)
    if ready is not None:
        ready(process)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handled: list[signal.Signals] = []
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, process.stop)
                handled.append(signum)
        try:
            await process.run()
        finally:
            for signum in handled:
                loop.remove_signal_handler(signum)

    asyncio.run(main())
    return 0


def systemd_unit(config: str | Path, *, python: str | None = None, user: str | None = None) -> str:
    """The systemd unit that runs the agent of the bundle ``config`` (validated first) as a service.

    As the nucleus's unit (``--setup-system-service``): ``Type=simple``, ``Restart=on-failure`` after 10 s, started
    once the network is up. ``KillMode=mixed``: SIGTERM goes to the agent alone, which stops its components (their
    Shutdown steps) and exits; whatever is left of the service after ``TimeoutStopSec`` is killed.
    """
    bundle, folder = read_bundle(config)
    command = [python or sys.executable, "-m", "edgekit", "agent", "--config", str(folder / BUNDLE_CONFIG)]
    lines = [
        "# written by 'edgekit agent --systemd-unit'; enable it with:",
        "#   sudo systemctl daemon-reload && sudo systemctl enable --now <this unit's name>",
        "[Unit]",
        f"Description=edgekit device agent (thing {bundle.thing_name})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=simple",
        f"ExecStart={shlex.join(command)}",
        f"WorkingDirectory={folder}",
        "Environment=PYTHONUNBUFFERED=1",
        "RemainAfterExit=no",
        "Restart=on-failure",
        "RestartSec=10",
        "KillMode=mixed",
        "TimeoutStopSec=90",
    ]
    if user:
        lines.append(f"User={user}")
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def write_systemd_unit(config: str | Path, unit: str | Path, *, user: str | None = None) -> Path:
    """Write :func:`systemd_unit` to ``unit`` (a file path); :class:`ConfigError` when it can't be written."""
    path = Path(unit)
    text = systemd_unit(config, user=user)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as exc:
        raise ConfigError(f"can't write the systemd unit {path}: {exc.strerror or exc}") from None
    return path


def setup_system_service(config: str | Path, *, unit: str | Path = DEFAULT_UNIT, user: str | None = None) -> Path:
    """What the nucleus's ``--setup-system-service true`` does: write the unit, then ``systemctl daemon-reload`` and
    ``systemctl enable --now`` it (as root). :class:`ConfigError` when systemd is missing or refuses."""
    import shutil
    import subprocess

    systemctl = shutil.which("systemctl")
    if systemctl is None:
        raise ConfigError("no systemctl on this machine: write the unit with --systemd-unit PATH and start it your way")
    path = write_systemd_unit(config, unit, user=user)
    for args in (["daemon-reload"], ["enable", "--now", path.name]):
        done = subprocess.run([systemctl, *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise ConfigError(f"systemctl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()}")
    return path
