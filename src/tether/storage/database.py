"""The storage interface every backend implements (see tests/contract)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncContextManager, Protocol

Row = dict[str, Any]


class Queries(Protocol):
    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; return the number of rows it changed."""

    async def fetchone(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchall(self, sql: str, *args: Any) -> list[Row]: ...


class Database(Queries, Protocol):
    dialect: str  # "sqlite" | "postgresql"

    def transaction(self) -> AsyncContextManager[Queries]:
        """All statements inside commit together or not at all, serialized against other writers."""

    async def migrate(self, schema: list[str]) -> None:
        """Apply idempotent DDL (``CREATE … IF NOT EXISTS``)."""

    async def healthy(self) -> bool: ...

    async def close(self) -> None: ...


async def open_database(url: str | None, data_dir: Path) -> Database:
    if url and url.startswith(("postgres://", "postgresql://")):
        from tether.storage.postgres import PostgresDatabase

        db: Database = await PostgresDatabase.open(url)
    else:
        from tether.storage.sqlite import SQLiteDatabase

        data_dir.mkdir(parents=True, exist_ok=True)
        db = await SQLiteDatabase.open(data_dir / "tether.sqlite3")
    return db
