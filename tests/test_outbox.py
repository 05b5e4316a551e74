"""A domain event commits with the change it announces (the outbox), and is published once.

A process dying between a change's COMMIT and its event's publish (simulated by the
request dying right there) must leave the event to be published later, exactly once: on
the embedded broker by the next start, on the Redis broker by any node's sweep, even when
the dead node's publish had reached Redis and only its cleanup was lost.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import redis.asyncio

from tests.helpers import started_node
from tests.services import need_postgres, need_redis, unique, with_query
from tether.core.auth import Identity
from tether.features.channels import ChannelsFeature
from tether.features.documents import CreateBody, DocumentsFeature, ReplaceBody
from tether.features.sessions import SessionsFeature
from tether.wire.jsonutil import loads

CHANNEL = "collections.boards.documents.b1"


class Crash(BaseException):
    """The process dying: nothing after this point of the request runs."""


async def types(node: Any, channel: str) -> list[tuple[str, Any]]:
    stream = await node.broker.read(channel, 0)
    return [(loads(t)["type"], loads(t)["data"].get("version")) for _, t in stream.events]


def crash_on_publish(node: Any) -> None:
    async def dies(*a: Any, **kw: Any) -> Any:
        raise Crash()

    node.broker.publish = dies


@pytest.fixture(params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, Any]]:
    if request.param == "sqlite":
        yield {}
        return
    schema = unique("outbox_")
    yield {"database_url": with_query(need_postgres(), schema=schema)}
    from tests.contract.conftest import drop_schema

    await drop_schema(need_postgres(), schema)


async def test_an_event_lost_with_its_process_is_published_once_on_the_next_start(
        tmp_path: Path, database: dict[str, Any]) -> None:
    alice = Identity("alice")
    async with started_node(tmp_path, ChannelsFeature, DocumentsFeature, **database) as node:
        docs = node.feature(DocumentsFeature).docs
        await docs.create(alice, "boards", CreateBody(id="b1", data={"n": 0}))
        node.outbox.every = 3600.0  # this process's sweeper stays out of it: it is "dead"
        crash_on_publish(node)
        with pytest.raises(Crash):
            await docs.replace(alice, "boards", "b1", ReplaceBody(data={"n": 1}))
        node.broker.publish = type(node.broker).publish.__get__(node.broker)
        assert await types(node, CHANNEL) == [("DOCUMENT_CREATED", 1)], "published before the restart"
        assert (await docs.get(alice, "boards", "b1"))["version"] == 2  # the change is kept
    async with started_node(tmp_path, ChannelsFeature, DocumentsFeature, **database) as node:
        await node.outbox.sweep()  # (the start's own sweep may have run already: the same result)
        assert await types(node, CHANNEL) == [("DOCUMENT_CREATED", 1), ("DOCUMENT_UPDATED", 2)]
    async with started_node(tmp_path, ChannelsFeature, DocumentsFeature, **database) as node:
        assert await node.outbox.sweep() == 0
        assert await types(node, CHANNEL) == [("DOCUMENT_CREATED", 1), ("DOCUMENT_UPDATED", 2)]


async def test_a_chat_message_whose_event_was_lost_reaches_the_session_channel(tmp_path: Path) -> None:
    from tether.features.sessions import JoinIn, MessageIn, SessionIn

    async with started_node(tmp_path, ChannelsFeature, SessionsFeature) as node:
        sessions = node.feature(SessionsFeature).domain
        host, guest = Identity("host"), Identity("guest")
        s = await sessions.create(host, SessionIn(title="Vespers", category="prayer"))
        await sessions.join(guest, s["id"], JoinIn())
        node.outbox.every = 3600.0
        crash_on_publish(node)
        with pytest.raises(Crash):
            await sessions.post(guest, s["id"], MessageIn(message="amen"))
        node.broker.publish = type(node.broker).publish.__get__(node.broker)
        await node.outbox.sweep()
        stream = await node.broker.read(f"sessions.{s['id']}", 0)
        texts = [loads(t)["data"].get("message") for _, t in stream.events if loads(t)["type"] == "MESSAGE_CREATED"]
        assert texts.count("amen") == 1


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[tuple[Any, Any, redis.asyncio.Redis, str]]:
    pg, redis_url = need_postgres(), need_redis()
    schema, prefix = unique("outbox_"), unique("outbox:") + ":"
    settings = {"database_url": with_query(pg, schema=schema), "redis_url": redis_url, "redis_prefix": prefix}
    direct = redis.asyncio.from_url(redis_url)
    try:
        async with started_node(tmp_path / "a", ChannelsFeature, DocumentsFeature, **settings) as a:
            async with started_node(tmp_path / "b", ChannelsFeature, DocumentsFeature, **settings) as b:
                yield a, b, direct, prefix
    finally:
        keys = [k async for k in direct.scan_iter(prefix + "*")]
        if keys:
            await direct.delete(*keys)
        await direct.aclose()
        from tests.contract.conftest import drop_schema

        await drop_schema(pg, schema)


@pytest.mark.services
async def test_a_node_dead_after_its_publish_leaves_a_row_the_sweep_does_not_publish_twice(
        cluster: tuple[Any, Any, redis.asyncio.Redis, str]) -> None:
    """Node A's publish reached Redis; A died before deleting the outbox row. B's sweep finds
    the row and publishes it again: the script knows it by its marker and answers the first
    offset, so the channel holds the event once."""
    a, b, direct, prefix = cluster
    alice = Identity("alice")
    docs_a = a.feature(DocumentsFeature).docs
    await docs_a.create(alice, "boards", CreateBody(id="b1", data={"n": 0}))
    a.outbox.every = b.outbox.every = 3600.0
    real = a.db.execute

    async def dies_on_cleanup(sql: str, *args: Any) -> Any:
        if sql.startswith("DELETE FROM outbox"):
            raise Crash()
        return await real(sql, *args)

    a.db.execute = dies_on_cleanup
    with pytest.raises(Crash):
        await docs_a.replace(alice, "boards", "b1", ReplaceBody(data={"n": 1}))
    a.db.execute = real
    assert await types(b, CHANNEL) == [("DOCUMENT_CREATED", 1), ("DOCUMENT_UPDATED", 2)]
    top = await direct.hget(f"{prefix}meta:{CHANNEL}", "top")
    b.outbox.grace = 0.0  # the row is young; A is dead
    assert await b.outbox.sweep() == 3  # the document channel, the collection's and alice's scope
    assert await direct.hget(f"{prefix}meta:{CHANNEL}", "top") == top, "the sweep published the event again"
    assert await types(b, CHANNEL) == [("DOCUMENT_CREATED", 1), ("DOCUMENT_UPDATED", 2)]
    assert await b.outbox.sweep() == 0
    assert await b.db.fetchall("SELECT id FROM outbox") == []
    for _ in range(50):  # the rows are gone: so are their markers
        if not [k async for k in direct.scan_iter(prefix + "idem:*")]:
            break
        import asyncio

        await asyncio.sleep(0.05)
    assert [k async for k in direct.scan_iter(prefix + "idem:*")] == []


@pytest.mark.services
async def test_an_event_whose_node_died_before_publishing_is_published_by_another(
        cluster: tuple[Any, Any, redis.asyncio.Redis, str]) -> None:
    a, b, _, _ = cluster
    alice = Identity("alice")
    docs_a = a.feature(DocumentsFeature).docs
    await docs_a.create(alice, "boards", CreateBody(id="b1", data={"n": 0}))
    a.outbox.every = 3600.0
    crash_on_publish(a)
    with pytest.raises(Crash):
        await docs_a.replace(alice, "boards", "b1", ReplaceBody(data={"n": 1}))
    b.outbox.grace = 0.0
    assert await b.outbox.sweep() == 3
    assert await types(b, CHANNEL) == [("DOCUMENT_CREATED", 1), ("DOCUMENT_UPDATED", 2)]
