"""A publish that fails for now is not overtaken by the next publish of the same burst.

Found by the chaos suite (tests/test_chaos.py, cluster): a client sends its outbox as a
pipelined burst of keyed PUBLISHes. When one of them failed with a retryable error
(``unavailable``: its Redis round trip was lost before reaching Redis) the server still
ran the ones after it, so they took the next offsets; the client then resent the failed
one, which landed after them. Now the keyed publishes after it are refused until it is
resent (docs/protocol.md), so the client resends them in order.

Here, deterministically: the first publish's script is held in a proxy in front of Redis
and its connection is then reset, so the script never reaches Redis (the publish answers
``unavailable``); the second must not be stored before the first's resend.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.chaos import read_history, start_server
from tests.cluster import Cluster
from tests.faultproxy import FaultProxy
from tests.helpers import WsClient, eventually
from tests.services import need_redis, unique

pytestmark = pytest.mark.services


async def test_a_publish_that_failed_for_now_is_not_overtaken_by_the_next_one(tmp_path: Path) -> None:
    need_redis()
    redis_proxy = await FaultProxy(6379).start()
    cluster = Cluster(tmp_path, 1, redis_url=f"redis://127.0.0.1:{redis_proxy.port}/0")
    node = cluster.nodes[0]
    channel = unique("public.order-")
    try:
        await start_server(node)
        ws = await WsClient.connect(node, "alice:phone")
        await ws.request("PUBLISH", {"channel": channel, "data": {"n": 0}, "idempotency_key": "w-0"})
        redis_proxy.stall_request_with = b"first-of-burst"
        burst = asyncio.ensure_future(ws.burst([
            ("PUBLISH", {"channel": channel, "data": {"n": 1, "tag": "first-of-burst"}, "idempotency_key": "w-1"}),
            ("PUBLISH", {"channel": channel, "data": {"n": 2}, "idempotency_key": "w-2"}),
        ], timeout=30))
        await eventually(lambda: any(link.waiting and b"first-of-burst" in link.waiting for link in redis_proxy.links))
        for link in list(redis_proxy.links):
            if link.waiting and b"first-of-burst" in link.waiting:
                link.reset()  # the first publish's script never reaches Redis
        (first, second), _ = await burst
        assert first["type"] == "ERROR" and first["data"]["code"] == "unavailable", first
        # The second is stopped behind the first: stored before the first's resend, it would overtake it.
        assert second["type"] == "ERROR" and second["data"]["code"] == "unavailable", (
            f"the second publish was answered {second['data']} while the first failed for now")
        # The client resends what failed for now, in order, with its keys, as tether.client's outbox does.
        retried = [await ws.request("PUBLISH", {"channel": channel, "data": {"n": 1, "tag": "first-of-burst"},
                                                "idempotency_key": "w-1"}),
                   await ws.request("PUBLISH", {"channel": channel, "data": {"n": 2}, "idempotency_key": "w-2"})]
        await ws.close()
        stored = [e["data"]["n"] for e in await read_history(node.url, channel)]
        assert stored == [0, 1, 2], f"stored in the order {stored}; the resends got {retried}"
    finally:
        await cluster.cleanup()
        await redis_proxy.close()
