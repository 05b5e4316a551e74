"""Versioned documents (SPEC §4.3) over a real server: REST, WebSocket, events, access."""

from __future__ import annotations

import asyncio
import random

import pytest
import websockets

from tests.helpers import API_KEY, RequestFailed, WsClient
from tests.services import need_postgres, unique, with_query


def docs_url(collection: str, doc_id: str = "") -> str:
    return f"/api/collections/{collection}/documents" + (f"/{doc_id}" if doc_id else "")


async def test_rest_crud_etag_conflicts(shared_server) -> None:
    c = unique("c")
    async with shared_server.http("alice") as http:
        r = await http.post(docs_url(c), json={"id": "d1", "data": {"title": "one", "meta": {"a": 1, "b": 2}}})
        assert r.status_code == 201, r.text
        doc = r.json()
        assert {k: doc[k] for k in ("id", "collection", "version", "created_by", "updated_by")} == {
            "id": "d1", "collection": c, "version": 1, "created_by": "alice", "updated_by": "alice"}
        assert doc["data"] == {"title": "one", "meta": {"a": 1, "b": 2}}
        assert doc["created_at"] == doc["updated_at"] and doc["created_at"].endswith("Z")
        assert r.headers["etag"] == '"1"'

        r = await http.get(docs_url(c, "d1"))
        assert r.status_code == 200 and r.json() == doc and r.headers["etag"] == '"1"'
        r = await http.get(docs_url(c, "d1"), headers={"If-None-Match": '"1"'})
        assert r.status_code == 304

        # version in the body: right -> next version; stale -> 409 carrying the current document
        r = await http.put(docs_url(c, "d1"), json={"data": {"title": "two"}, "version": 1})
        assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["data"] == {"title": "two"}
        assert r.headers["etag"] == '"2"'
        r = await http.put(docs_url(c, "d1"), json={"data": {"title": "lost"}, "version": 1})
        assert r.status_code == 409
        err = r.json()["error"]
        assert err["code"] == "conflict" and err["document"]["version"] == 2 and err["document"]["data"] == {"title": "two"}

        # If-Match: mismatch -> 412 (weak or strong tag), match -> applied
        r = await http.put(docs_url(c, "d1"), json={"data": {"title": "lost"}}, headers={"If-Match": 'W/"1"'})
        assert r.status_code == 412 and r.json()["error"]["document"]["version"] == 2
        r = await http.put(docs_url(c, "d1"), json={"data": {"title": "three"}}, headers={"If-Match": '"2"'})
        assert r.status_code == 200 and r.json()["version"] == 3

        # neither: last write wins
        r = await http.put(docs_url(c, "d1"), json={"data": {"title": "four", "meta": {"a": 1, "b": 2}}})
        assert r.status_code == 200 and r.json()["version"] == 4

        # PATCH: JSON merge patch (nested merge, null removes), same version rules
        r = await http.patch(docs_url(c, "d1"), json={"data": {"meta": {"b": None, "c": 3}, "tag": "x"}, "version": 4})
        assert r.status_code == 200, r.text
        assert r.json()["data"] == {"title": "four", "meta": {"a": 1, "c": 3}, "tag": "x"} and r.json()["version"] == 5
        r = await http.patch(docs_url(c, "d1"), json={"data": {"tag": "y"}, "version": 4})
        assert r.status_code == 409 and r.json()["error"]["document"]["data"]["tag"] == "x"
        r = await http.patch(docs_url(c, "d1"), json={"data": {"tag": "y"}}, headers={"If-Match": '"4"'})
        assert r.status_code == 412

        # DELETE: conditional, then gone
        r = await http.delete(docs_url(c, "d1"), params={"version": 4})
        assert r.status_code == 409
        r = await http.delete(docs_url(c, "d1"), headers={"If-Match": '"5"'})
        assert r.status_code == 200 and r.json()["deleted"] is True and r.json()["version"] == 5
        assert (await http.get(docs_url(c, "d1"))).status_code == 404
        assert (await http.put(docs_url(c, "d1"), json={"data": {}})).status_code == 404
        # the id can be used again, from version 1
        r = await http.post(docs_url(c), json={"id": "d1", "data": {}})
        assert r.status_code == 201 and r.json()["version"] == 1
        r = await http.post(docs_url(c), json={"id": "d1", "data": {}})
        assert r.status_code == 409 and r.json()["error"]["document"]["id"] == "d1"


async def test_idempotent_create(shared_server) -> None:
    c = unique("c")
    async with shared_server.http("alice") as http:
        first = await http.post(docs_url(c), json={"data": {"n": 1}}, headers={"Idempotency-Key": "k-1"})
        again = await http.post(docs_url(c), json={"data": {"n": 1}}, headers={"Idempotency-Key": "k-1"})
        assert first.status_code == again.status_code == 201
        assert again.json() == first.json()
        other = await http.post(docs_url(c), json={"data": {"n": 2}}, headers={"Idempotency-Key": "k-2"})
        assert other.json()["id"] != first.json()["id"]
        listed = (await http.get(docs_url(c))).json()
        assert sorted(d["id"] for d in listed["documents"]) == sorted([first.json()["id"], other.json()["id"]])
    # the key is scoped by user: bob's "k-1" is his own
    async with shared_server.http("bob") as http:
        bobs = await http.post(docs_url(c), json={"data": {"n": 3}}, headers={"Idempotency-Key": "k-1"})
        assert bobs.status_code == 201 and bobs.json()["id"] != first.json()["id"]


async def test_websocket_crud_and_conflict(shared_server) -> None:
    c = unique("c")
    ws = await WsClient.connect(shared_server, "alice:phone")
    doc = await ws.request("DOCUMENT_CREATE", {"collection": c, "id": "w1", "data": {"n": 0}, "idempotency_key": "wk"})
    assert doc["version"] == 1 and doc["collection"] == c and doc["created_by"] == "alice"
    assert await ws.request("DOCUMENT_CREATE", {"collection": c, "id": "w1", "data": {"n": 0}, "idempotency_key": "wk"}) == doc
    assert await ws.request("DOCUMENT_GET", {"collection": c, "id": "w1"}) == doc
    upd = await ws.request("DOCUMENT_UPDATE", {"collection": c, "id": "w1", "data": {"n": 1}, "version": 1})
    assert upd["version"] == 2
    reply = await ws.frame("DOCUMENT_UPDATE", {"collection": c, "id": "w1", "data": {"n": 9}, "version": 1})
    assert reply["type"] == "ERROR" and reply["data"]["code"] == "conflict"
    assert reply["data"]["document"]["version"] == 2 and reply["data"]["document"]["data"] == {"n": 1}
    pat = await ws.request("DOCUMENT_PATCH", {"collection": c, "id": "w1", "data": {"m": True}})
    assert pat["data"] == {"n": 1, "m": True} and pat["version"] == 3
    page = await ws.request("DOCUMENT_LIST", {"collection": c, "filter": {"m": True}})
    assert [d["id"] for d in page["documents"]] == ["w1"] and page["next"] is None
    assert (await ws.request("DOCUMENT_LIST", {"collection": c, "filter": {"m": 1}}))["documents"] == []
    gone = await ws.request("DOCUMENT_DELETE", {"collection": c, "id": "w1", "version": 3})
    assert gone["deleted"] is True
    with pytest.raises(RequestFailed) as exc:
        await ws.request("DOCUMENT_GET", {"collection": c, "id": "w1"})
    assert exc.value.code == "not_found"
    await ws.close()


async def test_concurrent_writers_never_lose_an_increment(shared_server) -> None:
    """N writers (half REST, half WebSocket) increment one counter with version checks and retry."""
    c, n = unique("c"), 20
    async with shared_server.http(api_key=True) as admin:
        r = await admin.post(docs_url(c), json={"id": "counter", "data": {"count": 0}, "access": "public",
                                                "members": [f"w{i}" for i in range(n)]})
        assert r.status_code == 201
    conflicts = 0

    async def rest_writer(i: int) -> None:
        nonlocal conflicts
        async with shared_server.http(f"w{i}") as http:
            doc = (await http.get(docs_url(c, "counter"))).json()
            while True:
                r = await http.put(docs_url(c, "counter"),
                                   json={"data": {"count": doc["data"]["count"] + 1}, "version": doc["version"]})
                if r.status_code == 200:
                    return
                assert r.status_code == 409, r.text
                conflicts += 1
                doc = r.json()["error"]["document"]
                await asyncio.sleep(random.random() * 0.01)

    async def ws_writer(i: int) -> None:
        nonlocal conflicts
        ws = await WsClient.connect(shared_server, f"w{i}")
        doc = await ws.request("DOCUMENT_GET", {"collection": c, "id": "counter"})
        while True:
            reply = await ws.frame("DOCUMENT_UPDATE", {"collection": c, "id": "counter", "version": doc["version"],
                                                       "data": {"count": doc["data"]["count"] + 1}})
            if reply["type"] == "ACK":
                break
            assert reply["data"]["code"] == "conflict", reply
            conflicts += 1
            doc = reply["data"]["document"]
            await asyncio.sleep(random.random() * 0.01)
        await ws.close()

    await asyncio.gather(*(rest_writer(i) if i % 2 else ws_writer(i) for i in range(n)))
    async with shared_server.http(api_key=True) as admin:
        final = (await admin.get(docs_url(c, "counter"))).json()
    assert final["data"]["count"] == n and final["version"] == n + 1
    assert conflicts > 0  # the writers really did collide


async def test_two_nodes_on_one_database_never_lose_an_increment(server_factory, tmp_path) -> None:
    """Two server processes share one database: only the conditional UPDATE keeps them honest.

    (Two nodes cannot share one SQLite data dir: the second is refused, so they share PostgreSQL.)"""
    import asyncpg

    schema = unique("twonodes_")
    env = {"TETHER_DATABASE_URL": with_query(need_postgres(), schema=schema)}
    a = server_factory(data_dir=tmp_path / "a", env=env)
    b = server_factory(data_dir=tmp_path / "b", env=env)
    c, n = unique("c"), 16
    async with a.http("alice") as http:
        await http.post(docs_url(c), json={"id": "k", "data": {"count": 0}, "access": "members",
                                           "members": [f"u{i}" for i in range(n)]})

    async def writer(i: int) -> None:
        async with (a if i % 2 else b).http(f"u{i}") as http:
            for _ in range(3):  # three increments each, guarded by If-Match
                while True:
                    doc = (await http.get(docs_url(c, "k"))).json()
                    r = await http.put(docs_url(c, "k"), json={"data": {"count": doc["data"]["count"] + 1}},
                                       headers={"If-Match": '"%d"' % doc["version"]})
                    if r.status_code == 200:
                        break
                    assert r.status_code == 412, r.text

    await asyncio.gather(*(writer(i) for i in range(n)))
    async with b.http("alice") as http:
        final = (await http.get(docs_url(c, "k"))).json()
    conn = await asyncpg.connect(need_postgres())
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
    assert final["data"]["count"] == 3 * n and final["version"] == 3 * n + 1


async def test_events_on_document_and_collection_channels(shared_server) -> None:
    c = unique("c")
    alice = await WsClient.connect(shared_server, "alice")
    bob = await WsClient.connect(shared_server, "bob")
    ack = await bob.request("SUBSCRIBE", {"channel": f"collections.{c}"})
    assert ack["filtered"] is True  # judged per subscriber: its offsets may skip
    ack = await alice.request("SUBSCRIBE", {"channel": f"collections.{c}.users.alice"})
    assert "filtered" not in ack
    async with shared_server.http("alice") as http:
        # a public document: its events go on the collection channel to every signed-in subscriber
        created = (await http.post(docs_url(c), json={"id": "p", "data": {"v": 0}, "access": "public"})).json()
        await alice.request("SUBSCRIBE", {"channel": f"collections.{c}.documents.p"})
        await http.put(docs_url(c, "p"), json={"data": {"v": 1}})
        await http.patch(docs_url(c, "p"), json={"data": {"w": 2}})
        await http.delete(docs_url(c, "p"))
        on_coll = [await bob.next(channel=f"collections.{c}") for _ in range(4)]
        assert [e["type"] for e in on_coll] == ["DOCUMENT_CREATED", "DOCUMENT_UPDATED", "DOCUMENT_UPDATED", "DOCUMENT_DELETED"]
        assert [e["offset"] for e in on_coll] == [1, 2, 3, 4]
        assert on_coll[0]["data"] == created and on_coll[2]["data"]["data"] == {"v": 1, "w": 2}
        on_doc = [await alice.next(channel=f"collections.{c}.documents.p") for _ in range(3)]
        assert [e["type"] for e in on_doc] == ["DOCUMENT_UPDATED", "DOCUMENT_UPDATED", "DOCUMENT_DELETED"]
        assert [e["offset"] for e in on_doc] == [2, 3, 4]  # offset 1 was the create, before she subscribed
        assert [e["data"]["version"] for e in on_doc] == [2, 3, 3]

        # a private document: its owner's scope channel; on the collection channel only its readers get it
        await http.post(docs_url(c), json={"id": "q", "data": {"secret": 1}})
        mine = await alice.next("DOCUMENT_CREATED", channel=f"collections.{c}.users.alice")
        assert mine["data"]["id"] == "q" and mine["offset"] == 1
        await bob.nothing(channel=f"collections.{c}")

    # recovery: a resubscribe from offset 1 replays the rest of the document channel's history
    ack = await bob.request("SUBSCRIBE", {"channel": f"collections.{c}", "since": {"offset": 1, "epoch": (
        await bob.request("SUBSCRIBE", {"channel": f"collections.{c}"}))["epoch"]}})
    assert ack["recovered"] is True and [p["offset"] for p in ack["publications"]] == [2, 3, 4]
    await alice.close(); await bob.close()


async def test_private_document_is_invisible_to_others(shared_server) -> None:
    c = unique("c")
    secret = "s3cr3t-" + unique()
    async with shared_server.http("alice") as alice:
        assert (await alice.post(docs_url(c), json={"id": "mine", "data": {"secret": secret}})).status_code == 201
        async with shared_server.http("mallory") as m:
            attempts = [
                await m.get(docs_url(c, "mine")),
                await m.put(docs_url(c, "mine"), json={"data": {"x": 1}}),
                await m.put(docs_url(c, "mine"), json={"data": {"x": 1}, "version": 1}),
                await m.patch(docs_url(c, "mine"), json={"data": {"x": 1}}),
                await m.patch(docs_url(c, "mine"), json={"access": "public"}),
                await m.delete(docs_url(c, "mine")),
            ]
            for r in attempts:
                assert r.status_code == 404 and secret not in r.text, (r.status_code, r.text)
            # the same answer as for a document that does not exist
            assert (await m.get(docs_url(c, "nope"))).json()["error"]["message"].replace("nope", "mine") == \
                attempts[0].json()["error"]["message"]
            listed = await m.get(docs_url(c), params={"data.secret": secret})
            assert listed.json() == {"documents": [], "next": None}
            taken = await m.post(docs_url(c), json={"id": "mine", "data": {}})
            assert taken.status_code == 409 and secret not in taken.text and "document" not in taken.json()["error"]
        r = await alice.get(docs_url(c, "mine"))
        assert r.json()["version"] == 1 and r.json()["data"] == {"secret": secret}

    m_ws = await WsClient.connect(shared_server, "mallory")
    for op, extra in [("DOCUMENT_GET", {}), ("DOCUMENT_UPDATE", {"data": {}}), ("DOCUMENT_PATCH", {"data": {}}),
                      ("DOCUMENT_DELETE", {})]:
        reply = await m_ws.frame(op, {"collection": c, "id": "mine", **extra})
        assert reply["type"] == "ERROR" and reply["data"]["code"] == "not_found" and secret not in str(reply)
    for channel in (f"collections.{c}.documents.mine", f"collections.{c}.users.alice", "internal.documents.access"):
        with pytest.raises(RequestFailed) as exc:
            await m_ws.request("SUBSCRIBE", {"channel": channel})
        assert exc.value.code == "forbidden"
    await m_ws.request("SUBSCRIBE", {"channel": f"collections.{c}"})
    await m_ws.request("SUBSCRIBE", {"channel": f"collections.{c}.users.mallory"})
    async with shared_server.http("alice") as alice:
        await alice.patch(docs_url(c, "mine"), json={"data": {"more": secret}})
        await alice.post(docs_url(c), json={"id": "mine2", "data": {"secret": secret}})
    await m_ws.nothing(wait=0.5)
    await m_ws.close()


async def test_members_public_and_revocation(shared_server) -> None:
    c = unique("c")
    async with shared_server.http("alice") as alice, shared_server.http("bob") as bob, \
            shared_server.http("carol") as carol:
        r = await alice.post(docs_url(c), json={"id": "s", "data": {"n": 0}, "access": "members", "members": ["bob"]})
        assert r.json()["access"] == "members" and r.json()["members"] == ["bob"]
        # a member reads and writes data, but may not change access or delete
        assert (await bob.get(docs_url(c, "s"))).status_code == 200
        assert (await bob.patch(docs_url(c, "s"), json={"data": {"n": 1}})).json()["updated_by"] == "bob"
        assert (await bob.patch(docs_url(c, "s"), json={"members": ["bob", "carol"]})).status_code == 403
        assert (await bob.delete(docs_url(c, "s"))).status_code == 403
        assert [d["id"] for d in (await bob.get(docs_url(c))).json()["documents"]] == ["s"]
        assert (await carol.get(docs_url(c, "s"))).status_code == 404
        assert (await carol.get(docs_url(c))).json()["documents"] == []

        bob_ws = await WsClient.connect(shared_server, "bob")
        await bob_ws.request("SUBSCRIBE", {"channel": f"collections.{c}.documents.s"})
        await bob_ws.request("SUBSCRIBE", {"channel": f"collections.{c}.users.bob"})
        # the owner removes bob: he is dropped from the document channel before the change is published
        await alice.patch(docs_url(c, "s"), json={"members": [], "data": {"after": "revoked"}})
        dropped = await bob_ws.next("UNSUBSCRIBED")
        assert dropped["data"]["channel"] == f"collections.{c}.documents.s"
        left = await bob_ws.next("DOCUMENT_DELETED", channel=f"collections.{c}.users.bob")
        assert left["data"] == {"id": "s", "collection": c, "version": 3, "deleted": False, "reason": "access"}
        await alice.patch(docs_url(c, "s"), json={"data": {"later": "hidden"}})
        await bob_ws.nothing(wait=0.5)
        assert (await bob.get(docs_url(c, "s"))).status_code == 404
        with pytest.raises(RequestFailed):
            await bob_ws.request("SUBSCRIBE", {"channel": f"collections.{c}.documents.s"})

        # public: every signed-in user reads (and gets collection events); only owner and members write
        carol_ws = await WsClient.connect(shared_server, "carol")
        await carol_ws.request("SUBSCRIBE", {"channel": f"collections.{c}"})
        await alice.patch(docs_url(c, "s"), json={"access": "public"})
        became = await carol_ws.next("DOCUMENT_UPDATED", channel=f"collections.{c}")
        assert became["data"]["access"] == "public"
        assert (await carol.get(docs_url(c, "s"))).status_code == 200
        assert (await carol.put(docs_url(c, "s"), json={"data": {}})).status_code == 403
        await carol_ws.request("SUBSCRIBE", {"channel": f"collections.{c}.documents.s"})
        await alice.patch(docs_url(c, "s"), json={"access": "private"})
        assert (await carol_ws.next("UNSUBSCRIBED"))["data"]["channel"] == f"collections.{c}.documents.s"
        gone = await carol_ws.next("DOCUMENT_DELETED", channel=f"collections.{c}")
        # the leave notice carries the grant before (public), by which its recipients were chosen
        assert gone["data"] == {"id": "s", "collection": c, "version": gone["data"]["version"], "deleted": False,
                                "reason": "access", "owner": "alice", "access": "public", "members": []}
        await carol_ws.nothing(wait=0.3)
        await bob_ws.close(); await carol_ws.close()


async def test_api_key_backend_does_anything(shared_server) -> None:
    c = unique("c")
    async with shared_server.http(api_key=True) as backend, shared_server.http("alice") as alice:
        r = await backend.post(docs_url(c), json={"id": "b", "data": {"x": 1}, "owner": "alice"})
        assert r.status_code == 201 and r.json()["owner"] == "alice" and r.json()["created_by"] == "server"
        assert (await alice.get(docs_url(c, "b"))).status_code == 200
        r = await alice.post(docs_url(c), json={"data": {}, "owner": "bob"})
        assert r.status_code == 403
        await alice.post(docs_url(c), json={"id": "a", "data": {"y": 2}})
        assert {d["id"] for d in (await backend.get(docs_url(c))).json()["documents"]} == {"a", "b"}
        assert (await backend.put(docs_url(c, "a"), json={"data": {"y": 3}})).json()["updated_by"] == "server"
        assert (await backend.delete(docs_url(c, "a"))).status_code == 200


async def test_pagination_cursor_is_stable_and_filters(shared_server) -> None:
    c = unique("c")
    async with shared_server.http("alice") as http:
        for i in range(0, 50, 2):  # d00, d02, … d48
            await http.post(docs_url(c), json={"id": f"d{i:02d}", "data": {"n": i, "even": i % 4 == 0, "tag": str(i)}})
        seen, after, pages = [], None, 0
        while True:
            params = {"limit": 7} | ({"after": after} if after else {})
            page = (await http.get(docs_url(c), params=params)).json()
            pages += 1
            seen += [d["id"] for d in page["documents"]]
            # writes while paging: inserts before the cursor and deletes of seen rows shift nothing
            if pages == 1:
                await http.post(docs_url(c), json={"id": "d01", "data": {"n": 1}})
                await http.delete(docs_url(c, "d00"))
            if page["next"] is None:
                break
            after = page["next"]
        expected = [f"d{i:02d}" for i in range(0, 50, 2)]
        assert seen == expected and pages == 4
        # equality filters on data fields: JSON reading of the value, or the string itself
        got = (await http.get(docs_url(c), params={"data.even": "true", "limit": 100})).json()
        assert [d["data"]["n"] for d in got["documents"]] == [i for i in range(4, 50, 4)]
        got = (await http.get(docs_url(c), params={"data.n": "10"})).json()
        assert [d["id"] for d in got["documents"]] == ["d10"]
        got = (await http.get(docs_url(c), params={"data.tag": "12"})).json()
        assert [d["id"] for d in got["documents"]] == ["d12"]
        got = (await http.get(docs_url(c), params={"data.even": "true", "data.n": "8"})).json()
        assert [d["id"] for d in got["documents"]] == ["d08"]
        # filtered pages chain with the cursor too
        first = (await http.get(docs_url(c), params={"data.even": "true", "limit": 5})).json()
        rest = (await http.get(docs_url(c), params={"data.even": "true", "limit": 100, "after": first["next"]})).json()
        assert len(first["documents"]) == 5 and len(first["documents"]) + len(rest["documents"]) == 12


async def test_validation_errors_name_the_field(shared_server) -> None:
    c = unique("c")
    async with shared_server.http("alice") as http:
        await http.post(docs_url(c), json={"id": "v", "data": {}})
        cases = [
            (http.post(docs_url(c), json={}), "data"),
            (http.post(docs_url(c), json={"data": [1, 2]}), "data"),
            (http.post(docs_url(c), json={"data": {}, "id": "has space"}), "id"),
            (http.post(docs_url(c), json={"data": {}, "access": "everyone"}), "access"),
            (http.post(docs_url(c), json={"data": {}, "members": "bob"}), "members"),
            (http.post(docs_url(c), json={"data": {}, "colour": 1}), "colour"),
            (http.put(docs_url(c, "v"), json={"data": {}, "version": "1"}), "version"),
            (http.put(docs_url(c, "v"), json={"data": {}, "version": 0}), "version"),
            (http.get(docs_url(c), params={"limit": 0}), "limit"),
            (http.get(docs_url(c), params={"after": "a b"}), "after"),
            (http.get(docs_url(c), params={"status": "open"}), "status"),
            (http.get(docs_url("bad.name")), "collection"),
            (http.delete(docs_url(c, "v"), params={"version": "x"}), "version"),
        ]
        for request, field in cases:
            r = await request
            assert r.status_code == 422, (field, r.status_code, r.text)
            assert r.json()["error"]["field"] == field and field in r.json()["error"]["message"], r.text
        r = await http.post(docs_url(c), content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "bad_request"
        r = await http.post(docs_url(c), json={"data": {"blob": "x" * 300_000}})
        assert r.status_code == 413 and r.json()["error"]["field"] == "data"
    ws = await WsClient.connect(shared_server, "alice")
    for data, field in [({"collection": c}, "data"), ({"collection": "a.b", "data": {}}, "collection"),
                        ({"collection": c, "data": {}, "version": True}, "version")]:
        op = "DOCUMENT_UPDATE" if "version" in data else "DOCUMENT_CREATE"
        reply = await ws.frame(op, {**data, "id": "v"} if op == "DOCUMENT_UPDATE" else data)
        assert reply["type"] == "ERROR" and reply["data"]["code"] == "bad_request" and reply["data"]["field"] == field, reply
    reply = await ws.frame("DOCUMENT_LIST", {"collection": c, "limit": 0})
    assert reply["data"]["field"] == "limit"
    await ws.close()


@pytest.mark.parametrize("target,patch,result", [  # RFC 7386, Appendix A
    ({"a": "b"}, {"a": "c"}, {"a": "c"}),
    ({"a": "b"}, {"b": "c"}, {"a": "b", "b": "c"}),
    ({"a": "b"}, {"a": None}, {}),
    ({"a": "b", "b": "c"}, {"a": None}, {"b": "c"}),
    ({"a": ["b"]}, {"a": "c"}, {"a": "c"}),
    ({"a": "c"}, {"a": ["b"]}, {"a": ["b"]}),
    ({"a": {"b": "c"}}, {"a": {"b": "d", "c": None}}, {"a": {"b": "d"}}),
    ({"a": [{"b": "c"}]}, {"a": [1]}, {"a": [1]}),
    (["a", "b"], ["c", "d"], ["c", "d"]),
    ({"a": "b"}, ["c"], ["c"]),
    ({"a": "foo"}, None, None),
    ({"a": "foo"}, "bar", "bar"),
    ({"e": None}, {"a": 1}, {"e": None, "a": 1}),
    ([1, 2], {"a": "b", "c": None}, {"a": "b"}),
    ({}, {"a": {"bb": {"ccc": None}}}, {"a": {"bb": {}}}),
])
def test_merge_patch_follows_rfc_7386(target, patch, result) -> None:
    from tether.features.documents import merge_patch

    assert merge_patch(target, patch) == result


async def _backend_ws(server) -> WsClient:  # type: ignore[no-untyped-def]
    ws = WsClient(await websockets.connect(f"ws://127.0.0.1:{server.port}/ws?api_key={API_KEY}", max_size=None))
    assert (await ws.next(timeout=5))["type"] == "CONNECTED"
    return ws


async def test_collection_channel_sends_each_change_to_its_readers(shared_server) -> None:
    """collections.{c} carries every document's changes, each only to those who may read it."""
    c = unique("c")
    ch = f"collections.{c}"
    alice_ws = await WsClient.connect(shared_server, "alice")
    bob_ws = await WsClient.connect(shared_server, "bob")
    backend_ws = await _backend_ws(shared_server)
    for ws in (alice_ws, bob_ws, backend_ws):
        await ws.request("SUBSCRIBE", {"channel": ch})

    async def saw(ws: WsClient, type: str, doc_id: str) -> dict:
        event = await ws.next(channel=ch)
        assert (event["type"], event["data"]["id"]) == (type, doc_id), event
        return event

    async with shared_server.http("alice") as alice:
        # her own private document: she (and the API key) get every change; bob gets nothing
        assert (await alice.post(docs_url(c), json={"id": "p", "data": {"n": 0}})).status_code == 201
        created = await saw(alice_ws, "DOCUMENT_CREATED", "p")
        assert {k: created["data"][k] for k in ("owner", "access", "members")} == {
            "owner": "alice", "access": "private", "members": []}
        assert (await alice.put(docs_url(c, "p"), json={"data": {"n": 1}})).status_code == 200
        await saw(alice_ws, "DOCUMENT_UPDATED", "p")
        await saw(backend_ws, "DOCUMENT_CREATED", "p")
        await saw(backend_ws, "DOCUMENT_UPDATED", "p")
        await bob_ws.nothing(channel=ch, wait=0.5)

        # bob made a member: he gets the update (new to him: an insert); nobody gets a leave notice
        assert (await alice.patch(docs_url(c, "p"), json={"access": "members", "members": ["bob"]})).status_code == 200
        assert (await saw(bob_ws, "DOCUMENT_UPDATED", "p"))["data"]["members"] == ["bob"]
        await saw(alice_ws, "DOCUMENT_UPDATED", "p")
        await saw(backend_ws, "DOCUMENT_UPDATED", "p")

        # bob removed: whoever could read it before gets the leave notice (with the grant before),
        # then the update goes to its readers now; bob gets the notice only
        assert (await alice.patch(docs_url(c, "p"), json={"members": [], "data": {"n": 2}})).status_code == 200
        left = await saw(bob_ws, "DOCUMENT_DELETED", "p")
        assert left["data"] == {"id": "p", "collection": c, "version": 4, "deleted": False, "reason": "access",
                                "owner": "alice", "access": "members", "members": ["bob"]}
        await bob_ws.nothing(channel=ch, wait=0.5)
        for ws in (alice_ws, backend_ws):
            assert (await saw(ws, "DOCUMENT_DELETED", "p"))["data"]["reason"] == "access"
            assert (await saw(ws, "DOCUMENT_UPDATED", "p"))["data"]["data"] == {"n": 2}

        # public: every subscriber gets it, the deletion too (judged by the grant it had)
        assert (await alice.patch(docs_url(c, "p"), json={"access": "public"})).status_code == 200
        await saw(bob_ws, "DOCUMENT_UPDATED", "p")
        assert (await alice.delete(docs_url(c, "p"))).status_code == 200
        gone = await saw(bob_ws, "DOCUMENT_DELETED", "p")
        assert gone["data"]["deleted"] is True and gone["data"]["access"] == "public"
        for ws in (alice_ws, backend_ws):
            await saw(ws, "DOCUMENT_UPDATED", "p")
            await saw(ws, "DOCUMENT_DELETED", "p")

        # a private document's deletion reaches its owner, not bob
        assert (await alice.post(docs_url(c), json={"id": "q", "data": {}})).status_code == 201
        assert (await alice.delete(docs_url(c, "q"))).status_code == 200
        await saw(alice_ws, "DOCUMENT_CREATED", "q")
        deleted = await saw(alice_ws, "DOCUMENT_DELETED", "q")
        assert deleted["data"]["deleted"] is True and deleted["data"]["owner"] == "alice"
        await bob_ws.nothing(channel=ch, wait=0.5)

    for ws in (alice_ws, bob_ws, backend_ws):
        await ws.close()


async def test_collection_recovery_replays_only_what_the_subscriber_may_read(shared_server) -> None:
    c = unique("c")
    ch = f"collections.{c}"
    bob_ws = await WsClient.connect(shared_server, "bob")
    alice_ws = await WsClient.connect(shared_server, "alice")
    start = await bob_ws.request("SUBSCRIBE", {"channel": ch})
    since = {"offset": start["offset"], "epoch": start["epoch"]}
    await bob_ws.request("UNSUBSCRIBE", {"channel": ch})
    async with shared_server.http("alice") as alice:
        assert (await alice.post(docs_url(c), json={"id": "x", "data": {}})).status_code == 201
        assert (await alice.post(docs_url(c), json={"id": "y", "data": {}, "access": "public"})).status_code == 201
        assert (await alice.put(docs_url(c, "x"), json={"data": {"n": 1}})).status_code == 200
    ack = await bob_ws.request("SUBSCRIBE", {"channel": ch, "since": since})
    assert ack["recovered"] is True and ack["offset"] == start["offset"] + 3
    assert [(e["type"], e["data"]["id"]) for e in ack["publications"]] == [("DOCUMENT_CREATED", "y")]
    ack = await alice_ws.request("SUBSCRIBE", {"channel": ch, "since": since})
    assert [(e["type"], e["data"]["id"]) for e in ack["publications"]] == [
        ("DOCUMENT_CREATED", "x"), ("DOCUMENT_CREATED", "y"), ("DOCUMENT_UPDATED", "x")]
    # nothing hidden in the replay is sent later either
    await bob_ws.nothing(channel=ch, wait=0.5)
    await bob_ws.close(); await alice_ws.close()
