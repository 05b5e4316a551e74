"""tether.client with the server's domain modules: documents, presence, locks, sessions, devices,
and the runnable examples."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import FAST_BACKOFF as FAST
from tests.helpers import ServerProcess, WsClient, eventually
from tether.client import Backoff, Client, Conflict, ServerError

ROOT = Path(__file__).resolve().parents[1]



def need(srv: ServerProcess, *paths: str) -> None:
    spec = httpx.get(srv.url + "/openapi.json", timeout=5).json()
    missing = [p for p in paths if p not in spec.get("paths", {})]
    assert not missing, f"server has no {', '.join(missing)}"


def client(srv: ServerProcess, token: str = "alice:phone", **kw: Any) -> Client:
    return Client(srv.url, token, backoff=Backoff(**FAST), **kw)


def run_example(name: str, srv: ServerProcess) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "examples" / name), srv.url], capture_output=True, text=True,
                         env={**os.environ}, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


DOCS = "/api/collections/{collection}/documents"


async def test_documents_offline_writes_roll_back_a_conflict(server_factory) -> None:
    srv = server_factory(start=False)
    srv.start()
    need(srv, DOCS)
    srv.kill()
    c = client(srv)
    refused: list[str] = []
    c.on_error(lambda err, entry: refused.append(f"{entry.kind}:{err.code}"))
    await c.connect(wait=False)
    notes = c.documents("notes")
    created = await notes.create({"title": "draft"}, id="n1")
    await notes.update("n1", {"title": "second"})
    assert notes.local("n1")["data"] == {"title": "second"} and notes.local("n1")["pending"] is True
    await asyncio.to_thread(srv.start)
    await c.flush()
    doc = await created
    assert doc["id"] == "n1"
    server_copy = await notes.fetch("n1")
    assert server_copy is not None and server_copy["data"] == {"title": "second"}
    version = server_copy["version"]

    other = client(srv, "alice:laptop")  # the same user on another device moves the document on
    await other.connect()
    await (await other.documents("notes").update("n1", {"title": "from laptop"}, version=version))
    stale = await notes.update("n1", {"title": "stale edit"}, version=version)
    later = await notes.create({"title": "still works"}, id="n2")
    await c.flush()
    with pytest.raises(ServerError) as conflict:
        await stale
    assert conflict.value.status == 409 and refused == ["doc.update:conflict"]
    assert notes.local("n1")["data"] == {"title": "from laptop"}  # rolled back to the server's truth
    assert (await later)["id"] == "n2"
    await other.close()
    await c.close()


async def test_update_with_retry_converges_under_contention(shared_server: ServerProcess) -> None:
    need(shared_server, DOCS)
    a, b = client(shared_server, "erin:a"), client(shared_server, "erin:b")
    await a.connect()
    await b.connect()
    doc = await (await a.documents("counters").create({"n": 0}))

    def inc(data: dict[str, int]) -> dict[str, int]:
        return {"n": data["n"] + 1}

    await asyncio.gather(*[x.update_with_retry("counters", doc["id"], inc, max_retries=20) for x in (a, b) for _ in range(4)])
    final = await a.documents("counters").fetch(doc["id"])
    assert final is not None and final["data"] == {"n": 8}

    def never(data: Any) -> Any:  # a competing writer wins every time
        return {"n": -1}

    async def rival() -> None:
        async with httpx.AsyncClient(base_url=shared_server.url, headers={"Authorization": "Bearer erin:c"}) as h:
            await h.put(f"/api/collections/counters/documents/{doc['id']}", json={"data": {"n": 99}})

    calls = 0

    async def sneaky(data: Any) -> Any:
        nonlocal calls
        calls += 1
        await rival()
        return {"n": data["n"] + 1}

    with pytest.raises(Conflict):
        await a.update_with_retry("counters", doc["id"], sneaky, max_retries=2)
    assert calls == 3
    await a.close()
    await b.close()


async def test_presence_and_lock_helpers(server_factory) -> None:
    srv = server_factory("--presence-ttl", "2")
    need(srv, "/api/presence/{key}", "/api/locks/{key}")
    c = client(srv)
    await c.connect()
    async with c.presence("room-1") as here:
        assert "alice" in await here.members()
    async with httpx.AsyncClient(base_url=srv.url, headers={"Authorization": "Bearer bob"}) as h:
        assert "alice" not in (await h.get("/api/presence/room-1")).json()["users"]

    lost: list[bool] = []
    async with c.lock("res", ttl=1, on_lost=lambda: lost.append(True)) as lock:
        first = lock.fencing_token
        async with httpx.AsyncClient(base_url=srv.url, headers={"Authorization": "Bearer bob"}) as h:
            assert (await h.post("/api/locks/res", json={"ttl_seconds": 1})).json()["acquired"] is False
        assert srv.proc is not None
        os.kill(srv.proc.pid, signal.SIGSTOP)  # the extension cannot land before the TTL runs out
        try:
            await asyncio.wait_for(lock.lost.wait(), 10)
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
    assert lost == [True]
    async with c.lock("res", ttl=2, timeout=5) as lock:
        assert lock.fencing_token > first
    await c.close()


async def test_example_editor_lock(shared_server: ServerProcess) -> None:
    need(shared_server, "/api/locks/{key}", "/api/presence/{key}")
    out = run_example("editor_lock.py", shared_server)
    assert "bob: chapter-1 is being edited by alice until 20" in out and "extended" in out


async def test_lock_timeout_says_who_holds_the_lock_and_until_when(shared_server: ServerProcess) -> None:
    from tether.client import LockTimeout

    need(shared_server, "/api/locks/{key}")
    alice, bob = client(shared_server, "alice"), client(shared_server, "bob")
    async with alice.lock("held-res", ttl=5) as lock:
        with pytest.raises(LockTimeout) as info:
            async with bob.lock("held-res", ttl=1, timeout=0):
                pass
    assert info.value.holder == "alice" and info.value.expires_at == lock.expires_at
    assert str(info.value) == f"lock 'held-res' is held by alice until {lock.expires_at}"
    await alice.close()
    await bob.close()


def test_a_close_reason_that_names_its_code_is_not_doubled() -> None:
    assert str(ServerError("unauthorized", "unauthorized: token expired", 401)) == "unauthorized: token expired"
    assert ServerError("unauthorized", "unauthorized: token expired").message == "token expired"


async def test_example_chat_session(shared_server: ServerProcess) -> None:
    need(shared_server, "/api/sessions")
    out = run_example("chat_session.py", shared_server)
    assert "alice sees: hello from bob" in out and "alice sees: shall we start?" in out


async def test_example_device_progress(shared_server: ServerProcess) -> None:
    out = run_example("device_progress.py", shared_server)
    assert "laptop: shoot shoot-1 4/4 (completed)" in out


async def test_server_killed_while_publishing_and_writing_documents(server_factory) -> None:
    """Publishes and document writes interleaved through a SIGKILL: each applied once, in order."""
    srv = server_factory()
    need(srv, DOCS)
    c = client(srv)
    await c.connect()
    seen: list[int] = []
    await c.subscribe("public.mixed", lambda e: seen.append(e["data"]["n"]))
    board = c.documents("boards")
    await board.create({"steps": []}, id="b1")
    N = 30
    for n in range(N):
        await c.publish("public.mixed", {"n": n})
        await board.update("b1", {"steps": list(range(n + 1))})  # last-write-wins: order decides
        if n == N // 3:
            await asyncio.sleep(0.05)
            srv.kill()
        if n == 2 * N // 3:
            await asyncio.to_thread(srv.start)
        await asyncio.sleep(0.005)
    await c.flush()
    doc = await board.fetch("b1")
    assert doc is not None and doc["data"] == {"steps": list(range(N))}
    assert doc["version"] == N + 1  # one create + N updates: a duplicated write would bump it again
    ws = await WsClient.connect(srv, "auditor")
    ack = await ws.request("SUBSCRIBE", {"channel": "public.mixed"})
    full = await ws.request("SUBSCRIBE", {"channel": "public.mixed", "since": {"offset": 0, "epoch": ack["epoch"]}})
    assert [e["data"]["n"] for e in full["publications"]] == list(range(N))
    await ws.close()
    await eventually(lambda: len(seen) >= N)
    assert seen == list(range(N))
    await c.close()


async def test_watch_keeps_what_it_may_read_across_offset_gaps(shared_server: ServerProcess) -> None:
    """collections.{c} skips the changes of documents bob may not read: its ACK says the channel
    is filtered, so his client takes the gaps as they are (no recovery round trip) and applies
    every change he may read."""
    col = "gaps" + os.urandom(4).hex()
    bob = client(shared_server, "bob:phone")
    await bob.connect()
    notes = bob.documents(col)
    await notes.watch()
    recoveries = []
    resubscribe = bob._subscribe_on

    async def counted(link, sub, **kw):  # type: ignore[no-untyped-def]
        recoveries.append(sub.channel)
        return await resubscribe(link, sub, **kw)

    bob._subscribe_on = counted  # type: ignore[method-assign]
    async with httpx.AsyncClient(base_url=shared_server.url, headers={"Authorization": "Bearer alice"}) as alice:
        for doc_id, access in [("x", "private"), ("y", "public"), ("z", "private"), ("w", "public")]:
            r = await alice.post(DOCS.format(collection=col), json={"id": doc_id, "data": {}, "access": access})
            assert r.status_code == 201, r.text
        r = await alice.patch(DOCS.format(collection=col) + "/x", json={"data": {"n": 1}})
        assert r.status_code == 200
        r = await alice.patch(DOCS.format(collection=col) + "/y", json={"data": {"n": 2}})
        assert r.status_code == 200
    await eventually(lambda: (notes.local("y") or {}).get("data") == {"n": 2} and notes.local("w") is not None)
    assert notes.local("x") is None and notes.local("z") is None
    assert f"collections.{col}" not in recoveries
    await bob.close()
