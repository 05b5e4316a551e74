"""@tether/client in real Chromium against a real server: the outbox survives a reload while the
server is down, and the tabs of one user share one WebSocket, handing it over without loss."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, Page

from tests.browser.conftest import NETWORK_NOISE, client_page, load, page_errors
from tests.helpers import API_KEY, ServerProcess
from websockets.sync.client import connect as ws_connect

FAST = "{base: 0.2, cap: 1, maxAttempts: Infinity}"


def make_client(page: Page, url: str, token: str, store: str, channel: str | None = None) -> str:
    """Creates window.c (and window.seen, the events of `channel`), connects; returns the state."""
    return page.evaluate(
        """async ([url, token, store, channel]) => {
            window.seen = [];
            window.credits = [];
            window.c = new T.Client(url, {token, store, backoff: %s});
            c.onCreditUpdate((credit) => credits.push(credit.balance));
            await c.connect();
            if (channel) await c.subscribe(channel, (e) => seen.push(e.data.i));
            return c.state;
        }""" % FAST,
        [url, token, store, channel],
    )


def channel_events(server: ServerProcess, channel: str) -> list[Any]:
    """Every event the channel's history holds, read over a plain WebSocket."""
    with ws_connect(server.ws_url("auditor")) as ws:
        assert json.loads(ws.recv())["type"] == "CONNECTED"

        def ask(rid: str, data: dict[str, Any]) -> dict[str, Any]:
            ws.send(json.dumps({"type": "SUBSCRIBE", "id": rid, "data": data}))
            while True:
                frame = json.loads(ws.recv())
                if frame.get("id") == rid:
                    assert frame["type"] == "ACK", frame
                    return frame["data"]

        top = ask("1", {"channel": channel})
        if top["offset"] == 0:
            return []
        replay = ask("2", {"channel": channel, "since": {"offset": 0, "epoch": top["epoch"]}})
        assert replay["recovered"], replay
        return [p["data"] for p in replay["publications"]]


def connections(server: ServerProcess) -> int:
    text = httpx.get(server.url + "/metrics").text
    m = re.search(r"^tether_connections(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M)
    assert m, "tether_connections not in /metrics"
    return int(float(m.group(1)))


def rest_publish(server: ServerProcess, channel: str, *items: int) -> None:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}) as api:
        for i in items:
            r = api.post(f"/api/channels/{channel}/publish", json={"type": "PUBLICATION", "data": {"i": i}})
            assert r.status_code < 300, r.text


def rest_push(server: ServerProcess, user: str, type: str, data: dict[str, Any]) -> None:
    with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}) as api:
        r = api.post(f"/api/users/{user}/events", json={"type": type, "data": data})
        assert r.status_code == 202, r.text


def test_writes_made_offline_survive_a_reload_and_arrive_once(browser: Browser, server: ServerProcess) -> None:
    ctx = browser.new_context()
    page = client_page(ctx, server.url)
    assert make_client(page, server.url, "pia:web", "offline-app", "public.resume") == "connected"
    rest_publish(server, "public.resume", 0)
    page.wait_for_function("seen.length === 1")
    server.kill()
    page.wait_for_function("c.state === 'reconnecting'")
    # Each publish resolves once the write is in IndexedDB.
    assert page.evaluate("async () => { for (let i = 0; i < 3; i++) await c.publish('public.offline', {i}); return c.outboxSize }") == 3
    load(page, server.url)  # reload: a new page, the same store
    state, queued = page.evaluate("async (url) => { window.c = new T.Client(url, {token: 'pia:web', store: 'offline-app'}); "
                                  "await c.connect(); return [c.state, c.outboxSize] }", server.url)
    assert (state, queued) == ("connecting", 3)  # offline is not an error; the writes are still there
    page.goto("about:blank")  # the user goes away; the server comes back; events are missed
    server.start()
    rest_publish(server, "public.resume", 1, 2)
    load(page, server.url)  # and comes back: the writes go out once, the missed events arrive once
    make_client(page, server.url, "pia:web", "offline-app", "public.resume")
    page.wait_for_function("c.state === 'connected' && c.outboxSize === 0 && seen.length >= 2", timeout=30_000)
    assert channel_events(server, "public.offline") == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert page.evaluate("seen") == [1, 2]
    assert page.evaluate("c.pending('public.offline').length") == 0
    assert page_errors(page, NETWORK_NOISE) == []
    ctx.close()


def test_three_tabs_share_one_websocket_and_hand_it_over(browser: Browser, server: ServerProcess) -> None:
    ctx = browser.new_context()
    tabs = [client_page(ctx, server.url) for _ in range(3)]
    for tab in tabs:
        assert make_client(tab, server.url, "quinn:web", "tabs-app", "public.tabs") == "connected"
    leaders = [t for t in tabs if t.evaluate("c.isLeader")]
    assert len(leaders) == 1
    assert connections(server) == 1
    leader = leaders[0]
    followers = [t for t in tabs if t is not leader]

    # A follower's writes go through the leader's socket; a backend publishes too.
    followers[0].evaluate("async () => { for (let i = 0; i < 10; i++) await (await c.publish('public.tabs', {i})).acked }")
    rest_publish(server, "public.tabs", *range(10, 20))
    leader.close()  # the leader tab goes away: another takes the socket over
    rest_publish(server, "public.tabs", *range(20, 30))
    followers[1].evaluate("async () => { for (let i = 30; i < 35; i++) await (await c.publish('public.tabs', {i})).acked }")

    expected = list(range(35))
    for tab in followers:
        tab.wait_for_function("seen.length >= 35", timeout=30_000)
        assert tab.evaluate("seen") == expected  # every event once, in order, in every tab
    assert sum(1 for t in followers if t.evaluate("c.isLeader")) == 1
    followers[0].wait_for_function("c.state === 'connected'")
    # One socket again (the old leader's closes as its tab goes).
    for _ in range(100):
        if connections(server) == 1:
            break
        followers[0].wait_for_timeout(100)
    assert connections(server) == 1
    # A tab opened later still gets the state the server retained for the connection.
    rest_push(server, "quinn", "CREDIT_UPDATE", {"balance": 42})
    followers[0].wait_for_function("credits.includes(42)")
    late = client_page(ctx, server.url)
    assert make_client(late, server.url, "quinn:web", "tabs-app") == "connected"
    assert not late.evaluate("c.isLeader")
    late.wait_for_function("credits.includes(42)")
    for tab in [*followers, late]:
        assert page_errors(tab) == []
    ctx.close()


def test_a_user_present_in_several_tabs_leaves_with_the_last_one(browser: Browser, server: ServerProcess) -> None:
    """The tabs of one browser are one device, so one presence on the server: closing a tab while
    another still holds the key is no leave (no PRESENCE_LEFT, still a member); closing the last is."""
    watcher = client_page(browser.new_context(), server.url)
    make_client(watcher, server.url, "vera:web", "presence-watch")
    watcher.evaluate("""async () => {
        window.events = [];
        await c.subscribe('presence.tabs-room', (e) => events.push([e.type, e.data.user_id]));
    }""")
    ctx = browser.new_context()
    tabs = [client_page(ctx, server.url) for _ in range(3)]
    for tab in tabs:
        assert make_client(tab, server.url, "ugo:web", "presence-app") == "connected"
        tab.evaluate("async () => { window.p = await c.presence('tabs-room') }")
    watcher.wait_for_function("events.length >= 1")

    def members() -> list[str]:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}) as api:
            return api.get("/api/presence/tabs-room").json()["users"]

    def settle(page: Page) -> None:
        # Long enough for a goodbye to reach the server and its event the watcher (a heartbeat
        # is 10 s away, so a wrong leave would still show as one).
        page.wait_for_timeout(1500)

    assert members() == ["ugo"]
    leader = next(t for t in tabs if t.evaluate("c.isLeader"))
    followers = [t for t in tabs if t is not leader]
    followers[0].close()  # a tab that does not hold the socket
    settle(watcher)
    assert members() == ["ugo"]
    leader.close()  # the tab that holds the socket (its successor keeps the count)
    last = followers[1]
    last.wait_for_function("c.isLeader && c.state === 'connected'")
    settle(watcher)
    assert members() == ["ugo"]
    assert watcher.evaluate("events") == [["PRESENCE_JOINED", "ugo"]]
    last.close()  # the last tab: now the user leaves, at once (not at the TTL)
    watcher.wait_for_function("events.length >= 2", timeout=10_000)
    assert watcher.evaluate("events") == [["PRESENCE_JOINED", "ugo"], ["PRESENCE_LEFT", "ugo"]]
    assert members() == []
    assert page_errors(watcher) == []
    watcher.context.close()
    ctx.close()


def test_a_presence_subscription_ends_with_the_last_tab_that_asked_for_it(browser: Browser, server: ServerProcess) -> None:
    """Tab A (the leader) follows a channel without presence, tab B with presence. B unsubscribing,
    then B closing, each makes the user leave (A's connection lives on), and A's subscription gets
    every event once, in order, across the presence being dropped."""
    room = "public.tabs-present"
    watcher = client_page(browser.new_context(), server.url)
    make_client(watcher, server.url, "vera:web", "presence-sub-watch")
    watcher.evaluate("""async (room) => {
        window.events = [];
        await c.subscribe('presence.' + room, (e) => events.push([e.type, e.data.user_id]));
    }""", room)
    ctx = browser.new_context()
    a = client_page(ctx, server.url)
    assert make_client(a, server.url, "wes:web", "presence-sub-app", room) == "connected"
    b = client_page(ctx, server.url)
    assert make_client(b, server.url, "wes:web", "presence-sub-app") == "connected"
    assert a.evaluate("c.isLeader") and not b.evaluate("c.isLeader")
    subscribe_b = "async (room) => { await c.subscribe(room, () => {}, {presence: true}) }"

    def members() -> list[str]:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}) as api:
            return api.get(f"/api/presence/{room}").json()["users"]

    def wait_events(n: int) -> list[list[str]]:
        watcher.wait_for_function(f"events.length >= {n}", timeout=10_000)
        return watcher.evaluate("events")

    joined, left = ["PRESENCE_JOINED", "wes"], ["PRESENCE_LEFT", "wes"]
    rest_publish(server, room, *range(0, 5))
    b.evaluate(subscribe_b, room)
    assert wait_events(1) == [joined] and members() == ["wes"]
    rest_publish(server, room, *range(5, 10))
    b.evaluate("async (room) => { await c.unsubscribe(room) }", room)  # B lets go: the user leaves
    rest_publish(server, room, *range(10, 15))
    assert wait_events(2) == [joined, left] and members() == []
    b.evaluate(subscribe_b, room)  # asked again: present again
    assert wait_events(3) == [joined, left, joined]
    rest_publish(server, room, *range(15, 20))
    b.close()  # the tab that asked for presence goes; A, the leader, still follows the channel
    rest_publish(server, room, *range(20, 25))
    assert wait_events(4) == [joined, left, joined, left] and members() == []
    a.wait_for_function("seen.length >= 25", timeout=10_000)
    a.wait_for_timeout(500)
    assert a.evaluate("seen") == list(range(25))  # nothing lost or doubled while presence was dropped
    assert a.evaluate("c.isLeader && c.state === 'connected'")
    assert connections(server) == 2  # A's and the watcher's: the user left with the connection alive
    rest_publish(server, room, 25)
    a.wait_for_function("seen.length >= 26")
    assert a.evaluate("seen") == list(range(26))
    assert page_errors(a) == [] and page_errors(watcher) == []
    watcher.context.close()
    ctx.close()


def test_a_new_leader_learns_which_tabs_asked_for_presence(browser: Browser, server: ServerProcess) -> None:
    """The leader goes; the next one (a tab without presence) learns from the other tabs' hellos
    that one of them asked for presence: the user is present again on its connection, and
    leaves when that tab closes while the new leader still follows the channel."""
    room = "public.tabs-handover"
    ctx = browser.new_context()
    a, c, b = (client_page(ctx, server.url) for _ in range(3))
    assert make_client(a, server.url, "xan:web", "presence-hand-app", room) == "connected"
    assert make_client(c, server.url, "xan:web", "presence-hand-app", room) == "connected"  # next in line
    assert make_client(b, server.url, "xan:web", "presence-hand-app") == "connected"
    b.evaluate("async (room) => { await c.subscribe(room, () => {}, {presence: true}) }", room)

    def members() -> list[str]:
        with httpx.Client(base_url=server.url, headers={"X-API-Key": API_KEY}) as api:
            return api.get(f"/api/presence/{room}").json()["users"]

    def wait_members(want: list[str]) -> None:
        for _ in range(100):
            if members() == want:
                return
            c.wait_for_timeout(100)
        assert members() == want

    wait_members(["xan"])
    a.close()  # the leader goes with its connection
    c.wait_for_function("c.isLeader && c.state === 'connected'", timeout=15_000)
    wait_members(["xan"])  # B's hello told C that B asked for presence
    rest_publish(server, room, *range(0, 5))
    b.close()
    rest_publish(server, room, *range(5, 10))
    wait_members([])
    c.wait_for_function("seen.length >= 10", timeout=10_000)
    assert c.evaluate("seen") == list(range(10))
    assert page_errors(c) == []
    ctx.close()


def docs_chat_page() -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "client-js.md").read_text()
    return re.search(r"## A complete chat.*?```html\n(.*?)```", text, re.S).group(1)


def test_the_documented_chat_example_works(browser: Browser, server: ServerProcess) -> None:
    """The chat page of docs/client-js.md, as written, between two users."""
    html = docs_chat_page()
    pages = []
    for user in ("rita", "sam"):
        ctx = browser.new_context()
        page = client_page(ctx, server.url)
        # routed after the client's routes: the later route wins
        ctx.route(f"{server.url}/chat.html", lambda route: route.fulfill(status=200, content_type="text/html", body=html))
        page.on("dialog", lambda d, u=user: d.accept(u))
        pages.append(page)
    rita, sam = pages
    rita.goto(server.url + "/chat.html")
    rita.wait_for_function("location.hash.length > 1")
    # connected, and the page's script has run to its end (the form is wired up)
    expect_status = "document.querySelector('#status').textContent === 'Connected' && !!document.querySelector('#send').onsubmit"
    rita.wait_for_function(expect_status)
    sam.goto(rita.url)
    sam.wait_for_function(expect_status)
    rita.fill("#text", "hello sam")
    rita.press("#text", "Enter")
    sam.wait_for_function("document.querySelector('#messages').textContent.includes('rita: hello sam')")
    sam.fill("#text", "hi rita")
    sam.press("#text", "Enter")
    rita.wait_for_function("document.querySelector('#messages').textContent.includes('sam: hi rita')")
    assert "(sending" not in rita.text_content("#messages")
    for page in pages:
        assert page_errors(page) == []
        page.context.close()
