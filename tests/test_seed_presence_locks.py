"""The seed's iOS client (presence-locks-concurrency-ios.md) replayed byte for byte.

Each request is the exact method, path and body bytes that the Swift services
send (JSONEncoder output of the seed's Codable structs, under the API base
`/api`), and each answer is decoded the way the seed's Codable structs decode
it: required fields by their CodingKeys, with their Swift types.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from tests.helpers import ServerProcess

JSON = {"Content-Type": "application/json", "Accept": "application/json"}

# The seed's response structs: field name -> allowed Python types (None = Swift Optional).
EmptyResponse: dict[str, tuple[type, ...]] = {}
PresenceListResponse = {"users": (list,)}
LockResponse = {"acquired": (bool,), "token": (str, type(None))}
LockStatus = {"locked": (bool,)}
UnlockResponse = {"released": (bool,)}


def decode(response: httpx.Response, struct: dict[str, tuple[type, ...]]) -> dict[str, Any]:
    """What Swift's JSONDecoder does: 2xx, an object, every non-optional key present with its type."""
    assert 200 <= response.status_code < 300, (response.status_code, response.text)
    body = response.json()
    assert isinstance(body, dict), body
    for name, types in struct.items():
        if type(None) not in types:
            assert name in body, f"{name} missing in {body}"
        assert isinstance(body.get(name), types), f"{name}={body.get(name)!r} is not {types}"
    if struct is PresenceListResponse:
        assert all(isinstance(u, str) for u in body["users"])
    return body


class Swift:
    """NetworkManager: base URL + `/api`, bearer token, JSON bodies exactly as JSONEncoder writes them."""

    def __init__(self, server: ServerProcess, user_id: str) -> None:
        self.user_id = user_id
        self.http = httpx.AsyncClient(base_url=server.url + "/api", headers={"Authorization": f"Bearer {user_id}"})

    async def send(self, method: str, endpoint: str, body: bytes | None = None) -> httpx.Response:
        return await self.http.request(method, endpoint, content=body, headers=JSON if body is not None else {})


async def test_presence_service_replay(server_factory) -> None:
    srv = server_factory("--presence-ttl", "1")
    user_id = str(uuid.uuid4()).upper()  # UUID().uuidString
    session = str(uuid.uuid4()).upper()
    app = Swift(srv, user_id)
    other = Swift(srv, str(uuid.uuid4()).upper())
    heartbeat = b'{"user_id":"' + user_id.encode() + b'"}'  # PresenceHeartbeat
    # joinSession: heartbeat, then the periodic ones (every 10 s in the app: every 0.5 s against a 1 s TTL)
    decode(await app.send("POST", f"/presence/{session}", heartbeat), EmptyResponse)
    for _ in range(4):
        listed = decode(await other.send("GET", f"/presence/{session}"), PresenceListResponse)
        assert listed["users"] == [user_id]
        await asyncio.sleep(0.5)
        decode(await app.send("POST", f"/presence/{session}", heartbeat), EmptyResponse)
    assert decode(await app.send("GET", f"/presence/{session}"), PresenceListResponse)["users"] == [user_id]
    # leaveSession
    decode(await app.send("DELETE", f"/presence/{session}/{user_id}"), EmptyResponse)
    assert decode(await other.send("GET", f"/presence/{session}"), PresenceListResponse)["users"] == []
    await app.http.aclose(); await other.http.aclose()


async def test_lock_service_replay(server) -> None:
    session = str(uuid.uuid4()).upper()
    me = Swift(server, str(uuid.uuid4()).upper())
    them = Swift(server, str(uuid.uuid4()).upper())
    # checkLockStatus before anyone holds it
    assert decode(await me.send("GET", f"/locks/{session}"), LockStatus)["locked"] is False
    # acquireLock(ttl: 2): LockRequest
    got = decode(await me.send("POST", f"/locks/{session}", b'{"ttl_seconds":2}'), LockResponse)
    assert got["acquired"] is True and got["token"]
    token = got["token"]
    # a second user's acquire is refused while held (LockableWorkSessionView: acquire with ttl 60)
    refused = decode(await them.send("POST", f"/locks/{session}", b'{"ttl_seconds":60}'), LockResponse)
    assert refused["acquired"] is False and refused["token"] is None  # the seed decodes these two
    assert refused["holder"] == me.user_id and refused["expires_at"].endswith("Z")  # fields added: who, until when
    assert decode(await them.send("GET", f"/locks/{session}"), LockStatus)["locked"] is True
    # startLockExtension: extend at 50 % of the TTL; held well past the original 2 s
    extend = b'{"token":"' + token.encode() + b'","ttl_seconds":2}'  # ExtendLockRequest
    for _ in range(5):
        await asyncio.sleep(1.0)
        assert decode(await me.send("POST", f"/locks/{session}/extend", extend), LockResponse)["acquired"] is True
        assert decode(await them.send("GET", f"/locks/{session}"), LockStatus)["locked"] is True
    assert decode(await them.send("POST", f"/locks/{session}", b'{"ttl_seconds":60}'), LockResponse)["acquired"] is False
    # releaseLock: DELETE with UnlockRequest body
    unlock = b'{"token":"' + token.encode() + b'"}'
    assert decode(await me.send("DELETE", f"/locks/{session}", unlock), UnlockResponse)["released"] is True
    assert decode(await me.send("GET", f"/locks/{session}"), LockStatus)["locked"] is False
    assert decode(await me.send("DELETE", f"/locks/{session}", unlock), UnlockResponse)["released"] is False
    # extendLock with the released token: acquired false
    assert decode(await me.send("POST", f"/locks/{session}/extend", extend), LockResponse)["acquired"] is False
    # now the other user gets it
    assert decode(await them.send("POST", f"/locks/{session}", b'{"ttl_seconds":60}'), LockResponse)["acquired"] is True
    await me.http.aclose(); await them.http.aclose()
