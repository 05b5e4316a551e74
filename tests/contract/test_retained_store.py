"""The retained-event store contract, over every implementation (SQL and Redis)."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from tests.services import need_redis, unique
from tether.features.events import (
    RedisRetainedStore,
    RetainedStore,
    SqlRetainedStore,
    retention,
)
from tether.storage import open_database


@pytest.fixture(params=["sqlite", "redis"])
async def store(request, tmp_path: Path) -> AsyncIterator[RetainedStore]:  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        db = await open_database(None, tmp_path)
        s = SqlRetainedStore(db)
        await s.start()
        yield s
        await db.close()
        return
    import redis.asyncio

    client = redis.asyncio.from_url(need_redis())
    prefix = unique("tether:test:ret")
    yield RedisRetainedStore(client, prefix=prefix)
    keys = [k async for k in client.scan_iter(prefix + "*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


def shoot(sid: str, n: int, status: str = "processing") -> dict:
    return {"shootId": sid, "processedCount": n, "totalCount": 10, "progress": n / 10, "status": status}


async def test_latest_per_key_in_update_order(store: RetainedStore) -> None:
    await store.put("u", "CREDIT_UPDATE", "", {"balance": 10}, None, 1.0)
    await store.put("u", "SHOOT_PROGRESS", "a", shoot("a", 1), None, 2.0)
    await store.put("u", "SHOOT_PROGRESS", "b", shoot("b", 1), None, 3.0)
    await store.put("u", "SHOOT_PROGRESS", "a", shoot("a", 2), None, 4.0)
    await store.put("u", "CREDIT_UPDATE", "", {"balance": 7}, None, 5.0)
    assert await store.get("u", 6.0) == [
        ("SHOOT_PROGRESS", shoot("b", 1)), ("SHOOT_PROGRESS", shoot("a", 2)), ("CREDIT_UPDATE", {"balance": 7})]
    assert await store.get("other", 6.0) == []


async def test_ended_shoot_expires_five_seconds_after_it_ended(store: RetainedStore) -> None:
    ended = shoot("s", 10, "completed")
    key, expires = retention("SHOOT_PROGRESS", ended, False, 100.0)  # the default rule: 5 s
    assert (key, expires) == ("s", 105.0)
    await store.put("u", "SHOOT_PROGRESS", key, ended, expires, 100.0)
    await store.put("u", "SHOOT_PROGRESS", "live", shoot("live", 3), None, 100.5)
    assert [d["shootId"] for _, d in await store.get("u", 104.9)] == ["s", "live"]
    assert [d["shootId"] for _, d in await store.get("u", 105.1)] == ["live"]
    # a restarted shoot is retained again without expiry
    await store.put("u", "SHOOT_PROGRESS", "s", shoot("s", 1), None, 106.0)
    assert [d["shootId"] for _, d in await store.get("u", 1000.0)] == ["live", "s"]


def test_retention_rules() -> None:
    assert retention("SHOOT_PROGRESS", shoot("x", 1), False, 0.0) == ("x", None)
    assert retention("SHOOT_PROGRESS", shoot("x", 1, "failed"), False, 0.0) == ("x", 5.0)
    assert retention("CREDIT_UPDATE", {"balance": 1}, False, 0.0) == ("", None)
    assert retention("PROMPT_CHANGE", {}, False, 0.0) is None
    assert retention("PROMPT_CHANGE", {}, True, 0.0) == ("", None)
