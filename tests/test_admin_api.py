"""The server API under /api/admin: every call with the key, its refusals without it, and
DISCONNECT {reason, reconnect} + close 4100 obeyed by the Python client."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.helpers import API_KEY, FAST_BACKOFF, ServerProcess, WsClient, eventually
from tests.services import unique
from tether.client import Backoff, Client, DisconnectedByServer
from tether.core.auth import mint
from tether.wire.jsonutil import loads

CALLS = [
    ("GET", "/api/admin/channels", None),
    ("GET", "/api/admin/channels?pattern=public.*", None),
    ("GET", "/api/admin/channels/public.x/history", None),
    ("GET", "/api/admin/channels/public.x/history?since=0&limit=5", None),
    ("GET", "/api/admin/users/alice/connections", None),
    ("POST", "/api/admin/users/nobody/disconnect", {"reason": "test", "reconnect": True}),
    ("GET", "/api/admin/nodes", None),
    ("GET", "/api/admin/stats", None),
]


def admin_http(srv: ServerProcess) -> httpx.AsyncClient:
    return srv.http(api_key=True)


@pytest.mark.parametrize("method,path,body", CALLS)
async def test_every_call_answers_with_the_key_and_is_refused_without(shared_server: ServerProcess, method: str,
                                                                        path: str, body: Any) -> None:
    async with httpx.AsyncClient(base_url=shared_server.url, timeout=10) as http:
        anonymous = await http.request(method, path, json=body)
        assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
        user = await http.request(method, path, json=body, headers={"Authorization": "Bearer alice:phone"})
        assert user.status_code == 403 and user.json()["error"]["code"] == "forbidden", user.text
        wrong = await http.request(method, path, json=body, headers={"X-API-Key": "not-the-key"})
        assert wrong.status_code == 401
        ok = await http.request(method, path, json=body, headers={"X-API-Key": API_KEY})
        assert ok.status_code == 200, ok.text


async def test_a_jwt_with_the_admin_role_may_a_plain_one_may_not(server_factory: Any) -> None:
    srv = server_factory("--auth", "jwt", "--jwt-secret", "ops-secret-that-is-long-enough-for-hs256")
    admin, user = mint("ops-secret-that-is-long-enough-for-hs256", "root", roles=["admin"]), mint("ops-secret-that-is-long-enough-for-hs256", "alice")
    async with httpx.AsyncClient(base_url=srv.url, timeout=10) as http:
        for path in ("/api/admin/nodes", "/api/admin/stats", "/api/admin/channels"):
            assert (await http.get(path, headers={"Authorization": f"Bearer {admin}"})).status_code == 200
            assert (await http.get(path, headers={"Authorization": f"Bearer {user}"})).status_code == 403


async def test_channels_count_subscribers_and_report_positions(server: ServerProcess) -> None:
    channel = unique("public.room")
    a, b = await WsClient.connect(server, "alice:a"), await WsClient.connect(server, "bob:b")
    for c in (a, b):
        await c.request("SUBSCRIBE", {"channel": channel})
    await a.request("PUBLISH", {"channel": channel, "data": {"n": 1}})
    async with admin_http(server) as http:
        listed = (await http.get("/api/admin/channels", params={"pattern": "public.room*"})).json()["channels"]
        assert listed == [{"channel": channel, "subscribers": 2, "offset": 1, "epoch": listed[0]["epoch"]}]
        everything = (await http.get("/api/admin/channels")).json()["channels"]
        assert {"users.alice", "users.bob", channel} <= {c["channel"] for c in everything}
        assert "tether.control" not in {c["channel"] for c in everything}
        await b.close()
        for _ in range(100):
            listed = (await http.get("/api/admin/channels", params={"pattern": channel})).json()["channels"]
            if listed[0]["subscribers"] == 1:
                break
            await asyncio.sleep(0.05)
        assert listed[0]["subscribers"] == 1
        assert (await http.get("/api/admin/channels", params={"limit": 0})).status_code == 422
    await a.close()


async def test_history_by_offset(server: ServerProcess) -> None:
    channel = unique("public.hist")
    async with admin_http(server) as http:
        for n in range(5):
            r = await http.post(f"/api/channels/{channel}/publish", json={"data": {"n": n}})
            assert r.status_code == 200
        full = (await http.get(f"/api/admin/channels/{channel}/history", params={"since": 0})).json()
        assert [p["data"]["n"] for p in full["publications"]] == [0, 1, 2, 3, 4]
        assert [p["offset"] for p in full["publications"]] == [1, 2, 3, 4, 5]
        assert full["offset"] == 5 and full["epoch"] and full["complete"] is True
        page = (await http.get(f"/api/admin/channels/{channel}/history", params={"since": 1, "limit": 2})).json()
        assert [p["offset"] for p in page["publications"]] == [2, 3]
        tail = (await http.get(f"/api/admin/channels/{channel}/history", params={"limit": 2})).json()
        assert [p["offset"] for p in tail["publications"]] == [4, 5]
        past = (await http.get(f"/api/admin/channels/{channel}/history", params={"since": 9})).json()
        assert past["publications"] == [] and past["offset"] == 5
        for bad in ({"since": -1}, {"since": "x"}, {"limit": 5000}):
            r = await http.get(f"/api/admin/channels/{channel}/history", params=bad)
            assert r.status_code == 422 and r.json()["error"]["code"] == "bad_request", r.text
        r = await http.get("/api/admin/channels/bad channel!/history")
        assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request"


async def test_internal_channels_are_neither_listed_nor_shown(server: ServerProcess) -> None:
    """Node-to-node channels (operator commands on tether.control, access re-checks on internal.*)
    stay out of /channels and their history is refused, so an operator's commands are not on show."""
    client = await WsClient.connect(server, "alice:a")  # a connection: the nodes' access channels are busy
    async with admin_http(server) as http:
        told = await http.post("/api/admin/users/alice/disconnect", json={"reason": "secret-reason", "reconnect": True})
        assert told.status_code == 200
        for pattern in (None, "*", "internal.*", "tether.*"):
            listed = (await http.get("/api/admin/channels", params={} if pattern is None else {"pattern": pattern}))
            names = {c["channel"] for c in listed.json()["channels"]}
            assert not {n for n in names if n.startswith("internal.") or n == "tether.control"}, (pattern, names)
        for channel in ("tether.control", "internal.access", "internal.documents.access", "internal.anything"):
            for params in ({}, {"since": 0, "limit": 5}):
                shown = await http.get(f"/api/admin/channels/{channel}/history", params=params)
                assert shown.status_code == 403 and shown.json()["error"]["code"] == "forbidden", (channel, shown.text)
                assert "secret-reason" not in shown.text
        assert (await http.get("/api/admin/channels/public.x/history")).status_code == 200
    await client.close()


async def test_a_users_connections(server: ServerProcess) -> None:
    phone, laptop = await WsClient.connect(server, "carol:phone"), await WsClient.connect(server, "carol:laptop")
    async with admin_http(server) as http:
        conns = (await http.get("/api/admin/users/carol/connections")).json()["connections"]
        assert sorted(c["device_id"] for c in conns) == ["laptop", "phone"]
        assert {c["connection_id"] for c in conns} == {phone.connected["connectionId"], laptop.connected["connectionId"]}
        assert all(c["node"] and c["connected_at"].endswith("Z") for c in conns)
        assert (await http.get("/api/admin/users/nobody/connections")).json() == {"connections": []}
        assert (await http.get("/api/admin/users/bad%20id/connections")).status_code == 400


async def test_nodes_and_stats_on_one_node(server: ServerProcess) -> None:
    ws = await WsClient.connect(server, "dave:x")
    channel = unique("public.s")
    await ws.request("SUBSCRIBE", {"channel": channel})
    async with admin_http(server) as http:
        before = (await http.get("/api/admin/stats")).json()
        await http.post(f"/api/channels/{channel}/publish", json={"data": {}})
        await ws.next("PUBLICATION", channel=channel)
        after = (await http.get("/api/admin/stats")).json()
        nodes = (await http.get("/api/admin/nodes")).json()["nodes"]
    assert before["connections"] == 1 and before["time"].endswith("Z")
    assert after["publishes_total"] == before["publishes_total"] + 1
    assert after["deliveries_total"] == before["deliveries_total"] + 1
    assert len(nodes) == 1 and nodes[0]["connections"] == 1 and nodes[0]["healthy"] and not nodes[0]["draining"]
    await ws.close()


async def test_disconnect_tells_each_connection_why_then_closes_4100(server: ServerProcess) -> None:
    one, two = await WsClient.connect(server, "erin:a"), await WsClient.connect(server, "erin:b")
    bystander = await WsClient.connect(server, "frank:a")
    async with admin_http(server) as http:
        r = await http.post("/api/admin/users/erin/disconnect", json={"reason": "account suspended", "reconnect": False})
        assert r.json() == {"disconnected": 2}
        for c in (one, two):
            told = await c.next("DISCONNECT")
            assert told["data"] == {"reason": "account suspended", "reconnect": False}
            assert (await c.closed())[0] == 4100
        await bystander.request("SUBSCRIBE", {"channel": "public.still-here"})
        for bad in ({"reason": ""}, {"reason": "x" * 201}, {"reconnect": "maybe"}):
            r = await http.post("/api/admin/users/erin/disconnect", json=bad)
            assert r.status_code == 422, r.text
        assert (await http.post("/api/admin/users/nobody/disconnect", json={})).json() == {"disconnected": 0}


async def test_the_python_client_stays_out_when_told_not_to_reconnect(server: ServerProcess) -> None:
    client = Client(server.url, "gina:phone", backoff=Backoff(**FAST_BACKOFF))
    await client.connect()
    async with admin_http(server) as http:
        await http.post("/api/admin/users/gina/disconnect", json={"reason": "banned for spam", "reconnect": False})
    await client.wait_for("failed")
    assert isinstance(client.error, DisconnectedByServer) and client.error.reason == "banned for spam"
    assert client.disconnect == {"reason": "banned for spam", "reconnect": False}
    await asyncio.sleep(0.5)  # several fast backoff periods: it did not come back
    async with admin_http(server) as http:
        assert (await http.get("/api/admin/users/gina/connections")).json()["connections"] == []
    assert client.state == "failed"
    await client.close()


async def test_the_python_client_comes_back_when_allowed(server: ServerProcess) -> None:
    client = Client(server.url, "hana:phone", backoff=Backoff(**FAST_BACKOFF))
    channel = unique("public.back")
    seen: list[int] = []
    await client.connect()
    await client.subscribe(channel, lambda e: seen.append(e["data"]["n"]))
    first = client._link
    async with admin_http(server) as http:
        await http.post(f"/api/channels/{channel}/publish", json={"data": {"n": 1}})
        await http.post("/api/admin/users/hana/disconnect", json={"reason": "moved to a new plan", "reconnect": True})
        await eventually(lambda: client._link is not first and client.state == "connected")
        assert client.disconnect == {"reason": "moved to a new plan", "reconnect": True}
        await http.post(f"/api/channels/{channel}/publish", json={"data": {"n": 2}})
        await eventually(lambda: seen == [1, 2])
        assert len((await http.get("/api/admin/users/hana/connections")).json()["connections"]) == 1
    await client.close()


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_the_websocket_accepts_the_api_key_in_the_query(server_factory: Any, transport: str) -> None:
    srv = server_factory("--ws-transport", transport)
    async with websockets.connect(f"ws://127.0.0.1:{srv.port}/ws?api_key={API_KEY}") as ws:
        hello = loads(await ws.recv())
        assert hello["type"] == "CONNECTED" and hello["data"]["userId"] == "server"
    async with websockets.connect(f"ws://127.0.0.1:{srv.port}/ws?api_key=wrong") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await ws.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4001


async def test_openapi_documents_the_admin_api_and_its_security(shared_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=shared_server.url) as http:
        spec = (await http.get("/openapi.json")).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                 "description": schemes["apiKey"]["description"]}
    assert schemes["bearer"]["scheme"] == "bearer"
    for path in ("/api/admin/channels", "/api/admin/channels/{channel}/history", "/api/admin/users/{user_id}/connections",
                 "/api/admin/users/{user_id}/disconnect", "/api/admin/nodes", "/api/admin/stats"):
        for op in spec["paths"][path].values():
            assert {"apiKey": []} in op["security"] and {"bearer": []} in op["security"], path
    # the operations guide names the schemes as /openapi.json does
    guide = (Path(__file__).resolve().parents[1] / "docs" / "operations.md").read_text()
    named = re.search(r"security\s+schemes\s+`(\w+)`.*?\band\s+`(\w+)`", guide, re.S)
    assert named is not None and set(named.groups()) == set(schemes), (named and named.groups(), sorted(schemes))


@pytest.mark.services
async def test_in_a_cluster_the_api_sees_every_node(tmp_path: Path) -> None:
    from tests.cluster import Cluster

    cluster = Cluster(tmp_path, 2)
    try:
        for node in cluster.nodes:  # one at a time, with room for a loaded machine
            node.start(timeout=60)
        a, b = cluster.nodes
        channel = unique("public.c")
        on_a, on_b = await WsClient.connect(a, "ivy:a"), await WsClient.connect(b, "ivy:b")
        for c in (on_a, on_b):
            await c.request("SUBSCRIBE", {"channel": channel})
        async with admin_http(a) as http:
            async def both_nodes_reported() -> bool:
                nodes = (await http.get("/api/admin/nodes")).json()["nodes"]
                return len(nodes) == 2 and all(n["healthy"] and n["connections"] == 1 for n in nodes)

            for _ in range(100):  # node reports arrive every second
                if await both_nodes_reported():
                    break
                await asyncio.sleep(0.1)
            assert await both_nodes_reported()
            for _ in range(50):
                listed = (await http.get("/api/admin/channels", params={"pattern": channel})).json()["channels"]
                if listed and listed[0]["subscribers"] == 2:
                    break
                await asyncio.sleep(0.1)
            assert listed[0]["subscribers"] == 2
            conns = (await http.get("/api/admin/users/ivy/connections")).json()["connections"]
            assert len(conns) == 2 and len({c["node"] for c in conns}) == 2
            assert (await http.get("/api/admin/stats")).json()["connections"] == 2
            r = await http.post("/api/admin/users/ivy/disconnect", json={"reason": "maintenance", "reconnect": True})
            assert r.json() == {"disconnected": 2}
        for c in (on_a, on_b):  # the one on node b too: the command went through Redis
            assert (await c.next("DISCONNECT"))["data"] == {"reason": "maintenance", "reconnect": True}
            assert (await c.closed())[0] == 4100
        b.kill()  # a node that dies is reported unhealthy, then its connections are gone from the list
        async with admin_http(a) as http:
            for _ in range(100):
                nodes = {n["id"]: n for n in (await http.get("/api/admin/nodes")).json()["nodes"]}
                if any(not n["healthy"] for n in nodes.values()):
                    break
                await asyncio.sleep(0.1)
            assert [n["healthy"] for n in nodes.values()].count(False) == 1
    finally:
        await cluster.cleanup()
