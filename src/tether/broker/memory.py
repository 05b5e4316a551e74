"""The embedded broker: in-process fan-out, history and offsets in the SQL database.

Offsets and epochs are durable (they survive a restart or ``kill -9``) and
never reused; events are delivered only after their history row is committed,
so an acknowledged publish is always recoverable.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import zlib
from typing import Any

from tether import protocol
from tether.broker.base import Broker, Deliver, Position, Stream
from tether.storage.database import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS channel_positions (
        channel TEXT PRIMARY KEY,
        top_offset BIGINT NOT NULL,
        epoch TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS channel_history (
        channel TEXT NOT NULL,
        "offset" BIGINT NOT NULL,
        frame TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (channel, "offset")
    )""",
]

_STRIPES = 256


class ChannelLog:
    """Offsets, epochs and the history window of every channel, in SQL."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self) -> None:
        await self.db.migrate(SCHEMA)

    async def append(self, channel: str, type: str, data: Any, size: int, ttl: float) -> tuple[Position, str]:
        now = time.time()
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                """INSERT INTO channel_positions (channel, top_offset, epoch) VALUES (?, 1, ?)
                   ON CONFLICT (channel) DO UPDATE SET top_offset = channel_positions.top_offset + 1
                   RETURNING top_offset, epoch""",
                channel,
                secrets.token_hex(4),
            )
            assert row is not None
            offset, epoch = int(row["top_offset"]), str(row["epoch"])
            text = protocol.event(channel, offset, type, data)
            if size > 0:
                await tx.execute(
                    'INSERT INTO channel_history (channel, "offset", frame, created_at) VALUES (?, ?, ?, ?)',
                    channel, offset, text, now,
                )
                if offset % 16 == 0 or offset > size:
                    await tx.execute(
                        'DELETE FROM channel_history WHERE channel = ? AND ("offset" <= ? OR created_at < ?)',
                        channel, offset - size, now - ttl,
                    )
        return Position(offset, epoch), text

    async def read(self, channel: str, after: int | None, limit: int, ttl: float | None = None) -> Stream:
        row = await self.db.fetchone("SELECT top_offset, epoch FROM channel_positions WHERE channel = ?", channel)
        if row is None:
            # A channel nobody published to yet: give it its epoch now, so a
            # client's position stays valid once the first event arrives.
            row = await self.db.fetchone(
                """INSERT INTO channel_positions (channel, top_offset, epoch) VALUES (?, 0, ?)
                   ON CONFLICT (channel) DO UPDATE SET top_offset = channel_positions.top_offset
                   RETURNING top_offset, epoch""",
                channel, secrets.token_hex(4),
            )
            assert row is not None
        position = Position(int(row["top_offset"]), str(row["epoch"]))
        if after is None or after >= position.offset:
            return Stream(position)
        rows = await self.db.fetchall(
            'SELECT "offset", frame, created_at FROM channel_history WHERE channel = ? AND "offset" > ? '
            'ORDER BY "offset" LIMIT ?',
            channel, after, limit,
        )
        if ttl is not None:
            cutoff = time.time() - ttl
            rows = [r for r in rows if r["created_at"] >= cutoff]
        # Rows appended after the position was read belong to live delivery, not to this read.
        events = [(int(r["offset"]), str(r["frame"])) for r in rows if r["offset"] <= position.offset]
        complete = len(events) == position.offset - after and bool(events) and events[0][0] == after + 1
        return Stream(position, events, complete)


class MemoryBroker(Broker):
    def __init__(self, db: Database) -> None:
        self.log = ChannelLog(db)
        self._deliver: Deliver | None = None
        self._locks = [asyncio.Lock() for _ in range(_STRIPES)]

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        await self.log.start()

    async def close(self) -> None:
        self._deliver = None

    async def publish(self, channel: str, type: str, data: Any, *, history_size: int, history_ttl: float, exclude: str | None = None) -> Position:
        # The stripe lock keeps "commit, then deliver" in offset order per channel.
        async with self._locks[zlib.crc32(channel.encode()) % _STRIPES]:
            position, text = await self.log.append(channel, type, data, history_size, history_ttl)
            if self._deliver is not None:
                self._deliver(channel, position.offset, text, exclude)
        return position

    async def read(self, channel: str, after: int | None, *, history_ttl: float | None = None, limit: int = 10_000) -> Stream:
        return await self.log.read(channel, after, limit, history_ttl)

    async def healthy(self) -> bool:
        return await self.log.db.healthy()
