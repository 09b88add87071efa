"""A durable, ordered, bounded spool of outgoing messages (write-ahead): what a device keeps while it is offline.

See docs/edge-runtime.md (spool, write-ahead).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from edgekit.edge.errors import EdgeError, SpoolFullError

__all__ = ["Spool", "SpoolItem"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class SpoolItem:
    seq: int
    topic: str
    payload: bytes
    created: float


Full = Literal["reject", "overwrite_oldest"]
DEFAULT_MAX_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES: Final = 128 * 1024  # AWS IoT Core's payload limit: a bigger message could never be sent
_ACK_CHUNK: Final = 500  # sequence numbers per DELETE (SQLite allows 32,766 parameters a statement)
DEFERRED_ACKS: Final = 256
"""Delivered messages whose removal waits for the next write (see :meth:`Spool.ack`): what a crash may send again."""
_MAX_DEFERRED: Final = 10_000  # a peek skips them in one statement (SQLite allows 32,766 parameters)
# A spool is small and read oldest first: one per simulated device, thousands per process, so its connection's memory
# counts (measured, 300 connections, 100 messages each: 279 KiB a connection with SQLite's defaults, 161 with these).
# 1 KiB pages (a new file's; the default 4 KiB) halve what the page cache holds and each WAL frame; the cache is capped
# (default: up to 2 MB while a long outage fills the spool).
_MEMORY_PRAGMAS: Final = ("PRAGMA page_size=1024", "PRAGMA cache_size=-128")
# The WAL is checkpointed every 256 pages (256 KiB; default 1000 pages: ~4 MiB) and cut back to 64 KiB after a
# checkpoint (default: never cut back), so a spool that is drained takes ~0.1-0.3 MiB on disk, not ~1-4 MiB. A
# checkpoint of a durable spool costs two more fsyncs: one per ~80 single-message commits.
WAL_LIMIT_BYTES: Final = 64 * 1024
WAL_CHECKPOINT_PAGES: Final = 256
_WAL_PRAGMAS: Final = (f"PRAGMA wal_autocheckpoint={WAL_CHECKPOINT_PAGES}", f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")


class Spool:
    """Bounded in messages (``max_items``) and bytes (``max_bytes``; one message at most ``max_message_bytes``).

    A full spool rejects the new message or drops the oldest (``on_full``), counted in :attr:`dropped`. A damaged
    file found when opening is moved aside as ``<name>.damaged-<time>`` and a fresh spool starts (``on_damage=
    "quarantine"``, counted in :attr:`quarantined`) or the open fails (``"raise"``); damage found later is an
    :class:`~edgekit.edge.errors.EdgeError`, never a raw ``sqlite3`` exception. ``durable=False`` skips every fsync
    (``synchronous=OFF``, the WAL's checkpoints included: a killed process loses nothing, a power cut may lose the
    last messages or damage the file, which the next open quarantines) — what simulated devices use, as they don't
    fsync their state either: thousands of them share one event loop, where an fsync would stall them all.

    Removals are deferred (``deferred_acks``, see :meth:`ack`): a delivered message leaves the spool's view at once
    and its row goes in the next put's transaction, so an uplink writes once per message, not twice.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_items: int = 100_000,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        on_full: Full = "reject",
        on_damage: Literal["quarantine", "raise"] = "quarantine",
        durable: bool = True,
        deferred_acks: int = DEFERRED_ACKS,
    ) -> None:
        if max_items < 1 or max_bytes < 1 or max_message_bytes < 1:
            raise EdgeError(
                f"spool max_items, max_bytes and max_message_bytes must be at least 1, got {max_items}, {max_bytes}, {max_message_bytes}"
            )
        if not 0 <= deferred_acks <= _MAX_DEFERRED:
            raise EdgeError(f"spool deferred_acks must be 0 to {_MAX_DEFERRED}, got {deferred_acks}")
        if on_full not in ("reject", "overwrite_oldest"):
            raise EdgeError(f"spool on_full must be 'reject' or 'overwrite_oldest', got {on_full!r}")
        if on_damage not in ("quarantine", "raise"):
            raise EdgeError(f"spool on_damage must be 'quarantine' or 'raise', got {on_damage!r}")
        self.path = Path(path)
        self.max_items = max_items
        self.max_bytes = min(max_bytes, 2**62)
        self.max_message_bytes = max_message_bytes
        self.on_full = on_full
        self.durable = durable
        self.deferred_acks = deferred_acks
        self.quarantined_to: Path | None = None  # where this open moved a damaged file
        self._lock = threading.Lock()
        self._counted: tuple[int, int, int] | None = None
        """(``PRAGMA data_version``, messages, bytes) as of this connection's last write: still true while no other
        connection wrote the file since (its data_version unchanged), so a put needn't count the rows again
        (``count(*)`` reads every row: a put into a backlog of 100,000 messages read them all). Rows on disk: the
        deferred removals (:attr:`_deferred`) included."""
        self._deferred: dict[int, int] = {}
        """Delivered messages still on disk, their removal deferred (:meth:`ack`): sequence number -> payload bytes.
        Out of every read; deleted by the next write."""
        self._deferred_bytes = 0
        self._sizes: dict[int, int] = {}
        """Payload bytes of the rows the last :meth:`peek` returned: what an ack of them needs, without a read."""
        self._checked: int | None = None
        """The ``data_version`` at which :attr:`_deferred` and :attr:`_sizes` were last known true (another
        connection's write may have deleted their rows)."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeError(f"spool '{self.path}' cannot be opened ({exc}); check the folder") from None
        try:
            self._db = self._open()
        except sqlite3.DatabaseError as exc:
            if on_damage == "raise":
                raise EdgeError(
                    f"spool '{self.path}' cannot be opened ({exc}); check the folder, or move the damaged file away"
                ) from None
            self.quarantined_to = self._quarantine()
            log.warning("spool %s is damaged (%s); moved to %s, starting afresh", self.path, exc, self.quarantined_to)
            self._db = self._open()
            with self._lock:
                self._add_meta("quarantined", 1)

    def _open(self) -> sqlite3.Connection:
        # a durable spool (one per agent) keeps more prepared statements: its commits use up to 7 INSERTs (see _insert)
        cached = 32 if self.durable else 16
        db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, cached_statements=cached)
        try:
            for pragma in _MEMORY_PRAGMAS:  # before anything is read: the page size only takes on a new file
                db.execute(pragma)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'OFF'}")
            for pragma in _WAL_PRAGMAS:
                db.execute(pragma)
            db.executescript(_SCHEMA)
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {verdict}")
            if db.execute("SELECT value FROM meta WHERE key = 'bytes'").fetchone() is None:  # made by an older edgekit
                total = db.execute("SELECT coalesce(sum(length(payload)), 0) FROM spool").fetchone()[0]
                db.execute("INSERT INTO meta(key, value) VALUES('bytes', ?)", (int(total),))
        except BaseException:
            db.close()
            raise
        return db

    def _quarantine(self) -> Path:
        target = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{target}{suffix}")
        return target

    def _add_meta(self, key: str, amount: int) -> None:
        self._db.execute(
            "INSERT INTO meta(key, value) VALUES(?, ?) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (key, amount),
        )

    def _version(self) -> int:
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def _counted_at(self, version: int) -> tuple[int, int, int] | None:
        """:attr:`_counted` if no other connection wrote since (``version`` is its data_version), else None."""
        counted = self._counted
        return counted if counted is not None and counted[0] == version else None

    def _held(self, version: int) -> tuple[int, int]:
        """(messages, bytes) on disk, the deferred removals' rows included, in a transaction; from :attr:`_counted`
        while no other connection wrote."""
        self._validate(version)
        counted = self._counted_at(version)
        if counted is not None:
            return counted[1], counted[2]
        self._counted = None
        return int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0]), self._meta("bytes")

    def _validate(self, version: int) -> None:
        """If another connection wrote the file since the last check: keep only the deferred removals whose rows are
        still there, and trust no size :meth:`peek` noted."""
        if version == self._checked:
            return
        self._checked = version
        self._sizes = {}
        if not self._deferred:
            return
        present: set[int] = set()
        for chunk in _chunks(list(self._deferred)):
            rows = self._db.execute(f"SELECT seq FROM spool WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
            present.update(int(row[0]) for row in rows)
        self._deferred = {seq: size for seq, size in self._deferred.items() if seq in present}
        self._deferred_bytes = sum(self._deferred.values())

    def _delete_deferred(self) -> tuple[int, int]:
        """Delete the deferred removals' rows in the caller's transaction; returns (rows, bytes) deleted. They stay in
        :attr:`_deferred` until the caller commits (:meth:`_deferred_written`): a rollback keeps them deferred."""
        removed = freed = 0
        for chunk in _chunks(list(self._deferred)):  # one statement per chunk, not one per message
            rows = self._db.execute(
                f"DELETE FROM spool WHERE seq IN ({','.join('?' * len(chunk))}) RETURNING length(payload)", chunk
            ).fetchall()
            freed += sum(int(row[0]) for row in rows)
            removed += len(rows)
        return removed, freed

    def _deferred_written(self) -> None:
        self._deferred = {}
        self._deferred_bytes = 0

    def _meta(self, key: str) -> int:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def _guarded(self, what: str) -> Iterator[None]:
        """Damage found after opening becomes one EdgeError naming the file (and the lock is held)."""
        with self._lock, self._named(what):
            yield

    @contextlib.contextmanager
    def _named(self, what: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise EdgeError(
                f"spool '{self.path}' is damaged ({what}: {exc}); reopen it to quarantine the file and start afresh"
            ) from None

    def put(self, topic: str, payload: bytes) -> int:
        """Store a message; returns its sequence number (increasing, never reused)."""
        result = self.put_many([(topic, payload)])[0]
        if isinstance(result, EdgeError):
            raise result
        return result

    def put_many(self, messages: Sequence[tuple[str, bytes]]) -> list[int | EdgeError]:
        """Store ``messages`` in one transaction — one fsync for all of them (group commit); in their order.

        Each gets its own result: its sequence number, or the :class:`SpoolFullError` that kept it out (too big,
        or the spool full under ``on_full='reject'``) while the others are stored. Nothing is stored when the
        transaction fails (damage: an :class:`EdgeError` raised for all of them). When this returns, every
        stored message is on disk (``durable=True``). The same transaction deletes the rows of the deferred
        removals (:meth:`ack`), first: the room they held is free for these.
        """
        results: list[int | EdgeError] = []
        with self._guarded("storing messages"):
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._version()
                count, held = self._held(version)
                removed, freed = self._delete_deferred() if self._deferred else (0, 0)
                count, held, added = count - removed, held - freed, -freed
                now = time.time()
                rows: list[tuple[int, str, bytes]] = []  # (index in results, topic, payload), inserted together
                for topic, payload in messages:
                    refusal = self._refusal(topic, len(payload), count, held)
                    if refusal is not None:
                        results.append(refusal)
                        continue
                    if count >= self.max_items or held + len(payload) > self.max_bytes:
                        self._insert(rows, results, now)  # what came before is in the table, oldest first
                        count, held = self._drop_oldest(count, held, len(payload))
                    rows.append((len(results), topic, bytes(payload)))
                    results.append(-1)
                    count, held, added = count + 1, held + len(payload), added + len(payload)
                self._insert(rows, results, now)
                self._add_meta("bytes", added)
                self._db.execute("COMMIT")
                self._counted = (version, count, held)
                self._deferred_written()
            except BaseException:
                self._counted = None
                self._db.execute("ROLLBACK")
                raise
        return results

    def _insert(self, rows: list[tuple[int, str, bytes]], results: list[int | EdgeError], now: float) -> None:
        """INSERT ``rows`` (then emptied) in as few statements as their count has bits (64, 32, ..., 1 rows each: a
        handful of prepared statements, reused), setting each one's sequence number in ``results``.

        One statement per message was one GIL hand-off per message on the commit thread: each ``execute`` lets go of
        the GIL for SQLite and must win it back from a busy event loop (up to ``sys.getswitchinterval()``, 5 ms, each
        time), so a commit of 36 messages took 20 ms of which 5 were its fsync. The rows of one statement get
        consecutive sequence numbers (AUTOINCREMENT, one writer: this transaction), the last one ``lastrowid``."""
        start = 0
        while start < len(rows):
            size = min(_INSERT_ROWS, 1 << ((len(rows) - start).bit_length() - 1))
            chunk = rows[start : start + size]
            params: list[object] = []
            for _, topic, payload in chunk:
                params += (topic, payload, now)
            cur = self._db.execute(_INSERT_SQL[size], params)
            assert cur.lastrowid is not None
            first = int(cur.lastrowid) - size + 1
            for offset, (index, _, _) in enumerate(chunk):
                results[index] = first + offset
            start += size
        rows.clear()

    def _refusal(self, topic: str, size: int, count: int, held: int) -> SpoolFullError | None:
        """Why a message of ``size`` bytes can't be stored now, or None."""
        if size > self.max_message_bytes:
            return SpoolFullError(
                f"a message of {size} bytes for '{topic}' is over the spool's max_message_bytes ({self.max_message_bytes}); "
                "it was not stored — send less per message"
            )
        if self.on_full == "reject" and (count >= self.max_items or held + size > self.max_bytes):
            bound = (
                f"{count} messages, max_items {self.max_items}"
                if count >= self.max_items
                else f"{count} messages, {held} bytes; max_bytes {self.max_bytes}"
            )
            return SpoolFullError(
                f"spool '{self.path}' is full ({bound}); the message was not stored — raise max_items / "
                "max_bytes, or use on_full='overwrite_oldest' to keep the newest"
            )
        return None

    def _drop_oldest(self, count: int, held: int, size: int) -> tuple[int, int]:
        """Make room for one message of ``size`` bytes by deleting the oldest (counted in ``dropped``); returns the
        count and bytes left."""
        dropped = freed = 0
        rows = self._db.execute("SELECT seq, length(payload) FROM spool ORDER BY seq").fetchall()
        for seq, length in rows:
            if count - dropped < self.max_items and held - freed + size <= self.max_bytes:
                break
            self._db.execute("DELETE FROM spool WHERE seq = ?", (seq,))
            self._sizes.pop(seq, None)
            dropped, freed = dropped + 1, freed + int(length)
        self._add_meta("dropped", dropped)
        self._add_meta("bytes", -freed)
        return count - dropped, held - freed

    def peek(self, limit: int = 100) -> list[SpoolItem]:
        """The oldest ``limit`` messages, in order, still in the spool (delivered ones whose removal is deferred
        skipped)."""
        with self._guarded("reading"):
            return self._peek(limit)

    def peek_nowait(self, limit: int = 100) -> list[SpoolItem] | None:
        """:meth:`peek` if no other thread is using the spool now (a commit in flight), else None: never waits."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            with self._named("reading"):
                return self._peek(limit)
        finally:
            self._lock.release()

    def _peek(self, limit: int) -> list[SpoolItem]:
        if self._deferred:
            skip = list(self._deferred)
            rows = self._db.execute(
                f"SELECT seq, topic, payload, created FROM spool WHERE seq NOT IN ({','.join('?' * len(skip))}) "
                "ORDER BY seq LIMIT ?",
                (*skip, limit),
            ).fetchall()
        else:
            rows = self._db.execute("SELECT seq, topic, payload, created FROM spool ORDER BY seq LIMIT ?", (limit,)).fetchall()
        self._sizes = {int(r[0]): len(r[2]) for r in rows}
        return [SpoolItem(int(r[0]), str(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    def ack(self, seqs: list[int]) -> None:
        """Remove delivered messages (unknown sequence numbers are ignored).

        They leave at once what :meth:`peek`, ``len()`` and :attr:`bytes` see; their rows are deleted by the next
        write — the next put's transaction (one write per message, not two: a put, then its removal), or a
        transaction of their own once more than ``deferred_acks`` wait (or at :meth:`flush` and :meth:`close`). A
        crash before then sends them again: at most ``deferred_acks`` messages the broker already has, a
        duplicate at-least-once allows; nothing undelivered is ever removed. A removal written on its own is
        not flushed (``synchronous=NORMAL``): the next put's fsync covers it, as the WAL is written in order.
        """
        if not seqs:
            return
        with self._guarded("removing delivered messages"):
            self._ack(seqs)

    def ack_nowait(self, seqs: list[int]) -> bool:
        """:meth:`ack` if it needs no write (the deferred removals stay within ``deferred_acks``) and no other thread
        is using the spool now (a commit in flight); False, and nothing done, otherwise: never waits on a disk."""
        if len(self._deferred) + len(seqs) > self.deferred_acks or not self._lock.acquire(blocking=False):
            return False
        try:
            with self._named("removing delivered messages"):
                self._ack(seqs)
            return True
        finally:
            self._lock.release()

    def _ack(self, seqs: list[int]) -> None:
        if not seqs:
            return
        self._validate(self._version())
        sizes = self._sizes
        unknown: list[int] = []
        for seq in dict.fromkeys(seqs):
            if seq in self._deferred:
                continue
            size = sizes.pop(seq, None)
            if size is None:
                unknown.append(seq)
            else:
                self._deferred[seq] = size
                self._deferred_bytes += size
        for chunk in _chunks(unknown):  # not from the last peek: their rows say their size (or that they're gone)
            rows = self._db.execute(f"SELECT seq, length(payload) FROM spool WHERE seq IN ({','.join('?' * len(chunk))})", chunk)
            for seq, size in rows:
                self._deferred[int(seq)] = int(size)
                self._deferred_bytes += int(size)
        if len(self._deferred) > self.deferred_acks:
            self._write_deferred()

    def flush(self) -> None:
        """Delete the rows of the deferred removals now (see :meth:`ack`), in a transaction of their own."""
        with self._guarded("removing delivered messages"):
            if self._deferred:
                self._write_deferred()

    @property
    def deferred(self) -> int:
        """Delivered messages whose rows wait for the next write (see :meth:`ack`): what a crash now sends again."""
        return len(self._deferred)

    def _write_deferred(self) -> None:
        if self.durable:
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = self._version()
                counted = self._counted_at(version)
                removed, freed = self._delete_deferred()
                self._add_meta("bytes", -freed)
                self._db.execute("COMMIT")
                self._counted = None if counted is None else (version, counted[1] - removed, counted[2] - freed)
                self._deferred_written()
            except BaseException:
                self._counted = None
                self._db.execute("ROLLBACK")
                raise
        finally:
            if self.durable:
                self._db.execute("PRAGMA synchronous=FULL")

    @property
    def dropped(self) -> int:
        """Messages dropped by ``overwrite_oldest`` since the spool was created."""
        with self._guarded("reading its counters"):
            return self._meta("dropped")

    @property
    def quarantined(self) -> int:
        """Damaged files this spool's path has had moved aside (and started afresh from)."""
        with self._guarded("reading its counters"):
            return self._meta("quarantined")

    @property
    def bytes(self) -> int:
        """Payload bytes held now (delivered messages whose removal is deferred not counted)."""
        with self._guarded("reading its counters"):
            if self._deferred:
                self._validate(self._version())
            return self._meta("bytes") - self._deferred_bytes

    def __len__(self) -> int:
        with self._guarded("counting"):
            version = self._version()
            self._validate(version)
            counted = self._counted_at(version)
            if counted is not None:
                return counted[1] - len(self._deferred)
            return int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0]) - len(self._deferred)

    def close(self) -> None:
        """Write the deferred removals (a damaged file keeps them: they are sent again), then close."""
        with self._lock:
            try:
                if self._deferred:
                    self._write_deferred()
            except sqlite3.DatabaseError as exc:
                log.warning("spool %s: delivered messages not removed at close (%s); they will be sent again", self.path, exc)
            finally:
                self._db.close()


_INSERT_ROWS: Final = 64
_INSERT_SQL: Final = {
    rows: "INSERT INTO spool(topic, payload, created) VALUES " + ",".join(["(?, ?, ?)"] * rows)
    for rows in (1 << bit for bit in range(_INSERT_ROWS.bit_length()))
}


def _chunks(seqs: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(seqs), _ACK_CHUNK):
        yield seqs[start : start + _ACK_CHUNK]
