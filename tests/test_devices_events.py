"""The seed's native client (websocket-sync-multi-device.md) played against a real server."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import RequestFailed, WsClient
from tests.services import unique
from tether.core.auth import mint

SYNC_TYPES = {"SHOOT_PROGRESS", "CREDIT_UPDATE", "DEVICE_CONNECTED", "DEVICE_DISCONNECTED", "PROMPT_CHANGE"}


async def drain(c: WsClient) -> list[dict]:
    out = []
    while not c.frames.empty():
        out.append(c.frames.get_nowait())
    return out


async def test_seed_client_two_devices_progress_retained_state(shared_server) -> None:
    u = unique("user")
    bob = await WsClient.connect(shared_server, f"{unique('bob')}:phone")

    phone = await WsClient.connect(shared_server, f"{u}:phone")
    mac = await WsClient.connect(shared_server, f"{u}:mac")
    # each sees the other appear: the phone live, the mac on connecting
    ev = await phone.next("DEVICE_CONNECTED")
    if "channel" not in ev:  # the mac came while the phone's own list of online devices was being sent
        assert ev["data"]["deviceId"] == "mac"
        ev = await phone.next("DEVICE_CONNECTED")
    assert ev["channel"] == f"users.{u}" and ev["data"]["userId"] == u and ev["data"]["deviceId"] == "mac"
    assert ev["data"]["connectedAt"].endswith("Z")
    ev = await mac.next("DEVICE_CONNECTED")
    assert ev["data"]["deviceId"] == "phone" and ev["data"]["userId"] == u

    for c in (phone, mac):  # keepalive as the seed does it
        await c.send("PING", {"timestamp": 1731920000123})
        assert (await c.next("PONG"))["data"] == {"timestamp": 1731920000123}

    # a server push reaches both devices
    async with shared_server.http(api_key=True) as api:
        r = await api.post(f"/api/users/{u}/events", json={"type": "CREDIT_UPDATE", "data": {"balance": 120, "change": -5}})
    assert r.status_code == 202 and r.json() == {"delivered": 2}  # exactly this shape
    for c in (phone, mac):
        ev = await c.next("CREDIT_UPDATE")
        assert ev["data"] == {"balance": 120, "change": -5} and ev["channel"] == f"users.{u}"

    # UPDATE_PROGRESS from one device shows as SHOOT_PROGRESS on the other
    ack = await phone.request("UPDATE_PROGRESS", {
        "shootId": "abc123", "processedCount": 247, "totalCount": 1000, "currentImage": "IMG_2047.jpg",
        "eta": 45.2, "provider": "gpt-5-nano", "status": "processing"})
    assert ack["shootId"] == "abc123" and ack["progress"] == 0.247
    ev = await mac.next("SHOOT_PROGRESS")
    assert ev["data"] == {"shootId": "abc123", "processedCount": 247, "totalCount": 1000, "progress": 0.247,
                          "currentImage": "IMG_2047.jpg", "eta": 45.2, "provider": "gpt-5-nano", "status": "processing"}
    await phone.nothing("SHOOT_PROGRESS")  # not echoed to the sender
    await phone.request("UPDATE_PROGRESS", {"shootId": "done1", "processedCount": 3, "totalCount": 3, "status": "completed"})
    assert (await mac.next("SHOOT_PROGRESS"))["data"]["status"] == "completed"

    # a third device connecting late gets the retained state right after CONNECTED
    ipad = await WsClient.connect(shared_server, f"{u}:ipad")
    first = [await ipad.next() for _ in range(3)]
    assert [(f["type"], f.get("retained")) for f in first] == [
        ("CREDIT_UPDATE", True), ("SHOOT_PROGRESS", True), ("SHOOT_PROGRESS", True)]
    assert first[0]["data"]["balance"] == 120
    assert first[1]["data"]["shootId"] == "abc123" and first[1]["data"]["progress"] == 0.247
    assert first[2]["data"]["shootId"] == "done1"
    seen = {(await ipad.next("DEVICE_CONNECTED"))["data"]["deviceId"] for _ in range(2)}
    assert seen == {"phone", "mac"}
    for c in (phone, mac):
        assert (await c.next("DEVICE_CONNECTED"))["data"]["deviceId"] == "ipad"

    # a second tab of the same device is not a new device, nor is its closing a departure
    tab = await WsClient.connect(shared_server, f"{u}:ipad")
    await tab.close()
    await phone.nothing("DEVICE_CONNECTED")
    await phone.nothing("DEVICE_DISCONNECTED")

    async with shared_server.http(u) as http:
        r = await http.get(f"/api/users/{u}/devices")
    assert r.status_code == 200
    devices = {d["device_id"]: d for d in r.json()["devices"]}
    assert set(devices) == {"phone", "mac", "ipad"}
    assert devices["mac"]["connected_at"].endswith("Z") and devices["mac"]["last_seen"] >= devices["mac"]["connected_at"]

    # each sees the other disappear
    await mac.close()
    for c in (phone, ipad):
        ev = await c.next("DEVICE_DISCONNECTED")
        assert ev["data"]["deviceId"] == "mac" and ev["data"]["userId"] == u and ev["data"]["disconnectedAt"].endswith("Z")
    async with shared_server.http(api_key=True) as api:
        r = await api.get(f"/api/users/{u}/devices")
    assert {d["device_id"] for d in r.json()["devices"]} == {"phone", "ipad"}

    # another user received none of it, and may not list this user's devices
    await bob.nothing(wait=0.2)
    assert not [f for f in await drain(bob) if f["type"] in SYNC_TYPES]
    async with shared_server.http(bob.connected["userId"]) as http:
        r = await http.get(f"/api/users/{u}/devices")
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    for c in (phone, ipad, bob):
        await c.close()


async def test_server_pushes_any_type_and_retains_on_request(shared_server) -> None:
    u = unique("user")
    a = await WsClient.connect(shared_server, f"{u}:a")
    async with shared_server.http(api_key=True) as api:
        r = await api.post(f"/api/users/{u}/events", json={"type": "PROMPT_CHANGE", "data": {"promptId": "p1", "action": "created"}})
        assert r.status_code == 202 and r.json()["delivered"] == 1
        r = await api.post(f"/api/users/{u}/events", json={"type": "ADMIN_SESSION_UPDATE", "data": {"n": 1}, "retain": True})
        assert r.status_code == 202
        r = await api.post(f"/api/users/{u}/events", json={"type": "SHOOT_PROGRESS",
                                                            "data": {"shootId": "srv", "processedCount": 1, "totalCount": 4}})
        assert r.status_code == 202
        r = await api.post(f"/api/users/{unique('nobody')}/events", json={"type": "CREDIT_UPDATE", "data": {"balance": 1}})
        assert r.status_code == 202 and r.json()["delivered"] == 0
    assert (await a.next("PROMPT_CHANGE"))["data"]["promptId"] == "p1"
    assert (await a.next("ADMIN_SESSION_UPDATE"))["data"] == {"n": 1}
    ev = await a.next("SHOOT_PROGRESS")
    assert ev["data"]["progress"] == 0.25 and ev["data"]["status"] == "processing"
    b = await WsClient.connect(shared_server, f"{u}:b")
    first = [await b.next() for _ in range(2)]
    assert [f["type"] for f in first] == ["ADMIN_SESSION_UPDATE", "SHOOT_PROGRESS"]  # PROMPT_CHANGE was not retained
    assert first[1]["data"]["shootId"] == "srv"
    await a.close(); await b.close()


async def test_ended_shoots_stop_being_retained(server_factory) -> None:
    srv = server_factory("--retain-ended", "0.5")
    u = unique("user")
    a = await WsClient.connect(srv, f"{u}:a")
    await a.request("UPDATE_PROGRESS", {"shootId": "run", "processedCount": 1, "totalCount": 2})
    await a.request("UPDATE_PROGRESS", {"shootId": "fail", "processedCount": 1, "totalCount": 2, "status": "failed"})
    b = await WsClient.connect(srv, f"{u}:b")
    assert [(await b.next("SHOOT_PROGRESS"))["data"]["shootId"] for _ in range(2)] == ["run", "fail"]
    await asyncio.sleep(0.8)
    c = await WsClient.connect(srv, f"{u}:c")
    assert (await c.next())["data"]["shootId"] == "run"  # the running shoot is still retained, the failed one is gone
    await c.nothing("SHOOT_PROGRESS")
    for x in (a, b, c):
        await x.close()


@pytest.mark.parametrize("data, field", [
    ({"processedCount": 1, "totalCount": 2}, "shootId"),
    ({"shootId": "s", "processedCount": -1, "totalCount": 2}, "processedCount"),
    ({"shootId": "s", "processedCount": 1, "totalCount": "2"}, "totalCount"),
    ({"shootId": "s", "processedCount": 3, "totalCount": 2}, "processedCount"),
    ({"shootId": "s", "processedCount": 1, "totalCount": 2, "status": "done"}, "status"),
    ({"shootId": "s", "processedCount": 1, "totalCount": 2, "eta": "soon"}, "eta"),
])
async def test_update_progress_refuses_bad_payloads(shared_server, data, field) -> None:
    u = unique("user")
    a = await WsClient.connect(shared_server, f"{u}:a")
    other = await WsClient.connect(shared_server, f"{u}:b")
    with pytest.raises(RequestFailed) as err:
        await a.request("UPDATE_PROGRESS", data)
    assert err.value.code == "bad_request" and field in err.value.data["message"]
    await other.nothing("SHOOT_PROGRESS", wait=0.1)
    await a.close(); await other.close()


async def test_bad_event_types_and_pushes_without_the_api_key(shared_server) -> None:
    u = unique("user")
    a = await WsClient.connect(shared_server, f"{u}:a")
    with pytest.raises(RequestFailed) as err:
        await a.request("UPDATE_PROGRES", {})
    assert err.value.code == "bad_request" and "unknown frame type" in err.value.data["message"]
    reply = await a.frame("update_progress", {})
    assert reply["type"] == "ERROR" and "UPPER_SNAKE_CASE" in reply["data"]["message"]
    body = {"type": "CREDIT_UPDATE", "data": {"balance": 1}}
    async with shared_server.http() as anon:
        r = await anon.post(f"/api/users/{u}/events", json=body)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    async with shared_server.http(u) as user:
        r = await user.post(f"/api/users/{u}/events", json=body)
        assert r.status_code == 403 and "X-API-Key" in r.json()["error"]["message"]
    async with shared_server.http(api_key=True) as api:
        for bad, status, word in [
            ({"type": "credit-update", "data": {}}, 400, "UPPER_SNAKE_CASE"),
            ({"type": "CONNECTED", "data": {}}, 400, "emitted by Tether"),
            ({"type": "DEVICE_CONNECTED", "data": {}}, 400, "emitted by Tether"),
            ({"type": "CREDIT_UPDATE", "data": [1]}, 422, "data"),
            ({"data": {}}, 422, "type"),
            ({"type": "SHOOT_PROGRESS", "data": {"shootId": "x"}}, 400, "processedCount"),
        ]:
            r = await api.post(f"/api/users/{u}/events", json=bad)
            assert r.status_code == status, (bad, r.text)
            assert word in r.json()["error"]["message"], (bad, r.text)
        r = await api.post("/api/users/bad user!/events", json=body)
        assert r.status_code == 400 and "user_id" in r.json()["error"]["message"]
    await a.nothing("CREDIT_UPDATE", wait=0.1)
    await a.close()


async def test_admin_channel_is_for_admin_tokens_only(server_factory) -> None:
    secret = "a-test-secret-that-is-32-bytes-long!"
    srv = server_factory("--auth", "jwt", "--jwt-secret", secret)
    admin = await WsClient.connect(srv, mint(secret, "root", roles=["admin"]))
    user = await WsClient.connect(srv, mint(secret, "alice", device="phone"))
    await admin.request("SUBSCRIBE", {"channel": "admin"})
    with pytest.raises(RequestFailed) as err:
        await user.request("SUBSCRIBE", {"channel": "admin"})
    assert err.value.code == "forbidden" and "admin" in err.value.data["message"]
    await user.request("SUBSCRIBE", {"channel": "public.prompts"})
    async with srv.http(api_key=True) as api:
        r = await api.post("/api/channels/admin/publish", json={"type": "ADMIN_SESSION_UPDATE", "data": {"sessionId": "s1"}})
        assert r.status_code == 200
        r = await api.post("/api/channels/public.prompts/publish", json={"type": "PROMPT_CHANGE", "data": {"promptId": "p"}})
        assert r.status_code == 200
    async with srv.http(mint(secret, "alice")) as http:
        r = await http.post("/api/channels/admin/publish", json={"type": "ADMIN_SESSION_UPDATE", "data": {}})
        assert r.status_code == 403
    assert (await admin.next("ADMIN_SESSION_UPDATE", channel="admin"))["data"] == {"sessionId": "s1"}
    assert (await user.next("PROMPT_CHANGE", channel="public.prompts"))["data"] == {"promptId": "p"}
    await user.nothing("ADMIN_SESSION_UPDATE")
    await admin.close(); await user.close()
