"""Races and leaks in the sans-I/O core, driven directly (no sockets): each test pins
an interleaving that once left state behind or ran a write twice."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.helpers import started_node
from tether.core.auth import Identity
from tether.core.connection import Connection
from tether.core.idempotency import Idempotency
from tether.core.node import Feature
from tether.features.channels import ChannelsFeature
from tether.storage.sqlite import SQLiteDatabase


class FailingHook(Feature):
    name = "failing-hook"

    async def connected(self, conn: Connection) -> None:
        raise RuntimeError("connect hook failed")


async def test_a_failed_open_leaves_no_connection_behind(tmp_path: Path) -> None:
    # The ASGI transport calls node.open() outside its cleanup; a failing connect hook
    # used to leave the connection in node.connections, node.users and the hub forever.

    async with started_node(tmp_path, ChannelsFeature, FailingHook) as node:
        conn = Connection(node, Identity("alice"))
        with pytest.raises(RuntimeError):
            await node.open(conn)
        assert node.connections == {}
        assert node.users == {}
        assert "users.alice" not in node.hub.channels
        await node.close(conn)  # a transport's own cleanup afterwards is harmless


async def test_idempotency_never_runs_one_key_twice_at_once(tmp_path: Path) -> None:
    # A refused first run released the lock and dropped it from _inflight while a second
    # caller was still queued on it; a third caller then got a fresh lock and ran the same
    # write concurrently with the second.
    db = await SQLiteDatabase.open(tmp_path / "i.db")
    idem = Idempotency(db, ttl=60)
    await idem.start()
    running = 0
    most = 0
    gates = [asyncio.Event(), asyncio.Event()]
    calls = 0

    async def write() -> dict[str, int]:
        nonlocal running, most, calls
        n = calls
        calls += 1
        running += 1
        most = max(most, running)
        try:
            if n < len(gates):
                await gates[n].wait()
            if n == 0:
                raise ValueError("refused")
            return {"n": n}
        finally:
            running -= 1

    try:
        first = asyncio.create_task(idem.run("u", "k", write))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(idem.run("u", "k", write))
        await asyncio.sleep(0.05)
        gates[0].set()  # the first is refused; the second takes the lock
        with pytest.raises(ValueError):
            await first
        for _ in range(20):
            await asyncio.sleep(0.01)
            if calls == 2:
                break
        third = asyncio.create_task(idem.run("u", "k", write))
        await asyncio.sleep(0.05)
        gates[1].set()
        assert await second == {"n": 1}
        assert await third == {"n": 1}  # the stored answer, not a second write
        assert most == 1 and calls == 2
        assert idem._inflight == {}
    finally:
        await db.close()


async def test_a_lost_access_feed_resyncs_document_subscribers(tmp_path: Path) -> None:
    # The documents feature listens on its access channel with a pseudo-connection that had
    # no close(): a broker reporting that feed lost (Redis, after a gap; the channel keeps no
    # history) crashed hub.lost, and revocations missed meanwhile were never applied.
    from tether.features.documents import ACCESS_CHANNEL, DocumentsFeature
    from tether.wire.protocol import CLOSE_RESYNC

    async with started_node(tmp_path, ChannelsFeature, DocumentsFeature) as node:
        reader, other = Connection(node, Identity("bob")), Connection(node, Identity("carol"))
        await node.open(reader)
        await node.open(other)
        doc = "collections.notes.documents.d1"
        reader.channels.add(doc)
        await node.hub.add(reader, doc)
        node.hub.lost(ACCESS_CHANNEL)
        assert reader.close_code == CLOSE_RESYNC  # resubscribing re-checks read access
        assert other.close_code is None


def test_the_native_frame_cache_is_bounded_in_bytes() -> None:
    # Every outgoing frame is cached by its text; recovery ACKs are large and unique, so a
    # count bound alone let the cache pin 4096 of them (gigabytes).
    from tether.server import native

    big = [f'{{"type":"ACK","data":"{i:06d}{"x" * 200_000}"}}' for i in range(100)]
    for text in big:
        data = native.frame(text)
        assert data.endswith(text.encode())
    held = sum(len(v) for v in native._frames.values())
    assert held <= 8 << 20
    assert native.frame(big[-1]) is native._frames[big[-1]]  # the latest is still cached
    native._frames.clear()
    native._cached_bytes = 0


async def test_leaving_while_the_broker_join_is_in_flight_leaves_no_broker_subscription(tmp_path: Path) -> None:
    # A SUBSCRIBE cancelled (or its subscriber revoked) while the node's first join of the
    # channel was still on its way to Redis unsubscribed *before* the join landed; the join
    # then left the node listening to the channel forever with nobody to deliver to.
    from tests.services import need_redis, unique

    url = need_redis()
    async with started_node(tmp_path, ChannelsFeature, redis_url=url, redis_prefix=unique("tr") + ":") as node:
        conn = Connection(node, Identity("alice"))
        await node.open(conn)
        channel = "public." + unique()
        task = asyncio.create_task(conn.subscribe(channel, None))
        for _ in range(100):  # until the join is in flight
            await asyncio.sleep(0)
            if channel in node.hub._joining:
                break
        assert channel in node.hub._joining
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            await asyncio.sleep(0.01)
            if channel not in node.hub._joining:
                break
        await asyncio.sleep(0.05)
        assert channel not in node.hub.channels
        assert channel not in node.broker._channels  # type: ignore[attr-defined]
        assert channel not in node.broker._last  # type: ignore[attr-defined]


async def test_events_held_during_subscribe_are_bounded_like_the_send_queue(tmp_path: Path) -> None:
    # Live events held back while SUBSCRIBE reads history (or a snapshot is sent) bypassed the
    # send queue's bound: a hot channel during a slow read grew the held list without limit.
    from tether.wire.protocol import CLOSE_SLOW

    async with started_node(tmp_path, ChannelsFeature, send_queue_frames=10) as node:
        conn = Connection(node, Identity("alice"))
        await node.open(conn)
        assert conn.hold("public.hot")
        for offset in range(1, 1001):
            conn.deliver("public.hot", offset, f'{{"offset":{offset}}}')
        assert conn.close_code == CLOSE_SLOW
        assert len(conn._pending.get("public.hot", ())) <= 10


async def test_a_refused_resubscribe_keeps_the_subscription_it_had(tmp_path: Path) -> None:
    # A SUBSCRIBE repeated on a channel the connection already had, refused by a hook (here an
    # oversized presence state), dropped the existing subscription silently; on users.{me}
    # the connection lost its own channel for good.
    from tether.features.presence import MAX_STATE, PresenceFeature
    from tether.wire.jsonutil import dumps, loads

    async with started_node(tmp_path, ChannelsFeature, PresenceFeature) as node:
        conn = Connection(node, Identity("alice"))
        await node.open(conn)
        await conn.handle(dumps({"type": "SUBSCRIBE", "id": "1", "data": {"channel": "public.room"}}))
        huge = "x" * (MAX_STATE + 1)
        for n, channel in enumerate(("public.room", "users.alice")):
            await conn.handle(dumps({"type": "SUBSCRIBE", "id": f"r{n}",
                                     "data": {"channel": channel, "presence": True, "state": huge}}))
            assert channel in conn.channels and conn in node.hub.channels[channel]
        conn.take()
        await node.publish("public.room", "NOTE", {"n": 1})
        await node.publish("users.alice", "NOTE", {"n": 2})
        got = [loads(t) for t in conn.take()]
        assert [(f["channel"], f["data"]) for f in got if f["type"] == "NOTE"] == \
            [("public.room", {"n": 1}), ("users.alice", {"n": 2})]
