"""The spool's deferred removals: a delivered message's row is deleted by the next put's transaction (one write per
uplink message, not two), and a crash sends again at most ``deferred_acks`` messages the broker already had —
never loses one it was not told was delivered."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from helpers import eventually, requires

from edgekit.device.ipc.iotcore import IotCoreLink
from edgekit.edge.errors import EdgeError
from edgekit.edge.store.spool import Spool
from edgekit.mqtt.broker import MosquittoBroker
from edgekit.mqtt.client import connect


def _rows(path: Path) -> list[int]:
    """The sequence numbers on disk, read by a connection of its own."""
    db = sqlite3.connect(str(path))
    try:
        return [int(row[0]) for row in db.execute("SELECT seq FROM spool ORDER BY seq")]
    finally:
        db.close()


def _commits(spool: Spool) -> list[str]:
    """Every COMMIT the spool's connection runs from now on."""
    seen: list[str] = []
    spool._db.set_trace_callback(lambda sql: seen.append(sql) if sql == "COMMIT" else None)
    return seen


@pytest.mark.parametrize("durable", [True, False])
def test_an_uplink_writes_once_per_message_its_removal_folded_into_the_next_put(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, durable=durable)
    commits = _commits(spool)
    delivered: list[int] = []
    for i in range(40):  # what an uplink does: put, read, send, remove what the broker took
        spool.put("t", f"m{i}".encode())
        items = spool.peek(10)
        assert [item.payload for item in items] == [f"m{i}".encode()]  # the delivered ones are out of every read
        spool.ack([item.seq for item in items])
        delivered += [item.seq for item in items]
        assert len(spool) == 0 and spool.bytes == 0
    assert len(commits) == 40  # 40 puts, 40 removals: 40 transactions, not 80
    assert _rows(path) == delivered[-1:]  # the last removal waits for the next write
    spool.put("t", b"next")
    assert _rows(path) == [delivered[-1] + 1] and len(spool) == 1
    spool.close()


def test_removals_past_the_bound_are_written_on_their_own_and_close_writes_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, deferred_acks=5)
    seqs = [seq for seq in spool.put_many([("t", b"x" * 10)] * 20) if isinstance(seq, int)]
    commits = _commits(spool)
    spool.ack([*seqs[:3], seqs[0], 10**9])  # one twice, one unknown: ignored
    assert spool.deferred == 3 and len(spool) == 17 and spool.bytes == 170 and not commits
    assert [item.seq for item in spool.peek(2)] == seqs[3:5]
    spool.ack(seqs[3:6])  # 6 wait: over the bound, written now
    assert spool.deferred == 0 and len(commits) == 1 and _rows(path) == seqs[6:]
    spool.ack(seqs[10:12])  # not the oldest: the reads skip them wherever they are
    assert [item.seq for item in spool.peek(5)] == [*seqs[6:10], seqs[12]]
    assert len(spool) == 12 and spool.bytes == 120
    spool.close()
    assert _rows(path) == seqs[6:10] + seqs[12:]
    with pytest.raises(EdgeError, match="deferred_acks must be 0 to"):
        Spool(path, deferred_acks=-1)


def test_a_put_refused_for_room_counts_the_room_deferred_removals_free(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_items=3)
    seqs = [spool.put("t", bytes([i])) for i in range(3)]
    spool.ack(seqs[:2])
    assert spool.put_many([("t", b"a"), ("t", b"b")]) == [seqs[-1] + 1, seqs[-1] + 2]
    assert [item.payload for item in spool.peek()] == [b"\x02", b"a", b"b"] and len(spool) == 3
    spool.close()


def test_another_connection_sees_the_rows_until_they_are_written(tmp_path: Path) -> None:
    """A second connection on the file (a restarted agent, say) sees deferred rows as undelivered — the redelivery a
    crash allows; one that deletes rows mine deferred leaves my counts right."""
    path = tmp_path / "spool.db"
    mine = Spool(path)
    seqs = [mine.put("t", b"abc") for _ in range(4)]
    mine.ack(seqs[:2])
    other = Spool(path, deferred_acks=0)
    assert [item.seq for item in other.peek()] == seqs
    other.ack(seqs[:3])  # deletes two of mine's deferred rows, and one more
    assert len(mine) == 1 and mine.bytes == 3 and mine.deferred == 0
    assert [item.seq for item in mine.peek()] == seqs[3:]
    mine.close()
    other.close()


# A writer and a drainer in one process, as an uplink is: puts a few, then reads, "delivers" and removes a few; prints
# "put <seq>" once a put returned (acknowledged: on disk) and "acked <seq>" once its removal returned (the broker
# has it); runs until killed.
_UPLINK = r"""
import sys
from edgekit.edge.store.spool import Spool
spool = Spool(sys.argv[1], durable=sys.argv[2] == "1", deferred_acks=int(sys.argv[3]))
i = 0
while True:
    i += 1
    for seq in spool.put_many([("t", str(i * 10 + j).encode()) for j in range(1 + i % 4)]):
        print("put", seq, flush=True)
    items = spool.peek(1 + i % 7)
    spool.ack([item.seq for item in items])
    for item in items:
        print("acked", item.seq, flush=True)
"""


@pytest.mark.parametrize("durable", [True, False])
def test_a_killed_uplink_loses_nothing_acknowledged_and_resends_at_most_the_deferred(tmp_path: Path, durable: bool) -> None:
    path, bound = tmp_path / "spool.db", 16
    proc = subprocess.Popen(
        [sys.executable, "-c", _UPLINK, str(path), "1" if durable else "0", str(bound)],
        stdout=subprocess.PIPE,
        text=True,
    )
    put: list[int] = []
    acked: set[int] = set()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            what, seq = line.split()
            (put.append if what == "put" else acked.add)(int(seq))
            if len(acked) >= 1500:  # mid-burst: puts, reads and removals all under way
                proc.send_signal(signal.SIGKILL)
                break
        assert proc.wait(30) == -signal.SIGKILL
        proc.stdout.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    spool = Spool(path, on_damage="raise")
    try:
        kept = [item.seq for item in spool.peek(100_000)]
    finally:
        spool.close()
    missing = set(put) - acked - set(kept)
    assert not missing, f"acknowledged, never delivered, and lost: {sorted(missing)[:10]}"
    resent = acked & set(kept)
    assert len(resent) <= bound, f"{len(resent)} delivered messages would be sent again; the bound is {bound}"
    assert kept == sorted(kept)


@requires("mosquitto")
def test_an_idle_agent_uplink_writes_its_deferred_removals_after_linger(tmp_path: Path) -> None:
    """The agent's uplink: a burst delivered, then no put — the removals are written once ``linger_s`` passes."""

    async def main(url: str) -> tuple[int, list[int]]:
        link = IotCoreLink(tmp_path / "uplink.db", linger_s=0.3)
        client = await connect(url, "dev-1", clean_start=True)
        try:
            link.attach(client)
            for i in range(10):
                await link.put("devices/dev-1/x", json.dumps({"n": i}).encode())
            await eventually(lambda: link.pending == 0, timeout=10, what="the burst delivered")
            deferred = link.spool.deferred
            await eventually(lambda: link.spool.deferred == 0, timeout=10, what="the removals written")
            return deferred, _rows(tmp_path / "uplink.db")
        finally:
            await link.close()
            await client.disconnect()

    with MosquittoBroker(tmp_path / "broker") as broker:
        deferred, rows = asyncio.run(asyncio.wait_for(main(broker.url), 60))
    assert deferred > 0 and rows == []


def test_the_nowait_calls_never_wait_for_a_commit_and_never_write(tmp_path: Path) -> None:
    """What a drain runs in the event loop: only while no other thread holds the spool, and an ack only while it
    stays deferred (no write, so no fsync or checkpoint in the loop)."""
    spool = Spool(tmp_path / "spool.db", deferred_acks=3)
    seqs = [spool.put("t", bytes([i])) for i in range(6)]
    commits = _commits(spool)
    results: list[object] = []
    with spool._lock:  # a commit in flight on the writer's thread
        holder = threading.Thread(target=lambda: results.extend([spool.peek_nowait(2), spool.ack_nowait(seqs[:1])]))
        holder.start()
        holder.join(10)
    assert results == [None, False] and spool.deferred == 0
    items = spool.peek_nowait(2)
    assert items is not None and [item.seq for item in items] == seqs[:2]
    assert spool.ack_nowait(seqs[:2]) and spool.deferred == 2 and len(spool) == 4
    assert not spool.ack_nowait(seqs[2:4]) and spool.deferred == 2  # 4 would be past the bound: a write, not here
    assert not commits
    spool.close()
