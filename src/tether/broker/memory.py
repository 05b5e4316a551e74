"""The embedded broker: in-process fan-out, history and offsets in the SQL database.

Offsets and epochs are durable (they survive a restart or ``kill -9``) and
never reused; events are delivered only after their history row is committed,
so an acknowledged publish is always recoverable.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from typing import Any, Mapping, Sequence

from tether.broker.base import Broker, Deliver, OutboxRow, Position, Stream
from tether.storage.database import Database, Rider, rider, riding
from tether.wire import protocol
from tether.wire.errors import TetherError
from tether.wire.jsonutil import dumps

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
        expires_at DOUBLE PRECISION,
        PRIMARY KEY (channel, "offset")
    )""",
]

#: After the column exists (databases made before it get it in ``ChannelLog.start``).
EXPIRY_INDEX = "CREATE INDEX IF NOT EXISTS channel_history_expiry ON channel_history (expires_at)"

_ROWS_PER_INSERT = 160  # 800 bound parameters, far below SQLite's and PostgreSQL's limits
_SWEEP_CHUNK = 1000  # rows per sweeping transaction: short enough not to hold up group commits

log = logging.getLogger("tether.broker")


class ChannelLog:
    """Offsets, epochs and the history window of every channel, in SQL."""

    def __init__(self, db: Database, legacy_ttl: float = 3600.0) -> None:
        self.db = db
        self.legacy_ttl = legacy_ttl  # the expiry given to rows stored before rows had one

    async def start(self) -> None:
        await self.db.migrate(SCHEMA)
        await self._add_expiry()
        await self.db.migrate([EXPIRY_INDEX])

    async def _add_expiry(self) -> None:
        """Databases made before rows had an expiry get the column, their rows the default window."""
        if self.db.dialect == "postgresql":
            await self.db.migrate(["ALTER TABLE channel_history ADD COLUMN IF NOT EXISTS expires_at DOUBLE PRECISION"])
        elif not any(r["name"] == "expires_at" for r in await self.db.fetchall("PRAGMA table_info(channel_history)")):
            await self.db.migrate(["ALTER TABLE channel_history ADD COLUMN expires_at DOUBLE PRECISION"])
        await self.db.execute("UPDATE channel_history SET expires_at = created_at + ? WHERE expires_at IS NULL",
                              self.legacy_ttl)

    async def append_many(self, items: list[tuple[str, str, Any, int, float]],
                          riders: Mapping[Rider, int] | None = None,
                          taken: Sequence[int] = ()) -> list[tuple[Position, str]]:
        """Append events in one transaction (group commit), offsets in list order per channel.

        One multi-row UPSERT per chunk of channels reserves all of their offsets,
        one multi-row INSERT per chunk stores the frames, and a channel past its
        history size drops exactly the offsets that fell out of its window (a
        bounded range of its primary key: a few rows found by the index, never a
        scan of the channel). Age is trimmed apart, by :meth:`sweep`. ``riders`` are
        the publishing requests' idempotency records, each with the index of its event
        in ``items``; ``taken`` the outbox rows the events were staged in.
        """
        now = time.time()
        counts: dict[str, int] = {}
        for channel, *_ in items:
            counts[channel] = counts.get(channel, 0) + 1
        out: list[tuple[Position, str]] = []
        async with self.db.transaction() as tx:
            next_offset: dict[str, tuple[int, str]] = {}
            # Sorted: concurrent transactions (other nodes on PostgreSQL) lock rows in one order.
            channels = sorted(counts)
            for i in range(0, len(channels), _ROWS_PER_INSERT):
                chunk = channels[i : i + _ROWS_PER_INSERT]
                for row in await tx.fetchall(
                    "INSERT INTO channel_positions (channel, top_offset, epoch) VALUES "
                    + ",".join(["(?, ?, ?)"] * len(chunk))
                    + """ ON CONFLICT (channel) DO UPDATE
                          SET top_offset = channel_positions.top_offset + excluded.top_offset
                          RETURNING channel, top_offset, epoch""",
                    *(v for c in chunk for v in (c, counts[c], secrets.token_hex(4))),
                ):
                    k = counts[row["channel"]]
                    next_offset[row["channel"]] = (int(row["top_offset"]) - k + 1, str(row["epoch"]))
            rows: list[Any] = []
            windows: dict[str, tuple[int, int, int]] = {}  # channel -> (first offset, last offset, size)
            for channel, type, data, size, ttl in items:
                offset, epoch = next_offset[channel]
                next_offset[channel] = (offset + 1, epoch)
                text = protocol.event(channel, offset, type, data)
                out.append((Position(offset, epoch), text))
                if size > 0:
                    rows.append((channel, offset, text, now, now + ttl))
                    first = windows[channel][0] if channel in windows else offset
                    windows[channel] = (first, offset, size)
            for i in range(0, len(rows), _ROWS_PER_INSERT):
                chunk = rows[i : i + _ROWS_PER_INSERT]
                await tx.execute(
                    'INSERT INTO channel_history (channel, "offset", frame, created_at, expires_at) VALUES '
                    + ",".join(["(?, ?, ?, ?, ?)"] * len(chunk)),
                    *(v for r in chunk for v in r),
                )
            # The window was (first - 1 - size, first - 1] before this batch and is (last - size, last]
            # after it: what lies between left it. One call for all channels (one thread hop in SQLite).
            trims = [(c, first - 1 - size, last - size) for c, (first, last, size) in windows.items() if last > size]
            if trims:
                await tx.executemany(
                    'DELETE FROM channel_history WHERE channel = ? AND "offset" > ? AND "offset" <= ?', trims)
            for r, i in (riders or {}).items():  # the requests' idempotency records, in the same COMMIT
                if r.at_publish is not None:
                    r.answer = dumps(r.at_publish(out[i][0]))
                await tx.execute(r.sql, *r.args())
            if taken:  # the outbox rows these events were staged in: published once, gone at once
                await tx.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in taken])
        for r in riders or ():
            r.done = True
        return out

    async def sweep(self, now: float | None = None) -> int:
        """Delete every row past its channel's history TTL, quiet channels included, a chunk per
        transaction (the expiry index finds them); returns how many went."""
        cutoff = time.time() if now is None else now
        total = 0
        while True:
            async with self.db.transaction() as tx:
                n = await tx.execute(
                    'DELETE FROM channel_history WHERE (channel, "offset") IN (SELECT channel, "offset" '
                    "FROM channel_history WHERE expires_at < ? LIMIT ?)",
                    cutoff, _SWEEP_CHUNK,
                )
            total += n
            if n < _SWEEP_CHUNK:
                return total
            await asyncio.sleep(0)  # let the group commits waiting for the database go first

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


    async def reset(self, channel: str) -> Position:
        token = riding.set(None)  # no request's idempotency record commits with this: it is no write of theirs
        try:
            return await self._reset(channel)
        finally:
            riding.reset(token)

    async def _reset(self, channel: str) -> Position:
        async with self.db.transaction() as tx:
            row = await tx.fetchone(
                """INSERT INTO channel_positions (channel, top_offset, epoch) VALUES (?, 0, ?)
                   ON CONFLICT (channel) DO UPDATE SET epoch = excluded.epoch
                   RETURNING top_offset, epoch""",
                channel, secrets.token_hex(4),
            )
            await tx.execute("DELETE FROM channel_history WHERE channel = ?", channel)
        assert row is not None
        return Position(int(row["top_offset"]), str(row["epoch"]))


class MemoryBroker(Broker):
    """Publishes are group-committed: those that arrive while a transaction is
    in flight wait and go together in the next one. One flusher at a time
    assigns offsets in arrival order and delivers each batch in that order
    after its COMMIT, so per-channel offset order holds and an ACKed publish
    is durable (its future resolves only after the commit)."""

    def __init__(self, db: Database, *, sweep_every: float = 60.0, legacy_ttl: float = 3600.0) -> None:
        self.log = ChannelLog(db, legacy_ttl)
        self.sweep_every = sweep_every  # seconds between age sweeps: expired rows outlive their TTL by at most this
        self._sweeper: asyncio.Task[None] | None = None
        self._deliver: Deliver | None = None
        self._pending: list[tuple[tuple[str, str, Any, int, float], str | None, asyncio.Future[Position],
                                  Rider | None, int | None]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        await self.log.start()
        self._sweeper = asyncio.create_task(self._sweep_forever(), context=contextvars.Context())

    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.log.sweep()
            except Exception:
                log.exception("sweeping expired channel history failed; trying again later")
            await asyncio.sleep(self.sweep_every)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        self._deliver = None

    takes_outbox_rows = True

    async def publish(self, channel: str, type: str, data: Any, *, history_size: int, history_ttl: float,
                      exclude: str | None = None, outbox: OutboxRow | None = None) -> Position:
        future: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        row = outbox[0] if outbox is not None else None
        self._pending.append(((channel, type, data, history_size, history_ttl), exclude, future, rider(), row))
        if self._flusher is None:
            # A context of its own: the flusher works for every publisher, not for the first one's request.
            self._flusher = asyncio.create_task(self._flush(), context=contextvars.Context())
        return await future

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                results: list[Any]
                try:
                    riders = {r: i for i, (*_, r, _) in enumerate(batch) if r is not None and not r.done}
                    results = list(await self.log.append_many(
                        [item for item, *_ in batch], riders, [i for *_, i in batch if i is not None]))
                except Exception as exc:
                    if isinstance(exc, TetherError) and exc.code == "unavailable":
                        # The database is unreachable, maybe mid-COMMIT: whether the batch landed
                        # is unknown, and retrying it could store every event twice. Fail it;
                        # clients retry (with their idempotency keys).
                        results = [exc] * len(batch)
                    else:
                        results = await self._one_by_one(batch)
                for (item, exclude, future, *_), result in zip(batch, results):
                    if isinstance(result, Exception):
                        if not future.done():
                            future.set_exception(result)
                        continue
                    position, text = result
                    if self._deliver is not None:
                        try:
                            self._deliver(item[0], position.offset, text, exclude)
                        except Exception:
                            log.exception("delivering %s failed", item[0])
                    if not future.done():
                        future.set_result(position)
        finally:
            self._flusher = None

    async def _one_by_one(self, batch: list[Any]) -> list[Any]:
        """A failing event must not fail its neighbours: each alone, its error as its result."""
        results: list[Any] = []
        for item, _, _, r, i in batch:
            try:
                riders = {r: 0} if r is not None and not r.done else None
                results.append((await self.log.append_many([item], riders, [i] if i is not None else []))[0])
            except Exception as exc:
                results.append(exc)
        return results

    async def read(self, channel: str, after: int | None, *, history_ttl: float | None = None, limit: int = 10_000) -> Stream:
        return await self.log.read(channel, after, limit, history_ttl)

    async def reset(self, channel: str) -> Position:
        return await self.log.reset(channel)

    async def healthy(self) -> bool:
        return await self.log.db.healthy()
