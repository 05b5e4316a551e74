"""The storage interface every backend implements (see tests/contract)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, AsyncContextManager, Callable, Protocol

Row = dict[str, Any]


class Rider:
    """A statement that commits in the same transaction as the first write made on behalf
    of the current request: its idempotency record (``tether.core.idempotency``), so a crash
    never keeps the write and loses the record (a retry would apply the write twice).

    Every backend honours it: a transaction that changed rows, or a lone writing statement
    that did, runs ``sql`` with ``args()`` before its COMMIT, then marks the rider ``done``.
    """

    __slots__ = ("sql", "make_args", "answer", "done", "rerun")

    def __init__(self, sql: str, make_args: Callable[[str], tuple[Any, ...]], answer: str) -> None:
        self.sql, self.make_args, self.answer, self.done = sql, make_args, answer, False
        self.rerun = False  # the request's writes are safe to repeat (see tether.core.idempotency.rerun_on_failure)

    def args(self) -> tuple[Any, ...]:
        return self.make_args(self.answer)


riding: ContextVar[Rider | None] = ContextVar("tether_rider", default=None)


def rider() -> Rider | None:
    """The current request's rider, while it still has to be committed."""
    r = riding.get()
    return None if r is None or r.done else r


def is_write(sql: str) -> bool:
    return sql.lstrip()[:6].lower() in ("insert", "update", "delete")


class Queries(Protocol):
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed."""

    async def fetchone(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchall(self, sql: str, *args: Any) -> list[Row]: ...

    async def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement once per row of arguments, in one call to the driver (one round trip)."""


class OneStatement:
    """``execute`` / ``fetchone`` / ``fetchall`` outside a transaction, for both backends.

    A backend gives ``transaction()`` and ``direct()`` (one statement, no transaction).
    A writing statement made while a request's :class:`Rider` is pending runs in a
    transaction of its own instead, so the rider commits with it.
    """

    def transaction(self) -> AsyncContextManager[Queries]:
        raise NotImplementedError

    def direct(self) -> AsyncContextManager[Queries]:
        raise NotImplementedError

    def _for(self, sql: str) -> AsyncContextManager[Queries]:
        return self.transaction() if rider() is not None and is_write(sql) else self.direct()

    async def execute(self, sql: str, *args: Any) -> int:
        async with self._for(sql) as q:
            return await q.execute(sql, *args)

    async def fetchone(self, sql: str, *args: Any) -> Row | None:
        async with self._for(sql) as q:
            return await q.fetchone(sql, *args)

    async def fetchall(self, sql: str, *args: Any) -> list[Row]:
        async with self._for(sql) as q:
            return await q.fetchall(sql, *args)


class Database(Queries, Protocol):
    dialect: str  # "sqlite" | "postgresql"

    def transaction(self) -> AsyncContextManager[Queries]:
        """All statements inside commit together or not at all, serialized against other writers."""

    async def migrate(self, schema: list[str]) -> None:
        """Apply idempotent DDL (``CREATE … IF NOT EXISTS``)."""

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...
