"""POST /api/presence/{key}: the seed's body `{"user_id"}`, an empty object and no body at all all mean a heartbeat."""

from __future__ import annotations

from tests.helpers import ServerProcess


async def test_heartbeat_with_the_seeds_body_an_empty_object_or_no_body(shared_server: ServerProcess) -> None:
    async with shared_server.http("alice:phone") as alice, shared_server.http("bob") as bob, \
            shared_server.http("carol") as carol:
        r = await alice.post("/api/presence/room-body", json={"user_id": "alice"})  # the seed's PresenceHeartbeat
        assert (r.status_code, r.json()) == (200, {})
        r = await bob.post("/api/presence/room-body", json={})
        assert (r.status_code, r.json()) == (200, {})
        r = await carol.post("/api/presence/room-body")  # no body, no content type
        assert (r.status_code, r.json()) == (200, {})
        assert (await alice.get("/api/presence/room-body")).json() == {"users": ["alice", "bob", "carol"]}
        r = await bob.post("/api/presence/room-body", json={"state": {"typing": True}})  # state without user_id
        assert r.status_code == 200
        listed = (await alice.get("/api/presence/room-body", params={"states": "true"})).json()
        assert listed["states"]["bob"] == {"typing": True}


async def test_heartbeat_refusals_stay_clear(shared_server: ServerProcess) -> None:
    async with shared_server.http("alice") as alice, shared_server.http(api_key=True) as backend:
        r = await alice.post("/api/presence/room-body2", json={"user_id": "mallory"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        r = await backend.post("/api/presence/room-body2", json={})  # the API key is nobody: it must name the user
        assert r.status_code == 422 and r.json()["error"]["field"] == "user_id"
        r = await backend.post("/api/presence/room-body2", json={"user_id": "dave"})
        assert r.status_code == 200
        r = await alice.post("/api/presence/room-body2", content=b"[1]", headers={"Content-Type": "application/json"})
        assert r.status_code == 422 and "error" in r.json()
        assert (await alice.get("/api/presence/room-body2")).json() == {"users": ["dave"]}
