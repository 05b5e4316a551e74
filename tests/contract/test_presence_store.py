"""The PresenceStore contract, run against every implementation (memory, Redis)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import pytest

from tests.services import need_redis, unique
from tether.features.presence import (
    MemoryPresenceStore,
    PresenceStore,
    RedisPresenceStore,
)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[PresenceStore]:
    if request.param == "memory":
        yield MemoryPresenceStore()
        return
    import redis.asyncio

    client = redis.asyncio.from_url(need_redis())
    prefix = unique("test:") + ":"
    yield RedisPresenceStore(client, prefix)
    keys = [k async for k in client.scan_iter(prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_join_once_per_user_and_leave_with_the_last_source(store: PresenceStore) -> None:
    assert (await store.touch("room", "alice", "ws:phone", 30)).joined is True
    assert (await store.touch("room", "alice", "rest:laptop", 30)).joined is False  # second device
    assert (await store.touch("room", "alice", "ws:phone", 30)).joined is False  # refresh
    assert (await store.touch("room", "bob", "rest:default", 30)).joined is True
    assert set(await store.members("room")) == {"alice", "bob"}
    assert await store.count() == 2
    assert await store.remove("room", "alice", "ws:phone") is False  # laptop remains
    assert set(await store.members("room")) == {"alice", "bob"}
    assert await store.remove("room", "alice", "rest:laptop") is True
    assert await store.remove("room", "alice", "rest:laptop") is False  # already gone
    assert set(await store.members("room")) == {"bob"}
    assert await store.present("room", "alice") is False and await store.present("room", "bob") is True
    assert await store.members("elsewhere") == {}
    assert await store.count() == 1


async def test_prefix_remove_drops_every_rest_source(store: PresenceStore) -> None:
    await store.touch("k", "alice", "rest:a", 30)
    await store.touch("k", "alice", "rest:b", 30)
    await store.touch("k", "alice", "ws:c", 30)
    assert await store.remove("k", "alice", "rest:", prefix=True) is False  # the WebSocket source stays
    assert await store.remove("k", "alice", "ws:c") is True
    assert await store.members("k") == {}


async def test_expiry_and_sweep_report_each_leave_once(store: PresenceStore) -> None:
    await store.touch("k", "alice", "rest:a", 0.2)
    await store.touch("k", "alice", "rest:b", 30)  # another device keeps her
    await store.touch("k", "bob", "rest:a", 0.2)
    await store.touch("k2", "carol", "rest:a", 0.2)
    await asyncio.sleep(0.35)
    assert set(await store.members("k")) == {"alice"}  # listing already hides the expired
    left = await store.sweep()
    assert sorted(left) == [("k", "bob"), ("k2", "carol")]
    assert await store.sweep() == []
    assert await store.count() == 1


async def test_refresh_keeps_a_source_alive(store: PresenceStore) -> None:
    await store.touch("k", "alice", "ws:x", 0.3)
    for _ in range(3):
        await asyncio.sleep(0.15)
        await store.touch("k", "alice", "ws:x", 0.3)
        assert await store.sweep() == []
    assert set(await store.members("k")) == {"alice"}


async def test_state_change_is_an_update_not_a_join(store: PresenceStore) -> None:
    first = await store.touch("k", "alice", "ws:x", 30, '{"typing":false}')
    assert first.joined and not first.updated
    same = await store.touch("k", "alice", "rest:y", 30, '{"typing":false}')
    assert not same.joined and not same.updated
    changed = await store.touch("k", "alice", "ws:x", 30, '{"typing":true}')
    assert changed.updated and not changed.joined
    assert (await store.touch("k", "alice", "ws:x", 30)).updated is False  # None = unchanged
    assert (await store.members("k"))["alice"] == '{"typing":true}'
    await store.remove("k", "alice", "ws:x")
    await store.remove("k", "alice", "rest:y")
    again = await store.touch("k", "alice", "ws:x", 30)
    assert again.joined and (await store.members("k"))["alice"] is None  # state went with her
