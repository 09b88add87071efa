"""The spool's footprint: its WAL is cut back after checkpoints, new files use small pages, and both survive a reopen."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

import pytest

from edgekit.edge.store import Spool
from edgekit.edge.store.spool import WAL_CHECKPOINT_PAGES, WAL_LIMIT_BYTES


@pytest.mark.parametrize("durable", [False, True], ids=["simulated", "durable"])
def test_the_wal_stays_bounded_while_messages_come_and_go(tmp_path: Path, durable: bool) -> None:
    spool = Spool(tmp_path / "spool.db", durable=durable)
    wal = tmp_path / "spool.db-wal"
    payload = os.urandom(700)  # about a window summary
    largest = 0
    try:
        for n in range(400 if durable else 3000):  # well past SQLite's default checkpoint (1,000 pages of WAL)
            seq = spool.put("dt/summary", payload)
            assert [i.seq for i in spool.peek()] == [seq]
            spool.ack([seq])
            if n % 50 == 0:
                largest = max(largest, wal.stat().st_size)
        largest = max(largest, wal.stat().st_size)
        assert len(spool) == 0 and spool.bytes == 0
        # between checkpoints the WAL grows to WAL_CHECKPOINT_PAGES pages of 1 KiB (a frame header each, and a
        # commit's frames past the mark) and is cut back after
        assert largest <= WAL_LIMIT_BYTES + (WAL_CHECKPOINT_PAGES + 8) * (1024 + 24) + 32, largest
        assert wal.stat().st_size <= (WAL_CHECKPOINT_PAGES + 8) * (1024 + 24) + 32
        assert (tmp_path / "spool.db").stat().st_size < 64 * 1024  # the file itself holds only what is queued
    finally:
        spool.close()


def test_a_new_spool_uses_small_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "new.db", durable=False)
    spool.put("t", b"x")
    spool.close()
    old = sqlite3.connect(tmp_path / "old.db")  # a spool file an older edgekit made: 4 KiB pages, WAL
    old.execute("PRAGMA journal_mode=WAL")
    old.execute(
        "CREATE TABLE spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, payload BLOB NOT NULL, created REAL NOT NULL)"
    )
    old.execute("INSERT INTO spool(topic, payload, created) VALUES('t', x'01', 0)")
    old.commit()
    old.close()
    reopened = Spool(tmp_path / "old.db", durable=False)
    try:
        assert [i.payload for i in reopened.peek()] == [b"\x01"] and reopened.bytes == 1  # its messages are kept
        reopened.put("t", b"y")
        assert len(reopened) == 2
    finally:
        reopened.close()
    sizes = {}
    for name in ("new.db", "old.db"):
        db = sqlite3.connect(tmp_path / name)
        sizes[name] = db.execute("PRAGMA page_size").fetchone()[0]
        db.close()
    assert sizes == {"new.db": 1024, "old.db": 4096}
