"""The models a server holds: SageMaker's multi-model endpoint contract, least recently used out first.

Two ways in, as on SageMaker:

* **known models** (given at start, or found in a model repository folder) load on first use — an
  invocation naming one with ``X-Amzn-SageMaker-Target-Model`` — evicting the least recently used
  loaded models until the new one fits the memory budget;
* the **model API** (``POST /models``), which SageMaker's agent drives itself: 409 when the name is
  loaded, 507 when it does not fit in what the budget has left (the agent then unloads models and
  retries), nothing evicted behind its back.

Every change happens on the server's event loop; only the loading itself (reading files, creating
the ONNX Runtime session) runs in a worker thread, one load per name at a time. See docs/cloud.md.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio.to_thread

from edgekit.cloud.content import HttpError
from edgekit.cloud.servable import Servable, artifact_dir, estimate_bytes
from edgekit.errors import EdgekitError
from edgekit.manifest import read_manifest

__all__ = ["ModelRegistry", "ModelSource"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelSource:
    """Where a known model comes from: an artifact (folder or .tar.gz) or a pipeline's steps."""

    url: str
    steps: tuple[str, ...] = ()  # a pipeline when not empty

    def estimate(self) -> int | None:
        """Bytes it will be counted for, read from its manifest(s) before loading; None when unknown (.tar.gz)."""
        total = 0
        for step in self.steps or (self.url,):
            path = Path(step)
            if not path.is_dir():
                if self.steps:
                    continue  # a callable step: no model files
                return None
            try:
                directory, _ = artifact_dir(path)
                total += estimate_bytes(read_manifest(directory), directory)
            except EdgekitError:
                return None  # the load itself will say what is wrong
        return total


Loader = Callable[[str, ModelSource], Servable]
Listener = Callable[[str, str], None]  # (event, model): load | evict | unload


class ModelRegistry:
    def __init__(self, loader: Loader, budget_bytes: int | None = None, on_change: Listener | None = None) -> None:
        self._loader = loader
        self.budget_bytes = budget_bytes
        self.sources: dict[str, ModelSource] = {}
        self.loaded: OrderedDict[str, Servable] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Servable]] = {}
        self.on_change = on_change or (lambda _event, _model: None)

    # ------------------------------------------------------------------ reading

    @property
    def used_bytes(self) -> int:
        return sum(s.memory_bytes for s in self.loaded.values())

    def names(self) -> list[str]:
        return list(self.loaded)

    def not_found(self, name: str) -> HttpError:
        known = sorted(set(self.sources) - set(self.loaded))
        more = f"; loadable on first use: {known}" if known else ""
        return HttpError(404, f"model '{name}' is not loaded; loaded models: {sorted(self.loaded)}{more}")

    def peek(self, name: str) -> Servable | None:
        """The loaded model ``name`` (now the most recently used), or None — the hot path: no await."""
        servable = self.loaded.get(name)
        if servable is not None:
            self.loaded.move_to_end(name)
        return servable

    async def get(self, name: str) -> Servable:
        """The model ``name``, loaded on first use if it is known (evicting least recently used ones to fit)."""
        servable = self.peek(name)
        if servable is not None:
            return servable
        source = self.sources.get(name)
        if source is None:
            raise self.not_found(name)
        return await self._load(name, source, evict=True)

    # ------------------------------------------------------------------ the model API

    async def add(self, name: str, url: str) -> Servable:
        """``POST /models``: 409 when loaded, 507 when it does not fit what the budget has left."""
        if name in self.loaded or name in self._loading:
            raise HttpError(409, f"model '{name}' is already loaded (from {self._url(name)}); unload it first")
        if not Path(url).exists():
            raise HttpError(404, f"model '{name}': url '{url}' does not exist on this host")
        source = ModelSource(url)
        servable = await self._load(name, source, evict=False)
        self.sources[name] = source
        return servable

    def remove(self, name: str) -> None:
        """``DELETE /models/{name}``: unload it and forget where it came from."""
        servable = self.loaded.pop(name, None)
        if servable is None:
            raise self.not_found(name)
        self.sources.pop(name, None)
        servable.close()
        self.on_change("unload", name)

    def close(self) -> None:
        for servable in self.loaded.values():
            servable.close()
        self.loaded.clear()

    # ------------------------------------------------------------------ loading

    def _url(self, name: str) -> str:
        servable = self.loaded.get(name)
        return servable.url if servable else self.sources[name].url

    def _make_room(self, name: str, need: int, evict: bool) -> None:
        budget = self.budget_bytes
        if budget is None:
            return
        if need > budget:
            raise HttpError(
                507, f"model '{name}' needs {need / 2**20:.1f} MiB, more than the whole memory budget ({budget / 2**20:.1f} MiB)"
            )
        free = budget - self.used_bytes
        if need <= free:
            return
        if not evict:
            raise HttpError(
                507,
                f"model '{name}' needs {need / 2**20:.1f} MiB and the memory budget has {free / 2**20:.1f} MiB left; "
                f"unload a model (loaded: {list(self.loaded)})",
            )
        while self.loaded and self.budget_bytes is not None and need > self.budget_bytes - self.used_bytes:
            victim, servable = self.loaded.popitem(last=False)
            servable.close()
            log.info("evicted %s (least recently used) to load %s", victim, name)
            self.on_change("evict", victim)

    async def _load(self, name: str, source: ModelSource, evict: bool) -> Servable:
        pending = self._loading.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        estimate = source.estimate()
        if estimate is not None:
            self._make_room(name, estimate, evict)
        future: asyncio.Future[Servable] = asyncio.get_running_loop().create_future()
        self._loading[name] = future
        try:
            try:
                servable = await anyio.to_thread.run_sync(self._loader, name, source)
            except EdgekitError as exc:
                raise HttpError(400, str(exc)) from exc
            try:
                self._make_room(name, servable.memory_bytes, evict)
            except HttpError:
                servable.close()
                raise
            self.loaded[name] = servable
            self.on_change("load", name)
            future.set_result(servable)
            return servable
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._loading[name]

    def preload(self, items: Sequence[tuple[str, Servable]]) -> None:
        """Models loaded at start (already refused there if they can't be served)."""
        for name, servable in items:
            self.loaded[name] = servable
            self.on_change("load", name)
