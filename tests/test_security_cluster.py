"""Access changes reach every node: on two real nodes (PostgreSQL + Redis), a session leaver's
and a removed member's subscriptions on the *other* node are dropped, and a re-created
document starts a new epoch in Redis."""

from __future__ import annotations

import asyncio
from typing import Iterator

import pytest

from tests.cluster import Cluster
from tests.helpers import RequestFailed, WsClient
from tests.services import unique

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("sec-cluster"), 2).start()
    yield c
    asyncio.run(c.cleanup())


async def test_leaver_is_dropped_on_every_node(cluster: Cluster) -> None:
    a, b = cluster.nodes
    async with a.http("ann") as ann, a.http("ben") as ben:
        sid = (await ann.post("/api/sessions", json={"title": "t"})).json()["id"]
        assert (await ben.post(f"/api/sessions/{sid}/join")).status_code == 200
        on_b = await WsClient.connect(b, "ben:tablet")  # follows the session through the other node
        await on_b.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
        await on_b.request("SUBSCRIBE", {"channel": f"presence.sessions.{sid}"})
        assert (await ben.post(f"/api/sessions/{sid}/leave")).status_code == 200  # left through node A
        gone = {(await on_b.next("UNSUBSCRIBED"))["channel"], (await on_b.next("UNSUBSCRIBED"))["channel"]}
        assert gone == {f"sessions.{sid}", f"presence.sessions.{sid}"}
        await ann.post(f"/api/sessions/{sid}/messages", json={"message": "after-ben-left"})
        await on_b.nothing(channel=f"sessions.{sid}", wait=0.5)
        await on_b.close()


async def test_removed_member_is_dropped_on_every_node(cluster: Cluster) -> None:
    a, b = cluster.nodes
    c = unique("c")
    doc = f"collections.{c}.documents.d"
    async with a.http("alice") as alice:
        r = await alice.post(f"/api/collections/{c}/documents",
                             json={"id": "d", "data": {}, "access": "members", "members": ["bob"]})
        assert r.status_code == 201
        bob = await WsClient.connect(b, "bob")
        await bob.request("SUBSCRIBE", {"channel": f"presence.{doc}"})
        assert (await alice.put(f"/api/collections/{c}/documents/d", json={"data": {}, "members": []})).status_code == 200
        assert (await bob.next("UNSUBSCRIBED", channel=f"presence.{doc}"))["data"]["reason"] == "access revoked"
        await bob.close()


async def test_recreated_document_starts_a_new_epoch_in_redis(cluster: Cluster) -> None:
    a, b = cluster.nodes
    c, marker = unique("c"), unique("private-")
    channel = f"collections.{c}.documents.d"
    async with a.http("alice") as alice, b.http("mallory") as mallory:
        assert (await alice.post(f"/api/collections/{c}/documents", json={"id": "d", "data": {"m": marker}})).status_code == 201
        assert (await alice.delete(f"/api/collections/{c}/documents/d")).status_code == 200
        assert (await mallory.post(f"/api/collections/{c}/documents", json={"id": "d", "data": {}})).status_code == 201
    m = await WsClient.connect(a, "mallory")
    top = await m.request("SUBSCRIBE", {"channel": channel})
    replay = await m.request("SUBSCRIBE", {"channel": channel, "since": {"offset": 0, "epoch": top["epoch"]}})
    assert marker not in str(replay) and replay["recovered"] is False
    with pytest.raises(RequestFailed):  # and alice, no longer owner of anything there, is refused
        alice_ws = await WsClient.connect(b, "alice")
        try:
            await alice_ws.request("SUBSCRIBE", {"channel": channel})
        finally:
            await alice_ws.close()
    await m.close()
