"""Pipelined requests under cancellation, refusal and close (in-process: no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from tests.helpers import started_node
from tether.core.auth import Identity
from tether.core.connection import Connection
from tether.features.channels import ChannelsFeature
from tether.wire.jsonutil import dumps, loads


def pub(rid: str, channel: str = "public.r2", **data: Any) -> str:
    return dumps({"type": "PUBLISH", "id": rid, "data": {"channel": channel, "data": data or {"x": 1}}})


def task_of(conn: Connection, rid: str) -> asyncio.Task[None]:
    for t in conn._in_flight or ():
        if t.get_coro().cr_frame.f_locals["frame"].id == rid:
            return t
    raise LookupError(rid)


async def spin(n: int = 20) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_a_pipelined_request_cancelled_while_waiting_for_its_turn_does_not_wedge_the_connection(tmp_path: Path) -> None:
    """A pipelined task cancelled while it awaits its predecessor's turn never enters the
    try/finally that resolves its own turn/reply futures: every later publish of the
    connection waits forever, and settle() (so Node.close) never returns."""
    async with started_node(tmp_path, ChannelsFeature) as node:
        conn = Connection(node, Identity("alice"))
        await node.open(conn)
        gate = asyncio.Event()
        real = node.namespaces.may_publish
        calls = 0

        async def slow_first(who: Any, channel: str) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                await gate.wait()  # r1 holds the turn (before pass_turn)
            return await real(who, channel)

        node.namespaces.may_publish = slow_first  # type: ignore[method-assign]
        await conn.handle(pub("r1"))
        await conn.handle(pub("r2"))
        await conn.handle(pub("r3"))
        await spin()
        task_of(conn, "r2").cancel()  # r2 is parked on `await prev`
        await spin()
        gate.set()
        await asyncio.wait_for(conn.settle(), 5)  # TimeoutError: r3 waits for r2's turn forever
        acks = [loads(t) for t in conn.take()]
        assert [f.get("id") for f in acks if f["type"] in ("ACK", "ERROR")] == ["r1", "r3"]


async def test_a_refused_publish_passes_its_turn_at_once(tmp_path: Path) -> None:
    """r2 is refused at once (forbidden), but its turn is only passed in run()'s finally,
    after it waited for r1's reply: r3 cannot join r1's group commit. Same for a keyed
    publish answered from its stored record (a retried burst)."""
    async with started_node(tmp_path, ChannelsFeature) as node:
        conn = Connection(node, Identity("alice"))
        await node.open(conn)
        gate = asyncio.Event()
        real = node.broker.publish
        entered: list[Any] = []

        async def slow(channel: str, type: str, data: Any, **kw: Any) -> Any:
            entered.append(data)
            if len(entered) == 1:
                await gate.wait()  # r1's commit is slow
            return await real(channel, type, data, **kw)

        node.broker.publish = slow  # type: ignore[method-assign]
        await conn.handle(pub("r1", i=1))
        await conn.handle(pub("r2", channel="users.bob", i=2))  # forbidden for alice
        await conn.handle(pub("r3", i=3))
        await spin(50)
        try:
            assert {"i": 3} in entered, f"r3 has not reached the broker while r1 commits: {entered}"
        finally:
            gate.set()
            await conn.settle()


async def test_close_mid_burst_then_node_close_finishes(tmp_path: Path) -> None:
    async with started_node(tmp_path, ChannelsFeature) as node:
        conn = Connection(node, Identity("alice"))
        await node.open(conn)
        handler = asyncio.ensure_future(_feed(conn, 150))
        await spin(30)
        conn.close(1000, "closed")
        await asyncio.wait_for(handler, 10)
        await asyncio.wait_for(node.close(conn), 10)
        assert not conn._in_flight and node.connections == {}


async def _feed(conn: Connection, n: int) -> None:
    for i in range(n):
        if conn.closed:
            return
        await conn.handle(pub(f"f{i}", i=i))
