"""The seeds' names are defaults, not the only names: a generic PROGRESS retained per id like
SHOOT_PROGRESS, and the retained-progress rule and the chat message types set by configuration."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from tests.helpers import API_KEY, ServerProcess, WsClient


async def push(server: ServerProcess, user: str, type: str, data: dict, **extra: object) -> dict:  # type: ignore[type-arg]
    async with server.http(api_key=True) as backend:
        r = await backend.post(f"/api/users/{user}/events", json={"type": type, "data": data, **extra})
        return {"status": r.status_code, **r.json()}


async def retained(server: ServerProcess, token: str) -> list[dict]:  # type: ignore[type-arg]
    """What a device connecting now gets right after CONNECTED."""
    client = await WsClient.connect(server, token)
    await client.request("LOCK_STATUS", {"key": "x"})  # a round trip: the retained frames came before its ACK
    frames = []
    while not client.frames.empty():
        frames.append(client.frames.get_nowait())
    await client.close()
    return [f for f in frames if f.get("retained")]


async def test_generic_progress_is_retained_per_id_until_it_ends(server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory("--retain-ended", "0.5")
    phone = await WsClient.connect(srv, "ann:phone")
    assert (await push(srv, "ann", "PROGRESS", {"id": "export-1", "done": 1, "total": 4}))["status"] == 202
    live = await phone.next("PROGRESS")
    assert live["data"] == {"id": "export-1", "done": 1, "total": 4, "status": "processing"}
    await push(srv, "ann", "PROGRESS", {"id": "export-2", "status": "queued", "done": 0, "total": 9, "label": "Photos"})
    # The other device sends one too, over the WebSocket: no shootId, an id -> PROGRESS.
    tablet = await WsClient.connect(srv, "ann:tablet")
    ack = await tablet.request("UPDATE_PROGRESS", {"id": "export-1", "done": 3, "total": 4})
    assert ack["id"] == "export-1" and ack["status"] == "processing"
    assert (await phone.next("PROGRESS"))["data"]["id"] == "export-2"
    assert (await phone.next("PROGRESS"))["data"] == {"id": "export-1", "done": 3, "total": 4, "status": "processing"}

    got = {f["data"]["id"]: f["data"] for f in await retained(srv, "ann:laptop") if f["type"] == "PROGRESS"}
    assert got == {"export-1": {"id": "export-1", "done": 3, "total": 4, "status": "processing"},
                   "export-2": {"id": "export-2", "status": "queued", "done": 0, "total": 9, "label": "Photos"}}

    await push(srv, "ann", "PROGRESS", {"id": "export-1", "status": "completed", "done": 4, "total": 4})

    async def export_1_gone() -> bool:
        return all(f["data"]["id"] != "export-1" for f in await retained(srv, "ann:laptop") if f["type"] == "PROGRESS")

    # Retained --retain-ended s after completing, then gone: looked at until a bound far past it
    # (a count of looks is no bound: they got faster than the expiry).
    deadline = asyncio.get_running_loop().time() + 30
    while not await export_1_gone():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("a completed PROGRESS stayed retained")
        await asyncio.sleep(0.05)
    for bad, field in (({"id": "", "done": 0, "total": 1}, "'id'"), ({"id": "x", "done": 2, "total": 1}, "'done'"),
                       ({"id": "x", "done": 0, "total": 1, "status": "paused"}, "'status'"),
                       ({"id": "x", "done": -1, "total": 1}, "'done'")):
        refused = await push(srv, "ann", "PROGRESS", bad)
        assert refused["status"] == 400 and field in refused["error"]["message"], refused


async def test_the_retained_rules_and_message_types_are_configuration(server_factory) -> None:  # type: ignore[no-untyped-def]
    srv = server_factory(env={"TETHER_RETAINED_PROGRESS": "RENDER_PROGRESS:renderId",
                              "TETHER_RETAINED_LATEST": "QUOTA_UPDATE",
                              "TETHER_MESSAGE_TYPES": "question,answer"})
    await push(srv, "bo", "RENDER_PROGRESS", {"renderId": "r1", "pct": 10})
    await push(srv, "bo", "RENDER_PROGRESS", {"renderId": "r2", "pct": 50})
    await push(srv, "bo", "QUOTA_UPDATE", {"left": 3})
    await push(srv, "bo", "CREDIT_UPDATE", {"balance": 1})  # no longer retained by default
    await push(srv, "bo", "SHOOT_PROGRESS", {"shootId": "s", "processedCount": 0, "totalCount": 1})  # nor this
    got = [(f["type"], f["data"]) for f in await retained(srv, "bo:phone")]
    assert got == [("RENDER_PROGRESS", {"renderId": "r1", "pct": 10}), ("RENDER_PROGRESS", {"renderId": "r2", "pct": 50}),
                   ("QUOTA_UPDATE", {"left": 3})]
    refused = await push(srv, "bo", "RENDER_PROGRESS", {"pct": 1})
    assert refused["status"] == 400 and "'renderId'" in refused["error"]["message"]

    async with srv.http("bo") as bo:
        sid = (await bo.post("/api/sessions", json={"title": "Q&A"})).json()["id"]
        r = await bo.post(f"/api/sessions/{sid}/messages", json={"message": "why?"})
        assert r.status_code == 201 and r.json()["message_type"] == "question"  # the first type is the default
        r = await bo.post(f"/api/sessions/{sid}/messages", json={"message": "because", "message_type": "answer"})
        assert r.status_code == 201
        r = await bo.post(f"/api/sessions/{sid}/messages", json={"message": "amen", "message_type": "prayer"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "message_type"
        schema = (await bo.get("/openapi.json")).json()
        assert "answer" in str(schema) and "scripture" not in str(schema)


async def test_the_seeds_names_stay_the_defaults(server: ServerProcess) -> None:
    await push(server, "cy", "CREDIT_UPDATE", {"balance": 7})
    await push(server, "cy", "SHOOT_PROGRESS", {"shootId": "s1", "processedCount": 1, "totalCount": 2})
    types = {f["type"] for f in await retained(server, "cy:phone")}
    assert types == {"CREDIT_UPDATE", "SHOOT_PROGRESS"}
    async with server.http("cy") as cy:
        sid = (await cy.post("/api/sessions", json={"title": "Vespers"})).json()["id"]
        for kind in ("text", "prayer", "scripture"):
            assert (await cy.post(f"/api/sessions/{sid}/messages", json={"message": "x", "message_type": kind})).status_code == 201


def test_a_bad_rule_is_refused_at_start_in_one_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    for env, words in (({"TETHER_RETAINED_PROGRESS": "SHOOT_PROGRESS"}, "TYPE:idField"),
                       ({"TETHER_MESSAGE_TYPES": "text,system"}, "system"),
                       ({"TETHER_RETAINED_LATEST": "credit update"}, "UPPER_SNAKE_CASE")):
        done = subprocess.run([sys.executable, "-m", "tether", "serve", "--port", "1", "--data-dir", str(tmp_path / "d")],
                              env={**os.environ, "TETHER_API_KEY": API_KEY, **env},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and words in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
