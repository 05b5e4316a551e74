"""Storage fixtures shared by the contract suites: every test gets a fresh, private store."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import asyncpg
import pytest

from tests.services import need_postgres, unique, with_query


async def drop_schema(url: str, schema: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator:
    """An empty database of each engine (PostgreSQL: a schema of its own)."""
    if request.param == "sqlite":
        from tether.storage.sqlite import SQLiteDatabase

        database = await SQLiteDatabase.open(tmp_path / "contract.sqlite3")
        yield database
        await database.close()
        return
    from tether.storage.postgres import PostgresDatabase

    url = need_postgres()
    schema = unique("contract_")
    database = await PostgresDatabase.open(with_query(url, schema=schema))
    yield database
    await database.close()
    await drop_schema(url, schema)
