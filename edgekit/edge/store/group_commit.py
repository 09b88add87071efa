"""Group commit: puts into a :class:`~edgekit.edge.store.spool.Spool` from asyncio, many messages to one fsync.

Whoever arrives while a commit is in flight joins the next one: the first put starts a commit of itself alone
(no waiting window, so a lone publisher pays one fsync and nothing more); the puts that arrive during that
fsync are committed together as soon as it returns, in one transaction, and so on. A caller's ``await put(...)``
returns only after the fsync of the transaction holding its message: "acknowledged" still means on disk. The
batch grows with the load by itself, which a fixed batching window would have to guess (too short: one fsync
a message again; too long: latency added to every lone publish). See docs/edge-runtime.md (group commit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from typing import TypeVar

from edgekit.edge.errors import EdgeError
from edgekit.edge.store.spool import Spool

__all__ = ["GroupCommit"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class GroupCommit:
    """Commits :meth:`put` calls to ``spool`` in groups, on one thread of its own (so the order of arrival is the
    order in the spool, and the event loop never waits on a disk flush).

    ``max_batch`` bounds one transaction. :meth:`run` runs any other spool call (a drain's ``peek`` and ``ack``) on
    the same thread, between commits. :attr:`commits` and :attr:`committed` count transactions and messages.
    """

    def __init__(self, spool: Spool, *, max_batch: int = 1000) -> None:
        if max_batch < 1:
            raise EdgeError(f"group commit max_batch must be at least 1, got {max_batch}")
        self.spool = spool
        self.max_batch = max_batch
        self.commits = 0
        self.committed = 0
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool-commit")
        self._waiting: list[tuple[str, bytes, asyncio.Future[int]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._closed = False

    async def put(self, topic: str, payload: bytes) -> int:
        """Store one message; returns its sequence number once the commit holding it is on disk.

        Raises :class:`~edgekit.edge.errors.SpoolFullError` (this message alone was refused) or
        :class:`~edgekit.edge.errors.EdgeError` (the spool is damaged or closed: nothing of that commit was stored).
        """
        if self._closed:
            raise EdgeError(f"spool '{self.spool.path}' is closed")
        loop = asyncio.get_running_loop()
        done: asyncio.Future[int] = loop.create_future()
        self._waiting.append((topic, payload, done))
        if self._committer is None or self._committer.done():
            self._committer = loop.create_task(self._commit_all(), name="spool-group-commit")
        return await done

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` on the spool's thread (queued behind the commit in flight)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def _commit_all(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiting:
            batch, self._waiting = self._waiting[: self.max_batch], self._waiting[self.max_batch :]
            messages = [(topic, payload) for topic, payload, _ in batch]
            try:
                results = await asyncio.shield(loop.run_in_executor(self._executor, self.spool.put_many, messages))
            except asyncio.CancelledError:
                self._fail(batch, EdgeError(f"spool '{self.spool.path}' was closed before the message was stored"))
                raise
            except Exception as exc:
                failure = exc if isinstance(exc, EdgeError) else EdgeError(f"spool '{self.spool.path}': {exc}")
                self._fail(batch, failure)
                continue
            self.commits += 1
            self.committed += sum(1 for result in results if not isinstance(result, BaseException))
            for (_, _, done), result in zip(batch, results, strict=True):
                if done.done():  # the caller gave up (its connection closed): stored, just not acknowledged
                    continue
                if isinstance(result, BaseException):
                    done.set_exception(result)
                else:
                    done.set_result(result)

    @staticmethod
    def _fail(batch: list[tuple[str, bytes, asyncio.Future[int]]], error: EdgeError) -> None:
        for _, _, done in batch:
            if not done.done():
                done.set_exception(error)

    async def close(self) -> None:
        """Finish the commit in flight (its callers get their answer), refuse what waits behind it, stop the thread."""
        self._closed = True
        waiting, self._waiting = self._waiting, []
        self._fail(waiting, EdgeError(f"spool '{self.spool.path}' was closed before the message was stored"))
        committer = self._committer
        if committer is not None and not committer.done():
            await asyncio.gather(committer, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown, True)
