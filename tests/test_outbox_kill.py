"""Domain events under SIGKILL: every document version and chat message is announced once.

Writers update their own documents and post to a session over REST with idempotency keys,
retrying the same key until it is answered, while the server is SIGKILLed and restarted
(seeded, bounded). Afterwards each document channel's history must hold DOCUMENT_UPDATED
for every version exactly once, and the session channel MESSAGE_CREATED for every chat
seq exactly once: nothing lost with a kill between a change and its event, nothing
published twice by a retry or by the outbox sweep.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import ServerProcess, WsClient

WRITERS, CHATTERS, KILLS, SEED = 3, 2, 8, 20261127


async def _keyed(server: ServerProcess, user: str, method: str, url: str, key: str, body: dict[str, Any],
                 stop: asyncio.Event) -> dict[str, Any] | None:
    """The same request with the same key until the server answers it (it may be down)."""
    while not stop.is_set():
        try:
            async with httpx.AsyncClient(base_url=server.url, timeout=3,
                                         headers={"Authorization": f"Bearer {user}", "Idempotency-Key": key}) as http:
                r = await http.request(method, url, json=body)
            if r.status_code < 300:
                return dict(r.json())
            if r.status_code != 503:
                raise AssertionError(f"{method} {url}: {r.status_code} {r.text}")
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.02)
    return None


async def _history(server: ServerProcess, user: str, channel: str) -> list[dict[str, Any]]:
    ws = await WsClient.connect(server, user)
    try:
        ack = await ws.request("SUBSCRIBE", {"channel": channel})
        full = await ws.request("SUBSCRIBE", {"channel": channel, "since": {"offset": 0, "epoch": ack["epoch"]}})
        return list(full["publications"])
    finally:
        await ws.close()


async def test_every_change_is_announced_once_across_sigkills(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    server = ServerProcess(tmp_path / "srv")
    await asyncio.to_thread(server.start)
    stop = asyncio.Event()
    versions: dict[str, int] = {}
    sid = ""

    async def writer(i: int) -> None:
        user, doc = f"w{i}", f"d{i}"
        created = await _keyed(server, user, "POST", "/api/collections/kill/documents", f"{doc}-create",
                               {"id": doc, "data": {"n": 0}}, stop)
        assert created is not None
        version, n = created["version"], 0
        while not stop.is_set():
            n += 1
            done = await _keyed(server, user, "PUT", f"/api/collections/kill/documents/{doc}", f"{doc}-{n}",
                                {"data": {"n": n}, "version": version}, stop)
            if done is not None:
                version = done["version"]
                versions[doc] = version

    async def chatter(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            await _keyed(server, f"c{i}", "POST", f"/api/sessions/{sid}/messages", f"c{i}-{n}",
                         {"message": f"c{i} says {n}"}, stop)

    host = await _keyed(server, "c0", "POST", "/api/sessions", "session", {"title": "Kill room"}, stop)
    assert host is not None
    sid = host["id"]
    for i in range(1, CHATTERS):
        assert await _keyed(server, f"c{i}", "POST", f"/api/sessions/{sid}/join", f"join{i}", {}, stop)
    tasks = [asyncio.ensure_future(writer(i)) for i in range(WRITERS)]
    tasks += [asyncio.ensure_future(chatter(i)) for i in range(CHATTERS)]
    try:
        for _ in range(KILLS):
            await asyncio.sleep(rng.uniform(0.2, 0.6))
            server.kill()
            await asyncio.to_thread(server.start)
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    try:
        await asyncio.sleep(1.5)  # the outbox sweep runs every second
        lost = duplicated = 0
        for i in range(WRITERS):
            doc = f"d{i}"
            pubs = await _history(server, f"w{i}", f"collections.kill.documents.{doc}")
            announced = [p["data"]["version"] for p in pubs if p["type"] == "DOCUMENT_UPDATED"]
            final = (await _history_doc(server, f"w{i}", doc))["version"]
            assert final >= versions.get(doc, 1)
            expected = list(range(2, final + 1))
            lost += len(set(expected) - set(announced))
            duplicated += len(announced) - len(set(announced))
        pubs = await _history(server, "c0", f"sessions.{sid}")
        seqs = [p["data"]["seq"] for p in pubs if p["type"] == "MESSAGE_CREATED"]
        async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": "Bearer c0"}) as http:
            page = (await http.get(f"/api/sessions/{sid}/messages", params={"limit": 100})).json()
        top = max(m["seq"] for m in page["messages"])
        lost += len(set(range(1, top + 1)) - set(seqs))
        duplicated += len(seqs) - len(set(seqs))
        print(f"outbox under SIGKILL: kills={KILLS} versions={sum(versions.values())} messages={top} "
              f"lost={lost} duplicated={duplicated}")
        assert (lost, duplicated) == (0, 0)
        assert sum(versions.values()) > WRITERS * 3 and top > CHATTERS * 3, "too little got through to judge"
    finally:
        server.kill()


async def _history_doc(server: ServerProcess, user: str, doc: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {user}"}) as http:
        return dict((await http.get(f"/api/collections/kill/documents/{doc}")).json())
