"""A retry that lands on another node while the first node is still between its publish
and its idempotency record is answered with the first answer, never published again.

Two real nodes share PostgreSQL and Redis; node A reaches Redis through a proxy that
holds Redis's reply to A's publish (Redis has run it: the event is stored and fanned
out). While A waits, the same request with the same key goes to node B.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio

from tests.faultproxy import FaultProxy
from tests.helpers import ServerProcess
from tests.services import need_postgres, need_redis, unique, with_query
from tether.broker import redis as redis_broker

pytestmark = pytest.mark.services


async def test_a_retry_on_another_node_waits_for_the_first_answer(tmp_path: Path) -> None:
    pg, redis_url = need_postgres(), need_redis()
    schema, prefix = unique("claim_"), unique("claim:") + ":"
    proxy = await FaultProxy(6379).start()
    env = {"TETHER_DATABASE_URL": with_query(pg, schema=schema), "TETHER_REDIS_PREFIX": prefix}
    a = ServerProcess(tmp_path / "a", env={**env, "TETHER_REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0"})
    b = ServerProcess(tmp_path / "b", env={**env, "TETHER_REDIS_URL": redis_url})
    direct = redis.asyncio.from_url(redis_url)
    try:
        await asyncio.to_thread(a.start)
        await asyncio.to_thread(b.start)
        channel = f"public.{unique()}"
        request = {"url": f"/api/channels/{channel}/publish", "json": {"data": {"n": 1}},
                   "headers": {"Idempotency-Key": unique("key")}}
        async with a.http(api_key=True) as ha, b.http(api_key=True) as hb:
            proxy.hold_reply_to = b"EVALSHA\r\n$40\r\n" + hashlib.sha1(redis_broker._PUBLISH.encode()).hexdigest().encode()
            first = asyncio.ensure_future(ha.post(**request))
            await asyncio.wait_for(proxy.held.wait(), 10)  # A's publish ran in Redis; its reply is held
            retry = asyncio.ensure_future(hb.post(**request))
            # Long enough for B to publish if it does not wait; B waiting is what is checked below.
            await asyncio.wait([retry], timeout=3)
            published_meanwhile = await direct.hget(f"{prefix}meta:{channel}", "top")
            proxy.release()
            answers = [await first, await retry]
        assert published_meanwhile == b"1", "node B published the retry while node A was still at work"
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        assert answers[0].json() == answers[1].json() and answers[0].json()["offset"] == 1
        assert await direct.hget(f"{prefix}meta:{channel}", "top") == b"1"
    finally:
        a.kill()
        b.kill()
        await proxy.close()
        keys = [k async for k in direct.scan_iter(prefix + "*")]
        if keys:
            await direct.delete(*keys)
        await direct.aclose()
        conn = await asyncpg.connect(pg)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()
