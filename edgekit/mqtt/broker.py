"""Local MQTT brokers for the fleet service, the simulator and the tests: mosquitto, an embedded one, or yours.

::

    broker = start_broker(folder, tls=TlsMaterial.create(folder / "tls", things), acl=True)
    broker.restart()    # same port, same persistence: sessions and queued QoS 1 messages survive
    broker.stop()

See docs/local-fleet.md (what runs).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self, runtime_checkable

from edgekit.atomic import write_bytes
from edgekit.children import die_with_parent, reap_stale, write_pidfile
from edgekit.errors import ConfigError, MissingDependencyError, ToolchainError
from edgekit.mqtt.errors import BrokerError
from edgekit.mqtt.tls import SERVICE_IDENTITY, TlsMaterial

__all__ = [
    "Broker",
    "BrokerFeatures",
    "EmbeddedBroker",
    "ExternalBroker",
    "MosquittoBroker",
    "find_mosquitto",
    "free_port",
    "raise_fd_limit",
    "start_broker",
]

log = logging.getLogger(__name__)

_MOSQUITTO_HINT = "mosquitto not found; apt-get install -y mosquitto"
_START_TIMEOUT = 10.0


@dataclass(frozen=True)
class BrokerFeatures:
    """What a broker can do, so a caller (or a test) can tell before relying on it."""

    mqtt5: bool
    tls: bool
    acl: bool
    offline_queue: bool
    restart: bool


@runtime_checkable
class Broker(Protocol):
    """A broker edgekit can connect to: a URL, a lifecycle, and what it supports."""

    kind: str
    features: BrokerFeatures

    @property
    def url(self) -> str: ...

    @property
    def tls(self) -> TlsMaterial | None: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def restart(self) -> None: ...


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    """Whether a listener could bind ``host:port`` now (with ``SO_REUSEADDR``, as mosquitto's listeners do: the
    TIME_WAIT connections a stopped broker leaves on its port don't count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
        return True


def find_mosquitto(binary: str | Path | None = None) -> Path:
    """The mosquitto executable (``binary`` if given, else on PATH or Debian's /usr/sbin), or :class:`ToolchainError`."""
    if binary is not None:
        path = Path(binary)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ToolchainError(f"{_MOSQUITTO_HINT} (no executable at {path})")
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise ToolchainError(_MOSQUITTO_HINT)
    return Path(found)


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


def raise_fd_limit(wanted: int = 65536) -> int:
    """Raise this process's soft open-file limit towards ``wanted`` (capped by the hard limit); return the new soft limit.

    A thousand MQTT clients need a thousand sockets, in the simulator and in the broker (which inherits the
    limit): Debian's default soft limit of 1024 is too low for either.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


class _ProcessBroker:
    """A broker that runs as a child process on 127.0.0.1 with its files in ``folder``."""

    kind = "process"
    features = BrokerFeatures(mqtt5=False, tls=False, acl=False, offline_queue=False, restart=True)
    _log_name = "broker.log"
    _ready_marker: bytes | None = None

    def __init__(
        self, folder: str | Path, *, port: int = 0, host: str = "127.0.0.1", start_timeout: float = _START_TIMEOUT
    ) -> None:
        self.folder = Path(folder).resolve()  # mosquitto runs inside it: relative paths would break
        self.host = host
        self.port = port
        self.start_timeout = start_timeout
        self._proc: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------------ subclass hooks

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Write the configuration (called before every start)."""

    # ------------------------------------------------------------------ lifecycle

    @property
    def log_path(self) -> Path:
        return self.folder / self._log_name

    @property
    def pid_path(self) -> Path:
        return self.folder / f"{self.kind}.pid"

    @property
    def tls(self) -> TlsMaterial | None:
        return None

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def service_url(self) -> str:
        """Where the fleet service connects (with mTLS, a listener of its own; else the same as :attr:`url`)."""
        return self.url

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the broker and return once its port accepts connections (or raise :class:`BrokerError`)."""
        if self.running:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host)
        reap_stale(self.pid_path)  # a broker an earlier run left behind (kill -9) holds our persistence
        self._prepare()
        command = self._command()
        raise_fd_limit()  # the child inherits it
        log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,  # a Ctrl-C in the terminal is for us, not for the broker
                preexec_fn=die_with_parent(),  # ... but when we die, it goes too
            )
        write_pidfile(self.pid_path, self._proc.pid)
        deadline = time.monotonic() + self.start_timeout
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise BrokerError(
                    f"{self.kind} exited with code {code} while starting on port {self.port}; its log ({self.log_path}):\n"
                    f"{_log_tail(self.log_path)}"
                )
            try:
                if not self._says_ready(log_start):
                    raise OSError("not ready yet")
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    pass
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise BrokerError(
                        f"{self.kind} did not accept connections on {self.host}:{self.port} within {self.start_timeout:.0f} s; "
                        f"its log ({self.log_path}):\n{_log_tail(self.log_path)}"
                    ) from None
                time.sleep(0.02)
            else:
                log.info("%s listening at %s (pid %d)", self.kind, self.url, self._proc.pid)
                return

    def _says_ready(self, log_start: int) -> bool:
        """Whether the log written since ``log_start`` shows the broker listening (a port that answers may be someone else's)."""
        if self._ready_marker is None:
            return True
        try:
            with self.log_path.open("rb") as handle:
                handle.seek(log_start)
                return self._ready_marker in handle.read()
        except OSError:
            return False

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker (SIGTERM: mosquitto saves its persistence file), SIGKILL if it does not exit in ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        self.pid_path.unlink(missing_ok=True)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)  # a frozen broker can't handle SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.info("%s on port %d stopped", self.kind, self.port)

    def kill(self) -> None:
        """Crash the broker (SIGKILL): nothing is saved since the last autosave. For fault injection."""
        proc, self._proc = self._proc, None
        if proc is not None:
            self.pid_path.unlink(missing_ok=True)
            proc.kill()
            proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the same persistence (clients see a dropped connection)."""
        self.stop()
        self.start()

    def freeze(self) -> None:
        """SIGSTOP the broker: connections stay open but nothing moves (a network partition, for fault injection)."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        """SIGCONT a frozen broker."""
        if self._proc is not None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url}, running={self.running})"


class MosquittoBroker(_ProcessBroker):
    """mosquitto on 127.0.0.1 with a generated configuration in ``folder``.

    * plain TCP (``tls=None``): anonymous clients allowed — quick runs and tests;
    * mTLS (``tls=TlsMaterial``): ``require_certificate``, the certificate's CN becomes the user name,
      ``allow_anonymous false``;
    * ``acl=True``: each user may read/write only ``$aws/things/<user>/#`` and ``devices/<user>/#``; the fleet
      service (``edgekit-fleet-service``) may read/write everything. mosquitto checks the ACL when it delivers,
      not when it subscribes (SUBACK says granted, nothing arrives); a forbidden MQTT 5 publish gets PUBACK 135.
    * persistence in ``folder``: :meth:`restart` keeps persistent sessions and their queued QoS 1 messages.
    """

    kind = "mosquitto"
    features = BrokerFeatures(mqtt5=True, tls=True, acl=True, offline_queue=True, restart=True)
    _log_name = "mosquitto.log"
    _ready_marker = b" running"  # "mosquitto version 2.0.11 running", logged once every listener is bound

    def __init__(
        self,
        folder: str | Path,
        *,
        port: int = 0,
        tls: TlsMaterial | None = None,
        acl: bool = False,
        binary: str | Path | None = None,
        host: str = "127.0.0.1",
        max_inflight_messages: int = 100,
        max_queued_messages: int = 10000,
        autosave_interval: int = 60,
        extra_config: tuple[str, ...] = (),
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        super().__init__(folder, port=port, host=host, start_timeout=start_timeout)
        # the fleet service runs beside the broker: on a wildcard address its listener stays on the loopback
        self.service_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
        self._tls = tls
        self.service_port = 0  # with mTLS: the service listener's port (kept in the folder: see _kept_service_port)
        self.acl = acl
        self.binary = binary
        self.max_inflight_messages = max_inflight_messages
        self.max_queued_messages = max_queued_messages
        self.autosave_interval = autosave_interval
        self.extra_config = extra_config

    @property
    def tls(self) -> TlsMaterial | None:
        return self._tls

    @property
    def config_path(self) -> Path:
        return self.folder / "mosquitto.conf"

    @property
    def acl_path(self) -> Path:
        return self.folder / "mosquitto.acl"

    def _command(self) -> list[str]:
        return [str(find_mosquitto(self.binary)), "-c", str(self.config_path)]

    def _prepare(self) -> None:
        find_mosquitto(self.binary)  # fail with the install hint before writing anything
        if self._tls is not None and self.service_port == 0:
            self.service_port = self._kept_service_port()
        self.config_path.write_text(self.render_config())
        if self.acl:
            self.acl_path.write_text(self.render_acl())

    @property
    def service_port_path(self) -> Path:
        return self.folder / "service.port"

    def _kept_service_port(self) -> int:
        """The service listener's port of the last broker on this folder while it is free, else a new one, kept.

        mosquitto ties a persisted session to the settings of the listener it came in on (``per_listener_settings``):
        on another port it still resumes the fleet service's session, but drops what it queued for it while the
        service was away ("Failed to associate persisted user ... with ACLs"): what devices sent while ``fleet serve``
        restarted (presence, Jobs requests, telemetry) would be lost. So the port stays with the persistence.
        """
        path = self.service_port_path
        try:
            kept = int(path.read_text())
        except (OSError, ValueError):
            kept = 0
        if 0 < kept < 65536 and port_is_free(self.service_host, kept):
            return kept
        if kept:
            log.warning(
                "the fleet service's listener port %d (%s) is taken now; using another: what the broker queued for "
                "the service while it was away is dropped",
                kept,
                path,
            )
        port = free_port(self.service_host)
        write_bytes(path, f"{port}\n".encode())
        return port

    @property
    def service_url(self) -> str:
        return f"mqtts://{self.service_host}:{self.service_port}" if self._tls is not None else self.url

    def render_config(self) -> str:
        """The mosquitto.conf this broker runs with.

        With mTLS there are two listeners. Devices connect to :attr:`url`: the certificate's CN becomes the user name
        and the client id (``use_username_as_clientid``: what AWS IoT's ``iot:Connect`` on
        ``client/${iot:Connection.Thing.ThingName}`` enforces), so a device can't connect under another's id, kick it
        off or wipe its session. The fleet service connects to :attr:`service_url`, which trusts only certificates of
        the service CA (no device can reach it) and lets the service pick its client ids.
        """
        lines = [
            "# generated by edgekit.mqtt.broker; rewritten on every start",
            f"per_listener_settings {'true' if self._tls is not None else 'false'}",
            "persistence true",
            f"persistence_location {self.folder.resolve()}/",
            "persistence_file mosquitto.db",
            f"autosave_interval {self.autosave_interval}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp true",
            f"max_inflight_messages {self.max_inflight_messages}",
            f"max_queued_messages {self.max_queued_messages}",
        ]
        if os.geteuid() == 0:
            lines += ["# as root, mosquitto would drop to user 'mosquitto', which can't read the 0600 keys", "user root"]
        lines += self._listener(self.port, devices=True)
        if self._tls is not None:
            lines += self._listener(self.service_port, devices=False, host=self.service_host)
        lines += list(self.extra_config)
        return "\n".join(lines) + "\n"

    def _listener(self, port: int, *, devices: bool, host: str | None = None) -> list[str]:
        lines = [
            "",
            f"listener {port} {host or self.host}",
            f"allow_anonymous {'false' if self._tls is not None else 'true'}",
            "set_tcp_nodelay true",
            "max_connections -1",
            "max_packet_size 268435455",
        ]
        if self._tls is not None:
            server = self._tls.server
            lines += [
                f"cafile {(server.ca if devices else self._tls.service_ca_cert).resolve()}",
                f"certfile {server.cert.resolve()}",
                f"keyfile {server.key.resolve()}",
                "require_certificate true",
                "use_identity_as_username true",
            ]
            if devices:
                lines.append("use_username_as_clientid true")
        if self.acl:
            lines.append(f"acl_file {self.acl_path.resolve()}")
        return lines

    @staticmethod
    def render_acl() -> str:
        """Per-device topics for everyone, everything for the fleet service (as AWS IoT policies would)."""
        return "\n".join(
            [
                "# generated by edgekit.mqtt.broker",
                "# every authenticated user (a device: user name = certificate CN = thing name) gets its own subtrees",
                "pattern readwrite $aws/things/%u/#",
                "pattern readwrite devices/%u/#",
                "",
                f"user {SERVICE_IDENTITY}",
                "topic readwrite #",
                "# '#' does not match topics that start with '$'",
                "topic readwrite $aws/#",
                "",
            ]
        )


class EmbeddedBroker(_ProcessBroker):
    """``amqtt`` (pure Python) in a child process: a fallback for machines without mosquitto.

    What it lacks, compared with :class:`MosquittoBroker`:

    * MQTT 3.1.1 only — connect with ``MqttClient(..., protocol=4)``; no PUBACK reason codes (a forbidden
      publish can't be told from an accepted one), no session expiry, no user properties;
    * no offline queue for anonymous clients — a device that was offline misses QoS 1 messages, so it must
      ask for its pending jobs on every (re)connect (the agent does);
    * no TLS ACLs — no certificate identity as user name, so no per-device topic isolation; plain TCP only here;
    * no persistence across :meth:`restart`.
    """

    kind = "embedded"
    features = BrokerFeatures(mqtt5=False, tls=False, acl=False, offline_queue=False, restart=True)
    _log_name = "amqtt.log"
    _ready_marker = b"bind to"  # "Listener 'default' bind to 127.0.0.1:PORT"

    @property
    def config_path(self) -> Path:
        return self.folder / "amqtt.yaml"

    def _prepare(self) -> None:
        if importlib.util.find_spec("amqtt") is None:
            raise MissingDependencyError("amqtt", "device", "The embedded MQTT broker")
        self.config_path.write_text(
            "\n".join(
                [
                    "# generated by edgekit.mqtt.broker",
                    "listeners:",
                    "  default:",
                    "    type: tcp",
                    f"    bind: {self.host}:{self.port}",
                    "    max_connections: 0",
                    "plugins:",
                    "  amqtt.plugins.authentication.AnonymousAuthPlugin:",
                    "    allow_anonymous: true",
                    "",
                ]
            )
        )

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(self.config_path)]


class ExternalBroker:
    """A broker edgekit does not run (``mqtt://host:port`` or ``mqtts://...``): start/stop do nothing."""

    kind = "external"
    features = BrokerFeatures(mqtt5=True, tls=True, acl=True, offline_queue=True, restart=False)

    def __init__(self, url: str, tls: TlsMaterial | None = None) -> None:
        if not url.startswith(("mqtt://", "mqtts://")):
            raise ConfigError(f"external broker URL '{url}' must start with mqtt:// or mqtts://")
        self._url = url
        self._tls = tls

    @property
    def url(self) -> str:
        return self._url

    @property
    def tls(self) -> TlsMaterial | None:
        return self._tls

    def start(self) -> None:
        return None

    def stop(self) -> None:
        return None

    def restart(self) -> None:
        raise BrokerError(f"can't restart the external broker at {self._url}: edgekit does not run it")

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        return None

    def __repr__(self) -> str:
        return f"ExternalBroker({self._url})"


def start_broker(
    folder: str | Path,
    prefer: str | None = None,
    *,
    tls: TlsMaterial | None = None,
    acl: bool = False,
    port: int = 0,
) -> MosquittoBroker | EmbeddedBroker | ExternalBroker:
    """Start a broker and return it; ``broker.kind`` says which one it is (also logged).

    ``prefer``: ``"mosquitto"`` (default; falls back to the embedded broker when mosquitto is missing and
    neither ``tls`` nor ``acl`` is asked for), ``"embedded"``, or ``"external:<url>"``. ``None`` reads
    ``$EDGEKIT_BROKER``.
    """
    choice = prefer or os.environ.get("EDGEKIT_BROKER") or "mosquitto"
    folder = Path(folder)
    broker: MosquittoBroker | EmbeddedBroker | ExternalBroker
    if choice.startswith("external:"):
        broker = ExternalBroker(choice.removeprefix("external:"), tls=tls)
    elif choice == "embedded":
        if tls is not None or acl:
            raise ConfigError("the embedded broker (amqtt) has no mTLS identities and no ACLs; use mosquitto for tls/acl")
        broker = EmbeddedBroker(folder, port=port)
    elif choice == "mosquitto":
        try:
            find_mosquitto()
        except ToolchainError:
            if tls is not None or acl or importlib.util.find_spec("amqtt") is None:
                raise
            log.warning("%s; falling back to the embedded broker (amqtt: MQTT 3.1.1, no offline queue, no ACLs)", _MOSQUITTO_HINT)
            broker = EmbeddedBroker(folder, port=port)
        else:
            broker = MosquittoBroker(folder, port=port, tls=tls, acl=acl)
    else:
        raise ConfigError(f"unknown broker '{choice}': use mosquitto, embedded or external:<mqtt://host:port>")
    broker.start()
    log.info("using the %s broker at %s", broker.kind, broker.url)
    return broker
