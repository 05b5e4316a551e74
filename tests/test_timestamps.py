"""One timestamp format everywhere: every REST answer and every event of every feature is scanned,
and every time in it must be RFC 3339 UTC with milliseconds and `Z` (`2026-11-27T12:00:00.000Z`)."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any

import httpx

from tests.helpers import ServerProcess, WsClient
from tether.wire.timestamps import PATTERN, iso, wire

# Anything that looks like a date must be in the one format; and fields named like times must be dates.
DATE_LIKE = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d")
TIME_KEY = re.compile(r"(_at|At|_seen|Time|time)$")


def scan(value: Any, where: str, found: Counter[str], bad: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if TIME_KEY.search(k) and v is not None:
                if not (isinstance(v, str) and PATTERN.match(v)):
                    bad.append(f"{where}.{k} = {v!r}")
                else:
                    found[k] += 1
            elif isinstance(v, str) and DATE_LIKE.match(v) and not PATTERN.match(v):
                bad.append(f"{where}.{k} = {v!r}")
            else:
                scan(v, f"{where}.{k}", found, bad)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            scan(v, f"{where}[{i}]", found, bad)


class Log(asyncio.Queue):  # type: ignore[type-arg]
    """A frame queue that also keeps every frame (a test's ``next`` skips and drops frames)."""

    def __init__(self, seen: list[dict[str, Any]]) -> None:
        super().__init__()
        self.seen = seen

    async def put(self, item: Any) -> None:
        self.seen.append(item)
        await super().put(item)


class RecordingClient(WsClient):
    seen: list[dict[str, Any]] = []

    def __init__(self, ws: Any) -> None:
        super().__init__(ws)
        self.frames = Log(self.seen)  # before the reader task first runs

    async def frame(self, type: str, data: dict[str, Any] | None = None, timeout: float = 10) -> dict[str, Any]:
        reply = await super().frame(type, data, timeout)
        self.seen.append(reply)  # ACK data: SESSION_GET, LOCK_STATUS, STREAM_* answers
        return reply


class Recorder:
    """Every JSON answer of every HTTP client it made, and every frame of every WebSocket it opened."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.answers: list[tuple[str, Any]] = []
        self.sockets: list[WsClient] = []
        self.seen: list[dict[str, Any]] = []

    def http(self, token: str | None = None, *, api_key: bool = False) -> httpx.AsyncClient:
        client = self.server.http(token, api_key=api_key)

        async def record(response: httpx.Response) -> None:
            await response.aread()
            if response.headers.get("content-type", "").startswith("application/json"):
                self.answers.append((f"{response.request.method} {response.request.url.path}", response.json()))

        client.event_hooks["response"] = [record]
        return client

    async def ws(self, token: str) -> WsClient:
        client = await type("Recording", (RecordingClient,), {"seen": self.seen}).connect(self.server, token)
        self.sockets.append(client)
        return client

    def frames(self) -> list[dict[str, Any]]:
        return self.seen


async def test_every_rest_answer_and_event_writes_one_timestamp_format(server: ServerProcess) -> None:
    rec = Recorder(server)
    alice_ws = await rec.ws("alice:phone")
    bob_ws = await rec.ws("bob:laptop")
    await rec.ws("alice:tablet")  # DEVICE_CONNECTED to alice's phone
    async with rec.http("alice:phone") as alice, rec.http("bob:laptop") as bob, rec.http(api_key=True) as backend:
        # Live sessions: the session, participants, messages, and their events.
        await alice_ws.request("SUBSCRIBE", {"channel": "sessions"})
        session = (await alice.post("/api/sessions", json={"title": "Evening", "tags": ["calm"]})).json()
        sid = session["id"]
        for ws in (alice_ws, bob_ws):
            if ws is alice_ws:
                await ws.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
        await bob.post(f"/api/sessions/{sid}/join", json={"user_name": "Bob"})
        await bob_ws.request("SUBSCRIBE", {"channel": f"sessions.{sid}"})
        await bob.post(f"/api/sessions/{sid}/messages", json={"message": "hello", "message_type": "prayer"})
        streamed = await bob_ws.request("STREAM_START", {"channel": f"sessions.{sid}"})  # a message streamed in
        await bob_ws.request("STREAM_END", {"stream_id": streamed["stream_id"], "content": "streamed"})
        await alice.patch(f"/api/sessions/{sid}", json={"title": "Evening prayer"})
        await alice.get("/api/sessions")
        await alice.get(f"/api/sessions/{sid}")
        await alice.get(f"/api/sessions/{sid}/participants")
        await alice.get(f"/api/sessions/{sid}/messages")
        private = (await alice.post("/api/sessions", json={"title": "Private", "is_private": True})).json()
        await alice.post(f"/api/sessions/{private['id']}/invite", json={"user_id": "bob"})  # SESSION_INVITED to bob
        await bob.post(f"/api/sessions/{sid}/leave")
        await alice.delete(f"/api/sessions/{sid}")
        await alice_ws.request("SESSION_GET", {"session_id": private["id"]})

        # Documents and their events.
        await alice_ws.request("SUBSCRIBE", {"channel": "collections.notes"})
        doc = (await alice.post("/api/collections/notes/documents", json={"id": "n1", "data": {"t": 1}})).json()
        await alice.put("/api/collections/notes/documents/n1", json={"data": {"t": 2}, "version": doc["version"]})
        await alice.patch("/api/collections/notes/documents/n1", json={"data": {"u": 3}})
        await alice.put("/api/collections/notes/documents/n1", json={"data": {"t": 9}, "version": 1})  # 409: body has the doc
        await alice.get("/api/collections/notes/documents/n1")
        await alice.get("/api/collections/notes/documents")
        await alice.delete("/api/collections/notes/documents/n1")

        # Locks: grant, refusal, status, extend, release, and their events.
        await bob_ws.request("SUBSCRIBE", {"channel": "locks.n1"})
        got = (await alice.post("/api/locks/n1", json={"ttl_seconds": 30})).json()
        await bob.post("/api/locks/n1", json={})
        await bob.get("/api/locks/n1")
        await alice.post("/api/locks/n1/extend", json={"token": got["token"], "ttl_seconds": 60})
        await alice_ws.request("LOCK_STATUS", {"key": "n1"})
        await alice.request("DELETE", "/api/locks/n1", json={"token": got["token"]})

        # Presence, devices, pushed and retained events.
        await bob_ws.request("SUBSCRIBE", {"channel": "presence.room", "presence": True})
        await alice.post("/api/presence/room", json={})
        await alice.get("/api/presence/room", params={"states": "true"})
        await alice.get("/api/users/alice/devices")
        await backend.post("/api/users/alice/events", json={"type": "CREDIT_UPDATE", "data": {"balance": 3}})
        await backend.post("/api/users/alice/events", json={"type": "SHOOT_PROGRESS", "data": {
            "shootId": "s1", "processedCount": 1, "totalCount": 2}})
        await backend.post("/api/channels/public.news/publish", json={"type": "PROMPT_CHANGE", "data": {"p": 1}})
        late = await rec.ws("alice:watch")  # retained events right after CONNECTED

        # Streamed content on a channel, a late subscriber's STREAM_STATE, the stored stream.
        await alice_ws.request("SUBSCRIBE", {"channel": "public.ai"})
        stream = await bob_ws.request("STREAM_START", {"channel": "public.ai", "data": {"role": "assistant"}})
        await bob_ws.request("STREAM_DELTA", {"stream_id": stream["stream_id"], "delta": "Hel"})
        await asyncio.sleep(0.2)  # let the coalesced delta go out, so the late subscriber gets STATE
        await late.request("SUBSCRIBE", {"channel": "public.ai"})
        await bob_ws.request("STREAM_END", {"stream_id": stream["stream_id"], "content": "Hello"})
        await late.next("STREAM_ENDED")
        await alice.get(f"/api/streams/{stream['stream_id']}")

        await bob_ws.close()  # DEVICE_DISCONNECTED? (bob has no other device: nothing) -- alice's tablet goes:
        tablet = rec.sockets[2]
        await tablet.close()
        await alice_ws.next("DEVICE_DISCONNECTED")
        await alice_ws.request("LOCK_STATUS", {"key": "n1"})  # a round trip: the events above have arrived

    found: Counter[str] = Counter()
    bad: list[str] = []
    for where, body in rec.answers:
        scan(body, where, found, bad)
    for frame in rec.frames():
        scan(frame, frame.get("type", "?"), found, bad)
    assert not bad, "timestamps not in the one format:\n" + "\n".join(bad)
    # Not vacuous: every kind of time the features write was seen.
    for key in ("created_at", "updated_at", "ended_at", "joined_at", "left_at", "expires_at", "connected_at",
                "last_seen", "connectedAt", "disconnectedAt", "startedAt", "started_at"):
        assert found[key] > 0, f"no {key} was seen: {found}"


def test_the_format_helpers() -> None:
    assert iso(0) == "1970-01-01T00:00:00.000Z"
    assert iso(1.9999999) == "1970-01-01T00:00:01.999Z"  # truncated: never later than the real time
    assert wire("2026-11-27T12:00:00.123456Z") == "2026-11-27T12:00:00.123Z"
    assert wire("2026-11-27T13:00:00.5+01:00") == "2026-11-27T12:00:00.500Z"
    assert wire(None) is None
    assert PATTERN.match(iso(1764244800.5))
