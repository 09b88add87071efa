"""The network between a simulated device and the broker: a TCP relay per device, so that a cut is a real reset.

See docs/local-fleet.md (what runs).
"""

from __future__ import annotations

import asyncio
import time

__all__ = ["NetworkLink"]


class _Pipe(asyncio.Protocol):
    """One side of a relayed TCP connection; bytes go to ``peer``, with flow control both ways."""

    def __init__(self, link: NetworkLink) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.peer: _Pipe | None = None
        self.pending: list[bytes] = []
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.link.pipes.add(self)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.write(data)
        else:
            self.pending.append(data)

    def eof_received(self) -> bool | None:
        return False  # close this side; connection_lost closes the peer

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.link.pipes.discard(self)
        peer = self.peer
        if peer is not None and peer.transport is not None and not peer.closed:
            peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.closed:
            self.peer.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()


class _Inbound(_Pipe):
    """The device's side: connects upstream to the broker, or is refused while the link is cut."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        if self.link.down:
            self.transport.abort()
            return
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._connect())
        self.link.tasks.add(task)
        task.add_done_callback(self.link.tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        upstream = _Pipe(self.link)
        try:
            await loop.create_connection(lambda: upstream, self.link.host, self.link.port)
        except OSError:
            self.abort()
            return
        if self.closed or self.link.down:
            upstream.abort()
            self.abort()
            return
        upstream.peer, self.peer = self, upstream
        assert upstream.transport is not None and self.transport is not None
        for chunk in self.pending:
            upstream.transport.write(chunk)
        self.pending.clear()
        self.transport.resume_reading()


class NetworkLink:
    """One device's path to the broker: a listener of its own on 127.0.0.1 relaying to ``host:port``."""

    def __init__(self, thing: str, host: str, port: int) -> None:
        self.thing = thing
        self.host = host
        self.port = port
        self.pipes: set[_Pipe] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.down_until = 0.0
        self._server: asyncio.Server | None = None
        self.local_port = 0

    @property
    def down(self) -> bool:
        return time.monotonic() < self.down_until

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Inbound(self), "127.0.0.1", 0, backlog=64)
        self.local_port = int(self._server.sockets[0].getsockname()[1])

    def drop(self) -> None:
        """Reset every connection on the link (both sides), as a broken network does."""
        for pipe in list(self.pipes):
            pipe.abort()

    def cut(self, seconds: float) -> None:
        """Drop the connections and refuse new ones for ``seconds``."""
        self.down_until = max(self.down_until, time.monotonic() + seconds)
        self.drop()

    async def close(self) -> None:
        self.down_until = float("inf")
        self.drop()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.gather(*self.tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
