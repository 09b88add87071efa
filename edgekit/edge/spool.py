"""A durable, ordered, bounded spool of outgoing messages (write-ahead): what a device keeps while it is offline.

See docs/edge-runtime.md (spool, write-ahead).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edgekit.edge.errors import EdgeError, SpoolFullError

__all__ = ["Spool", "SpoolItem"]

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


class Spool:
    def __init__(
        self, path: str | Path, *, max_items: int = 100_000, on_full: Literal["reject", "overwrite_oldest"] = "reject"
    ) -> None:
        if max_items < 1:
            raise EdgeError(f"spool max_items must be at least 1, got {max_items}")
        if on_full not in ("reject", "overwrite_oldest"):
            raise EdgeError(f"spool on_full must be 'reject' or 'overwrite_oldest', got {on_full!r}")
        self.path = Path(path)
        self.max_items = max_items
        self.on_full = on_full
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._db.execute("SELECT count(*) FROM spool").fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise EdgeError(
                f"spool '{self.path}' cannot be opened ({exc}); check the folder, or move the damaged file away"
            ) from None

    def put(self, topic: str, payload: bytes) -> int:
        """Store a message; returns its sequence number (increasing, never reused)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count = self._db.execute("SELECT count(*) FROM spool").fetchone()[0]
                if count >= self.max_items:
                    if self.on_full == "reject":
                        raise SpoolFullError(
                            f"spool '{self.path}' is full ({count} messages, max_items {self.max_items}); the message "
                            "was not stored — raise max_items, or use on_full='overwrite_oldest' to keep the newest"
                        )
                    extra = count - self.max_items + 1
                    self._db.execute("DELETE FROM spool WHERE seq IN (SELECT seq FROM spool ORDER BY seq LIMIT ?)", (extra,))
                    self._db.execute(
                        "INSERT INTO meta(key, value) VALUES('dropped', ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
                        (extra,),
                    )
                cur = self._db.execute(
                    "INSERT INTO spool(topic, payload, created) VALUES(?, ?, ?)", (topic, bytes(payload), time.time())
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            seq = cur.lastrowid
            assert seq is not None
            return seq

    def peek(self, limit: int = 100) -> list[SpoolItem]:
        """The oldest ``limit`` messages, in order, still in the spool."""
        with self._lock:
            rows = self._db.execute("SELECT seq, topic, payload, created FROM spool ORDER BY seq LIMIT ?", (limit,)).fetchall()
        return [SpoolItem(int(r[0]), str(r[1]), bytes(r[2]), float(r[3])) for r in rows]

    def ack(self, seqs: list[int]) -> None:
        """Remove delivered messages."""
        if not seqs:
            return
        with self._lock:
            self._db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in seqs])

    @property
    def dropped(self) -> int:
        """Messages dropped by ``overwrite_oldest`` since the spool was created."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()
        return int(row[0]) if row else 0

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
