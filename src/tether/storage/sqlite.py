"""SQLite backend: one connection in WAL mode, writes serialized by an asyncio lock.

WAL with ``synchronous=NORMAL`` keeps every committed transaction across a
``kill -9`` of the process (only an OS crash may lose the last few), which is
the durability the embedded default promises: an acknowledged write survives the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, TypeVar

import aiosqlite

from tether.storage.database import OneStatement, Row, is_write, out_of_range, rider

_T = TypeVar("_T")


class _Queries:
    """Statements on the one connection, each one trip to its thread (aiosqlite's).

    A transaction's ``BEGIN IMMEDIATE`` goes with its first statement and its rider
    with its ``COMMIT``: a trip to the thread and back is the cost that counts here
    (an event loop turn each way), so a transaction of two statements makes two."""

    def __init__(self, conn: aiosqlite.Connection, *, begin: bool = False) -> None:
        self._conn = conn
        self.begin = begin  # BEGIN IMMEDIATE is still to be sent, with the first statement
        self.changed = 0  # rows written so far: a transaction that wrote nothing carries no rider

    async def call(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        begin, self.begin = self.begin, False

        def run() -> _T:
            raw = self._conn._conn  # aiosqlite's own sqlite3 connection, in its own thread
            if begin:
                raw.execute("BEGIN IMMEDIATE")
            return fn(raw)

        try:
            # aiosqlite's way to run a function in its thread (every method of it goes through it).
            return await self._conn._execute(run)
        except OverflowError:  # "Python int too large to convert to SQLite INTEGER"
            raise out_of_range() from None

    async def execute(self, sql: str, *args: Any) -> int:
        count = await self.call(lambda raw: raw.execute(sql, args).rowcount)
        self.changed += max(count, 0)
        return count

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        count = await self.call(lambda raw: raw.executemany(sql, rows).rowcount)
        self.changed += max(count, 0)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetchall(sql, *args)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        rows = await self.call(lambda raw: [dict(r) for r in raw.execute(sql, args).fetchall()])
        if is_write(sql):  # INSERT/UPDATE … RETURNING
            self.changed += len(rows)
        return rows


class SQLiteDatabase(OneStatement):
    dialect = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: Path | str) -> None:
        self._conn = conn
        self._q = _Queries(conn)
        self._lock = asyncio.Lock()
        self.path = path

    @classmethod
    async def open(cls, path: Path | str) -> "SQLiteDatabase":
        conn = await aiosqlite.connect(str(path), isolation_level=None)
        try:
            conn.row_factory = aiosqlite.Row
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000", "foreign_keys=ON"):
                await conn.execute("PRAGMA " + pragma)
        except BaseException:
            await conn.close()  # its worker thread would otherwise keep the process alive
            raise
        return cls(conn, path)

    @asynccontextmanager
    async def direct(self) -> AsyncIterator[_Queries]:
        async with self._lock:
            yield self._q

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Queries]:
        async with self._lock:
            q = _Queries(self._conn, begin=True)
            r = None
            try:
                yield q
                if q.begin:  # no statement: nothing was begun, nothing to commit
                    return
                r = rider() if q.changed else None
                extra = (r.sql, r.args()) if r is not None else None

                def commit(raw: sqlite3.Connection) -> None:
                    if extra is not None:
                        raw.execute(*extra)
                    raw.execute("COMMIT")

                await q.call(commit)
            except BaseException:
                # Also after a failed COMMIT (disk full): never leave the shared connection in a transaction.
                if not q.begin:
                    with contextlib.suppress(Exception):
                        await self._conn.execute("ROLLBACK")
                raise
            if r is not None:
                r.done = True

    async def migrate(self, schema: list[str]) -> None:
        async with self.transaction() as tx:
            for statement in schema:
                await tx.execute(statement)

    async def healthy(self) -> bool:
        try:
            await self.fetchone("SELECT 1 AS ok")
            return True
        except Exception:
            return False

    async def close(self) -> None:
        await self._conn.close()
