"""Domain events committed with the change they announce (a transactional outbox).

A feature that changes state in SQL (a document version, a session, a chat
message) and announces it on a channel used to commit the change, then publish:
a process killed between the two kept the change and lost its event, and no
recovery by offset could know. Now the event is a row of ``outbox`` written in
the change's own transaction (:meth:`Outbox.change`); after the COMMIT the
request publishes it, and the row goes:

- with the embedded broker, in the broker's own group commit, together with the
  event's history row (one SQLite or PostgreSQL transaction: exactly once);
- with the Redis broker, after the publish script, which marks the event in
  Redis by the row's id: a row published again (its node died before deleting
  it) gets the first offset back instead of a second event.

A row a crash left behind (or whose publish failed: the broker was unreachable)
is published by the sweeper, in id order, within a second or two on a live
node, or when the node starts again. Such a late event still gets the
channel's next offset; its data is the change it announced (documents and
sessions carry their version), so a reader orders it by that, not by arrival.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Protocol

from tether.broker.base import OutboxRow
from tether.storage.database import Database, Queries
from tether.wire.jsonutil import dumps, loads

log = logging.getLogger("tether.outbox")

_COLUMNS = """channel TEXT NOT NULL,
        type TEXT NOT NULL,
        data TEXT NOT NULL,
        exclude_conn TEXT,
        created_at DOUBLE PRECISION NOT NULL"""
SCHEMA = {
    # AUTOINCREMENT: an id is never reused, so a marker left in Redis can never name another event.
    "sqlite": [f"CREATE TABLE IF NOT EXISTS outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, {_COLUMNS})"],
    "postgresql": [f"CREATE TABLE IF NOT EXISTS outbox (id BIGSERIAL PRIMARY KEY, {_COLUMNS})"],
}


@dataclass(slots=True)
class Event:
    channel: str
    type: str
    data: Any
    exclude: str | None = None
    row: OutboxRow = (0, 0.0)  # (id, created_at) of its outbox row, once staged


class Publish(Protocol):
    async def __call__(self, channel: str, type: str, data: Any, *, exclude: str | None = None,
                       outbox: OutboxRow | None = None) -> Any: ...


class Change:
    """One transaction (``tx``) and the events that announce it (:meth:`emit`)."""

    __slots__ = ("tx", "events")

    def __init__(self, tx: Queries) -> None:
        self.tx = tx
        self.events: list[Event] = []

    def emit(self, channel: str, type: str, data: Any, *, exclude: str | None = None) -> None:
        """Announce ``type`` on ``channel`` once this change commits (in the order emitted)."""
        self.events.append(Event(channel, type, data, exclude))


class Outbox:
    def __init__(self, db: Database, publish: Publish, *, takes_rows: bool, grace: float,
                 settled: Callable[[list[OutboxRow]], None] = lambda rows: None, every: float = 1.0) -> None:
        self.db = db
        self.publish = publish
        self.settled = settled  # rows deleted: the broker may forget what it kept of them
        # The broker deletes a published row in its own commit (it shares the database).
        self.takes_rows = takes_rows
        # A row younger than this may still be in its request's hands on another node.
        self.grace = grace
        self.every = every
        self._live: set[int] = set()  # rows this process's requests are publishing
        self._sweeping = asyncio.Lock()  # one sweep at a time: two would publish the same rows
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.db.migrate(SCHEMA[self.db.dialect])
        self._sweeper = asyncio.create_task(self._sweep_forever(), context=contextvars.Context())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)

    @asynccontextmanager
    async def change(self) -> AsyncIterator[Change]:
        """A transaction whose events commit with it and are published after it.

        A failed publish does not fail the request: its change is committed and
        its event is in the outbox, which the sweeper publishes once it can."""
        async with self.db.transaction() as tx:
            change = Change(tx)
            yield change
            for e in change.events:
                now = time.time()
                row = await tx.fetchone(
                    "INSERT INTO outbox (channel, type, data, exclude_conn, created_at) VALUES (?, ?, ?, ?, ?) RETURNING id",
                    e.channel, e.type, dumps(e.data), e.exclude, now)
                assert row is not None
                e.row = (int(row["id"]), now)
                self._live.add(e.row[0])
        try:
            await self._send(change.events)
        except Exception as exc:
            log.warning("an event is left in the outbox for the sweeper (%s)", exc)
        finally:
            self._live.difference_update(e.row[0] for e in change.events)

    async def _send(self, events: list[Event]) -> None:
        sent: list[OutboxRow] = []
        try:
            for e in events:
                await self.publish(e.channel, e.type, e.data, exclude=e.exclude, outbox=e.row)
                sent.append(e.row)
        finally:
            if sent and not self.takes_rows:
                await self.db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(sent))})",
                                      *(i for i, _ in sent))
                self.settled(sent)

    async def sweep(self) -> int:
        """Publish what requests left in the outbox (a crash, an unreachable broker), oldest first."""
        async with self._sweeping:
            rows = await self.db.fetchall(
                "SELECT id, channel, type, data, exclude_conn, created_at FROM outbox WHERE created_at <= ? "
                "ORDER BY id LIMIT 500", time.time() - self.grace)
            events = [Event(r["channel"], r["type"], loads(r["data"]), r["exclude_conn"],
                            (int(r["id"]), float(r["created_at"]))) for r in rows if int(r["id"]) not in self._live]
            if events:
                await self._send(events)
                log.info("published %d event(s) left in the outbox", len(events))
            return len(events)

    async def _sweep_forever(self) -> None:
        while True:
            try:
                while await self.sweep() == 500:
                    pass
            except Exception as exc:
                log.warning("the outbox sweep failed (%s); trying again in %.0f s", exc, self.every)
            await asyncio.sleep(self.every)

