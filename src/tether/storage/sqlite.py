"""SQLite backend: one connection in WAL mode, writes serialized by an asyncio lock.

WAL with ``synchronous=NORMAL`` keeps every committed transaction across a
``kill -9`` of the process (only an OS crash may lose the last few), which is
the durability SPEC §6 asks of the embedded default.
"""

from __future__ import annotations

import asyncio
import contextlib
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import aiosqlite

from tether.storage.database import OneStatement, Row, is_write, out_of_range, rider


class _Queries:
    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self.changed = 0  # rows written so far: a transaction that wrote nothing carries no rider

    async def _run(self, sql: str, args: tuple[Any, ...]) -> aiosqlite.Cursor:
        try:
            return await self._conn.execute(sql, args)
        except OverflowError:  # "Python int too large to convert to SQLite INTEGER"
            raise out_of_range() from None

    async def execute(self, sql: str, *args: Any) -> int:
        cur = await self._run(sql, args)
        self.changed += max(cur.rowcount, 0)
        return cur.rowcount

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        cur = await self._conn.executemany(sql, rows)
        self.changed += max(cur.rowcount, 0)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetchall(sql, *args)
        return rows[0] if rows else None

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        try:  # one trip to the database thread, not two (execute, then fetch)
            rows = [dict(r) for r in await self._conn.execute_fetchall(sql, args)]
        except OverflowError:
            raise out_of_range() from None
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
        conn.row_factory = aiosqlite.Row
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=5000", "foreign_keys=ON"):
            await conn.execute("PRAGMA " + pragma)
        return cls(conn, path)

    @asynccontextmanager
    async def direct(self) -> AsyncIterator[_Queries]:
        async with self._lock:
            yield self._q

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Queries]:
        async with self._lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            q = _Queries(self._conn)
            try:
                yield q
                r = rider() if q.changed else None
                if r is not None:
                    await self._conn.execute(r.sql, r.args())
                await self._conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT (disk full): never leave the shared connection in a transaction.
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
