"""tether.client on a cluster (PostgreSQL + Redis): a node dies under it, it moves on, nothing lost."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.cluster import Cluster
from tests.helpers import WsClient
from tests.services import unique
from tether.client import Backoff, Client

pytestmark = pytest.mark.services


async def test_client_fails_over_to_another_node_and_loses_nothing(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, 2).start()
    try:
        a, b = cluster.nodes
        channel = unique("public.failover")
        urls = [a.url, b.url]
        writer = Client(urls, "alice:phone", backoff=Backoff(base=0.05, cap=0.2, max_attempts=None))
        reader = Client(urls, "bob:phone", backoff=Backoff(base=0.05, cap=0.2, max_attempts=None))
        seen: list[int] = []
        await writer.connect()
        await reader.connect()
        assert writer.url == a.url and reader.url == a.url
        await reader.subscribe(channel, lambda e: seen.append(e["data"]["n"]))
        N = 40
        writes = []
        for n in range(N):
            writes.append(await writer.publish(channel, {"n": n}))
            if n == N // 2:
                a.kill()
            await asyncio.sleep(0.005)
        await writer.flush()
        assert writer.url == b.url and [(await w)["offset"] for w in writes] == list(range(1, N + 1))
        ws = await WsClient.connect(b, "auditor")
        ack = await ws.request("SUBSCRIBE", {"channel": channel})
        full = await ws.request("SUBSCRIBE", {"channel": channel, "since": {"offset": 0, "epoch": ack["epoch"]}})
        await ws.close()
        assert [e["data"]["n"] for e in full["publications"]] == list(range(N))
        await reader.wait_for("connected")
        for _ in range(100):
            if len(seen) >= N:
                break
            await asyncio.sleep(0.05)
        assert seen == list(range(N))
        await writer.close()
        await reader.close()
    finally:
        await cluster.cleanup()
