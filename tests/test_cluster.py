"""Several real nodes on one PostgreSQL and one Redis behave as one service."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import AsyncIterator

import httpx
import pytest

from tests.cluster import Cluster, wait_until
from tests.helpers import WsClient, free_port
from tests.services import unique

pytestmark = pytest.mark.services


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path).start()
    yield c
    await c.cleanup()


async def rest_publish(http: httpx.AsyncClient, channel: str, data: dict) -> dict:
    r = await http.post(f"/api/channels/{channel}/publish", json={"data": data})
    assert r.status_code == 200, r.text
    return r.json()


async def test_a_subscriber_on_one_node_gets_publishes_from_the_others_in_order(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    channel = f"public.{unique()}"
    sub = await WsClient.connect(a, "alice:phone")
    ack = await sub.request("SUBSCRIBE", {"channel": channel})
    assert ack["offset"] == 0
    pub_b = await WsClient.connect(b, "bob:laptop")
    async with c.http(api_key=True) as http:
        for i in range(10):  # interleave a REST publisher on C and a WebSocket publisher on B
            await rest_publish(http, channel, {"i": 2 * i})
            await pub_b.request("PUBLISH", {"channel": channel, "data": {"i": 2 * i + 1}})
    got = [await sub.next("PUBLICATION", channel=channel) for _ in range(20)]
    assert [e["offset"] for e in got] == list(range(1, 21))
    assert [e["data"]["i"] for e in got] == list(range(20))
    await sub.nothing(channel=channel)
    # A late subscriber on the third node recovers all of it from the shared history.
    late = await WsClient.connect(c, "carol")
    ack2 = await late.request("SUBSCRIBE", {"channel": channel, "since": {"offset": 0, "epoch": ack["epoch"]}})
    assert ack2["recovered"] and ack2["epoch"] == ack["epoch"]
    assert ack2["publications"] == got
    for client in (sub, pub_b, late):
        await client.close()


async def test_sigkill_under_load_clients_move_to_another_node_and_miss_nothing(cluster: Cluster) -> None:
    a, b, c = cluster.nodes  # publisher on A; the subscribers start on B, which dies
    channel = f"public.{unique()}"
    total = 150
    subs = [await WsClient.connect(b, f"user{i}:dev") for i in range(3)]
    epoch = ""
    for s in subs:
        epoch = (await s.request("SUBSCRIBE", {"channel": channel}))["epoch"]

    acked: list[int] = []

    async def publisher() -> None:
        async with a.http(api_key=True) as http:
            for i in range(total):
                acked.append((await rest_publish(http, channel, {"i": i}))["offset"])
                await asyncio.sleep(0.002)

    async def follow(client: WsClient, seen: list[int]) -> None:
        """What a client app does: dedupe by offset, reconnect elsewhere, resubscribe with since."""
        while len(seen) < total:
            try:
                frame = await client.next(channel=channel, timeout=15)
            except ConnectionError:
                client = await WsClient.connect(c, "user:dev2")
                last = seen[-1] if seen else 0
                ack = await client.request("SUBSCRIBE", {"channel": channel, "since": {"offset": last, "epoch": epoch}})
                assert ack["recovered"], ack
                seen.extend(p["offset"] for p in ack["publications"])
                continue
            seen.append(frame["offset"])
        await client.close()

    seen: list[list[int]] = [[] for _ in subs]
    pub = asyncio.create_task(publisher())
    followers = [asyncio.create_task(follow(s, seen[i])) for i, s in enumerate(subs)]
    await wait_until(lambda: _true(len(acked) >= 40))
    b.kill()
    await asyncio.wait_for(pub, 60)
    await asyncio.wait_for(asyncio.gather(*followers), 60)
    assert acked == list(range(1, total + 1))
    for offsets in seen:
        assert offsets == list(range(1, total + 1))  # no loss, no duplicate, in order


async def _true(value: bool) -> bool:
    return value


async def test_restart_of_every_node_keeps_offsets_epochs_and_history(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    channel = f"public.{unique()}"
    sub = await WsClient.connect(a, "alice")
    epoch = (await sub.request("SUBSCRIBE", {"channel": channel}))["epoch"]
    async with b.http(api_key=True) as http:
        for i in range(5):
            await rest_publish(http, channel, {"i": i})
    assert [(await sub.next(channel=channel))["offset"] for _ in range(5)] == [1, 2, 3, 4, 5]
    await sub.close()
    async with b.http(api_key=True) as http:
        for i in range(5, 8):
            await rest_publish(http, channel, {"i": i})

    cluster.kill()
    cluster.start()

    back = await WsClient.connect(c, "alice")
    ack = await back.request("SUBSCRIBE", {"channel": channel, "since": {"offset": 5, "epoch": epoch}})
    assert ack["recovered"] and ack["epoch"] == epoch and ack["offset"] == 8
    assert [(p["offset"], p["data"]["i"]) for p in ack["publications"]] == [(6, 5), (7, 6), (8, 7)]
    async with a.http(api_key=True) as http:
        after = await rest_publish(http, channel, {"i": 8})
    assert (after["offset"], after["epoch"]) == (9, epoch)
    assert (await back.next(channel=channel))["offset"] == 9
    await back.close()


async def test_idempotent_publish_is_answered_once_across_nodes(cluster: Cluster) -> None:
    """Idempotency records live in PostgreSQL: a retry landing on another node repeats nothing."""
    a, b, _ = cluster.nodes
    channel = f"public.{unique()}"
    headers = {"Idempotency-Key": unique("key")}
    async with a.http(api_key=True) as ha, b.http(api_key=True) as hb:
        first = await ha.post(f"/api/channels/{channel}/publish", json={"data": {}}, headers=headers)
        again = await hb.post(f"/api/channels/{channel}/publish", json={"data": {}}, headers=headers)
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json() and first.json()["offset"] == 1


async def test_a_node_that_loses_redis_is_unhealthy_refuses_then_recovers_alone(tmp_path: Path) -> None:
    """A private Redis we can stop: /healthz says 503 and writes say `unavailable` while it is
    gone; once it is back (empty: it kept nothing), the node heals and starts a new epoch."""
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    cluster = Cluster(tmp_path, 2, redis_url=f"redis://127.0.0.1:{port}/0")
    try:
        await wait_until(lambda: _ping(port))
        cluster.start()
        a, b = cluster.nodes
        channel = f"public.{unique()}"
        sub = await WsClient.connect(b, "alice")
        epoch = (await sub.request("SUBSCRIBE", {"channel": channel}))["epoch"]
        async with a.http(api_key=True) as http:
            await rest_publish(http, channel, {"i": 0})
            assert (await sub.next(channel=channel))["offset"] == 1

            redis_proc.kill()
            redis_proc.wait()
            await wait_until(lambda: _status(http, 503))
            r = await http.post(f"/api/channels/{channel}/publish", json={"data": {}})
            assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"

            redis_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            await wait_until(lambda: _status(http, 200), timeout=20)
            published = await rest_publish(http, channel, {"i": 1})
        assert published["epoch"] != epoch  # Redis came back empty: a new epoch, never a silent gap
        with pytest.raises(ConnectionError):
            await sub.next(channel=channel, timeout=10)  # B drops its subscribers on the channel: resync
        assert sub.close_code == 4012
        again = await WsClient.connect(b, "alice")
        ack = await again.request("SUBSCRIBE", {"channel": channel, "since": {"offset": 1, "epoch": epoch}})
        assert ack["recovered"] is False and ack["epoch"] == published["epoch"]
        await again.close()
    finally:
        await cluster.cleanup()
        redis_proc.kill()
        redis_proc.wait()


async def _ping(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        return True
    except OSError:
        return False


async def _status(http: httpx.AsyncClient, code: int) -> bool:
    try:
        return (await http.get("/healthz")).status_code == code
    except httpx.HTTPError:
        return False


async def test_tether_migrate_creates_the_schema_in_postgresql(tmp_path: Path) -> None:
    import os
    import sys

    import asyncpg

    from tests.services import need_postgres, with_query

    url, schema = need_postgres(), unique("migrate_")
    env = {k: v for k, v in os.environ.items() if k not in ("TETHER_REDIS_URL", "TETHER_DATABASE_URL")}
    for run in range(2):  # idempotent: the first run says what it created, the second that nothing was missing
        out = subprocess.run(
            [sys.executable, "-m", "tether", "migrate", "--database-url", with_query(url, schema=schema),
             "--data-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert ("created" if run == 0 else "the schema is up to date") in out.stdout, out.stdout
    conn = await asyncpg.connect(url)
    tables = {r["table_name"] for r in await conn.fetch(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = $1", schema)}
    await conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
    await conn.close()
    assert {"channel_positions", "channel_history", "idempotency"} <= tables


async def test_a_session_fills_to_exactly_its_seat_limit_under_joins_spread_across_nodes(cluster: Cluster) -> None:
    nodes = cluster.nodes
    async with nodes[0].http("host") as h:
        r = await h.post("/api/sessions", json={"title": "cluster room", "max_participants": 12})
        assert r.status_code in (200, 201), r.text
        sid = r.json()["id"]

    async def join(i: int) -> httpx.Response:
        async with nodes[i % 3].http(f"guest{i}") as c:
            return await c.post(f"/api/sessions/{sid}/join")

    replies = await asyncio.gather(*(join(i) for i in range(45)))
    assert all(r.status_code in (200, 409) for r in replies), [r.text for r in replies if r.status_code not in (200, 409)]
    assert sum(r.status_code == 200 and r.json()["joined"] for r in replies) == 11  # the host holds a seat
    for node in nodes:  # every node reads the same count from PostgreSQL
        async with node.http("host") as h:
            assert (await h.get(f"/api/sessions/{sid}")).json()["current_participants"] == 12
