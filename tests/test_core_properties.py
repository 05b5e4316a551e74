"""Property tests of the sans-I/O core: connections, hub and embedded broker, no sockets.

Whatever the interleaving of publishes, subscribes, drops and recoveries, each
client sees the channel's offsets strictly increasing with no gap and no
duplicate, and ends up with every event. On a channel whose namespace filters
per recipient, each sees exactly the events it may see, in order, once.
"""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tether.core.auth import Identity
from tether.core.config import Settings
from tether.core.connection import Connection
from tether.core.namespaces import Namespace
from tether.core.node import Node
from tether.features.channels import ChannelsFeature
from tether.wire.jsonutil import dumps, loads

CHANNEL = "public.prop"
CLIENTS = 3

ops = st.lists(
    st.one_of(
        st.tuples(st.just("pub"), st.integers(0, CLIENTS - 1)),
        st.tuples(st.just("sub"), st.integers(0, CLIENTS - 1)),
        st.tuples(st.just("drain"), st.integers(0, CLIENTS - 1)),
        st.tuples(st.just("drop"), st.integers(0, CLIENTS - 1)),
        st.tuples(st.just("race"), st.integers(0, CLIENTS - 1)),  # subscribe while others publish
    ),
    max_size=60,
)


class Client:
    def __init__(self, n: int) -> None:
        self.n = n
        self.conn: Connection | None = None
        self.subscribed = False
        self.seen: list[int] = []
        self.epoch: str | None = None

    def take(self) -> None:
        """Read what the server queued, as the socket writer would."""
        assert self.conn is not None
        frames = [loads(t) for t in self.conn._queue]
        self.conn._queue.clear()
        for f in frames:
            if f["type"] == "ACK" and f["data"].get("channel") == CHANNEL:
                self.epoch = f["data"]["epoch"]
                assert f["data"]["recovered"] or not self.seen, "history is large enough to always recover"
                self.seen += [p["offset"] for p in f["data"]["publications"]]
            elif f.get("channel") == CHANNEL:
                self.seen.append(f["offset"])
            elif f["type"] == "ERROR":
                raise AssertionError(f)


def not_own(who: Identity, event: dict[str, Any]) -> bool:
    """The filter of the filtered runs: nobody receives the events they published themselves."""
    return event["data"]["by"] != int(who.user_id[4:])


async def run(plan: list[tuple[str, int]], data_dir: Path, filtered: bool = False) -> None:
    node = Node(Settings(data_dir=data_dir, ping_interval=1000), features=[ChannelsFeature])
    await node.start()
    if filtered:
        node.namespaces.add(Namespace(CHANNEL, visible=not_own), first=True)
    clients = [Client(i) for i in range(CLIENTS)]
    top = 0
    by: dict[int, Any] = {}  # offset -> who published it

    async def publish(i: Any) -> int:
        offset = (await node.publish(CHANNEL, "PUBLICATION", {"by": i})).offset
        by[offset] = i
        return offset

    async def subscribe(c: Client) -> None:
        if c.conn is None:
            c.conn = Connection(node, Identity(f"user{c.n}"))
            await node.open(c.conn)
            c.subscribed = False
        if c.subscribed:
            return
        request: dict[str, Any] = {"channel": CHANNEL}
        if c.seen:
            request["since"] = {"offset": c.seen[-1], "epoch": c.epoch}
        await c.conn.handle(dumps({"type": "SUBSCRIBE", "id": "s", "data": request}))
        c.subscribed = True

    try:
        for op, i in plan:
            c = clients[i]
            if op == "pub":
                top = await publish(i)
            elif op == "sub":
                await subscribe(c)
            elif op == "race":
                results = await asyncio.gather(
                    subscribe(c), *(publish(i) for _ in range(3))
                )
                top = max(top, *results[1:])
            elif op == "drain" and c.conn is not None:
                c.take()
            elif op == "drop" and c.conn is not None:
                await node.close(c.conn)  # frames still queued are lost, as on a broken link
                c.conn, c.subscribed = None, False
        # Finally every client loses its link while one more event is published, then recovers.
        for c in clients:
            if c.conn is not None:
                c.take()
                await node.close(c.conn)
                c.conn, c.subscribed = None, False
            top = await publish(-1)
            await subscribe(c)
            c.take()
            if c.seen:
                expected = [o for o in range(c.seen[0], top + 1) if not filtered or by[o] != c.n]
                assert c.seen == expected, (c.n, c.seen, expected)
    finally:
        for c in clients:
            if c.conn is not None:
                await node.close(c.conn)
        await node.stop()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_offsets_gap_free_and_increasing_under_any_interleaving(plan: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run(plan, Path(d)))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_filtered_channel_sends_what_each_may_see_once_in_order(plan: list[tuple[str, int]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run(plan, Path(d), filtered=True))
