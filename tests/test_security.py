"""One reproduction per kind of hole the hostile-user attacks found, on a JWT (HS256) server:
identity collision with the API key, idempotency across operations, history outliving access,
ownership planted without consent, spoofed frame types, tokens outliving their exp."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import websockets

from tests.helpers import RequestFailed, ServerProcess, WsClient, eventually, fast_client
from tests.services import unique
from tether.core.auth import mint

SECRET = "security-tests-secret-" + "x" * 32


def tok(user: str, ttl: int = 600, roles: tuple[str, ...] = (), device: str | None = None) -> str:
    return mint(SECRET, user, ttl=ttl, roles=list(roles), device=device)


@pytest.fixture(scope="module")
def jwt_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("sec"), "--auth", "jwt", "--ping-interval", "1",
                        env={"TETHER_JWT_SECRET": SECRET}).start()
    yield srv
    srv.kill()


def docs(c: str, doc_id: str = "") -> str:
    return f"/api/collections/{c}/documents" + (f"/{doc_id}" if doc_id else "")


# -- identity ---------------------------------------------------------------------------

async def test_no_token_may_be_the_api_key(jwt_server: ServerProcess, server_factory: Any) -> None:
    c, marker = unique("c"), unique("backend-secret-")
    async with jwt_server.http(api_key=True) as api:
        assert (await api.post(docs(c), json={"id": "cfg", "data": {"m": marker}})).status_code == 201
    forged = tok("server")
    async with jwt_server.http(forged) as fake:
        r = await fake.get(docs(c, "cfg"))
        assert r.status_code == 401 and "reserved" in r.json()["error"]["message"] and marker not in r.text
    async with jwt_server.http(tok("Server")) as fake:  # no case games either
        assert (await fake.get(docs(c, "cfg"))).status_code == 401
    ws = await websockets.connect(jwt_server.ws_url(forged))
    with pytest.raises(websockets.ConnectionClosed) as closed:
        await ws.recv()
    assert closed.value.rcvd.code == 4001 and "reserved" in closed.value.rcvd.reason
    dev = server_factory()  # dev tokens too
    async with dev.http("server:phone") as fake:
        assert (await fake.get(docs(c))).status_code == 401


async def test_idempotency_is_per_caller_kind_and_operation(jwt_server: ServerProcess) -> None:
    c = unique("c")
    async with jwt_server.http(tok("alice")) as alice, jwt_server.http(api_key=True) as api:
        key = {"Idempotency-Key": unique("k")}
        made = await api.post(docs(c), json={"id": "by-api", "data": {"v": 1}}, headers=key)
        assert made.status_code == 201
        # The same key from a user is that user's own first write, never the backend's answer.
        mine = await alice.post(docs(c), json={"id": "by-alice", "data": {"v": 2}}, headers=key)
        assert mine.status_code == 201 and mine.json()["id"] == "by-alice"
        # The same key for another operation is a new write, not the create's answer again.
        put = await alice.put(docs(c, "by-alice"), json={"data": {"v": 3}}, headers=key)
        assert put.status_code == 200 and put.json()["version"] == 2 and put.json()["data"] == {"v": 3}
        other = await alice.post(docs(unique("c"), ""), json={"id": "elsewhere", "data": {}}, headers=key)
        assert other.status_code == 201 and other.json()["id"] == "elsewhere"
        again = await alice.put(docs(c, "by-alice"), json={"data": {"v": 4}}, headers=key)
        assert again.json()["version"] == 2  # a real retry still gets the first answer
        assert (await alice.post(docs(c), json={"id": "second", "data": {}})).status_code == 201
    ws = await WsClient.connect(jwt_server, tok("alice"))
    k = unique("k")
    first = await ws.request("DOCUMENT_UPDATE", {"collection": c, "id": "by-alice", "data": {"w": 1}, "idempotency_key": k})
    other = await ws.request("DOCUMENT_UPDATE", {"collection": c, "id": "second", "data": {"w": 2}, "idempotency_key": k})
    assert other["id"] == "second" and other["data"] == {"w": 2}
    retry = await ws.request("DOCUMENT_UPDATE", {"collection": c, "id": "by-alice", "data": {"w": 9}, "idempotency_key": k})
    assert retry == first
    await ws.close()


# -- history outlives access ---------------------------------------------------------------

async def test_recreated_document_does_not_replay_its_predecessor(jwt_server: ServerProcess) -> None:
    c, marker = unique("c"), unique("alice-private-")
    channel = f"collections.{c}.documents.d"
    async with jwt_server.http(tok("alice")) as alice, jwt_server.http(tok("mallory")) as mallory:
        assert (await alice.post(docs(c), json={"id": "d", "data": {"m": marker}})).status_code == 201
        assert (await alice.put(docs(c, "d"), json={"data": {"m": marker + "-v2"}})).status_code == 200
        assert (await alice.delete(docs(c, "d"))).status_code == 200
        assert (await mallory.post(docs(c), json={"id": "d", "data": {"mine": True}})).status_code == 201
    m = await WsClient.connect(jwt_server, tok("mallory"))
    top = await m.request("SUBSCRIBE", {"channel": channel})
    replay = await m.frame("SUBSCRIBE", {"channel": channel, "since": {"offset": 0, "epoch": top["epoch"]}})
    assert marker not in str(replay) and replay["data"]["recovered"] is False, replay
    since = {"offset": top["offset"] - 1, "epoch": top["epoch"]}  # its own history is there
    own = await m.request("SUBSCRIBE", {"channel": channel, "since": since})
    assert [p["type"] for p in own["publications"]] == ["DOCUMENT_CREATED"] and marker not in str(own)
    await m.close()


async def test_removed_member_loses_the_document_presence(jwt_server: ServerProcess) -> None:
    c = unique("c")
    channel, watch = f"collections.{c}.documents.d", f"presence.collections.{c}.documents.d"
    async with jwt_server.http(tok("alice")) as alice:
        assert (await alice.post(docs(c), json={"id": "d", "data": {}, "access": "members",
                                                 "members": ["bob"]})).status_code == 201
        a, b = await WsClient.connect(jwt_server, tok("alice")), await WsClient.connect(jwt_server, tok("bob"))
        await a.request("SUBSCRIBE", {"channel": watch})
        await b.request("SUBSCRIBE", {"channel": watch})
        await b.request("SUBSCRIBE", {"channel": channel, "presence": True, "state": {"typing": True}})
        assert (await a.next("PRESENCE_JOINED", channel=watch))["data"]["user_id"] == "bob"
        assert (await alice.put(docs(c, "d"), json={"data": {}, "members": []})).status_code == 200
        gone = {(await b.next("UNSUBSCRIBED"))["channel"], (await b.next("UNSUBSCRIBED"))["channel"]}
        assert gone == {channel, watch}
        assert (await a.next("PRESENCE_LEFT", channel=watch))["data"]["user_id"] == "bob"
        await a.request("SUBSCRIBE", {"channel": channel, "presence": True, "state": {"secret": "alice-state"}})
        await a.next("PRESENCE_JOINED", channel=watch)
        await b.nothing(channel=watch)
        with pytest.raises(RequestFailed):  # recovery asks again too
            await b.request("SUBSCRIBE", {"channel": watch, "since": {"offset": 0, "epoch": "x"}})
        await a.close(); await b.close()


async def test_session_leaver_loses_the_session_presence(jwt_server: ServerProcess) -> None:
    async with jwt_server.http(tok("ann")) as ann, jwt_server.http(tok("ben")) as ben:
        sid = (await ann.post("/api/sessions", json={"title": "t"})).json()["id"]
        assert (await ben.post(f"/api/sessions/{sid}/join")).status_code == 200
        watch = f"presence.sessions.{sid}"
        b = await WsClient.connect(jwt_server, tok("ben"))
        await b.request("SUBSCRIBE", {"channel": watch})
        await b.request("SUBSCRIBE", {"channel": f"sessions.{sid}", "presence": True})
        assert (await ben.post(f"/api/sessions/{sid}/leave")).status_code == 200
        gone = {(await b.next("UNSUBSCRIBED"))["channel"], (await b.next("UNSUBSCRIBED"))["channel"]}
        assert gone == {watch, f"sessions.{sid}"}
        a = await WsClient.connect(jwt_server, tok("ann"))
        await a.request("SUBSCRIBE", {"channel": f"sessions.{sid}", "presence": True, "state": {"s": "ann-state"}})
        assert (await ann.get(f"/api/presence/sessions.{sid}")).json()["users"] == ["ann"]  # ben's source left
        await b.nothing(channel=watch)
        await a.close(); await b.close()


# -- ownership --------------------------------------------------------------------------------

async def test_nobody_is_made_owner_without_consent(jwt_server: ServerProcess) -> None:
    c = unique("c")
    async with jwt_server.http(tok("alice")) as alice, jwt_server.http(api_key=True) as api:
        r = await alice.post(docs(c), json={"id": "trap", "data": {}, "owner": "bob", "access": "members",
                                            "members": ["alice"]})
        assert r.status_code == 403
        assert (await alice.post(docs(c), json={"id": "mine", "data": {}})).status_code == 201
        r = await alice.put(docs(c, "mine"), json={"data": {}, "owner": "bob", "access": "members", "members": ["alice"]})
        assert r.status_code == 403 and "owner" in r.json()["error"]["message"]
        r = await alice.patch(docs(c, "mine"), json={"owner": "bob"})
        assert r.status_code == 403
        a = await WsClient.connect(jwt_server, tok("alice"))
        with pytest.raises(RequestFailed) as err:
            await a.request("DOCUMENT_PATCH", {"collection": c, "id": "mine", "owner": "bob"})
        assert err.value.code == "forbidden"
        with pytest.raises(RequestFailed) as err:
            await a.request("SESSION_CREATE", {"title": "t", "user_id": "bob"})
        assert err.value.code == "forbidden"
        await a.close()
        assert (await alice.post("/api/presence/room", json={"user_id": "bob"})).status_code == 403
        # The backend may hand documents to users.
        assert (await api.patch(docs(c, "mine"), json={"owner": "bob"})).json()["owner"] == "bob"


# -- spoofed frames -----------------------------------------------------------------------------

async def test_a_user_publishes_publications_only(jwt_server: ServerProcess) -> None:
    """Whatever type a user names, its event goes out as PUBLICATION (and the answer says so)."""
    ch = "public." + unique("room")
    w = await WsClient.connect(jwt_server, tok("watcher"))
    await w.request("SUBSCRIBE", {"channel": ch})
    spoofs = ("ACK", "CONNECTED", "ERROR", "SESSION_ENDED", "DEVICE_CONNECTED", "DOCUMENT_DELETED", "PROMPT_CHANGE")
    async with jwt_server.http(tok("carol")) as carol, jwt_server.http(api_key=True) as api:
        for spoof in spoofs:
            r = await carol.post(f"/api/channels/{ch}/publish", json={"type": spoof, "data": {"x": spoof}})
            assert r.status_code == 200 and r.json()["type"] == "PUBLICATION", (spoof, r.text)
        assert (await carol.post(f"/api/channels/{ch}/publish", json={"type": "not snake", "data": {}})).status_code == 400
        assert (await carol.post(f"/api/channels/{ch}/publish", json={"data": {"n": 1}})).status_code == 200
        assert (await carol.post(f"/api/channels/{ch}/publish", json={"type": "PUBLICATION", "data": {"n": 2}})).status_code == 200
        for proto in ("ACK", "CONNECTED", "PING", "UNSUBSCRIBED", "SUBSCRIBE"):
            r = await api.post(f"/api/channels/{ch}/publish", json={"type": proto, "data": {}})
            assert r.status_code in (400, 422) and r.json()["error"]["code"] == "bad_request", (proto, r.text)
            r = await api.post("/api/users/carol/events", json={"type": proto, "data": {}})
            assert r.status_code in (400, 422), (proto, r.text)
        assert (await api.post(f"/api/channels/{ch}/publish", json={"type": "PROMPT_CHANGE", "data": {"n": 3}})).status_code == 200
    got = [await w.next(channel=ch) for _ in range(len(spoofs) + 3)]
    assert [(e["type"], e["data"]) for e in got] == [
        *(("PUBLICATION", {"x": spoof}) for spoof in spoofs),
        ("PUBLICATION", {"n": 1}), ("PUBLICATION", {"n": 2}), ("PROMPT_CHANGE", {"n": 3})]
    await w.nothing(channel=ch)
    await w.close()


# -- tokens -------------------------------------------------------------------------------------

async def test_expired_token_closes_4003_and_refresh_keeps_it_open(jwt_server: ServerProcess) -> None:
    short = await WsClient.connect(jwt_server, tok("alice", ttl=2))
    assert short.connected["expiresAt"].endswith("Z")
    kept = await WsClient.connect(jwt_server, tok("alice", ttl=2))
    with pytest.raises(RequestFailed) as err:
        await kept.request("REFRESH", {"token": tok("bob")})
    assert err.value.code == "forbidden"
    with pytest.raises(RequestFailed) as err:
        await kept.request("REFRESH", {"token": "not-a-jwt"})
    assert err.value.code == "unauthorized"
    ack = await kept.request("REFRESH", {"token": tok("alice", ttl=120)})
    assert ack["userId"] == "alice" and ack["expiresAt"] > short.connected["expiresAt"]
    code, reason = await short.closed(timeout=15)
    assert code == 4003 and reason.startswith("token_expired")
    assert (await kept.request("SUBSCRIBE", {"channel": "public.x"}))["channel"] == "public.x"  # past the old exp
    await kept.close()


async def test_refresh_rechecks_what_the_new_token_allows(jwt_server: ServerProcess) -> None:
    admin = await WsClient.connect(jwt_server, tok("dora", roles=("admin",)))
    await admin.request("SUBSCRIBE", {"channel": "admin"})
    await admin.request("REFRESH", {"token": tok("dora")})  # the admin role is gone
    assert (await admin.next("UNSUBSCRIBED", channel="admin"))["data"]["reason"] == "access revoked"
    await admin.close()


def test_short_hs256_secret_is_refused_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "TETHER_JWT_SECRET": "short"}
    r = subprocess.run([sys.executable, "-m", "tether", "serve", "--auth", "jwt", "--data-dir", str(tmp_path / "d")],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if line]
    assert len(lines) == 1 and "32" in lines[0] and "secrets.token_urlsafe" in lines[0], r.stderr
    assert not (tmp_path / "d").exists()


async def test_client_refreshes_before_expiry_and_reconnects_after_4003(jwt_server: ServerProcess) -> None:
    calls: list[float] = []

    def fresh() -> str:
        calls.append(time.time())
        return tok("cleo", ttl=3)

    client = fast_client(jwt_server, tok("cleo", ttl=3), token_refresh=fresh)
    await client.connect()
    first = client._link.hello["connectionId"]
    await eventually(lambda: len(calls) >= 2, timeout=30)  # refreshed twice: past two exp times
    assert client.state == "connected" and client._link.hello["connectionId"] == first
    await client.close()

    async def flaky() -> str:  # down while connected: REFRESH never goes, the server closes with 4003
        if client._link is not None:
            raise RuntimeError("identity provider down")
        return tok("cleo", ttl=600)

    client = fast_client(jwt_server, tok("cleo", ttl=2), token_refresh=flaky)
    closes: list[str] = []
    client.on_state(closes.append)
    await client.connect()
    first = client._link.hello["connectionId"]
    await eventually(lambda: client._link is not None and client._link.hello["connectionId"] != first
                     and client.state == "connected", timeout=30)
    assert "reconnecting" in closes and client.state == "connected"
    await client.close()


def test_api_key_and_a_user_named_server_never_share_records() -> None:
    """Besides refusing the reserved id at auth, records are kept apart by caller kind."""
    from tether.core.auth import Identity
    from tether.core.idempotency import scope

    api, user = Identity("server", "server", is_server=True), Identity("server", "server")
    assert scope(api, "rest:POST c") != scope(user, "rest:POST c")
    assert scope(user, "rest:POST c") != scope(user, "rest:PUT c/d")


async def test_a_stream_writer_who_lost_the_right_stops_writing(jwt_server: ServerProcess) -> None:
    w = await WsClient.connect(jwt_server, tok("dora", roles=("admin",)))
    sid = (await w.request("STREAM_START", {"channel": "admin"}))["stream_id"]
    await w.request("STREAM_DELTA", {"stream_id": sid, "delta": "while admin"})
    await w.request("REFRESH", {"token": tok("dora")})  # no admin role any more
    with pytest.raises(RequestFailed) as err:
        await w.request("STREAM_DELTA", {"stream_id": sid, "delta": "after"})
    assert err.value.code == "forbidden"
    with pytest.raises(RequestFailed):
        await w.request("STREAM_END", {"stream_id": sid})
    await w.close()
