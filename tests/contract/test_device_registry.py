"""The device registry contract, over every implementation (in-memory and Redis)."""

from __future__ import annotations

from typing import AsyncIterator

import pytest

from tests.services import need_redis, unique
from tether.features.devices import (
    DeviceRegistry,
    MemoryDeviceRegistry,
    RedisDeviceRegistry,
)

TTL = 10.0


@pytest.fixture(params=["memory", "redis"])
async def registry(request) -> AsyncIterator[DeviceRegistry]:  # type: ignore[no-untyped-def]
    if request.param == "memory":
        yield MemoryDeviceRegistry(TTL)
        return
    import redis.asyncio

    client = redis.asyncio.from_url(need_redis())
    prefix = unique("tether:test:dev")
    yield RedisDeviceRegistry(client, TTL, prefix=prefix)
    keys = [k async for k in client.scan_iter(prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def test_two_connections_of_one_device_are_one_device(registry: DeviceRegistry) -> None:
    assert await registry.add("u", "phone", "c1", 100.0) is True
    assert await registry.add("u", "phone", "c2", 101.0) is False
    assert await registry.add("u", "mac", "c3", 102.0) is True
    assert await registry.connections("u") == 3
    devices = {d.device_id: d for d in await registry.devices("u")}
    assert set(devices) == {"phone", "mac"}
    assert devices["phone"].connected_at == 100.0 and devices["mac"].connected_at == 102.0
    assert await registry.remove("u", "phone", "c1") is False
    assert await registry.remove("u", "phone", "c2") is True
    assert await registry.remove("u", "phone", "c2") is False  # never announced twice
    assert [d.device_id for d in await registry.devices("u")] == ["mac"]
    assert await registry.connections("u") == 1


async def test_users_are_separate(registry: DeviceRegistry) -> None:
    await registry.add("alice", "phone", "a1", 1.0)
    assert await registry.add("bob", "phone", "b1", 1.0) is True
    assert [d.device_id for d in await registry.devices("bob")] == ["phone"]
    assert await registry.devices("carol") == [] and await registry.connections("carol") == 0


async def test_heartbeat_updates_last_seen(registry: DeviceRegistry) -> None:
    await registry.add("u", "phone", "c1", 100.0)
    await registry.heartbeat([("u", "phone", "c1", 104.5)], 105.0)
    (d,) = await registry.devices("u")
    assert d.connected_at == 100.0 and d.last_seen == 104.5
    await registry.heartbeat([("u", "phone", "gone", 200.0)], 200.0)  # an unknown connection changes nothing
    assert (await registry.devices("u"))[0].last_seen == 104.5


async def test_connections_of_a_dead_node_expire(registry: DeviceRegistry) -> None:
    await registry.add("u", "phone", "alive", 0.0)
    await registry.add("u", "mac", "dead", 0.0)
    await registry.add("u", "phone", "dead2", 0.0)
    assert await registry.sweep(TTL - 1) == []
    await registry.heartbeat([("u", "phone", "alive", 5.0)], 5.0)  # expires at 15; the others at 10
    assert await registry.sweep(TTL + 1) == [("u", "mac")]  # phone keeps its heartbeated connection
    assert [d.device_id for d in await registry.devices("u")] == ["phone"]
    assert await registry.remove("u", "mac", "dead") is False  # already swept and announced
    assert await registry.sweep(5.0 + TTL + 1) == [("u", "phone")]
    assert await registry.devices("u") == [] and await registry.connections("u") == 0
