"""Presence, locks, devices, retained events and documents agree across 3 real nodes on one
PostgreSQL and one Redis, and a SIGKILLed node's presences, devices and locks expire."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest
import redis.asyncio

from tests.cluster import Cluster
from tests.helpers import ServerProcess, WsClient
from tests.services import unique

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One cluster for the tests that kill nothing (starting 3 nodes is the expensive part)."""
    c = Cluster(tmp_path_factory.mktemp("cluster")).start()
    yield c
    asyncio.run(c.cleanup())


async def users(node: ServerProcess, key: str) -> list[str]:
    async with node.http("watcher") as http:
        r = await http.get(f"/api/presence/{key}")
        assert r.status_code == 200, r.text
        return r.json()["users"]  # type: ignore[no-any-return]


async def test_presence_agrees_across_nodes(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    key = unique("room")
    watcher = await WsClient.connect(c, "watcher")
    await watcher.request("SUBSCRIBE", {"channel": f"presence.{key}"})
    alice = await WsClient.connect(a, "alice:phone")  # present by WebSocket on A
    await alice.request("SUBSCRIBE", {"channel": f"presence.{key}", "presence": True, "state": {"typing": False}})
    assert (await watcher.next("PRESENCE_JOINED"))["data"] == {"user_id": "alice", "state": {"typing": False}}
    async with b.http("bob:laptop") as bob:  # present by REST heartbeat on B
        r = await bob.post(f"/api/presence/{key}", json={"user_id": "bob"})
        assert r.status_code == 200, r.text
        assert (await watcher.next("PRESENCE_JOINED"))["data"] == {"user_id": "bob"}
        for node in (a, b, c):
            assert await users(node, key) == ["alice", "bob"]
        async with c.http("watcher") as http:
            assert (await http.get(f"/api/presence/{key}?states=true")).json()["states"] == {
                "alice": {"typing": False}, "bob": None}
        # A second source of a present user on another node is no second join.
        async with c.http("alice:laptop") as alice_rest:
            assert (await alice_rest.post(f"/api/presence/{key}", json={"user_id": "alice"})).status_code == 200
            await watcher.nothing("PRESENCE_JOINED")
            await alice.close()  # alice's WebSocket goes, her REST heartbeat on C keeps her present
            await watcher.nothing("PRESENCE_LEFT")
            assert await users(b, key) == ["alice", "bob"]
            assert (await alice_rest.delete(f"/api/presence/{key}/alice")).status_code == 200
        assert (await watcher.next("PRESENCE_LEFT"))["data"] == {"user_id": "alice"}
        assert (await bob.delete(f"/api/presence/{key}/bob")).status_code == 200
    assert (await watcher.next("PRESENCE_LEFT"))["data"] == {"user_id": "bob"}
    assert await users(a, key) == []
    await watcher.close()


async def test_locks_agree_across_nodes(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    key = unique("lock")
    alice = await WsClient.connect(a, "alice")
    first = await alice.request("LOCK_ACQUIRE", {"key": key, "ttl_seconds": 30})
    assert first["acquired"] is True
    async with b.http("bob") as bob, c.http("carol") as carol:
        assert (await bob.post(f"/api/locks/{key}", json={})).json() == {
            "acquired": False, "token": None, "holder": "alice", "expires_at": first["expires_at"]}
        status = (await carol.get(f"/api/locks/{key}")).json()
        assert status["locked"] is True and status["holder"] == "alice"
        assert status["fencing_token"] == first["fencing_token"]
        # Another node cannot extend or release with a wrong token; the holder's node can.
        r = await bob.request("DELETE", f"/api/locks/{key}", json={"token": "guess"})
        assert r.json() == {"released": False}
        assert await alice.request("LOCK_RELEASE", {"key": key, "token": first["token"]}) == {"released": True}
        second = (await bob.post(f"/api/locks/{key}", json={"ttl_seconds": 30})).json()
        assert second["acquired"] is True and second["fencing_token"] > first["fencing_token"]
        status = (await carol.get(f"/api/locks/{key}")).json()
        assert status["holder"] == "bob" and status["fencing_token"] == second["fencing_token"]
        # The token is the capability on every node: extend on C, release on A.
        r = await carol.post(f"/api/locks/{key}/extend", json={"token": second["token"], "ttl_seconds": 60})
        assert r.json()["acquired"] is True and r.json()["fencing_token"] == second["fencing_token"]
    assert await alice.request("LOCK_RELEASE", {"key": key, "token": second["token"]}) == {"released": True}
    assert (await alice.request("LOCK_STATUS", {"key": key}))["locked"] is False
    await alice.close()


async def test_concurrent_acquires_across_nodes_grant_exactly_one(cluster: Cluster) -> None:
    key = unique("race")

    async def acquire(i: int) -> dict[str, Any]:
        async with cluster.nodes[i % 3].http(f"user{i}") as http:
            return (await http.post(f"/api/locks/{key}", json={"ttl_seconds": 30})).json()  # type: ignore[no-any-return]

    replies = await asyncio.gather(*(acquire(i) for i in range(12)))
    assert sum(r["acquired"] for r in replies) == 1


async def test_devices_and_retained_events_across_nodes(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    u = unique("user")
    phone = await WsClient.connect(a, f"{u}:phone")
    laptop = await WsClient.connect(b, f"{u}:laptop")
    got = await phone.next("DEVICE_CONNECTED")  # live event, published on B, delivered on A
    assert got["data"]["deviceId"] == "laptop" and got["data"]["userId"] == u
    snapshot = await laptop.next("DEVICE_CONNECTED")  # the newcomer learns who is already online
    assert snapshot["data"]["deviceId"] == "phone"
    async with c.http(api_key=True) as api:
        r = await api.get(f"/api/users/{u}/devices")
        assert r.status_code == 200, r.text
        assert [d["device_id"] for d in r.json()["devices"]] == ["laptop", "phone"]
        # A retained event pushed through C reaches both devices live and a later device on any node.
        r = await api.post(f"/api/users/{u}/events", json={"type": "CREDIT_UPDATE", "data": {"balance": 7}, "retain": True})
        assert r.status_code == 202 and r.json()["delivered"] == 2, r.text
        for dev in (phone, laptop):
            assert (await dev.next("CREDIT_UPDATE"))["data"] == {"balance": 7}
        tablet = await WsClient.connect(c, f"{u}:tablet")
        first = await tablet.next()
        assert first["type"] == "CREDIT_UPDATE" and first["data"] == {"balance": 7} and first.get("retained") is True
        for dev in (phone, laptop):
            assert (await dev.next("DEVICE_CONNECTED"))["data"]["deviceId"] == "tablet"
        await laptop.close()
        for dev in (phone, tablet):
            ev = await dev.next("DEVICE_DISCONNECTED")
            assert ev["data"]["deviceId"] == "laptop" and ev["data"]["disconnectedAt"].endswith("Z")
        r = await api.get(f"/api/users/{u}/devices")
        assert [d["device_id"] for d in r.json()["devices"]] == ["phone", "tablet"]
    await phone.close()
    await tablet.close()


async def test_document_version_conflicts_across_nodes(cluster: Cluster) -> None:
    a, b, c = cluster.nodes
    col, doc = unique("games"), unique("g")
    base = f"/api/collections/{col}/documents"
    watcher = await WsClient.connect(a, "alice:watch")
    async with a.http("alice") as ha, b.http("alice") as hb, c.http("alice") as hc:
        r = await ha.post(base, json={"id": doc, "data": {"score": 0}})
        assert r.status_code == 201, r.text
        await watcher.request("SUBSCRIBE", {"channel": f"collections.{col}.documents.{doc}"})
        r = await hb.put(f"{base}/{doc}", json={"data": {"score": 1}, "version": 1})
        assert r.status_code == 200 and r.json()["version"] == 2
        stale = await hc.put(f"{base}/{doc}", json={"data": {"score": 99}, "version": 1})
        assert stale.status_code == 409
        err = stale.json()["error"]
        assert err["code"] == "conflict" and err["document"]["version"] == 2 and err["document"]["data"] == {"score": 1}
        r = await hc.get(f"{base}/{doc}", headers={"If-None-Match": '"2"'})
        assert r.status_code == 304

        # The three nodes race to write version 2 -> 3: exactly one wins, the others get 409.
        async def put(http: httpx.AsyncClient, score: int) -> httpx.Response:
            return await http.put(f"{base}/{doc}", json={"data": {"score": score}, "version": 2})

        replies = await asyncio.gather(put(ha, 10), put(hb, 20), put(hc, 30))
        assert sorted(r.status_code for r in replies) == [200, 409, 409]
        winner = next(r.json() for r in replies if r.status_code == 200)
        assert winner["version"] == 3
        for r in replies:
            if r.status_code == 409:
                assert r.json()["error"]["document"] == winner
        assert (await hb.get(f"{base}/{doc}")).json() == winner
    updates = [(await watcher.next("DOCUMENT_UPDATED"))["data"] for _ in range(2)]
    assert [u["version"] for u in updates] == [2, 3] and updates[1] == winner
    await watcher.nothing("DOCUMENT_UPDATED")
    await watcher.close()


async def test_collection_channel_filters_per_reader_across_nodes(cluster: Cluster) -> None:
    """The Redis fan-out ends in each node's per-recipient filter: bob on another node gets only
    what he may read of the collection, live and in recovery; its owner gets everything."""
    a, b, c = cluster.nodes
    col = unique("notes")
    ch = f"collections.{col}"
    bob = await WsClient.connect(b, "bob")
    owner = await WsClient.connect(c, "alice")
    start = await bob.request("SUBSCRIBE", {"channel": ch})
    await owner.request("SUBSCRIBE", {"channel": ch})
    async with a.http("alice") as ha:
        assert (await ha.post(f"/api/collections/{col}/documents", json={"id": "secret", "data": {}})).status_code == 201
        assert (await ha.post(f"/api/collections/{col}/documents",
                              json={"id": "open", "data": {}, "access": "public"})).status_code == 201
    assert [(await owner.next(channel=ch))["data"]["id"] for _ in range(2)] == ["secret", "open"]
    shown = await bob.next(channel=ch)
    assert shown["data"]["id"] == "open" and shown["offset"] == start["offset"] + 2
    await bob.nothing(channel=ch, wait=0.5)
    ack = await bob.request("SUBSCRIBE", {"channel": ch, "since": {"offset": start["offset"], "epoch": start["epoch"]}})
    assert ack["recovered"] is True and [e["data"]["id"] for e in ack["publications"]] == ["open"]
    await bob.close(); await owner.close()


async def test_every_feature_key_lives_under_the_redis_prefix(cluster: Cluster) -> None:
    """Services (and tests) sharing one Redis are separated by TETHER_REDIS_PREFIX alone."""
    a, b, _ = cluster.nodes
    mark = unique("mark")
    client = await WsClient.connect(a, f"{mark}:phone")
    await client.request("SUBSCRIBE", {"channel": f"presence.{mark}", "presence": True})
    await client.request("LOCK_ACQUIRE", {"key": mark})
    await client.request("UPDATE_PROGRESS", {"shootId": mark, "processedCount": 1, "totalCount": 2})
    async with b.http(api_key=True) as api:
        r = await api.post(f"/api/users/{mark}/events", json={"type": "PING_ME", "data": {}, "retain": True})
        assert r.status_code == 202
    r_client = redis.asyncio.from_url(cluster.redis_url)
    try:
        keys = [k.decode() async for k in r_client.scan_iter(f"*{mark}*")]
    finally:
        await r_client.aclose()
    await client.close()
    outside = [k for k in keys if not k.startswith(cluster.prefix)]
    assert not outside, outside
    for part in ("presence:", "lock:", "lockfence:", "devices:", "retained:", "meta:"):
        assert any(k.startswith(cluster.prefix + part) for k in keys), (part, keys)


# -- node failure ------------------------------------------------------------------------

PRESENCE_TTL = 2.0
DEVICE_TTL = 2.0


@pytest.fixture
async def failing_cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, 3, "--presence-ttl", str(PRESENCE_TTL), "--device-ttl", str(DEVICE_TTL)).start()
    yield c
    await c.cleanup()


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


async def _next_holder(node: ServerProcess, key: str, expires_at: str) -> dict[str, Any]:
    """Try to take ``key`` until granted; the grant must not come before the old lock's TTL
    (``expires_at`` is rounded down to the millisecond) nor much after it."""
    old_expiry = _epoch(expires_at)  # the real expiry is in [old_expiry, old_expiry + 0.001)
    async with node.http("next") as http:
        while True:
            r = await http.post(f"/api/locks/{key}", json={"ttl_seconds": 30})
            answered = time.time()
            assert r.status_code == 200, r.text
            if r.json()["acquired"]:
                assert answered >= old_expiry, "granted before the dead holder's lock expired"
                assert answered <= old_expiry + 1 + 1.5, "the dead holder's lock outlived its TTL"
                return r.json()  # type: ignore[no-any-return]
            await asyncio.sleep(0.1)


async def test_sigkilled_node_presences_devices_and_locks_expire(failing_cluster: Cluster) -> None:
    a, b, c = failing_cluster.nodes  # B dies
    key, u = unique("room"), unique("user")
    watcher = await WsClient.connect(c, "watcher")
    await watcher.request("SUBSCRIBE", {"channel": f"presence.{key}"})
    bob = await WsClient.connect(a, "bob")  # a survivor in the same presence set
    await bob.request("SUBSCRIBE", {"channel": f"presence.{key}", "presence": True})
    assert (await watcher.next("PRESENCE_JOINED"))["data"]["user_id"] == "bob"
    mac = await WsClient.connect(a, f"{u}:mac")  # the same user's other device, on a survivor

    victim = await WsClient.connect(b, f"{u}:phone")
    await victim.request("SUBSCRIBE", {"channel": f"presence.{key}", "presence": True})
    assert (await watcher.next("PRESENCE_JOINED"))["data"]["user_id"] == u
    assert (await mac.next("DEVICE_CONNECTED"))["data"]["deviceId"] == "phone"
    ws_lock = await victim.request("LOCK_ACQUIRE", {"key": f"{key}-ws", "ttl_seconds": 3, "release_on_disconnect": True})
    async with b.http("carol") as http:
        rest_lock = (await http.post(f"/api/locks/{key}-rest", json={"ttl_seconds": 3})).json()
    assert ws_lock["acquired"] and rest_lock["acquired"]
    assert sorted(await users(c, key)) == sorted(["bob", u])

    b.kill()
    killed = time.monotonic()

    async def presence_expires() -> None:
        while True:
            asked = time.monotonic()
            present = await users(a, key)
            if u not in present:
                assert asked - killed <= PRESENCE_TTL + 1 + 0.5, f"present {asked - killed:.2f} s after the kill"
                assert "bob" in present  # only the dead node's members go
                return
            await asyncio.sleep(0.05)

    async def left_event() -> None:
        ev = await watcher.next("PRESENCE_LEFT", timeout=PRESENCE_TTL + 10)
        assert ev["data"] == {"user_id": u}

    async def device_disconnected() -> None:
        ev = await mac.next("DEVICE_DISCONNECTED", timeout=DEVICE_TTL + 10)
        assert ev["data"]["deviceId"] == "phone"

    _, _, _, ws_next, rest_next = await asyncio.gather(
        presence_expires(), left_event(), device_disconnected(),
        _next_holder(c, f"{key}-ws", ws_lock["expires_at"]), _next_holder(a, f"{key}-rest", rest_lock["expires_at"]))
    assert ws_next["fencing_token"] > ws_lock["fencing_token"]
    assert rest_next["fencing_token"] > rest_lock["fencing_token"]
    async with c.http(api_key=True) as api:
        assert [d["device_id"] for d in (await api.get(f"/api/users/{u}/devices")).json()["devices"]] == ["mac"]
    await watcher.nothing("PRESENCE_LEFT")  # bob, alive on A, never left
    for client in (watcher, bob, mac):
        await client.close()
