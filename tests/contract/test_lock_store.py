"""The LockStore contract, run against every implementation (SQL embedded, Redis)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.services import need_redis, unique
from tether.features.locks import LockStore, RedisLockStore, SqlLockStore
from tether.storage.sqlite import SQLiteDatabase


@pytest.fixture(params=["sql", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[LockStore]:
    db = await SQLiteDatabase.open(tmp_path / "locks.sqlite3")
    if request.param == "sql":
        s: LockStore = SqlLockStore(db)
        await s.start()
        yield s
    else:
        import redis.asyncio

        client = redis.asyncio.from_url(need_redis())
        prefix = unique("test:") + ":"
        s = RedisLockStore(client, db, prefix)
        await s.start()
        yield s
        keys = [k async for k in client.scan_iter(prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    await db.close()


async def test_acquire_refuses_while_held_and_fencing_increases(store: LockStore) -> None:
    a = await store.acquire("doc", "alice", 30)
    assert a is not None and a.token and a.holder == "alice"
    assert await store.acquire("doc", "bob", 30) is None
    status = await store.status("doc")
    assert status is not None and status.holder == "alice" and status.fencing_token == a.fencing_token
    assert await store.release("doc", a.token) is True
    assert await store.status("doc") is None
    b = await store.acquire("doc", "bob", 30)
    assert b is not None and b.fencing_token > a.fencing_token and b.token != a.token
    other = await store.acquire("other", "bob", 30)  # keys are independent
    assert other is not None


async def test_only_the_current_token_extends_or_releases(store: LockStore) -> None:
    a = await store.acquire("k", "alice", 30)
    assert a is not None
    assert await store.extend("k", "not-the-token", 30) is None
    assert await store.release("k", "not-the-token") is False
    assert (await store.status("k")) is not None
    ext = await store.extend("k", a.token, 60)
    assert ext is not None and ext.fencing_token == a.fencing_token and ext.expires_at > a.expires_at
    assert await store.release("k", a.token) is True
    assert await store.release("k", a.token) is False  # twice: no
    assert await store.extend("k", a.token, 30) is None  # a released token is dead


async def test_lock_expires_at_its_ttl_and_the_old_token_dies(store: LockStore) -> None:
    a = await store.acquire("exp", "alice", 0.3)
    assert a is not None
    await asyncio.sleep(0.5)
    assert await store.status("exp") is None
    assert await store.extend("exp", a.token, 30) is None
    b = await store.acquire("exp", "bob", 30)
    assert b is not None and b.fencing_token > a.fencing_token
    assert await store.release("exp", a.token) is False  # the stale holder cannot release the new lock
    assert (await store.status("exp")).token == b.token  # type: ignore[union-attr]


async def test_concurrent_acquires_grant_exactly_one(store: LockStore) -> None:
    for round_ in range(20):
        grants = await asyncio.gather(*(store.acquire(f"race{round_}", f"u{i}", 30) for i in range(10)))
        won = [g for g in grants if g is not None]
        assert len(won) == 1


async def test_held_counts_live_locks(store: LockStore) -> None:
    assert await store.held() == 0
    a = await store.acquire("h1", "alice", 30)
    await store.acquire("h2", "alice", 0.2)
    assert await store.held() == 2
    await asyncio.sleep(0.4)
    assert await store.held() == 1
    await store.release("h1", a.token)  # type: ignore[union-attr]
    assert await store.held() == 0


async def test_redis_counter_lost_is_reseeded_from_sql(tmp_path: Path) -> None:
    """Redis restarted without persistence: the fencing counter must not start over."""
    import redis.asyncio

    client = redis.asyncio.from_url(need_redis())
    db = await SQLiteDatabase.open(tmp_path / "f.sqlite3")
    prefix = unique("test:") + ":"
    store = RedisLockStore(client, db, prefix)
    await store.start()
    try:
        last = 0
        for _ in range(5):
            g = await store.acquire("k", "alice", 30)
            assert g is not None and g.fencing_token > last
            last = g.fencing_token
            await store.release("k", g.token)
        keys = [k async for k in client.scan_iter(prefix + "*")]
        await client.delete(*keys)  # what a Redis restart without persistence leaves: nothing
        g = await store.acquire("k", "bob", 30)
        assert g is not None and g.fencing_token > last
    finally:
        keys = [k async for k in client.scan_iter(prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        await db.close()
