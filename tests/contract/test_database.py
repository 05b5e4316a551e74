"""The storage contract: SQLite and PostgreSQL give the same answers to the same portable SQL."""

from __future__ import annotations

import asyncio

import pytest

from tether.storage.postgres import rowcount, translate

TABLE = """CREATE TABLE IF NOT EXISTS items (
    id TEXT PRIMARY KEY,
    n BIGINT NOT NULL,
    flag INTEGER NOT NULL DEFAULT 0,
    score DOUBLE PRECISION,
    body TEXT
)"""


async def test_migrate_is_idempotent_and_execute_counts_rows(db) -> None:
    await db.migrate([TABLE])
    await db.migrate([TABLE])
    assert await db.execute("INSERT INTO items (id, n) VALUES (?, ?)", "a", 1) == 1
    assert await db.execute("INSERT INTO items (id, n) VALUES (?, ?)", "b", 2) == 1
    assert await db.execute("UPDATE items SET n = n + 10") == 2
    assert await db.execute("UPDATE items SET n = 0 WHERE id = ?", "missing") == 0
    assert await db.execute("DELETE FROM items WHERE n > ?", 11) == 1


async def test_fetch_returns_dicts_with_portable_types(db) -> None:
    await db.migrate([TABLE])
    await db.execute("INSERT INTO items (id, n, flag, score, body) VALUES (?, ?, ?, ?, ?)", "a", 7, 1, 1.5, "it's ?")
    row = await db.fetchone("SELECT id, n, flag, score, body FROM items WHERE id = ?", "a")
    assert row == {"id": "a", "n": 7, "flag": 1, "score": 1.5, "body": "it's ?"}
    assert await db.fetchone("SELECT id FROM items WHERE id = ?", "zz") is None
    # A '?' inside a string literal is text, not a placeholder.
    rows = await db.fetchall("SELECT id FROM items WHERE body = 'it''s ?' AND n = ? ORDER BY id", 7)
    assert rows == [{"id": "a"}]
    assert await db.fetchall("SELECT id FROM items WHERE n > ?", 100) == []


async def test_transaction_commits_together_or_not_at_all(db) -> None:
    await db.migrate([TABLE])
    async with db.transaction() as tx:
        await tx.execute("INSERT INTO items (id, n) VALUES (?, ?)", "a", 1)
        assert (await tx.fetchone("SELECT n FROM items WHERE id = ?", "a")) == {"n": 1}
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (id, n) VALUES (?, ?)", "b", 2)
            await tx.execute("UPDATE items SET n = 99 WHERE id = ?", "a")
            raise RuntimeError("abort")
    assert await db.fetchall("SELECT id, n FROM items ORDER BY id") == [{"id": "a", "n": 1}]


async def test_failed_statement_rolls_back_the_transaction(db) -> None:
    await db.migrate([TABLE])
    await db.execute("INSERT INTO items (id, n) VALUES (?, ?)", "a", 1)
    with pytest.raises(Exception):
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO items (id, n) VALUES (?, ?)", "b", 2)
            await tx.execute("INSERT INTO items (id, n) VALUES (?, ?)", "a", 3)  # duplicate key
    assert await db.fetchall("SELECT id FROM items ORDER BY id") == [{"id": "a"}]


async def test_upsert_with_returning(db) -> None:
    await db.migrate([TABLE])
    sql = """INSERT INTO items (id, n) VALUES (?, 1)
             ON CONFLICT (id) DO UPDATE SET n = items.n + 1 RETURNING n"""
    assert await db.fetchone(sql, "a") == {"n": 1}
    assert await db.fetchone(sql, "a") == {"n": 2}
    ignored = "INSERT INTO items (id, n) VALUES (?, ?) ON CONFLICT (id) DO NOTHING"
    assert await db.execute(ignored, "a", 50) == 0
    assert await db.execute(ignored, "b", 50) == 1
    sql = """INSERT INTO items (id, n, body) VALUES (?, ?, ?)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body RETURNING id, n, body"""
    assert await db.fetchone(sql, "b", 0, "x") == {"id": "b", "n": 50, "body": "x"}


async def test_concurrent_conditional_updates_never_oversell(db) -> None:
    """A counter with a limit: 40 racing writers, exactly `seats` win (the seat-limit pattern)."""
    await db.migrate([TABLE])
    seats = 7
    await db.execute("INSERT INTO items (id, n) VALUES (?, 0)", "room")

    async def take() -> bool:
        return await db.execute("UPDATE items SET n = n + 1 WHERE id = ? AND n < ?", "room", seats) == 1

    results = await asyncio.gather(*(take() for _ in range(40)))
    assert sum(results) == seats
    assert await db.fetchone("SELECT n FROM items WHERE id = ?", "room") == {"n": seats}


async def test_concurrent_transactions_do_not_lose_increments(db) -> None:
    await db.migrate([TABLE])
    await db.execute("INSERT INTO items (id, n) VALUES (?, 0)", "c")

    async def bump() -> int:
        async with db.transaction() as tx:
            row = await tx.fetchone("UPDATE items SET n = n + 1 WHERE id = ? RETURNING n", "c")
            await tx.execute("INSERT INTO items (id, n) VALUES (?, ?)", f"log{row['n']}", row["n"])
            return int(row["n"])

    got = await asyncio.gather(*(bump() for _ in range(25)))
    assert sorted(got) == list(range(1, 26))
    assert await db.fetchone("SELECT n FROM items WHERE id = ?", "c") == {"n": 25}


async def test_healthy(db) -> None:
    assert await db.healthy() is True


def test_placeholder_translation() -> None:
    assert translate("SELECT ? , '?', \"a?\" -- ?\n, ?") == "SELECT $1 , '?', \"a?\" -- ?\n, $2"
    assert translate("SELECT 'it''s ?', ?") == "SELECT 'it''s ?', $1"
    assert rowcount("INSERT 0 3") == 3 and rowcount("UPDATE 0") == 0 and rowcount("CREATE TABLE") == 0


async def test_postgres_reconnects_after_its_connections_are_killed() -> None:
    import asyncpg

    from tests.contract.conftest import drop_schema
    from tests.services import need_postgres, unique, with_query
    from tether.storage.postgres import PostgresDatabase

    url = need_postgres()
    schema = app = unique("reconnect_")
    db = await PostgresDatabase.open(with_query(url, schema=schema, application_name=app, pool_min="2"))
    try:
        await db.migrate([TABLE])
        await db.execute("INSERT INTO items (id, n) VALUES (?, ?)", "a", 1)
        admin = await asyncpg.connect(url)
        killed = await admin.fetchval(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) k", app)
        await admin.close()
        assert killed >= 1
        await asyncio.sleep(0.1)
        assert await db.fetchone("SELECT n FROM items WHERE id = ?", "a") == {"n": 1}
        assert await db.healthy()
    finally:
        await db.close()
        await drop_schema(url, schema)
