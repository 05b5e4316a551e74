"""Presence over a real server: REST heartbeats, WebSocket presence, events, expiry, access."""

from __future__ import annotations

import asyncio
import sys
import time

import pytest

from tests.helpers import RequestFailed, ServerProcess, WsClient

# A client in its own process, so it can be SIGKILLed: no close frame, no goodbye.
CLIENT = r"""
import asyncio, json, sys, websockets
async def main():
    ws = await websockets.connect(sys.argv[1])
    await ws.recv()
    await ws.send(json.dumps({"type": "SUBSCRIBE", "id": "s", "data": {"channel": sys.argv[2], "presence": True}}))
    while json.loads(await ws.recv()).get("id") != "s":
        pass
    print("ready", flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def spawn_client(server: ServerProcess, token: str, channel: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, server.ws_url(token), channel, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert (await asyncio.wait_for(proc.stdout.readline(), 15)).strip() == b"ready"
    return proc


async def users(server: ServerProcess, key: str) -> list[str]:
    async with server.http("watcher") as http:
        r = await http.get(f"/api/presence/{key}")
        assert r.status_code == 200, r.text
        return r.json()["users"]  # type: ignore[no-any-return]


async def gone_within(server: ServerProcess, key: str, user: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while user in await users(server, key):
        assert time.monotonic() < deadline, f"{user} still present in {key} after {seconds} s"
        await asyncio.sleep(0.05)


async def test_ws_presence_events_and_multi_device(shared_server: ServerProcess) -> None:
    watcher = await WsClient.connect(shared_server, "watcher")
    await watcher.request("SUBSCRIBE", {"channel": "presence.room1"})
    phone = await WsClient.connect(shared_server, "bob:phone")
    await phone.request("SUBSCRIBE", {"channel": "presence.room1", "presence": True})
    joined = await watcher.next("PRESENCE_JOINED", channel="presence.room1")
    assert joined["data"] == {"user_id": "bob"} and joined["offset"] >= 1
    assert await users(shared_server, "room1") == ["bob"]
    # a second device of the same user: still one member, no second join
    laptop = await WsClient.connect(shared_server, "bob:laptop")
    await laptop.request("SUBSCRIBE", {"channel": "presence.room1", "presence": True})
    await phone.close()
    await watcher.nothing("PRESENCE_LEFT", wait=0.4)
    await watcher.nothing("PRESENCE_JOINED", wait=0.01)
    assert await users(shared_server, "room1") == ["bob"]
    # the last device goes: bob leaves
    await laptop.close()
    left = await watcher.next("PRESENCE_LEFT", channel="presence.room1")
    assert left["data"] == {"user_id": "bob"} and left["offset"] > joined["offset"]
    assert await users(shared_server, "room1") == []
    await watcher.close()


async def test_rest_and_ws_share_one_set(shared_server: ServerProcess) -> None:
    watcher = await WsClient.connect(shared_server, "watcher")
    await watcher.request("SUBSCRIBE", {"channel": "presence.shared"})
    async with shared_server.http("carol:web") as http:
        assert (await http.post("/api/presence/shared", json={"user_id": "carol"})).json() == {}
    assert (await watcher.next("PRESENCE_JOINED"))["data"] == {"user_id": "carol"}
    # WebSocket presence on a channel that is not presence.*: the key is the channel itself
    ws = await WsClient.connect(shared_server, "carol:phone")
    await ws.request("SUBSCRIBE", {"channel": "presence.shared", "presence": True})
    await ws.request("SUBSCRIBE", {"channel": "public.chat", "presence": True})
    await watcher.nothing("PRESENCE_JOINED", wait=0.3)
    assert await users(shared_server, "shared") == ["carol"]
    assert await users(shared_server, "public.chat") == ["carol"]
    # unsubscribing ends WebSocket presence, the REST heartbeat still holds her
    await ws.request("UNSUBSCRIBE", {"channel": "presence.shared"})
    assert await users(shared_server, "shared") == ["carol"]
    async with shared_server.http("carol:web") as http:
        assert (await http.delete("/api/presence/shared/carol")).json() == {}
    assert (await watcher.next("PRESENCE_LEFT"))["data"] == {"user_id": "carol"}
    assert await users(shared_server, "shared") == []
    await ws.request("UNSUBSCRIBE", {"channel": "public.chat"})
    assert await users(shared_server, "public.chat") == []
    await ws.close(); await watcher.close()


async def test_state_change_is_presence_updated_never_leave_and_join(shared_server: ServerProcess) -> None:
    watcher = await WsClient.connect(shared_server, "watcher")
    await watcher.request("SUBSCRIBE", {"channel": "presence.doc7"})
    dan = await WsClient.connect(shared_server, "dan")
    await dan.request("SUBSCRIBE", {"channel": "presence.doc7", "presence": True, "state": {"typing": False}})
    joined = await watcher.next("PRESENCE_JOINED")
    assert joined["data"] == {"user_id": "dan", "state": {"typing": False}}
    await dan.request("SUBSCRIBE", {"channel": "presence.doc7", "presence": True, "state": {"typing": True}})
    updated = await watcher.next()
    assert updated["type"] == "PRESENCE_UPDATED" and updated["data"] == {"user_id": "dan", "state": {"typing": True}}
    # the same state again: nothing; over REST the state is readable and settable too
    await dan.request("SUBSCRIBE", {"channel": "presence.doc7", "presence": True, "state": {"typing": True}})
    await watcher.nothing(wait=0.3)
    async with shared_server.http("dan") as http:
        await http.post("/api/presence/doc7", json={"user_id": "dan", "state": {"typing": False}})
        assert (await watcher.next())["type"] == "PRESENCE_UPDATED"
        body = (await http.get("/api/presence/doc7", params={"states": "true"})).json()
        assert body == {"users": ["dan"], "states": {"dan": {"typing": False}}}
        r = await http.post("/api/presence/doc7", json={"user_id": "dan", "state": "x" * 5000})
        assert r.status_code == 413 and r.json()["error"]["field"] == "state"
    await dan.close(); await watcher.close()


async def test_user_id_must_be_the_callers_own(shared_server: ServerProcess) -> None:
    async with shared_server.http("mallory") as http:
        r = await http.post("/api/presence/room9", json={"user_id": "alice"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await http.delete("/api/presence/room9/alice")
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await http.post("/api/presence/room9", json={})  # no user_id: the caller's own heartbeat
        assert r.status_code == 200 and await users(shared_server, "room9") == ["mallory"]
        assert (await http.delete("/api/presence/room9/mallory")).status_code == 200
        r = await http.post("/api/presence/room%20nine", json={"user_id": "mallory"})
        assert r.status_code == 400 and "key" in r.json()["error"]["message"]
    assert await users(shared_server, "room9") == []
    async with shared_server.http(api_key=True) as backend:  # the API key acts for anyone
        assert (await backend.post("/api/presence/room9", json={"user_id": "alice"})).status_code == 200
        assert await users(shared_server, "room9") == ["alice"]
        assert (await backend.delete("/api/presence/room9/alice")).status_code == 200
        r = await backend.post("/api/presence/room9", json={"user_id": "not a user id"})
        assert r.status_code == 422
    assert await users(shared_server, "room9") == []


async def test_clients_may_not_publish_presence_events(shared_server: ServerProcess) -> None:
    c = await WsClient.connect(shared_server, "mallory")
    with pytest.raises(RequestFailed) as err:
        await c.request("PUBLISH", {"channel": "presence.room1", "data": {"user_id": "alice"}})
    assert err.value.code == "forbidden"
    async with shared_server.http("mallory") as http:
        r = await http.post("/api/channels/presence.room1/publish", json={"type": "PRESENCE_JOINED", "data": {}})
        assert r.status_code == 403
    await c.close()


async def test_vanished_clients_expire_within_ttl_plus_one_second(server_factory) -> None:
    srv = server_factory("--presence-ttl", "1")
    watcher = await WsClient.connect(srv, "watcher")
    await watcher.request("SUBSCRIBE", {"channel": "presence.live"})
    # a REST client that stops heartbeating
    async with srv.http("erin") as http:
        await http.post("/api/presence/live", json={"user_id": "erin"})
    assert await users(srv, "live") == ["erin"]
    await gone_within(srv, "live", "erin", 1 + 1)
    assert (await watcher.next("PRESENCE_LEFT"))["data"] == {"user_id": "erin"}
    # two WebSocket devices of one user, killed without goodbye one after the other
    phone = await spawn_client(srv, "frank:phone", "presence.live")
    laptop = await spawn_client(srv, "frank:laptop", "presence.live")
    assert (await watcher.next("PRESENCE_JOINED"))["data"] == {"user_id": "frank"}
    phone.kill(); await phone.wait()
    await asyncio.sleep(1.5)  # longer than the TTL: the live laptop keeps frank present
    assert await users(srv, "live") == ["frank"]
    await watcher.nothing("PRESENCE_LEFT", wait=0.01)
    laptop.kill(); await laptop.wait()
    await gone_within(srv, "live", "frank", 1 + 1)
    assert (await watcher.next("PRESENCE_LEFT"))["data"] == {"user_id": "frank"}
    await watcher.close()


async def test_heartbeats_keep_a_user_present_past_the_ttl(server_factory) -> None:
    srv = server_factory("--presence-ttl", "3")
    async with srv.http("gina") as http:
        for _ in range(9):  # 4.5 s of heartbeats every 0.5 s, past the TTL, with slack for a loaded machine
            await http.post("/api/presence/beat", json={"user_id": "gina"})
            await asyncio.sleep(0.5)
            assert await users(srv, "beat") == ["gina"]
        await gauge_reads(srv, "tether_presence_members", 1.0)
        await http.delete("/api/presence/beat/gina")
    await gauge_reads(srv, "tether_presence_members", 0.0)


async def gauge_reads(server: ServerProcess, name: str, value: float) -> None:
    async with server.http() as http:
        for _ in range(100):
            if f"{name} {value}" in (await http.get("/metrics")).text:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"{name} never read {value}")


async def test_presence_of_a_channel_key_follows_that_channels_rules(shared_server: ServerProcess) -> None:
    """users.bob is bob's own channel: its presence is bob's too."""
    alice = await WsClient.connect(shared_server, "alice")
    with pytest.raises(RequestFailed) as err:
        await alice.request("SUBSCRIBE", {"channel": "presence.users.bob"})
    assert err.value.code == "forbidden"
    async with shared_server.http("alice") as http:
        assert (await http.get("/api/presence/users.bob")).status_code == 403
        assert (await http.post("/api/presence/users.bob", json={"user_id": "alice"})).status_code == 403
        assert (await http.get("/api/presence/public.lobby")).status_code == 200  # public.*: anyone
    bob = await WsClient.connect(shared_server, "bob")
    await bob.request("SUBSCRIBE", {"channel": "presence.users.bob", "presence": True})
    async with shared_server.http("bob") as http:
        assert (await http.get("/api/presence/users.bob")).json() == {"users": ["bob"]}
    await alice.close(); await bob.close()
