"""What keeps ``edgekit serve`` answering under a hostile load: a bound on open connections, and idle ones closed.

uvicorn's own settings bound a request in progress (``limit_concurrency``: 503 past it; ``timeout_keep_alive``:
an idle keep-alive connection closed after the last response; ``h11_max_incomplete_event_size``: the size of a
request head under h11). What they leave open: a connection that never sends a complete request head holds a
file descriptor for ever, and connections past the process's descriptor limit make ``accept`` fail for every
client, ``/ping`` included. :class:`ConnectionGuard` wraps uvicorn's HTTP protocol class so that

* at most ``max_connections`` are open: a new one past it closes the oldest *idle* one (no request in progress:
  nothing sent yet, a head half sent, or a keep-alive between requests), so a client with a real request — the
  health check — gets in; when every one is busy, the new one is closed at once;
* a connection idle for ``header_timeout_s`` (no complete request head in that time) is closed, however slowly
  it drips bytes (uvicorn's keep-alive timer restarts on every byte);
* over ``max_header_bytes`` sent while no request is in progress closes the connection (a request head that
  never ends: httptools has no bound of its own).

See docs/cloud.md (Hardening).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

__all__ = ["ConnectionGuard"]


class _Seen:
    __slots__ = ("cycle", "since")

    def __init__(self, cycle: object, since: float) -> None:
        self.cycle = cycle
        self.since = since


class ConnectionGuard:
    """Counts, evicts and times out the connections of one server; :meth:`protocol` wraps uvicorn's class."""

    sweep_s = 0.5

    def __init__(self, max_connections: int, header_timeout_s: float, max_header_bytes: int = 2**20) -> None:
        self.max_connections = max(1, max_connections)
        self.header_timeout_s = header_timeout_s
        self.max_header_bytes = max_header_bytes
        self.open: dict[Any, _Seen] = {}  # protocol -> what the sweep saw; insertion order: oldest first
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0
        self._sweeping = False

    @staticmethod
    def idle(protocol: Any) -> bool:
        """No request in progress on the connection (uvicorn keeps the cycle of the last one until the next)."""
        cycle = getattr(protocol, "cycle", None)
        return cycle is None or bool(getattr(cycle, "response_complete", False))

    @staticmethod
    def _close(protocol: Any) -> None:
        transport = getattr(protocol, "transport", None)
        if transport is not None:
            with contextlib.suppress(Exception):
                transport.close()

    def admit(self, protocol: Any) -> None:
        if len(self.open) >= self.max_connections:
            victim = next((p for p in self.open if self.idle(p)), None)
            if victim is None:
                self.refused += 1
                self._close(protocol)
                return
            self.evicted += 1
            del self.open[victim]
            self._close(victim)
        self.open[protocol] = _Seen(None, time.monotonic())
        if not self._sweeping:
            self._sweeping = True
            asyncio.get_running_loop().call_later(self.sweep_s, self._sweep)

    def forget(self, protocol: Any) -> None:
        self.open.pop(protocol, None)

    def _sweep(self) -> None:
        now = time.monotonic()
        for protocol, seen in list(self.open.items()):
            cycle = getattr(protocol, "cycle", None)
            if not self.idle(protocol) or cycle is not seen.cycle:  # busy, or a request finished: idle from now
                seen.cycle, seen.since = cycle, now
            elif now - seen.since > self.header_timeout_s:
                self.timed_out += 1
                del self.open[protocol]
                self._close(protocol)
        if self.open:
            asyncio.get_running_loop().call_later(self.sweep_s, self._sweep)
        else:
            self._sweeping = False

    def protocol(self, base: type[asyncio.Protocol]) -> type[asyncio.Protocol]:
        """``base`` (uvicorn's HTTP protocol class) with its connections counted, evicted and timed out here."""
        guard = self

        class Guarded(base):  # type: ignore[valid-type,misc]
            _head_bytes = 0
            _head_after: object = None  # the request whose end the bytes counted followed

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                super().connection_made(transport)
                guard.admit(self)

            def connection_lost(self, exc: Exception | None) -> None:
                guard.forget(self)
                super().connection_lost(exc)

            def data_received(self, data: bytes) -> None:
                if guard.idle(self):  # bytes of a request head (or the first chunk of its body)
                    cycle = getattr(self, "cycle", None)
                    if cycle is not self._head_after:  # a request ended since the last count: a new head starts
                        self._head_after, self._head_bytes = cycle, 0
                    self._head_bytes += len(data)
                    if self._head_bytes > guard.max_header_bytes:
                        guard.forget(self)
                        guard._close(self)
                        return
                else:
                    self._head_bytes = 0
                super().data_received(data)

        Guarded.__name__ = Guarded.__qualname__ = f"Guarded{base.__name__}"
        return Guarded
