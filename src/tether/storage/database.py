"""The storage interface every backend implements (see tests/contract)."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any, AsyncContextManager, Callable, Protocol

from tether.wire.errors import TetherError

Row = dict[str, Any]


class Rider:
    """A statement that commits in the same transaction as the first write made on behalf
    of the current request: its idempotency record (``tether.core.idempotency``), so a crash
    never keeps the write and loses the record (a retry would apply the write twice).

    Every backend honours it: a transaction that changed rows, or a lone writing statement
    that did, runs ``sql`` with ``args()`` before its COMMIT, then marks the rider ``done``.

    A write outside SQL (the Redis broker's publish) cannot join that transaction; it stores
    its own marker atomically with the write instead, named by :meth:`mark` (the same names,
    in the same order, when the request runs again after a crash), and lets it go once the
    record is stored (``settled``).
    """

    __slots__ = ("sql", "make_args", "answer", "done", "rerun", "name", "ttl", "marks", "settled", "at_publish")

    def __init__(self, sql: str, make_args: Callable[[str], tuple[Any, ...]], answer: str,
                 name: str = "", ttl: float = 0.0) -> None:
        self.sql, self.make_args, self.answer, self.done = sql, make_args, answer, False
        self.rerun = False  # the request's writes are safe to repeat (see tether.core.idempotency.rerun_on_failure)
        self.name, self.ttl = name, ttl  # who and which request: stable across a retry on any node
        self.marks = 0
        self.settled: list[Callable[[], None]] = []  # called once the record is stored
        # The request's answer, made from its event's position by a broker that commits the
        # rider with the event (see tether.core.idempotency.answer_on_publish).
        self.at_publish: Callable[[Any], Any] | None = None

    def mark(self, what: str) -> str:
        """A name for this request's next write outside SQL: ``what`` plus its place in the request."""
        self.marks += 1
        return f"{self.name}\x00{what}\x00{self.marks}"

    def args(self) -> tuple[Any, ...]:
        return self.make_args(self.answer)


riding: ContextVar[Rider | None] = ContextVar("tether_rider", default=None)


def rider() -> Rider | None:
    """The current request's rider, while it still has to be committed."""
    r = riding.get()
    return None if r is None or r.done else r


def out_of_range() -> TetherError:
    """A Python int that no SQL integer holds: the client's number, refused (never a 5xx).
    The edges refuse such numbers first (``tether.wire.jsoncheck``); this catches any that slip by."""
    return TetherError("bad_request", "a number is out of range (integers are signed 64-bit)", status=422)


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
