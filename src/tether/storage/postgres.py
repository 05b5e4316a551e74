"""PostgreSQL backend (asyncpg): a connection pool behind the same portable interface as SQLite.

SQL is written once with ``?`` placeholders; they become ``$1..$n`` here.
Every node of a cluster opens its own pool on the same database, so
:meth:`PostgresDatabase.migrate` takes an advisory lock: N nodes starting at
once apply the DDL one after the other instead of racing on the catalog.

A URL may carry ``?schema=NAME``: the schema is created if missing and is the
``search_path`` of every pooled connection (several Tether services, or tests,
can share one database). ``pool_min``/``pool_max`` size the pool (default 1/10).
"""

from __future__ import annotations

import functools
import zlib
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

from tether.storage.database import OneStatement, Row, is_write, out_of_range, rider
from tether.wire.errors import TetherError

#: One lock id for all Tether DDL (any stable 64-bit number works).
MIGRATE_LOCK = zlib.crc32(b"tether.migrate")

#: Errors meaning "the database is not reachable right now" (the pool reconnects on the next use).
_UNREACHABLE = (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, TimeoutError)


@functools.lru_cache(maxsize=2048)
def translate(sql: str) -> str:
    """``?`` -> ``$1..$n``, leaving string literals, quoted identifiers and comments alone."""
    out: list[str] = []
    n = 0
    i, size = 0, len(sql)
    while i < size:
        c = sql[i]
        if c in ("'", '"'):
            end = i + 1
            while end < size:  # a doubled quote is an escaped quote: scanning on handles it
                if sql[end] == c:
                    break
                end += 1
            out.append(sql[i:end + 1])
            i = end + 1
        elif c == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            end = size if end < 0 else end
            out.append(sql[i:end])
            i = end
        elif c == "?":
            n += 1
            out.append(f"${n}")
            i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def rowcount(status: str) -> int:
    """Rows changed, from a command status such as ``UPDATE 3`` or ``INSERT 0 1``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def _unavailable(exc: BaseException) -> TetherError:
    return TetherError("unavailable", f"the database is unreachable ({type(exc).__name__}); retry shortly")


def _refused(exc: asyncpg.DataError) -> BaseException:
    # asyncpg refuses an int past 64 bits before sending it ("value out of int64 range")
    return out_of_range() if isinstance(exc.__cause__, OverflowError) or "out of" in str(exc) else exc


class _Queries:
    def __init__(self, conn: Any) -> None:  # a connection, or the pool (same methods)
        self._conn = conn
        self.changed = 0  # rows written so far: a transaction that wrote nothing carries no rider

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            n = rowcount(await self._conn.execute(translate(sql), *args))
        except asyncpg.DataError as exc:
            raise _refused(exc) from None
        self.changed += n
        return n

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        await self._conn.executemany(translate(sql), rows)  # asyncpg reports no row count here

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        try:
            row = await self._conn.fetchrow(translate(sql), *args)
        except asyncpg.DataError as exc:
            raise _refused(exc) from None
        if row is not None and is_write(sql):  # INSERT/UPDATE … RETURNING
            self.changed += 1
        return dict(row) if row is not None else None

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        try:
            rows = [dict(r) for r in await self._conn.fetch(translate(sql), *args)]
        except asyncpg.DataError as exc:
            raise _refused(exc) from None
        if is_write(sql):
            self.changed += len(rows)
        return rows


class PostgresDatabase(OneStatement):
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, schema: str | None) -> None:
        self._pool = pool
        self.schema = schema

    @classmethod
    async def open(cls, url: str) -> "PostgresDatabase":
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        schema = query.pop("schema", None)
        pool_min = int(query.pop("pool_min", 1))
        pool_max = int(query.pop("pool_max", 10))
        dsn = urlunsplit(parts._replace(query=urlencode(query)))
        if schema:
            conn = await asyncpg.connect(dsn)
            try:
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATE_LOCK)
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
            finally:
                await conn.close()
        pool = await asyncpg.create_pool(
            dsn,
            min_size=pool_min,
            max_size=pool_max,
            server_settings={"search_path": f'"{schema}"'} if schema else None,
            command_timeout=30,
            max_inactive_connection_lifetime=300,
        )
        return cls(pool, schema)

    @asynccontextmanager
    async def direct(self) -> AsyncIterator[_Queries]:
        try:
            yield _Queries(self._pool)  # the pool runs each statement on a free connection
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_Queries]:
        """READ COMMITTED, as PostgreSQL defaults: write race-free SQL (conditional
        UPDATE … WHERE, INSERT … ON CONFLICT) rather than read-then-write."""
        try:
            conn = await self._pool.acquire()
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        r = None
        try:
            async with conn.transaction():
                q = _Queries(conn)
                yield q
                r = rider() if q.changed else None
                if r is not None:
                    await q.execute(r.sql, *r.args())
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from exc
        finally:
            try:
                await self._pool.release(conn)
            except Exception:  # asyncpg terminated it; whether the COMMIT landed is decided above
                pass
        if r is not None:
            r.done = True

    async def migrate(self, schema: list[str]) -> None:
        async with self.transaction() as tx:
            await tx.execute("SELECT pg_advisory_xact_lock(?)", MIGRATE_LOCK)
            for statement in schema:
                await tx.execute(statement)

    async def healthy(self) -> bool:
        """``SELECT 1``. The timeout covers the query only, not waiting for a pooled connection
        (nor returning it): callers bound the whole check (``tether.core.node.answers``)."""
        try:
            return await self._pool.fetchval("SELECT 1", timeout=2) == 1
        except Exception:
            return False

    async def close(self) -> None:
        await self._pool.close()
