"""Group commit: puts into a :class:`~edgekit.edge.store.spool.Spool` from asyncio, many messages to one fsync.

Whoever arrives while a commit is in flight joins the next one: the first put starts a commit of itself alone
(no waiting window, so a lone publisher pays one fsync and nothing more); the puts that arrive during that
fsync are committed together as soon as it returns, in one transaction, and so on. A caller's ``await put(...)``
returns only after the fsync of the transaction holding its message: "acknowledged" still means on disk. The
batch grows with the load by itself, which a fixed batching window would have to guess (too short: one fsync
a message again; too long: latency added to every lone publish).

The commits run on a thread of their own that goes from one commit straight to the next while puts wait: the event
loop only queues a put and, once per commit, wakes up to answer everyone in it. A busy event loop (an MQTT drain,
other connections) never leaves the disk idle between two commits. See docs/edge-runtime.md (group commit).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from edgekit.edge.errors import EdgeError
from edgekit.edge.store.spool import Spool

__all__ = ["GroupCommit"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_Put = tuple[Sequence[tuple[str, bytes]], "asyncio.Future[Any]", bool]
"""(messages, their future, whether it is one :meth:`GroupCommit.put_nowait`: its future takes the one result)."""
_Call = tuple[Callable[[], Any], "asyncio.Future[Any]"]


def _take(queue: collections.deque[T], limit: int) -> list[T]:
    """Up to ``limit`` items from the left of ``queue`` (which another thread may be emptying too)."""
    out: list[T] = []
    while len(out) < limit:
        try:
            out.append(queue.popleft())
        except IndexError:
            break
    return out


def _take_puts(queue: collections.deque[_Put], limit: int) -> list[_Put]:
    """Puts from the left of ``queue`` while their messages stay within ``limit`` (the first one whatever its size)."""
    out: list[_Put] = []
    taken = 0
    while True:
        try:
            put = queue.popleft()
        except IndexError:
            break
        if out and taken + len(put[0]) > limit:
            queue.appendleft(put)  # only this thread takes from the left: it stays first
            break
        out.append(put)
        taken += len(put[0])
    return out


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up (its connection closed): stored, just not acknowledged
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class GroupCommit:
    """Commits :meth:`put` calls to ``spool`` in groups, on one thread of its own (so the order of arrival is the
    order in the spool, and the event loop never waits on a disk flush).

    ``max_batch`` bounds one transaction. :meth:`run` runs any other spool call (a drain's ``peek`` and ``ack``) on
    the same thread, between commits. :attr:`commits` and :attr:`committed` count transactions and messages.
    """

    def __init__(self, spool: Spool, *, max_batch: int = 1000, on_commit: Callable[[], None] | None = None) -> None:
        if max_batch < 1:
            raise EdgeError(f"group commit max_batch must be at least 1, got {max_batch}")
        self.spool = spool
        self.max_batch = max_batch
        self.commits = 0
        self.committed = 0
        self.on_commit = on_commit
        """Called in the event loop once per commit that stored something, after its callers were answered (the
        uplink's sender wakes once per commit, not once per message)."""
        self._cond = threading.Condition()
        self._puts: collections.deque[_Put] = collections.deque()  # appended without a lock (deque appends are atomic)
        self._calls: collections.deque[_Call] = collections.deque()
        self._thread: threading.Thread | None = None
        self._sleeping = False  # the thread waits on _cond: whoever adds work must notify it
        self._closed = False

    async def put(self, topic: str, payload: bytes) -> int:
        """Store one message; returns its sequence number once the commit holding it is on disk.

        Raises :class:`~edgekit.edge.errors.SpoolFullError` (this message alone was refused) or
        :class:`~edgekit.edge.errors.EdgeError` (the spool is damaged or closed: nothing of that commit was stored).
        """
        return await self.put_nowait(topic, payload)

    def put_nowait(self, topic: str, payload: bytes) -> asyncio.Future[int]:
        """:meth:`put` without a coroutine: the future of the sequence number, set (or failed) as :meth:`put` returns
        (or raises); called from the event loop."""
        if self._closed:
            raise EdgeError(f"spool '{self.spool.path}' is closed")
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._puts.append(([(topic, payload)], done, True))
        self._wake()
        return done

    def put_many_nowait(self, messages: Sequence[tuple[str, bytes]]) -> asyncio.Future[list[int | EdgeError]]:
        """Several puts (in this order) with one future: the list of their sequence numbers, or for a message that
        was refused alone its :class:`~edgekit.edge.errors.SpoolFullError`, set once the commit holding them is on
        disk (failed with an :class:`~edgekit.edge.errors.EdgeError` when that commit failed). What arrives in one
        read of a socket: one future and one answer for all of it, not one each. Called from the event loop."""
        if self._closed:
            raise EdgeError(f"spool '{self.spool.path}' is closed")
        done: asyncio.Future[list[int | EdgeError]] = asyncio.get_running_loop().create_future()
        self._puts.append((messages, done, False))
        self._wake()
        return done

    async def run(self, call: Callable[[], T]) -> T:
        """``call()`` on the spool's thread (queued behind the commit in flight)."""
        if self._closed:
            raise EdgeError(f"spool '{self.spool.path}' is closed")
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._calls.append((call, done))
        self._wake()
        return await done

    def _wake(self) -> None:
        """Start the thread on first use, or wake it when it sleeps (the lock is taken only then: a put never waits
        for the commit thread, which a loaded machine may have descheduled)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="spool-commit", daemon=True)
            self._thread.start()
        elif self._sleeping:
            with self._cond:
                self._cond.notify()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._puts and not self._calls and not self._closed:
                    self._sleeping = True  # set, then the queues checked again, under the lock: no wake-up is lost
                    if not self._puts and not self._calls:
                        self._cond.wait()
                    self._sleeping = False
                if not self._puts and not self._calls:  # closed, and nothing left to do
                    return
            calls = _take(self._calls, len(self._calls))
            batch = _take_puts(self._puts, self.max_batch)
            for call, done in calls:
                try:
                    result, error = call(), None
                except BaseException as exc:  # handed to the caller, as run_in_executor would
                    result, error = None, exc
                self._answer([(done, result, error)])
            if batch:
                self._commit(batch)

    def _commit(self, batch: list[_Put]) -> None:
        messages = [message for put in batch for message in put[0]] if len(batch) > 1 else list(batch[0][0])
        try:
            results = self.spool.put_many(messages)
        except Exception as exc:
            failure = exc if isinstance(exc, EdgeError) else EdgeError(f"spool '{self.spool.path}': {exc}")
            self._answer([(done, None, failure) for _, done, _ in batch])
            return
        self.commits += 1
        stored = sum(1 for result in results if not isinstance(result, BaseException))
        self.committed += stored
        answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        start = 0
        for put, done, one in batch:
            mine = results[start : start + len(put)]
            start += len(put)
            if not one:
                answers.append((done, mine, None))
            elif isinstance(mine[0], BaseException):
                answers.append((done, None, mine[0]))
            else:
                answers.append((done, mine[0], None))
        self._answer(answers, self.on_commit if stored else None)

    @staticmethod
    def _answer(
        answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]], then: Callable[[], None] | None = None
    ) -> None:
        """Settle futures on their event loop: one wake-up per loop for the whole commit (``then()`` after them)."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any, BaseException | None]]] = {}
        for answer in answers:
            by_loop.setdefault(answer[0].get_loop(), []).append(answer)
        for loop, group in by_loop.items():
            try:
                loop.call_soon_threadsafe(GroupCommit._settle_all, group, then)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                log.debug("spool commit answered after its event loop closed")

    @staticmethod
    def _settle_all(
        group: list[tuple[asyncio.Future[Any], Any, BaseException | None]], then: Callable[[], None] | None = None
    ) -> None:
        for done, result, error in group:
            _settle(done, result, error)
        if then is not None:
            then()

    async def close(self) -> None:
        """Finish the commit in flight (its callers get their answer), refuse what waits behind it, stop the thread."""
        self._closed = True
        closed = EdgeError(f"spool '{self.spool.path}' was closed before the message was stored")
        with self._cond:
            self._cond.notify()
            thread = self._thread
        self._refuse(closed)
        if thread is not None:
            await asyncio.to_thread(thread.join)
        self._refuse(closed)
        await asyncio.sleep(0)  # the answers of the last commit, sent to this loop, are settled

    def _refuse(self, error: EdgeError) -> None:
        for _, done, _ in _take(self._puts, len(self._puts)):
            _settle(done, None, error)
        for _, done in _take(self._calls, len(self._calls)):
            _settle(done, None, error)
