"""Live sessions under racing joins, and across a server restart on the same data dir."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.helpers import WsClient


async def test_racing_joins_never_oversubscribe_a_50_seat_session(server) -> None:
    async with server.http("host") as h:
        s = (await h.post("/api/sessions", json={"title": "Big room", "max_participants": 50})).json()
    sid = s["id"]
    watcher = await WsClient.connect(server, "watcher")
    await watcher.request("SUBSCRIBE", {"channel": "sessions"})

    async def join(user: str) -> httpx.Response:
        async with server.http(user) as c:
            return await c.post(f"/api/sessions/{sid}/join")

    # 80 users race for the 49 free seats (the host holds the 50th)
    replies = await asyncio.gather(*[join(f"racer{i}") for i in range(80)])
    ok = [r for r in replies if r.status_code == 200]
    refused = [r for r in replies if r.status_code != 200]
    assert len(ok) == 49 and len(refused) == 31
    assert all(r.status_code == 409 and "full" in r.json()["error"]["message"] for r in refused)
    async with server.http("host") as h:
        session = (await h.get(f"/api/sessions/{sid}")).json()
        assert session["current_participants"] == 50
        present = [p for p in (await h.get(f"/api/sessions/{sid}/participants")).json()["participants"] if not p["left_at"]]
        assert len(present) == 50
        joined_msgs = [m for m in (await h.get(f"/api/sessions/{sid}/messages", params={"limit": 200})).json()["messages"]
                       if m["message"].endswith(" joined")]
        assert len(joined_msgs) == 49
    # the browse channel saw exactly one count update per seat taken, ending at 50
    counts = [(await watcher.next("SESSION_UPDATED", channel="sessions"))["data"]["current_participants"] for _ in range(49)]
    assert sorted(counts) == list(range(2, 51))
    await watcher.nothing("SESSION_UPDATED", channel="sessions", wait=0.2)
    assert (await join("number51")).status_code == 409
    # a seat freed is a seat taken again
    seated = [r.json()["participant"]["user_id"] for r in ok]
    async with server.http(seated[0]) as leaver:
        assert (await leaver.post(f"/api/sessions/{sid}/leave")).status_code == 200
    assert (await join("number51")).status_code == 200
    assert (await join("number52")).status_code == 409
    await watcher.close()


async def test_one_user_on_many_devices_takes_one_seat(server) -> None:
    async with server.http("host") as h:
        sid = (await h.post("/api/sessions", json={"title": "Small", "max_participants": 2})).json()["id"]

    async def join(device: str) -> httpx.Response:
        async with server.http(f"multi:{device}") as c:
            return await c.post(f"/api/sessions/{sid}/join")

    replies = await asyncio.gather(*[join(f"d{i}") for i in range(8)])
    assert all(r.status_code == 200 for r in replies)
    assert sum(r.json()["joined"] for r in replies) == 1
    async with server.http("host") as h:
        assert (await h.get(f"/api/sessions/{sid}")).json()["current_participants"] == 2


async def test_sessions_participants_and_messages_survive_a_restart(server) -> None:
    async with server.http("keeper") as h:
        s = (await h.post("/api/sessions", json={"title": "Persistent", "tags": ["keep"], "is_private": True})).json()
        sid = s["id"]
        await h.post(f"/api/sessions/{sid}/invite", json={"user_id": "guest"})
        for i in range(3):
            await h.post(f"/api/sessions/{sid}/messages", json={"message": f"before {i}", "message_type": "prayer"})
    async with server.http("guest") as g:
        assert (await g.post(f"/api/sessions/{sid}/join", json={"user_name": "Guest"})).status_code == 200
    ws = await WsClient.connect(server, "guest")
    ack = await ws.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
    await ws.close()
    async with server.http("keeper") as h:
        before = {
            "session": (await h.get(f"/api/sessions/{sid}")).json(),
            "participants": (await h.get(f"/api/sessions/{sid}/participants")).json(),
            "messages": (await h.get(f"/api/sessions/{sid}/messages")).json(),
        }

    server.stop()
    server.start()

    async with server.http("keeper") as h:
        assert (await h.get(f"/api/sessions/{sid}")).json() == before["session"]
        assert (await h.get(f"/api/sessions/{sid}/participants")).json() == before["participants"]
        assert (await h.get(f"/api/sessions/{sid}/messages")).json() == before["messages"]
        r = await h.post(f"/api/sessions/{sid}/messages", json={"message": "after"})
        assert r.json()["seq"] == before["messages"]["messages"][-1]["seq"] + 1
    async with server.http("guest") as g:  # the invitation and the seat are still there
        assert [x["id"] for x in (await g.get("/api/sessions", params={"tag": "keep"})).json()["sessions"]] == [sid]
        again = (await g.post(f"/api/sessions/{sid}/join")).json()
        assert again["joined"] is False and again["session"]["current_participants"] == 2
    async with server.http("stranger") as x:
        assert (await x.get(f"/api/sessions/{sid}")).status_code == 404
    # a client that reconnects recovers the event it missed while away, with its offset
    ws = await WsClient.connect(server, "guest")
    ack2 = await ws.request("SUBSCRIBE", {"channel": f"sessions.{sid}", "since": {"offset": ack["offset"], "epoch": ack["epoch"]}})
    assert ack2["recovered"] is True
    assert [p["data"]["message"] for p in ack2["publications"]] == ["after"]
    await ws.close()


async def test_racing_joins_on_postgresql(server_factory) -> None:
    """The same seat guarantee on PostgreSQL, where transactions really run concurrently."""
    from tests.services import need_postgres

    url = need_postgres()
    pytest.importorskip("tether.storage.postgres", reason="PostgreSQL backend not merged yet")
    srv = server_factory(env={"TETHER_DATABASE_URL": url})
    async with srv.http("pghost") as h:
        sid = (await h.post("/api/sessions", json={"title": "PG room", "max_participants": 10})).json()["id"]

    async def join(token: str) -> httpx.Response:
        async with srv.http(token) as c:
            return await c.post(f"/api/sessions/{sid}/join")

    replies = await asyncio.gather(*[join(f"pg{i}") for i in range(30)], *[join(f"pgmulti:d{i}") for i in range(5)])
    assert sum(r.status_code == 200 and r.json()["joined"] for r in replies) == 9
    assert all(r.status_code in (200, 409) for r in replies)
    async with srv.http("pghost") as h:
        assert (await h.get(f"/api/sessions/{sid}")).json()["current_participants"] == 10
