"""Live sessions (SPEC §4.4) over real HTTP and WebSockets: browse, join, chat, edit, end, privacy, validation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.helpers import RequestFailed, WsClient


async def create(srv: Any, token: str, **fields: Any) -> dict[str, Any]:
    async with srv.http(token) as h:
        r = await h.post("/api/sessions", json={"title": "Morning Prayer", **fields})
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]


async def test_second_user_sees_session_join_messages_and_end_live(shared_server) -> None:
    srv = shared_server
    bob_phone = await WsClient.connect(srv, "bob:phone")
    await bob_phone.request("SUBSCRIBE", {"channel": "sessions"})

    s = await create(srv, "alice", description="Join us", category="Prayer", max_participants=10, tags=["prayer", "morning"])
    assert s["host_id"] == "alice" and s["current_participants"] == 1 and s["is_active"] is True and s["version"] == 1
    assert set(s) >= {"id", "title", "description", "category", "tags", "max_participants", "current_participants",
                      "is_private", "host_id", "is_active", "created_at", "updated_at", "version"}
    ev = await bob_phone.next("SESSION_CREATED", channel="sessions")
    assert ev["data"] == s and isinstance(ev["offset"], int)
    sid = s["id"]

    alice = await WsClient.connect(srv, "alice:laptop")
    await alice.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
    async with srv.http("bob:phone") as bob:
        r = await bob.post(f"/api/sessions/{sid}/join", json={"user_name": "Bob"})
        assert r.status_code == 200 and r.json()["joined"] is True
        assert r.json()["session"]["current_participants"] == 2
    joined = await alice.next("PARTICIPANT_JOINED", channel=f"sessions.{sid}")
    assert joined["data"]["participant"]["user_id"] == "bob" and joined["data"]["current_participants"] == 2
    sysmsg = await alice.next("MESSAGE_CREATED", channel=f"sessions.{sid}")
    assert sysmsg["data"]["message_type"] == "system" and "Bob joined" in sysmsg["data"]["message"]
    assert sysmsg["offset"] == joined["offset"] + 1
    count = await bob_phone.next("SESSION_UPDATED", channel="sessions")
    assert count["data"]["current_participants"] == 2

    # a second device of bob joins too: still one seat, no event
    bob_tablet = await WsClient.connect(srv, "bob:tablet")
    again = await bob_tablet.request("SESSION_JOIN", {"session_id": sid})
    assert again["joined"] is False and again["session"]["current_participants"] == 2
    for dev in (bob_phone, bob_tablet):
        await dev.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})

    sent = []
    async with srv.http("alice") as a:
        for i, kind in enumerate(["text", "prayer", "scripture", "text", "text"]):
            r = await a.post(f"/api/sessions/{sid}/messages", json={"message": f"m{i}", "message_type": kind})
            assert r.status_code == 201, r.text
            sent.append(r.json())
    for dev in (bob_phone, bob_tablet):
        got = [await dev.next("MESSAGE_CREATED", channel=f"sessions.{sid}") for _ in sent]
        assert [g["data"] for g in got] == sent
        offsets = [g["offset"] for g in got]
        assert offsets == list(range(offsets[0], offsets[0] + len(sent)))
    await alice.nothing("PARTICIPANT_JOINED")

    async with srv.http("alice") as a:
        r = await a.delete(f"/api/sessions/{sid}")
        assert r.status_code == 200 and r.json()["is_active"] is False
    for dev in (bob_phone, bob_tablet):
        end_msg = await dev.next("MESSAGE_CREATED", channel=f"sessions.{sid}")
        assert end_msg["data"]["message_type"] == "system"
        ended = await dev.next("SESSION_ENDED", channel=f"sessions.{sid}")
        assert ended["data"]["is_active"] is False and ended["data"]["current_participants"] == 0
    browse_end = await bob_phone.next("SESSION_ENDED", channel="sessions")
    assert browse_end["data"]["id"] == sid
    async with srv.http("bob") as b:
        listed = (await b.get("/api/sessions")).json()["sessions"]
        assert sid not in [x["id"] for x in listed]
        r = await b.post(f"/api/sessions/{sid}/join")
        assert r.status_code == 409 and "ended" in r.json()["error"]["message"]
        parts = (await b.get(f"/api/sessions/{sid}/participants")).json()["participants"]
        assert [(p["user_id"], p["is_host"]) for p in parts] == [("alice", True), ("bob", False)]
        assert all(p["left_at"] for p in parts)
    for c in (alice, bob_phone, bob_tablet):
        await c.close()


async def test_same_operations_over_websocket(shared_server) -> None:
    srv = shared_server
    ann = await WsClient.connect(srv, "ann")
    ben = await WsClient.connect(srv, "ben")
    s = await ann.request("SESSION_CREATE", {"title": "Evening psalms", "category": "Study", "tags": ["Psalms"]})
    sid = s["id"]
    listed = await ben.request("SESSION_LIST", {"tag": "psalms", "category": "study"})
    assert [x["id"] for x in listed["sessions"]] == [sid]
    assert (await ben.request("SESSION_LIST", {"q": "PSALMS"}))["sessions"][0]["id"] == sid
    assert (await ben.request("SESSION_GET", {"session_id": sid}))["title"] == "Evening psalms"
    with pytest.raises(RequestFailed) as err:  # not a participant: cannot follow the room
        await ben.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
    assert err.value.code == "forbidden"
    await ben.request("SESSION_JOIN", {"session_id": sid, "user_name": "Ben"})
    await ben.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
    with pytest.raises(RequestFailed) as err:  # events come from the server only
        await ben.request("PUBLISH", {"channel": f"sessions.{sid}", "data": {"x": 1}})
    assert err.value.code == "forbidden"
    msg = await ann.request("SESSION_MESSAGE", {"session_id": sid, "message": "Psalm 23", "message_type": "scripture"})
    live = await ben.next("MESSAGE_CREATED", channel=f"sessions.{sid}")
    assert live["data"] == msg
    page = await ben.request("SESSION_MESSAGES", {"session_id": sid, "limit": 10})
    assert page["messages"][-1] == msg and page["messages"][0]["message_type"] == "system"
    parts = await ben.request("SESSION_PARTICIPANTS", {"session_id": sid})
    assert [p["user_id"] for p in parts["participants"]] == ["ann", "ben"]
    upd = await ann.request("SESSION_UPDATE", {"session_id": sid, "version": s["version"], "title": "Night psalms"})
    assert upd["version"] == s["version"] + 1
    assert (await ben.next("SESSION_UPDATED", channel=f"sessions.{sid}"))["data"] == upd
    with pytest.raises(RequestFailed) as err:
        await ben.request("SESSION_UPDATE", {"session_id": sid, "title": "mine now"})
    assert err.value.code == "forbidden"
    with pytest.raises(RequestFailed) as err:
        await ben.request("SESSION_MESSAGE", {"session_id": sid, "message": "x", "message_type": "system"})
    assert err.value.code == "bad_request" and err.value.data["field"] == "message_type"
    left = await ben.request("SESSION_LEAVE", {"session_id": sid})
    assert left["session"]["current_participants"] == 1 and left["participant"]["left_at"]
    assert (await ben.next("PARTICIPANT_LEFT", channel=f"sessions.{sid}"))["data"]["participant"]["user_id"] == "ben"
    await ben.next("MESSAGE_CREATED", channel=f"sessions.{sid}")  # "Ben left"
    await ann.request("SESSION_MESSAGE", {"session_id": sid, "message": "said after ben left"})
    while (f := await ben.next(channel=f"sessions.{sid}"))["type"] != "UNSUBSCRIBED":  # a leaver's subscription is dropped
        assert "said after ben left" not in str(f), f
    assert f["data"] == {"channel": f"sessions.{sid}", "reason": "access revoked"}
    await ben.nothing(channel=f"sessions.{sid}")
    with pytest.raises(RequestFailed) as err:  # left: no more reading the chat
        await ben.request("SESSION_MESSAGES", {"session_id": sid})
    assert err.value.code == "forbidden"
    await ben.request("SESSION_JOIN", {"session_id": sid})  # rejoin
    await ann.request("SESSION_END", {"session_id": sid})
    with pytest.raises(RequestFailed) as err:
        await ann.request("SESSION_END", {"session_id": sid})
    assert err.value.code == "conflict"
    await ann.close(); await ben.close()


async def test_private_session_is_invisible_to_outsiders(shared_server) -> None:
    srv = shared_server
    carol = await WsClient.connect(srv, "carol")
    dave = await WsClient.connect(srv, "dave")
    for c in (carol, dave):
        await c.request("SUBSCRIBE", {"channel": "sessions"})
    s = await create(srv, "hal", title="Family prayer", is_private=True, tags=["family"])
    sid = s["id"]
    async with srv.http("carol") as h:
        assert (await h.get(f"/api/sessions/{sid}")).status_code == 404
        for path in ("participants", "messages"):
            r = await h.get(f"/api/sessions/{sid}/{path}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert (await h.post(f"/api/sessions/{sid}/join")).status_code == 404
        assert (await h.post(f"/api/sessions/{sid}/messages", json={"message": "hi"})).status_code == 404
        assert (await h.patch(f"/api/sessions/{sid}", json={"title": "x"})).status_code == 404
        assert (await h.delete(f"/api/sessions/{sid}")).status_code == 404
        assert (await h.post(f"/api/sessions/{sid}/invite", json={"user_id": "carol"})).status_code == 404
        assert sid not in [x["id"] for x in (await h.get("/api/sessions", params={"q": "family"})).json()["sessions"]]
    for op in ("SESSION_GET", "SESSION_JOIN", "SESSION_MESSAGES", "SESSION_PARTICIPANTS"):
        with pytest.raises(RequestFailed) as err:
            await carol.request(op, {"session_id": sid})
        assert err.value.code == "not_found"
    with pytest.raises(RequestFailed) as err:
        await carol.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
    assert err.value.code == "not_found"

    # only the host invites; the invitee is told on its own user channel and may then join
    async with srv.http("dave") as h:
        assert (await h.post(f"/api/sessions/{sid}/invite", json={"user_id": "dave"})).status_code == 404
    async with srv.http("hal") as h:
        r = await h.post(f"/api/sessions/{sid}/invite", json={"user_id": "dave"})
        assert r.status_code == 200 and r.json()["invited"] is True
    invited = await dave.next("SESSION_INVITED", channel="users.dave")
    assert invited["data"]["session"]["id"] == sid and invited["data"]["invited_by"] == "hal"
    listed = await dave.request("SESSION_LIST", {})
    assert sid in [x["id"] for x in listed["sessions"]]
    await dave.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
    await dave.request("SESSION_JOIN", {"session_id": sid})
    await dave.next("PARTICIPANT_JOINED", channel=f"sessions.{sid}")
    async with srv.http("hal") as h:
        await h.patch(f"/api/sessions/{sid}", json={"description": "changed"})
        assert (await h.patch(f"/api/sessions/{sid}", json={"is_private": False})).status_code == 422
        await h.post(f"/api/sessions/{sid}/messages", json={"message": "secret"})
        await h.delete(f"/api/sessions/{sid}")
    await dave.next("SESSION_ENDED", channel=f"sessions.{sid}")
    # nothing of the private session ever reached the browse channel or the outsider
    await carol.nothing(wait=0.3)
    await dave.nothing(channel="sessions", wait=0.1)
    await carol.close(); await dave.close()


@pytest.mark.parametrize("body, field", [
    ({"title": ""}, "title"),
    ({"title": "   "}, "title"),
    ({"title": "x" * 201}, "title"),
    ({"title": "ok", "max_participants": 1}, "max_participants"),
    ({"title": "ok", "max_participants": 51}, "max_participants"),
    ({"title": "ok", "description": "d" * 2001}, "description"),
    ({"title": "ok", "tags": [f"t{i}" for i in range(11)]}, "tags"),
    ({"title": "ok", "tags": ["x" * 33]}, "tags.0"),
    ({"title": "ok", "is_private": "maybe"}, "is_private"),
    ({"title": "ok", "host_id": "me"}, "host_id"),
    ({}, "title"),
])
async def test_invalid_session_input_names_the_field(shared_server, body: dict[str, Any], field: str) -> None:
    async with shared_server.http("val") as h:
        r = await h.post("/api/sessions", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field and field.split(".")[0] in r.json()["error"]["message"]
    ws = await WsClient.connect(shared_server, "val")
    reply = await ws.frame("SESSION_CREATE", body)
    assert reply["type"] == "ERROR" and reply["data"]["code"] == "bad_request" and reply["data"]["field"] == field
    await ws.close()


async def test_invalid_messages_and_edits(shared_server) -> None:
    s = await create(shared_server, "vic", max_participants=5)
    sid = s["id"]
    async with shared_server.http("vic") as h:
        for body, field in [({"message": ""}, "message"), ({"message": "  "}, "message"),
                            ({"message": "x" * 4001}, "message"), ({"message": "hi", "message_type": "system"}, "message_type"),
                            ({"message": "hi", "message_type": "shout"}, "message_type"), ({}, "message")]:
            r = await h.post(f"/api/sessions/{sid}/messages", json=body)
            assert r.status_code == 422 and r.json()["error"]["field"] == field, (body, r.text)
        assert (await h.post(f"/api/sessions/{sid}/messages", json={"message": "x" * 4000})).status_code == 201
        for body, field in [({"title": ""}, "title"), ({"max_participants": 51}, "max_participants"),
                            ({"version": "old"}, "version"), ({"tags": ["a"] * 11}, "tags")]:
            r = await h.patch(f"/api/sessions/{sid}", json=body)
            assert r.status_code == 422 and r.json()["error"]["field"] == field, (body, r.text)
        r = await h.get(f"/api/sessions/{sid}/messages", params={"limit": 0})
        assert r.status_code == 422 and r.json()["error"]["field"] == "limit"
        r = await h.get("/api/sessions", params={"after": "garbage"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "after"
        assert (await h.get("/api/sessions/nope")).status_code == 404
        r = await h.post(f"/api/sessions/{sid}/join", json={"user_id": "someone-else"})
        assert r.status_code == 403
    async with shared_server.http("outsider") as h:  # public session, not a participant
        r = await h.post(f"/api/sessions/{sid}/messages", json={"message": "hi"})
        assert r.status_code == 403 and "join" in r.json()["error"]["message"]
        assert (await h.get(f"/api/sessions/{sid}/messages")).status_code == 403


async def test_versioned_edit_and_host_only(shared_server) -> None:
    s = await create(shared_server, "hank", max_participants=3)
    sid = s["id"]
    watcher = await WsClient.connect(shared_server, "wanda")
    await watcher.request("SUBSCRIBE", {"channel": "sessions"})
    async with shared_server.http("hank") as h:
        r = await h.patch(f"/api/sessions/{sid}", json={"version": 1, "title": "New title", "tags": ["a", "A", "b"]})
        assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["tags"] == ["a", "b"]
        stale = await h.patch(f"/api/sessions/{sid}", json={"version": 1, "title": "Lost edit"})
        assert stale.status_code == 409
        assert stale.json()["error"]["session"]["title"] == "New title" and stale.json()["error"]["session"]["version"] == 2
    assert (await watcher.next("SESSION_UPDATED", channel="sessions"))["data"]["version"] == 2
    await watcher.nothing("SESSION_UPDATED", channel="sessions")  # the refused edit published nothing
    async with shared_server.http("wanda") as w:
        assert (await w.post(f"/api/sessions/{sid}/join")).status_code == 200
        r = await w.patch(f"/api/sessions/{sid}", json={"title": "hijack"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        assert (await w.delete(f"/api/sessions/{sid}")).status_code == 403
    async with shared_server.http("hank") as h:
        r = await h.patch(f"/api/sessions/{sid}", json={"max_participants": 2})
        assert r.status_code == 200
        r = await h.patch(f"/api/sessions/{sid}", json={"max_participants": 2, "title": "t"})
        assert r.status_code == 200
    async with shared_server.http("xena") as x:
        r = await x.post(f"/api/sessions/{sid}/join")
        assert r.status_code == 409 and "full" in r.json()["error"]["message"]
    await watcher.close()


async def test_host_leaving_hands_over_then_last_leave_ends(shared_server) -> None:
    s = await create(shared_server, "h1")
    sid = s["id"]
    for u in ("p2", "p3"):
        async with shared_server.http(u) as c:
            assert (await c.post(f"/api/sessions/{sid}/join")).status_code == 200
    p3 = await WsClient.connect(shared_server, "p3")
    await p3.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
    async with shared_server.http("h1") as h:
        r = await h.post(f"/api/sessions/{sid}/leave")
        assert r.status_code == 200 and r.json()["session"]["host_id"] == "p2"
        assert (await h.post(f"/api/sessions/{sid}/leave")).status_code == 409
    assert (await p3.next("PARTICIPANT_LEFT"))["data"]["participant"]["user_id"] == "h1"
    upd = await p3.next("SESSION_UPDATED", channel=f"sessions.{sid}")
    assert upd["data"]["host_id"] == "p2"
    parts = await p3.request("SESSION_PARTICIPANTS", {"session_id": sid})
    assert {p["user_id"]: p["is_host"] for p in parts["participants"]} == {"h1": False, "p2": True, "p3": False}
    for u in ("p2", "p3"):
        async with shared_server.http(u) as c:
            assert (await c.post(f"/api/sessions/{sid}/leave")).status_code == 200
    async with shared_server.http("p3") as c:
        final = (await c.get(f"/api/sessions/{sid}")).json()
        assert final["is_active"] is False and final["host_id"] == "p3" and final["current_participants"] == 0
        texts = [m["message"] for m in (await c.get(f"/api/sessions/{sid}/messages")).json()["messages"]]
        assert texts[-1].startswith("The session has ended")
    await p3.close()


async def test_message_history_pages_both_ways_by_stable_cursor(shared_server) -> None:
    s = await create(shared_server, "pat")
    sid = s["id"]
    async with shared_server.http("pat") as h:
        for i in range(25):
            assert (await h.post(f"/api/sessions/{sid}/messages", json={"message": f"n{i}"})).status_code == 201
        newest = (await h.get(f"/api/sessions/{sid}/messages", params={"limit": 10})).json()
        assert [m["message"] for m in newest["messages"]] == [f"n{i}" for i in range(15, 25)] and newest["has_more"]
        older = (await h.get(f"/api/sessions/{sid}/messages", params={"limit": 10, "before": newest["messages"][0]["seq"]})).json()
        assert [m["message"] for m in older["messages"]] == [f"n{i}" for i in range(5, 15)]
        await h.post(f"/api/sessions/{sid}/messages", json={"message": "late"})  # does not shift the pages
        oldest = (await h.get(f"/api/sessions/{sid}/messages", params={"limit": 10, "before": older["messages"][0]["seq"]})).json()
        assert [m["message"] for m in oldest["messages"]] == [f"n{i}" for i in range(5)] and not oldest["has_more"]
        seqs = [m["seq"] for m in oldest["messages"] + older["messages"] + newest["messages"]]
        assert seqs == sorted(seqs) and len(set(seqs)) == 25
        fwd, after, got = True, 0, []
        while fwd:
            page = (await h.get(f"/api/sessions/{sid}/messages", params={"limit": 7, "after": after})).json()
            got += [m["message"] for m in page["messages"]]
            after, fwd = page["messages"][-1]["seq"], page["has_more"]
        assert got == [f"n{i}" for i in range(25)] + ["late"]
        both = (await h.get(f"/api/sessions/{sid}/messages", params={"after": seqs[2], "before": seqs[6]})).json()
        assert [m["seq"] for m in both["messages"]] == seqs[3:6]
        # A message's id is a cursor too: the same pages as by its seq.
        ids = [m["id"] for m in oldest["messages"] + older["messages"] + newest["messages"]]
        by_id = (await h.get(f"/api/sessions/{sid}/messages", params={"after": ids[2], "before": ids[6]})).json()
        assert [m["seq"] for m in by_id["messages"]] == seqs[3:6]
        page = (await h.get(f"/api/sessions/{sid}/messages", params={"limit": 10, "before": newest["messages"][0]["id"]})).json()
        assert [m["message"] for m in page["messages"]] == [f"n{i}" for i in range(5, 15)]
        r = await h.get(f"/api/sessions/{sid}/messages", params={"before": "no-such-message"})
        assert r.status_code == 422 and "before" in r.json()["error"]["message"]
        for bad in ("", "a b", "x" * 129, str(2**64)):
            r = await h.get(f"/api/sessions/{sid}/messages", params={"after": bad})
            assert r.status_code in (400, 422), (bad, r.text)


async def test_browse_search_filters_and_pagination(shared_server) -> None:
    tag = "zq" + str(id(object()))[-6:]
    made = []
    for i in range(5):
        made.append(await create(shared_server, "bro", title=f"Browse {i}", tags=[tag], category="Cat" if i % 2 else "Other"))
    async with shared_server.http("viewer") as v:
        ids, after = [], None
        while True:
            params = {"tag": tag, "limit": 2} | ({"after": after} if after else {})
            page = (await v.get("/api/sessions", params=params)).json()
            ids += [x["id"] for x in page["sessions"]]
            after = page["next"]
            if not after:
                break
        assert ids == [s["id"] for s in reversed(made)]
        cat = (await v.get("/api/sessions", params={"tag": tag, "category": "cat"})).json()["sessions"]
        assert sorted(x["title"] for x in cat) == ["Browse 1", "Browse 3"]
        assert [x["title"] for x in (await v.get("/api/sessions", params={"q": tag.upper()})).json()["sessions"]][-1] == "Browse 0"
        assert (await v.get("/api/sessions", params={"q": "%", "tag": tag})).json()["sessions"] == []


async def test_concurrent_messages_keep_one_order(shared_server) -> None:
    s = await create(shared_server, "ord")
    sid = s["id"]
    listener = await WsClient.connect(shared_server, "ord:watch")
    await listener.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
    async with shared_server.http("ord") as h:
        replies = await asyncio.gather(*[h.post(f"/api/sessions/{sid}/messages", json={"message": f"c{i}"}) for i in range(20)])
    assert all(r.status_code == 201 for r in replies)
    live = [await listener.next("MESSAGE_CREATED", channel=f"sessions.{sid}") for _ in range(20)]
    assert [e["data"]["seq"] for e in live] == sorted(e["data"]["seq"] for e in live)
    await listener.close()


async def test_retried_create_with_idempotency_key_creates_once(shared_server) -> None:
    watcher = await WsClient.connect(shared_server, "idem-watch")
    await watcher.request("SUBSCRIBE", {"channel": "sessions"})
    async with shared_server.http("idem") as h:
        first = await h.post("/api/sessions", json={"title": "Once"}, headers={"Idempotency-Key": "k1"})
        again = await h.post("/api/sessions", json={"title": "Once"}, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 201 and first.json() == again.json()
    assert (await watcher.next("SESSION_CREATED", channel="sessions"))["data"]["id"] == first.json()["id"]
    await watcher.nothing("SESSION_CREATED", channel="sessions")
    await watcher.close()
