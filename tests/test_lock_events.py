"""Lock refusals name the holder; lock changes are events on `locks.{key}`, on both backends."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

from tests.cluster import Cluster
from tests.helpers import RequestFailed, ServerProcess, WsClient
from tests.services import unique
from tether.wire.timestamps import PATTERN


@pytest.fixture(scope="module", params=["embedded", "redis"])
def nodes(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """One embedded server (twice: same node), or two nodes of a PostgreSQL + Redis cluster."""
    if request.param == "embedded":
        srv = ServerProcess(tmp_path_factory.mktemp("locks")).start()
        yield [srv, srv]
        srv.kill()
        return
    cluster = Cluster(tmp_path_factory.mktemp("lockcluster"), 2).start()
    try:
        yield cluster.nodes
    finally:
        asyncio.run(cluster.cleanup())


def shape(event: dict[str, Any], type: str, key: str, holder: str) -> dict[str, Any]:
    assert event["type"] == type and event["channel"] == f"locks.{key}", event
    data = event["data"]
    assert set(data) == {"key", "holder", "fencing_token", "expires_at"}, data
    assert data["key"] == key and data["holder"] == holder and PATTERN.match(data["expires_at"]), data
    return data  # type: ignore[no-any-return]


async def test_lock_changes_are_events_and_a_refusal_names_the_holder(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    key = unique("doc")
    watcher = await WsClient.connect(b, "watcher")  # any signed-in user may watch a lock
    await watcher.request("SUBSCRIBE", {"channel": f"locks.{key}"})
    async with a.http("alice") as alice, b.http("bob") as bob:
        got = (await alice.post(f"/api/locks/{key}", json={"ttl_seconds": 30})).json()
        acquired = shape(await watcher.next(channel=f"locks.{key}"), "LOCK_ACQUIRED", key, "alice")
        assert acquired["fencing_token"] == got["fencing_token"] and acquired["expires_at"] == got["expires_at"]

        refused = (await bob.post(f"/api/locks/{key}", json={"ttl_seconds": 30})).json()
        assert refused == {"acquired": False, "token": None, "holder": "alice", "expires_at": got["expires_at"]}

        ext = (await alice.post(f"/api/locks/{key}/extend", json={"token": got["token"], "ttl_seconds": 60})).json()
        extended = shape(await watcher.next(channel=f"locks.{key}"), "LOCK_EXTENDED", key, "alice")
        assert extended["expires_at"] == ext["expires_at"] and extended["fencing_token"] == got["fencing_token"]

        assert (await alice.request("DELETE", f"/api/locks/{key}", json={"token": got["token"]})).json() == {"released": True}
        released = shape(await watcher.next(channel=f"locks.{key}"), "LOCK_RELEASED", key, "alice")
        assert released["fencing_token"] == got["fencing_token"]

        short = (await bob.post(f"/api/locks/{key}", json={"ttl_seconds": 1})).json()
        shape(await watcher.next(channel=f"locks.{key}"), "LOCK_ACQUIRED", key, "bob")
        # Nobody touches the lock: the expiry sweep announces it, once, with the grant it ended.
        expired = shape(await watcher.next(channel=f"locks.{key}"), "LOCK_EXPIRED", key, "bob")
        assert expired["fencing_token"] == short["fencing_token"] and expired["expires_at"] == short["expires_at"]
        await watcher.nothing(channel=f"locks.{key}", wait=1.2)  # no second LOCK_EXPIRED from another node
        assert (await alice.get(f"/api/locks/{key}")).json()["locked"] is False
    await watcher.close()


async def test_a_websocket_lock_released_by_disconnect_is_announced(nodes: list[ServerProcess]) -> None:
    a, b = nodes
    key = unique("ws")
    watcher = await WsClient.connect(b, "watcher")
    await watcher.request("SUBSCRIBE", {"channel": f"locks.{key}"})
    holder = await WsClient.connect(a, "alice:laptop")
    got = await holder.request("LOCK_ACQUIRE", {"key": key, "release_on_disconnect": True})
    shape(await watcher.next(channel=f"locks.{key}"), "LOCK_ACQUIRED", key, "alice")
    refused = await watcher.request("LOCK_ACQUIRE", {"key": key})
    assert refused == {"acquired": False, "token": None, "holder": "alice", "expires_at": got["expires_at"]}
    await holder.close()
    assert shape(await watcher.next(channel=f"locks.{key}"), "LOCK_RELEASED", key, "alice")["fencing_token"] == got["fencing_token"]
    await watcher.close()


async def test_lock_channels_are_the_servers_to_publish(shared_server: ServerProcess) -> None:
    client = await WsClient.connect(shared_server, "mallory")
    with pytest.raises(RequestFailed) as refused:
        await client.request("PUBLISH", {"channel": "locks.doc", "data": {"fake": True}})
    assert refused.value.data["code"] == "forbidden"
    async with shared_server.http("mallory") as http:
        r = await http.post("/api/channels/locks.doc/publish", json={"type": "LOCK_RELEASED", "data": {}})
        assert r.status_code == 403
    await client.close()
