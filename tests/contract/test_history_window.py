"""The embedded broker's history window on both SQL engines: a channel past its size
drops exactly the offsets that left its window (an offset range the primary key finds,
never a scan of the channel), and rows past their TTL are deleted by the sweep, quiet
channels included, so storage stays bounded by the window."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

from tether.broker.memory import MemoryBroker
from tether.storage.sqlite import SQLiteDatabase


async def started(db: Any) -> MemoryBroker:
    broker = MemoryBroker(db, sweep_every=3600)  # the test sweeps when it wants
    await broker.start(lambda *event: None)
    return broker


async def offsets(db: Any, channel: str) -> list[int]:
    rows = await db.fetchall('SELECT "offset" FROM channel_history WHERE channel = ? ORDER BY "offset"', channel)
    return [int(r["offset"]) for r in rows]


async def test_each_channel_keeps_exactly_its_window_across_batches(db: Any) -> None:
    broker = await started(db)
    try:
        for round in range(6):  # batches of mixed channels and sizes, each one group commit
            await asyncio.gather(*(
                broker.publish(channel, "PUBLICATION", {"r": round, "i": i}, history_size=size, history_ttl=60)
                for i in range(3) for channel, size in (("c.small", 4), ("c.big", 100), ("c.one", 1))
            ))
        assert await offsets(db, "c.small") == [15, 16, 17, 18]
        assert await offsets(db, "c.big") == list(range(1, 19))
        assert await offsets(db, "c.one") == [18]
        stream = await broker.read("c.small", 14)
        assert stream.complete and [o for o, _ in stream.events] == [15, 16, 17, 18]
        assert not (await broker.read("c.small", 13)).complete
    finally:
        await broker.close()


async def test_the_sweep_deletes_expired_rows_of_quiet_and_busy_channels_alike(db: Any) -> None:
    broker = await started(db)
    try:
        for i in range(3):
            await broker.publish("c.ended", "PUBLICATION", {"i": i}, history_size=100, history_ttl=60)
            await broker.publish("c.long", "PUBLICATION", {"i": i}, history_size=100, history_ttl=7200)
        assert await broker.log.sweep() == 0  # nothing expired yet
        assert len(await offsets(db, "c.ended")) == 3
        gone = await broker.log.sweep(now=time.time() + 120)  # two minutes on: c.ended's window is over
        assert gone == 3 and await offsets(db, "c.ended") == []
        assert await offsets(db, "c.long") == [1, 2, 3]
        # The channel's offsets and epoch outlive its history: the next event continues them.
        pos = await broker.publish("c.ended", "PUBLICATION", {}, history_size=100, history_ttl=60)
        assert pos.offset == 4
        assert not (await broker.read("c.ended", 0)).complete
    finally:
        await broker.close()


async def test_a_sweep_larger_than_one_chunk_deletes_everything_expired(db: Any) -> None:
    broker = await started(db)
    try:
        await asyncio.gather(*(broker.publish(f"c.many{i % 7}", "PUBLICATION", {"i": i}, history_size=5000,
                                              history_ttl=1) for i in range(2500)))
        assert await broker.log.sweep(now=time.time() + 10) == 2500
        assert await db.fetchone("SELECT COUNT(*) AS n FROM channel_history") == {"n": 0}
    finally:
        await broker.close()


async def test_the_trim_is_an_offset_range_the_primary_key_finds(tmp_path: Path) -> None:
    """SQLite's own plan of every trim statement the broker ran: a bounded search, no scan."""
    db = await SQLiteDatabase.open(tmp_path / "plan.sqlite3")
    traced: list[str] = []
    await db._conn.set_trace_callback(traced.append)
    broker = await started(db)
    try:
        await broker.log.sweep()
        sweeps = [s for s in traced if "expires_at <" in s]

        def trims() -> list[str]:
            return [s for s in traced if s.lstrip().upper().startswith("DELETE") and "expires_at" not in s]

        for i in range(3):  # under the size: no trim at all
            await broker.publish("c.plan", "PUBLICATION", {"i": i}, history_size=3, history_ttl=60)
        assert trims() == []
        for i in range(20):
            await broker.publish("c.plan", "PUBLICATION", {"i": i}, history_size=3, history_ttl=60)
        assert len(trims()) == 20
        plain = sqlite3.connect(tmp_path / "plan.sqlite3")
        try:
            for statement in trims():
                plan = " ".join(str(row[3]) for row in plain.execute("EXPLAIN QUERY PLAN " + statement))
                assert "offset>? AND offset<?" in plan, (statement, plan)
            plan = " ".join(str(row[3]) for row in plain.execute("EXPLAIN QUERY PLAN " + sweeps[-1]))
            assert "channel_history_expiry (expires_at<?)" in plan, plan  # the sweep finds rows by index too
        finally:
            plain.close()
        assert await offsets(db, "c.plan") == [21, 22, 23]
    finally:
        await broker.close()
        await db.close()


async def test_a_database_made_before_expiry_gets_it_and_is_swept(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.execute("""CREATE TABLE channel_history (channel TEXT NOT NULL, "offset" BIGINT NOT NULL,
                   frame TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL, PRIMARY KEY (channel, "offset"))""")
    old.execute("INSERT INTO channel_history VALUES ('c.old', 1, '{}', ?)", (time.time() - 7200,))
    old.execute("INSERT INTO channel_history VALUES ('c.old', 2, '{}', ?)", (time.time(),))
    old.commit()
    old.close()
    db = await SQLiteDatabase.open(path)
    broker = MemoryBroker(db, sweep_every=3600, legacy_ttl=3600)
    await broker.start(lambda *event: None)
    try:
        await asyncio.sleep(0)  # the sweep the broker runs at start
        for _ in range(100):
            if await offsets(db, "c.old") == [2]:
                break
            await asyncio.sleep(0.02)
        assert await offsets(db, "c.old") == [2]  # the row two hours old was past the default hour
    finally:
        await broker.close()
        await db.close()
