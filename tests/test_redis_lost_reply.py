"""Redis calls that are not safe to repeat are never re-sent by the client after a lost reply.

A proxy between Tether and the real Redis lets Redis run a call and then loses its reply
(the link is cut): the client must not send it again by itself. A publish pipeline sent
twice would store and fan out each event twice at new offsets; a lock script sent twice
would answer "held" for the lock it had just granted.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import AsyncIterator

import pytest
import redis.asyncio

from tests.faultproxy import FaultProxy
from tests.services import need_redis, unique
from tether.broker import redis as redis_broker
from tether.features import locks
from tether.storage.sqlite import SQLiteDatabase
from tether.wire.errors import TetherError


def evalsha(script: str) -> bytes:
    """How a call of ``script`` looks on the wire (RESP), to find it in the proxy's traffic."""
    return b"EVALSHA\r\n$40\r\n" + hashlib.sha1(script.encode()).hexdigest().encode()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    need_redis()
    p = await FaultProxy(6379).start()
    yield p
    await p.close()


@pytest.fixture
async def direct() -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.from_url(need_redis())
    yield client
    await client.aclose()


async def test_a_publish_whose_reply_is_lost_is_stored_once_and_answered_unavailable(
        proxy: FaultProxy, direct: redis.asyncio.Redis) -> None:
    prefix = unique("lost:") + ":"
    broker = await redis_broker.RedisBroker.open(f"redis://127.0.0.1:{proxy.port}/0", prefix)
    got: list[tuple[str, int]] = []
    await broker.start(lambda channel, offset, text, exclude: got.append((channel, offset)))
    try:
        await broker.subscribe("c.lost")
        await broker.publish("c.lost", "PUBLICATION", {"i": 1}, history_size=10, history_ttl=60)
        marker = evalsha(redis_broker._PUBLISH)
        before = proxy.count(marker)
        proxy.drop_reply_to = marker
        with pytest.raises(TetherError) as err:
            await broker.publish("c.lost", "PUBLICATION", {"i": 2}, history_size=10, history_ttl=60)
        assert err.value.code == "unavailable"
        assert proxy.dropped.is_set()
        assert proxy.count(marker) == before + 1  # sent once, never again
        assert await direct.hget(f"{prefix}meta:c.lost", "top") == b"2"  # stored once: offset 2, no 3
        assert await direct.xlen(f"{prefix}hist:c.lost") == 2
        pos = await broker.publish("c.lost", "PUBLICATION", {"i": 3}, history_size=10, history_ttl=60)
        assert pos.offset == 3  # the broker works on, on a new connection
    finally:
        await broker.close()
        keys = [k async for k in direct.scan_iter(prefix + "*")]
        if keys:
            await direct.delete(*keys)


@pytest.fixture
async def lock_store(proxy: FaultProxy, tmp_path: Path) -> AsyncIterator[tuple[locks.RedisLockStore, str]]:
    prefix = unique("lostlock:") + ":"
    db = await SQLiteDatabase.open(tmp_path / "locks.sqlite3")
    client = redis_broker.open_client(f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=5)
    store = locks.RedisLockStore(client, db, prefix)
    await store.start()
    yield store, prefix
    await client.aclose()
    await db.close()
    direct = redis.asyncio.from_url(need_redis())
    keys = [k async for k in direct.scan_iter(prefix + "*")]
    if keys:
        await direct.delete(*keys)
    await direct.aclose()


async def test_an_acquire_whose_reply_is_lost_gets_the_grant_it_made(
        proxy: FaultProxy, lock_store: tuple[locks.RedisLockStore, str], direct: redis.asyncio.Redis) -> None:
    store, prefix = lock_store
    first = await store.acquire("doc", "alice", 30)  # seeds the fencing counter
    assert first is not None and await store.release("doc", first.token)
    marker = evalsha(locks._ACQUIRE)
    before = proxy.count(marker)
    proxy.drop_reply_to = marker
    lock = await store.acquire("doc", "alice", 30)
    assert proxy.dropped.is_set()
    assert lock is not None, "the repeated acquire must answer the grant it made, not 'held'"
    assert lock.fencing_token == first.fencing_token + 1  # one grant, one fencing increment
    assert proxy.count(marker) == before + 2  # the lost call and Tether's own repeat, nothing more
    held = await direct.hget(f"{prefix}lock:doc", "token")
    assert held == lock.token.encode()
    assert await store.acquire("doc", "bob", 30) is None  # and it is held, by alice


async def test_a_release_whose_reply_is_lost_is_not_repeated_and_says_unavailable(
        proxy: FaultProxy, lock_store: tuple[locks.RedisLockStore, str], direct: redis.asyncio.Redis) -> None:
    store, prefix = lock_store
    lock = await store.acquire("doc", "alice", 30)
    assert lock is not None
    marker = evalsha(locks._RELEASE)
    proxy.drop_reply_to = marker
    with pytest.raises(TetherError) as err:
        await store.release("doc", lock.token)
    assert err.value.code == "unavailable"
    assert proxy.count(marker) == 1
    assert await direct.exists(f"{prefix}lock:doc") == 0  # it did run, once
