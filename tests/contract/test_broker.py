"""The broker contract: the embedded broker (SQLite) and the Redis broker assign, store,
replay and deliver channel events the same way."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import pytest

from tests.contract.conftest import drop_schema
from tests.services import need_postgres, need_redis, unique, with_query
from tether.broker.base import Broker
from tether.wire import protocol
from tether.wire.jsonutil import loads

Delivered = list[tuple[str, int, str, "str | None"]]


class Node:
    """A broker as a node holds it, with what it delivered."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.got: Delivered = []
        self.lost: list[str] = []
        broker.on_lost = self.lost.append

    async def start(self) -> "Node":
        await self.broker.start(lambda *event: self.got.append(event))
        return self

    async def wait_for(self, count: int, timeout: float = 5) -> Delivered:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.got) < count and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return self.got


Factory = Callable[[], Awaitable[Node]]


@pytest.fixture(params=["memory", "memory-postgresql", "redis"])
async def nodes(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Factory]:
    """Opens brokers on one shared backing store: a restart, or another node (Redis only)."""
    opened: list[Node] = []
    dbs = []
    prefix = unique("contract:") + ":"
    schema = unique("broker_")
    url = need_redis() if request.param == "redis" else ""
    pg = need_postgres() if request.param == "memory-postgresql" else ""

    async def make() -> Node:
        if request.param.startswith("memory"):
            from tether.broker.memory import MemoryBroker
            from tether.storage.postgres import PostgresDatabase
            from tether.storage.sqlite import SQLiteDatabase

            db = (await PostgresDatabase.open(with_query(pg, schema=schema)) if pg
                  else await SQLiteDatabase.open(tmp_path / "broker.sqlite3"))
            dbs.append(db)
            broker: Broker = MemoryBroker(db)
        else:
            from tether.broker.redis import RedisBroker

            broker = await RedisBroker.open(url, prefix)
        node = await Node(broker).start()
        opened.append(node)
        return node

    make.kind = request.param  # type: ignore[attr-defined]
    yield make
    for node in opened:
        await node.broker.close()
    for db in dbs:
        await db.close()
    if pg:
        await drop_schema(pg, schema)
    if request.param == "redis":
        import redis.asyncio

        client = redis.asyncio.from_url(url)
        keys = [k async for k in client.scan_iter(prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def publish(node: Node, channel: str, n: int, *, size: int = 100, ttl: float = 60, **kw) -> list[int]:
    offsets = []
    for i in range(n):
        pos = await node.broker.publish(channel, "PUBLICATION", {"i": i}, history_size=size, history_ttl=ttl, **kw)
        offsets.append(pos.offset)
    return offsets


async def test_new_channel_has_offset_zero_and_a_stable_epoch(nodes: Factory) -> None:
    node = await nodes()
    first = await node.broker.read("c.new", None)
    again = await node.broker.read("c.new", 0)
    assert first.position.offset == 0 and first.position.epoch
    assert again.position == first.position and again.events == [] and again.complete
    pos = await node.broker.publish("c.new", "PUBLICATION", {}, history_size=10, history_ttl=60)
    assert (pos.offset, pos.epoch) == (1, first.position.epoch)


async def test_concurrent_publishes_get_gap_free_offsets_delivered_in_order(nodes: Factory) -> None:
    node = await nodes()
    await node.broker.subscribe("c.race")
    positions = await asyncio.gather(*(
        node.broker.publish("c.race", "PUBLICATION", {"i": i}, history_size=100, history_ttl=60) for i in range(60)
    ))
    assert sorted(p.offset for p in positions) == list(range(1, 61))
    assert len({p.epoch for p in positions}) == 1
    got = await node.wait_for(60)
    assert [offset for _, offset, _, _ in got] == list(range(1, 61))
    for channel, offset, text, exclude in got:
        frame = loads(text)
        assert text == protocol.event("c.race", offset, "PUBLICATION", frame["data"])
        assert channel == "c.race" and exclude is None


async def test_offsets_follow_the_order_publishes_were_called_in(nodes: Factory) -> None:
    """Pipelined requests rely on it: the offset order is the call order, not the completion order."""
    node = await nodes()
    calls = [asyncio.ensure_future(node.broker.publish("c.order", "PUBLICATION", {"i": i}, history_size=100,
                                                       history_ttl=60)) for i in range(40)]
    positions = await asyncio.gather(*calls)
    assert [p.offset for p in positions] == list(range(1, 41))
    stream = await node.broker.read("c.order", 0)
    assert [loads(text)["data"]["i"] for _, text in stream.events] == list(range(40))


async def test_delivered_text_is_the_protocol_event_and_history_holds_the_same(nodes: Factory) -> None:
    node = await nodes()
    await node.broker.subscribe("c.text")
    data = {"text": "héllo \"quoted\" ✓", "n": [1, 2.5, None, True]}
    pos = await node.broker.publish("c.text", "MESSAGE_CREATED", data, history_size=10, history_ttl=60, exclude="conn1")
    (delivered,) = await node.wait_for(1)
    expected = protocol.event("c.text", pos.offset, "MESSAGE_CREATED", data)
    assert delivered == ("c.text", pos.offset, expected, "conn1")
    stream = await node.broker.read("c.text", 0)
    assert stream.events == [(1, expected)] and stream.complete


async def test_read_gives_a_complete_window_or_says_it_is_not(nodes: Factory) -> None:
    node = await nodes()
    await publish(node, "c.win", 10, size=5)
    full = await node.broker.read("c.win", 6)
    assert full.position.offset == 10 and full.complete
    assert [o for o, _ in full.events] == [7, 8, 9, 10]
    assert (await node.broker.read("c.win", 5)).complete
    trimmed = await node.broker.read("c.win", 2)  # 3..5 fell out of the window of 5
    assert not trimmed.complete
    at_top = await node.broker.read("c.win", 10)
    assert at_top.complete and at_top.events == []


async def test_history_older_than_its_ttl_is_not_replayed(nodes: Factory) -> None:
    node = await nodes()
    await publish(node, "c.ttl", 3, ttl=60)
    await asyncio.sleep(0.15)
    assert (await node.broker.read("c.ttl", 0, history_ttl=60)).complete
    stale = await node.broker.read("c.ttl", 0, history_ttl=0.1)
    assert not stale.complete and stale.position.offset == 3


async def test_no_history_channel_still_counts_offsets(nodes: Factory) -> None:
    node = await nodes()
    assert await publish(node, "c.ephemeral", 3, size=0) == [1, 2, 3]
    stream = await node.broker.read("c.ephemeral", 1)
    assert stream.position.offset == 3 and not stream.complete


async def test_offsets_and_epoch_survive_a_restart_of_the_broker(nodes: Factory) -> None:
    node = await nodes()
    await publish(node, "c.restart", 4)
    before = (await node.broker.read("c.restart", None)).position
    await node.broker.close()
    after_restart = await nodes()
    stream = await after_restart.broker.read("c.restart", 2)
    assert stream.position == before and stream.complete and [o for o, _ in stream.events] == [3, 4]
    pos = await after_restart.broker.publish("c.restart", "PUBLICATION", {}, history_size=10, history_ttl=60)
    assert (pos.offset, pos.epoch) == (5, before.epoch)


async def test_unsubscribed_channels_are_not_delivered_to_redis_nodes(nodes: Factory) -> None:
    node = await nodes()
    await node.broker.subscribe("c.sub")
    await publish(node, "c.sub", 1)
    await node.wait_for(1)
    await node.broker.unsubscribe("c.sub")
    await publish(node, "c.sub", 1)
    await publish(node, "c.sub.marker", 0)
    await node.broker.subscribe("c.end")
    await publish(node, "c.end", 1)
    got = await node.wait_for(2 if nodes.kind == "redis" else 3)  # type: ignore[attr-defined]
    if nodes.kind == "redis":  # type: ignore[attr-defined]
        assert [(c, o) for c, o, _, _ in got] == [("c.sub", 1), ("c.end", 1)]


# -- Redis: several nodes, lost connections, lost data ------------------------------


only_redis = pytest.mark.parametrize("nodes", ["redis"], indirect=True)


@only_redis
async def test_every_redis_node_sees_every_publish_in_offset_order(nodes: Factory) -> None:
    a, b, c = await nodes(), await nodes(), await nodes()
    for n in (a, b):
        await n.broker.subscribe("c.fan")

    async def burst(node: Node, who: str) -> None:
        for i in range(20):
            await node.broker.publish("c.fan", "PUBLICATION", {"who": who, "i": i}, history_size=100, history_ttl=60,
                                      exclude=f"{who}-conn")

    await asyncio.gather(burst(a, "a"), burst(b, "b"), burst(c, "c"))
    got_a, got_b = await a.wait_for(60), await b.wait_for(60)
    assert [o for _, o, _, _ in got_a] == list(range(1, 61))
    assert got_a == got_b  # same texts, same order, same exclude on every node
    assert {e for *_, e in got_a} == {"a-conn", "b-conn", "c-conn"}


@only_redis
async def test_redis_node_fills_events_missed_while_its_pubsub_link_was_down(nodes: Factory) -> None:
    import redis.asyncio

    sub, pub = await nodes(), await nodes()
    await sub.broker.subscribe("c.gap")
    await publish(pub, "c.gap", 2)
    await sub.wait_for(2)
    admin = redis.asyncio.from_url(need_redis())
    link = sub.broker._pubsub  # type: ignore[attr-defined]
    me = link.connection
    port = me._writer.get_extra_info("sockname")[1]
    killed = await admin.execute_command("CLIENT", "KILL", "ADDR", f"127.0.0.1:{port}")
    assert killed
    await publish(pub, "c.gap", 3)  # may happen while the subscriber reconnects
    got = await sub.wait_for(5)
    await publish(pub, "c.gap", 1)
    got = await sub.wait_for(6)
    assert [o for _, o, _, _ in got] == [1, 2, 3, 4, 5, 6]
    assert sub.lost == []
    assert sub.broker._pubsub is not link  # type: ignore[attr-defined]  # it did reconnect
    await admin.aclose()


@only_redis
async def test_redis_data_loss_starts_a_new_epoch_never_a_silent_gap(nodes: Factory) -> None:
    import redis.asyncio

    node = await nodes()
    await publish(node, "c.loss", 5)
    old = (await node.broker.read("c.loss", None)).position
    admin = redis.asyncio.from_url(need_redis())
    await admin.delete(*[k async for k in admin.scan_iter(node.broker.prefix + "*")])  # type: ignore[attr-defined]
    await admin.aclose()
    pos = await node.broker.publish("c.loss", "PUBLICATION", {}, history_size=10, history_ttl=60)
    assert pos.epoch != old.epoch and pos.offset == 1
    stream = await node.broker.read("c.loss", 3)
    assert stream.position.epoch != old.epoch  # a client at (3, old epoch) gets recovered: false


@only_redis
async def test_redis_history_lost_with_meta_kept_is_incomplete(nodes: Factory) -> None:
    import redis.asyncio

    node = await nodes()
    await publish(node, "c.evicted", 5)
    admin = redis.asyncio.from_url(need_redis())
    await admin.delete(node.broker.prefix + "hist:c.evicted")  # type: ignore[attr-defined]
    await admin.aclose()
    stream = await node.broker.read("c.evicted", 2)
    assert stream.position.offset == 5 and not stream.complete
