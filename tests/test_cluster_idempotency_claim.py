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


class TwoNodes:
    """Two real nodes on one PostgreSQL schema and one Redis prefix; A reaches Redis through
    a proxy that can hold Redis's reply to A's publish (Redis has run it by then)."""

    async def __aenter__(self) -> "TwoNodes":
        pg, redis_url = need_postgres(), need_redis()
        self.pg, self.schema, self.prefix = pg, unique("claim_"), unique("claim:") + ":"
        self.proxy = await FaultProxy(6379).start()
        env = {"TETHER_DATABASE_URL": with_query(pg, schema=self.schema), "TETHER_REDIS_PREFIX": self.prefix}
        self.a = ServerProcess(self.tmp / "a", env={**env, "TETHER_REDIS_URL": f"redis://127.0.0.1:{self.proxy.port}/0"})
        self.b = ServerProcess(self.tmp / "b", env={**env, "TETHER_REDIS_URL": redis_url})
        self.direct = redis.asyncio.from_url(redis_url)
        await asyncio.to_thread(self.a.start)
        await asyncio.to_thread(self.b.start)
        self.channel = f"public.{unique()}"
        self.request = {"url": f"/api/channels/{self.channel}/publish", "json": {"data": {"n": 1}},
                        "headers": {"Idempotency-Key": unique("key")}}
        return self

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    def hold_publish_reply(self) -> None:
        self.proxy.hold_reply_to = b"EVALSHA\r\n$40\r\n" + hashlib.sha1(redis_broker._PUBLISH.encode()).hexdigest().encode()

    async def top(self) -> bytes | None:
        return await self.direct.hget(f"{self.prefix}meta:{self.channel}", "top")

    async def markers(self) -> list[bytes]:
        return [k async for k in self.direct.scan_iter(self.prefix + "idem:*")]

    async def __aexit__(self, *exc: object) -> None:
        self.a.kill()
        self.b.kill()
        await self.proxy.close()
        keys = [k async for k in self.direct.scan_iter(self.prefix + "*")]
        if keys:
            await self.direct.delete(*keys)
        await self.direct.aclose()
        conn = await asyncpg.connect(self.pg)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        await conn.close()


async def test_a_retry_on_another_node_waits_for_the_first_answer(tmp_path: Path) -> None:
    async with TwoNodes(tmp_path) as nodes:
        async with nodes.a.http(api_key=True) as ha, nodes.b.http(api_key=True) as hb:
            nodes.hold_publish_reply()
            first = asyncio.ensure_future(ha.post(**nodes.request))
            await asyncio.wait_for(nodes.proxy.held.wait(), 10)  # A's publish ran in Redis; its reply is held
            retry = asyncio.ensure_future(hb.post(**nodes.request))
            # Long enough for B to publish if it does not wait; B waiting is what is checked below.
            await asyncio.wait([retry], timeout=3)
            published_meanwhile = await nodes.top()
            nodes.proxy.release()
            answers = [await first, await retry]
        assert published_meanwhile == b"1", "node B published the retry while node A was still at work"
        assert [r.status_code for r in answers] == [200, 200], [r.text for r in answers]
        assert answers[0].json() == answers[1].json() and answers[0].json()["offset"] == 1
        assert await nodes.top() == b"1"
        for _ in range(50):  # the record is stored: the publish's marker in Redis goes
            if not await nodes.markers():
                break
            await asyncio.sleep(0.05)
        assert await nodes.markers() == []


async def test_a_node_killed_between_its_publish_and_its_record_publishes_nothing_twice(tmp_path: Path) -> None:
    """Node A publishes to Redis and is SIGKILLed before it stores the request's record. Its
    claim is abandoned; B takes it over after the lease and runs the request again: the
    publish script finds A's marker and answers A's offset, so the event exists once."""
    async with TwoNodes(tmp_path) as nodes:
        async with nodes.a.http(api_key=True) as ha, nodes.b.http(api_key=True) as hb:
            nodes.hold_publish_reply()
            first = asyncio.ensure_future(ha.post(**nodes.request))
            await asyncio.wait_for(nodes.proxy.held.wait(), 10)
            nodes.a.kill()
            await asyncio.gather(first, return_exceptions=True)
            retry = await hb.post(**nodes.request, timeout=30)
            again = await hb.post(**nodes.request)
        assert retry.status_code == 200, retry.text
        assert retry.json()["offset"] == 1 and again.json() == retry.json()
        assert await nodes.top() == b"1", "the retry published the event a second time"
        hist = await nodes.direct.xlen(f"{nodes.prefix}hist:{nodes.channel}")
        assert hist == 1


async def test_a_publish_whose_reply_was_lost_is_retried_to_the_same_event(tmp_path: Path) -> None:
    """Redis ran A's publish and the reply was lost: A answers ``unavailable``; the client's
    retry with the same key, on either node, gets the offset of that one event."""
    async with TwoNodes(tmp_path) as nodes:
        async with nodes.a.http(api_key=True) as ha, nodes.b.http(api_key=True) as hb:
            nodes.proxy.drop_reply_to = b"EVALSHA\r\n$40\r\n" + hashlib.sha1(redis_broker._PUBLISH.encode()).hexdigest().encode()
            lost = await ha.post(**nodes.request)
            assert nodes.proxy.dropped.is_set()
            assert lost.status_code == 503 and lost.json()["error"]["code"] == "unavailable", lost.text
            retries = [await ha.post(**nodes.request, timeout=30), await hb.post(**nodes.request, timeout=30)]
        assert [r.status_code for r in retries] == [200, 200], [r.text for r in retries]
        assert [r.json()["offset"] for r in retries] == [1, 1]
        assert await nodes.top() == b"1", "the retry stored the event a second time"
