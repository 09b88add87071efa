"""One device's IPC: the handler, the socket server, the IoT Core uplink, and the environment components get.

:class:`DeviceIpc` is what :class:`edgekit.device.DeviceAgent` holds (``agent.ipc``). The agent asks it for
each component's environment (:meth:`DeviceIpc.environment`, the variables the nucleus sets), tells it about
configuration changes and component updates, and a :class:`~edgekit.device.jobs_runner.DeviceMqttRunner` attaches
the device's MQTT client to its uplink (:meth:`DeviceIpc.attach`). See ``docs/ipc.md``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekit.device.ipc.handler import ComponentHost, IpcHandler
from edgekit.device.ipc.iotcore import IotCoreLink
from edgekit.device.ipc.socket_server import IpcServer, socket_path_for

if TYPE_CHECKING:
    from edgekit.mqtt.client import MqttClient

__all__ = ["SOCKET_ENV", "DeviceIpc"]

log = logging.getLogger(__name__)

SOCKET_ENV = "AWS_GG_NUCLEUS_DOMAIN_SOCKET_FILEPATH_FOR_COMPONENT"


class DeviceIpc:
    """The IPC of one device rooted at ``root`` (socket ``root/ipc.socket``, uplink spool ``root/config/uplink.db``).

    ``serve_socket=False`` (in-process simulations) makes no socket: components reach the handler through
    :class:`~edgekit.device.ipc.inprocess.InProcessIpc` only.
    """

    def __init__(
        self,
        root: str | Path,
        host: ComponentHost,
        *,
        region: str = "us-east-1",
        serve_socket: bool = True,
        spool_max_items: int = 100_000,
        durable: bool = True,
    ) -> None:
        self.root = Path(root)
        self.region = region
        self.iot_core = IotCoreLink(self.root / "config" / "uplink.db", max_items=spool_max_items, durable=durable)
        self.handler = IpcHandler(host, self.iot_core)
        self.server = IpcServer(self.handler, socket_path_for(self.root)) if serve_socket else None
        self._tokens: dict[str, str] = {}

    @property
    def socket_path(self) -> Path | None:
        return self.server.path if self.server is not None else None

    async def start(self) -> None:
        if self.server is not None:
            await self.server.start()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.close()
        await self.iot_core.close()

    def token(self, component: str) -> str:
        """The component's auth token (``SVCUID``): one per component for the agent's lifetime."""
        token = self._tokens.get(component)
        if token is None or self.handler.authenticate(token) != component:
            token = self._tokens[component] = self.handler.issue_token(component)
        return token

    def forget(self, component: str) -> None:
        """A component left the device: its token stops working."""
        self._tokens.pop(component, None)
        self.handler.revoke(component)

    def environment(self, component: str) -> dict[str, str]:
        """The variables the nucleus gives a component's lifecycle steps (``AWS_IOT_THING_NAME`` is the agent's)."""
        env = {"SVCUID": self.token(component), "AWS_REGION": self.region, "AWS_DEFAULT_REGION": self.region}
        if self.server is not None:
            env[SOCKET_ENV] = str(self.server.path)
        return env

    def attach(self, client: MqttClient) -> None:
        """Publish and subscribe through ``client`` (the device's own connection)."""
        self.iot_core.attach(client)

    async def detach(self) -> None:
        await self.iot_core.detach()

    def configuration_changed(self, component: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        sent = self.handler.events.configuration_changed(component, old, new)
        log.debug("%s: configuration changed; %d IPC event(s)", component, sent)

    async def before_update(self, deployment_id: str, timeout_s: float) -> None:
        await self.handler.events.before_update(deployment_id, timeout_s)

    def after_update(self, deployment_id: str) -> None:
        self.handler.events.after_update(deployment_id)
