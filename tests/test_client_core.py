"""tether.client against a real server process: reconnects, recovers, works offline, loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import FAST_BACKOFF as FAST
from tests.helpers import ServerProcess, WsClient, eventually, fast_client, free_port
from tether.client import Backoff, Client, Failed, ServerError


async def history(srv: ServerProcess, channel: str) -> list[dict[str, Any]]:
    """Every event the server holds for a channel, read with a plain WebSocket."""
    ws = await WsClient.connect(srv, "auditor")
    ack = await ws.request("SUBSCRIBE", {"channel": channel})
    full = await ws.request("SUBSCRIBE", {"channel": channel, "since": {"offset": 0, "epoch": ack["epoch"]}})
    await ws.close()
    assert full["recovered"] is True
    return full["publications"]  # type: ignore[no-any-return]


# -- backoff: a schedule, checked with a clock and a random we control -----------------------

def test_backoff_full_jitter_schedule_is_capped_and_stops() -> None:
    b = Backoff(max_attempts=9, random=lambda: 1.0)
    assert [b.next() for _ in range(9)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert b.next() is None  # attempts used up
    b.reset()
    draws = iter([0.5, 0.25, 0.0, 0.999])
    b = Backoff(max_attempts=None, random=lambda: next(draws))
    assert [b.next() for _ in range(4)] == [0.5, 0.5, 0.0, pytest.approx(7.992)]
    assert Backoff(max_attempts=None, random=lambda: 1.0).ceiling(10_000) == 60


async def test_reconnect_follows_backoff_then_fails(tmp_path: Path) -> None:
    """A server that never answers: the client sleeps the schedule (without really sleeping) then fails."""
    slept: list[float] = []

    async def fake_sleep(delay: float) -> None:
        slept.append(delay)

    states: list[str] = []
    client = Client(f"http://127.0.0.1:{free_port()}", "alice", backoff=Backoff(max_attempts=4, random=lambda: 0.5),
                    sleep=fake_sleep)
    client.on_state(states.append)
    await client.connect()  # offline is not an error: it returns and keeps trying
    await client.wait_for("failed", timeout=20)
    assert slept == [0.5, 1.0, 2.0, 4.0]
    assert states[0] == "connecting" and states[-1] == "failed"
    assert isinstance(client.error, Failed)
    await client.close()


# -- subscriptions -------------------------------------------------------------------------------

async def test_typed_handlers_and_auto_user_channel(shared_server: ServerProcess) -> None:
    client = fast_client(shared_server, "carol:phone")
    await client.connect()
    assert client.state == "connected" and client.user_id == "carol"
    pubs: list[int] = []
    others: list[str] = []
    sub = await client.subscribe("public.typed")
    sub.on("PUBLICATION", lambda e: pubs.append(e["data"]["n"]))
    mine: list[Any] = []
    client.on("PUBLICATION", lambda e: mine.append(e["data"]) if e["channel"] == "users.carol" else None)
    other = await WsClient.connect(shared_server, "carol:laptop")
    await other.request("PUBLISH", {"channel": "users.carol", "data": {"hello": 1}})
    api = shared_server.http(api_key=True)
    await api.post("/api/channels/public.typed/publish", json={"type": "CUSTOM_EVENT", "data": {"x": 1}})
    sub.on("CUSTOM_EVENT", lambda e: others.append(e["type"]))
    for n in range(5):
        await (await client.publish("public.typed", {"n": n}))
    await eventually(lambda: len(pubs) >= 5 and mine)
    assert pubs == [0, 1, 2, 3, 4]
    assert mine == [{"hello": 1}]
    await api.aclose()
    await other.close()
    await client.close()


async def test_resume_from_store_recovers_or_asks_for_reload(server_factory, tmp_path: Path) -> None:
    srv = server_factory("--history-size", "3")
    store = str(tmp_path / "app.db")
    pub = await WsClient.connect(srv, "bob")

    seen: list[int] = []
    client = fast_client(srv, store=store)
    await client.connect()
    await client.subscribe("public.resume", lambda e: seen.append(e["data"]["n"]))
    await pub.request("PUBLISH", {"channel": "public.resume", "data": {"n": 0}})
    await eventually(lambda: seen == [0])
    await client.close()
    for n in (1, 2):  # missed while the app was closed, within the history window
        await pub.request("PUBLISH", {"channel": "public.resume", "data": {"n": n}})

    client = fast_client(srv, store=store)
    await client.connect()
    await client.subscribe("public.resume", lambda e: seen.append(e["data"]["n"]))
    assert seen == [0, 1, 2]
    await client.close()
    for n in range(3, 9):  # more than the history keeps
        await pub.request("PUBLISH", {"channel": "public.resume", "data": {"n": n}})

    reloads: list[str] = []
    client = fast_client(srv, store=store)
    client.on_reload(reloads.append)
    await client.connect()
    await client.subscribe("public.resume", lambda e: seen.append(e["data"]["n"]))
    assert reloads == ["public.resume"] and seen == [0, 1, 2]  # never a silent gap
    await pub.request("PUBLISH", {"channel": "public.resume", "data": {"n": 9}})
    await eventually(lambda: len(seen) >= 4)
    assert seen == [0, 1, 2, 9]
    await client.close()
    await pub.close()


# -- the big one: SIGKILL while writing -----------------------------------------------------------

async def test_server_killed_while_publishing_loses_nothing(server_factory) -> None:
    srv = server_factory()
    N = 60
    seen_a: list[int] = []
    seen_b: list[int] = []
    a = fast_client(srv, "alice:phone")
    b = fast_client(srv, "bob:phone")
    await a.connect()
    await b.connect()
    await a.subscribe("public.kill", lambda e: seen_a.append(e["data"]["n"]))
    await b.subscribe("public.kill", lambda e: seen_b.append(e["data"]["n"]))
    writes = []
    for n in range(N):
        writes.append(await a.publish("public.kill", {"n": n}))
        if n == N // 3:
            await asyncio.sleep(0.1)  # some acknowledged, some in flight
            srv.kill()
        if n == 2 * N // 3:
            assert a.state in ("reconnecting", "connecting") and a.outbox_size > 0
            await asyncio.to_thread(srv.start)
        await asyncio.sleep(0.005)
    await a.flush()
    results = [await w for w in writes]
    offsets = [r["offset"] for r in results]
    assert offsets == sorted(offsets) and len(set(offsets)) == N
    events = await history(srv, "public.kill")
    assert [e["data"]["n"] for e in events] == list(range(N))  # each write applied once, in order
    await a.wait_for("connected")
    await b.wait_for("connected")
    await eventually(lambda: len(seen_a) >= N and len(seen_b) >= N)
    assert seen_a == list(range(N)) and seen_b == list(range(N))  # each event seen once, in order
    assert a.outbox_size == 0 and a.last_synced_at is not None
    await a.close()
    await b.close()


async def test_dead_link_is_noticed_by_keepalive(server_factory) -> None:
    """A frozen server (SIGSTOP: socket open, nothing answers) is detected and reconnected to."""
    srv = server_factory("--ping-interval", "0.5")
    client = fast_client(srv)
    await client.connect()
    assert client.state == "connected"
    assert srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        await client.wait_for("reconnecting", timeout=15)
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    await client.wait_for("connected", timeout=15)
    await client.close()


async def test_token_refresh_on_refused_token(shared_server: ServerProcess) -> None:
    calls = []

    def refresh() -> str:
        calls.append(1)
        return "alice:fresh"

    client = Client(shared_server.url, "not a valid token!", token_refresh=refresh, backoff=Backoff(**FAST))
    await client.connect()
    assert client.state == "connected" and client.device_id == "fresh" and calls == [1]
    await client.close()
    hopeless = Client(shared_server.url, "not a valid token!", backoff=Backoff(**FAST))
    with pytest.raises(Failed):
        await hopeless.connect()
    assert hopeless.state == "failed"
    await hopeless.close()


# -- offline: durable outbox, rollback, listeners ----------------------------------------------------

OFFLINE_WRITER = textwrap.dedent("""
    import asyncio, sys
    from tether.client import Backoff, Client

    async def main():
        client = Client(sys.argv[1], "alice:phone", store=sys.argv[2], backoff=Backoff(base=0.05))
        await client.connect()  # the server is down: returns offline, keeps retrying
        assert client.state in ("connecting", "reconnecting"), client.state
        for n in range(5):
            await client.publish("public.offline", {"n": n})
        print(client.outbox_size, flush=True)
        await client.close()

    asyncio.run(main())
""")


async def test_offline_writes_survive_the_process_and_land_once(server_factory, tmp_path: Path) -> None:
    srv = server_factory(start=False)
    store = str(tmp_path / "offline.db")
    out = subprocess.run([sys.executable, "-c", OFFLINE_WRITER, srv.url, store], capture_output=True, text=True,
                         env={**os.environ}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"

    client = fast_client(srv, store=store)
    assert client.outbox_size == 5  # a new process finds them
    await client.connect(wait=False)
    await asyncio.sleep(0.2)
    assert client.state in ("connecting", "reconnecting")
    await asyncio.to_thread(srv.start)
    await client.flush()
    assert client.outbox_size == 0
    events = await history(srv, "public.offline")
    assert [e["data"]["n"] for e in events] == [0, 1, 2, 3, 4]
    await client.close()


async def test_refused_offline_write_is_rolled_back_and_later_ones_land(server_factory) -> None:
    srv = server_factory(start=False)
    client = fast_client(srv)
    refused: list[tuple[str, str]] = []
    client.on_error(lambda err, entry: refused.append((entry.target, err.code)))
    changes: list[frozenset[str]] = []
    client.store.on_change(changes.append)
    await client.connect(wait=False)
    w1 = await client.publish("public.ok", {"n": 1})
    w2 = await client.publish("admin", {"n": 2})  # only admins may publish here
    w3 = await client.publish("bad channel!", {"n": 3})  # not a valid name
    w4 = await client.publish("public.ok", {"n": 4})
    assert [m["data"]["n"] for m in client.store.messages("public.ok")] == [1, 4]  # optimistic view
    assert [m["data"]["n"] for m in client.store.messages("admin")] == [2]
    await asyncio.sleep(0.15)
    assert changes == [frozenset({"channels/public.ok", "channels/admin", "channels/bad channel!"})]  # one burst, one call
    await asyncio.to_thread(srv.start)
    await client.flush()
    assert (await w1)["offset"] == 1 and (await w4)["offset"] == 2
    with pytest.raises(ServerError) as forbidden:
        await w2
    assert forbidden.value.code == "forbidden" and forbidden.value.action == "reject"
    with pytest.raises(ServerError) as bad:
        await w3
    assert bad.value.code == "bad_request"
    assert refused == [("admin", "forbidden"), ("bad channel!", "bad_request")]
    assert client.store.messages("admin") == []  # rolled back
    assert [e["data"]["n"] for e in await history(srv, "public.ok")] == [1, 4]
    await client.close()


async def test_refresh_catches_up_and_stamps_last_synced_at(shared_server: ServerProcess) -> None:
    client = fast_client(shared_server, "dave")
    await client.connect()
    seen: list[int] = []
    await client.subscribe("public.refresh", lambda e: seen.append(e["data"]["n"]))
    before = client.last_synced_at
    await client.publish("public.refresh", {"n": 1})
    await client.refresh()
    assert client.last_synced_at is not None and (before is None or client.last_synced_at >= before)
    assert seen == [1] and client.outbox_size == 0
    await client.close()


def test_pacer_keeps_the_drain_under_a_rate() -> None:
    from tether.client.backoff import Pacer

    now = [0.0]
    p = Pacer(rate=10, burst=5, clock=lambda: now[0])
    assert p.take(50) == (5, 0.0)  # the burst
    granted, wait = p.take(1)
    assert granted == 0 and wait == pytest.approx(0.1)
    now[0] += 0.35
    assert p.take(50) == (3, 0.0)


async def test_big_offline_backlog_drains_in_order_under_the_rate_limit(server_factory) -> None:
    """More writes than the server's burst allows: the drain is paced under the limit, order intact."""
    srv = server_factory("--rate-per-connection", "40", "--rate-burst", "20", start=False)
    client = fast_client(srv, send_rate=30, batch_size=10)
    refused: list[Any] = []
    client.on_error(lambda err, entry: refused.append(err))
    await client.connect(wait=False)
    writes = [await client.publish("public.backlog", {"n": n}) for n in range(60)]
    await asyncio.to_thread(srv.start)
    await client.flush(timeout=60)
    offsets = [(await w)["offset"] for w in writes]
    assert offsets == list(range(1, 61))
    assert [e["data"]["n"] for e in await history(srv, "public.backlog")] == list(range(60))
    assert refused == []
    await client.close()
