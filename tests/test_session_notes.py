"""Shared notes of a live session over real HTTP and WebSockets: versioned saves, conflicts, access, events."""

from __future__ import annotations

from typing import Any

from tests.helpers import WsClient


async def test_notes_versioned_saves_conflict_access_and_events(shared_server: Any) -> None:
    srv = shared_server
    async with srv.http("alice") as a:
        s = (await a.post("/api/sessions", json={"title": "Notes", "is_private": True})).json()
        sid = s["id"]
        empty = (await a.get(f"/api/sessions/{sid}/notes")).json()
        assert empty["text"] == "" and empty["version"] == 0
        watcher = await WsClient.connect(srv, "alice:tab")
        await watcher.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})

        first = await a.put(f"/api/sessions/{sid}/notes", json={"text": "one", "version": 0})
        assert first.status_code == 200 and first.json()["version"] == 1 and first.json()["updated_by"] == "alice"
        ev = await watcher.next("NOTES_UPDATED", channel=f"sessions.{sid}")
        assert ev["data"]["text"] == "one" and ev["data"]["version"] == 1

        # two creates from version 0: the second is refused with the current notes
        again = await a.put(f"/api/sessions/{sid}/notes", json={"text": "other", "version": 0})
        assert again.status_code == 409 and again.json()["error"]["notes"]["text"] == "one"

        async with srv.http("bob") as b:
            # not invited to a private session: as if it did not exist
            assert (await b.get(f"/api/sessions/{sid}/notes")).status_code == 404
            await a.post(f"/api/sessions/{sid}/invite", json={"user_id": "bob"})
            assert (await b.get(f"/api/sessions/{sid}/notes")).json()["text"] == "one"
            # an invitee reads but does not write until joining
            assert (await b.put(f"/api/sessions/{sid}/notes", json={"text": "x", "version": 1})).status_code == 403
            await b.post(f"/api/sessions/{sid}/join", json={})
            ok = await b.put(f"/api/sessions/{sid}/notes", json={"text": "two", "version": 1})
            assert ok.status_code == 200 and ok.json()["version"] == 2
        stale = await a.put(f"/api/sessions/{sid}/notes", json={"text": "mine", "version": 1})
        assert stale.status_code == 409
        assert stale.json()["error"]["notes"] == {**ok.json()}
        bad = await a.put(f"/api/sessions/{sid}/notes", json={"text": "x" * 20_001, "version": 2})
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "text"
        ws = await watcher.request("NOTES_SAVE", {"session_id": sid, "text": "three", "version": 2})
        assert ws["version"] == 3
        await watcher.close()
