"""The web app in real Chromium against a real server: several users in separate browser
contexts, controls found only by their accessible roles and names.

Each test also asserts that the pages logged no console error.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from playwright.sync_api import Browser, Page, Route, expect
from websockets.sync.client import connect as ws_connect

from tests.browser.web_support import Users
from tests.helpers import API_KEY, ServerProcess

NOT_FOUND = "the server responded with a status of 404"
CONFLICT = "the server responded with a status of 409"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "web-app"
# Records every text of the status "Connection" (an init script: it runs before the app's first render).
CONNECTION_TEXTS = """
window.__connectionTexts = [];
new MutationObserver(() => {
  const el = document.querySelector('[role="status"][aria-label="Connection"]');
  const seen = window.__connectionTexts;
  if (el && seen[seen.length - 1] !== el.textContent) seen.push(el.textContent);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""
INTERACTIVE = {"button", "link", "textbox", "searchbox", "combobox", "checkbox", "spinbutton",
               "progressbar", "slider", "listbox", "radio", "switch", "tab", "menuitem"}


@pytest.fixture
def users(browser: Browser, server: ServerProcess) -> Iterator[Users]:
    u = Users(browser, server.url)
    yield u
    u.close()


def sign_in(users: Users, name: str, path: str = "/sessions") -> Page:
    tab = users.open(users.context(), path)
    page = tab.page
    page.get_by_role("textbox", name="User name").fill(name)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("status", name="Connection")).to_contain_text("Connected")
    return page


def create_session(page: Page, title: str, *, private: bool = False, category: str | None = None) -> str:
    page.get_by_role("link", name="Sessions").click()
    page.get_by_role("button", name="New session").click()
    page.get_by_role("textbox", name="Title").fill(title)
    if category:
        page.get_by_role("combobox", name="Category").select_option(category)
    if private:
        page.get_by_role("checkbox", name="Private").check()
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name=title, level=1)).to_be_visible()
    return page.url.rsplit("/", 1)[1]


def send(page: Page, text: str, kind: str = "text") -> None:
    page.get_by_role("combobox", name="Message type").select_option(kind)
    page.get_by_role("textbox", name="Message").fill(text)
    page.get_by_role("button", name="Send").click()


def log_texts(page: Page) -> list[str]:
    """The delivered messages' texts, once nothing is left "Sending"."""
    log = page.get_by_role("log", name="Messages")
    expect(log.locator("article").filter(has_text="Sending")).to_have_count(0)
    return log.locator("article p").all_inner_texts()


def check_accessible(page: Page) -> None:
    """What an audit checks first: a title, a main landmark, and a name on every control
    (names as Chromium computes them for assistive technology)."""
    assert page.title().strip()
    cdp = page.context.new_cdp_session(page)
    try:
        nodes = cdp.send("Accessibility.getFullAXTree")["nodes"]
    finally:
        cdp.detach()
    roles, unnamed = set(), []
    for n in nodes:
        if n.get("ignored"):
            continue
        role = n.get("role", {}).get("value")
        roles.add(role)
        if role in INTERACTIVE and not str(n.get("name", {}).get("value", "")).strip():
            unnamed.append(role)
    assert "main" in roles, f"no main landmark on {page.url}"
    assert not unnamed, f"controls without an accessible name on {page.url}: {unnamed}"


def shot(page: Page, name: str, tmp: Path) -> None:
    """Screenshots for docs/web-app.md (written there with TETHER_SCREENSHOTS=1)."""
    target = DOCS if os.environ.get("TETHER_SCREENSHOTS") == "1" else tmp
    target.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(target / f"{name}.png"))


def rest(srv: ServerProcess, method: str, path: str, token: str | None = None, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {"X-API-Key": API_KEY}
    return httpx.request(method, srv.url + path, headers=headers, timeout=10, **kw)


def test_live_sessions_between_users(users: Users, server: ServerProcess, tmp_path: Path) -> None:
    """A session created by one user appears live in another's list; join, chat in order, leave, end, all live."""
    bob = sign_in(users, "bob")
    expect(bob.get_by_role("heading", name="Live sessions")).to_be_visible()
    alice = sign_in(users, "alice")
    sid = create_session(alice, "Evening prayer", category="Prayer")

    sessions = bob.get_by_role("list", name="Sessions")
    item = sessions.get_by_role("listitem").filter(has_text="Evening prayer")
    expect(item).to_contain_text("1/10")
    # search and category narrow the list
    bob.get_by_role("searchbox", name="Search sessions").fill("nothing like this")
    expect(item).to_have_count(0)
    bob.get_by_role("searchbox", name="Search sessions").fill("evening")
    bob.get_by_role("combobox", name="Category").select_option("Prayer")
    expect(item).to_be_visible()
    check_accessible(bob)
    shot(bob, "sessions", tmp_path)

    item.get_by_role("link", name="Evening prayer").click()
    expect(bob.get_by_role("heading", name="Evening prayer", level=1)).to_be_visible()
    bob.get_by_role("button", name="Join").click()
    expect(bob.get_by_role("button", name="Leave")).to_be_visible()
    people = alice.get_by_role("list", name="Participants")
    expect(people.get_by_role("listitem").filter(has_text="bob")).to_contain_text("online")

    send(alice, "first from alice")
    expect(bob.get_by_role("log", name="Messages")).to_contain_text("first from alice")
    send(bob, "a prayer from bob", "prayer")
    expect(alice.get_by_role("log", name="Messages")).to_contain_text("a prayer from bob")
    send(alice, "third from alice", "scripture")
    for page in (alice, bob):
        log = page.get_by_role("log", name="Messages")
        expect(log).to_contain_text("third from alice")
        texts = [t for t in log_texts(page) if t in ("first from alice", "a prayer from bob", "third from alice")]
        assert texts == ["first from alice", "a prayer from bob", "third from alice"]
        prayer = log.locator("article").filter(has_text="a prayer from bob")
        expect(prayer).to_contain_text("bob")
        expect(prayer).to_contain_text("prayer")
    check_accessible(alice)
    shot(alice, "session", tmp_path)

    bob.get_by_role("button", name="Leave").click()
    expect(people.get_by_role("listitem").filter(has_text="bob")).to_have_count(0)
    expect(alice.get_by_role("log", name="Messages")).to_contain_text("left")
    alice.get_by_role("button", name="End session").click()
    expect(bob.get_by_text("This session has ended")).to_be_visible()
    bob.get_by_role("link", name="Sessions").click()
    expect(bob.get_by_role("list", name="Sessions").get_by_role("listitem").filter(has_text="Evening prayer")).to_have_count(0)
    assert rest(server, "GET", f"/api/sessions/{sid}").json()["is_active"] is False
    assert users.errors() == []


def test_form_errors_seat_limit_and_private_sessions(users: Users, server: ServerProcess) -> None:
    """Refused fields are marked; the 51st join is refused in the UI; a private session stays hidden until invited."""
    srv = server
    carol = sign_in(users, "carol")
    dave = sign_in(users, "dave")

    # validation next to the field
    dave.get_by_role("button", name="New session").click()
    dave.get_by_role("spinbutton", name="Max participants").fill("51")
    dave.get_by_role("button", name="Create").click()
    expect(dave.get_by_role("textbox", name="Title")).to_have_attribute("aria-invalid", "true")
    expect(dave.get_by_role("spinbutton", name="Max participants")).to_have_attribute("aria-invalid", "true")
    check_accessible(dave)  # the form open, with its errors
    dave.get_by_role("button", name="Cancel").click()

    # a full session: 50 seats, 49 taken, carol looks at it, the 50th goes live -> "Session full"
    s = rest(srv, "POST", "/api/sessions", "host50", json={"title": "Big room", "max_participants": 50}).json()
    for i in range(48):
        assert rest(srv, "POST", f"/api/sessions/{s['id']}/join", f"guest{i}", json={}).status_code == 200
    carol.goto(f"{srv.url}/sessions/{s['id']}")
    join = carol.get_by_role("button", name="Join")
    expect(join).to_be_enabled()
    assert rest(srv, "POST", f"/api/sessions/{s['id']}/join", "guest49", json={}).json()["session"]["current_participants"] == 50
    expect(carol.get_by_text("Session full")).to_be_visible()
    expect(join).to_be_disabled()
    assert rest(srv, "POST", f"/api/sessions/{s['id']}/join", "carol", json={}).status_code == 409

    # the 51st join clicked in the UI: carol clicks while a seat is free, and the last seat goes
    # to dave between her click and the server (her request is held until his join is in)
    p = rest(srv, "POST", "/api/sessions", "host51", json={"title": "Small hall", "max_participants": 50}).json()
    for i in range(48):  # the server acts for the guests (X-API-Key)
        assert rest(srv, "POST", f"/api/sessions/{p['id']}/join", json={"user_id": f"guest{i}"}).status_code == 200
    carol.goto(f"{srv.url}/sessions/{p['id']}")
    expect(carol.get_by_role("heading", name="Small hall", level=1)).to_be_visible()
    join = carol.get_by_role("button", name="Join")
    expect(join).to_be_enabled()

    def dave_first(route: Route) -> None:
        assert rest(srv, "POST", f"/api/sessions/{p['id']}/join", "dave", json={}).status_code == 200
        route.continue_()

    carol.route(f"**/api/sessions/{p['id']}/join", dave_first)
    join.click()
    expect(carol.get_by_role("alert")).to_contain_text("full")
    expect(carol.get_by_text("Session full")).to_be_visible()
    expect(join).to_be_disabled()
    carol.unroute(f"**/api/sessions/{p['id']}/join")
    assert rest(srv, "GET", f"/api/sessions/{p['id']}").json()["current_participants"] == 50

    # private: invisible to dave until invited, then it appears live
    sid = create_session(carol, "Quiet circle", private=True)
    dave.get_by_role("link", name="Sessions").click()
    expect(dave.get_by_role("list", name="Sessions").get_by_role("listitem").filter(has_text="Big room")).to_be_visible()
    expect(dave.get_by_role("list", name="Sessions").get_by_role("listitem").filter(has_text="Quiet circle")).to_have_count(0)
    dave.goto(f"{srv.url}/sessions/{sid}")
    expect(dave.get_by_role("heading", name="Session not found")).to_be_visible()
    check_accessible(dave)
    dave.get_by_role("link", name="Back to the list").click()
    carol.get_by_role("textbox", name="Invite user").fill("dave")
    carol.get_by_role("button", name="Invite").click()
    expect(carol.get_by_text("Invited dave.")).to_be_visible()
    invited = dave.get_by_role("list", name="Sessions").get_by_role("listitem").filter(has_text="Quiet circle")
    expect(invited).to_be_visible()
    invited.get_by_role("link", name="Quiet circle").click()
    dave.get_by_role("button", name="Join").click()
    expect(carol.get_by_role("list", name="Participants")).to_contain_text("dave")
    # the host has one status on the page, the connection (the invite's result is a live region)
    expect(carol.get_by_role("status")).to_have_count(1)
    expect(carol.get_by_role("status", name="Connection")).to_contain_text("Connected")
    # Chromium logs every 4xx answer as a console error; here the 404 of the hidden session and
    # the 409 of the refused 51st join are the point
    assert users.errors(allow=(NOT_FOUND, CONFLICT)) == []


def test_message_typed_while_server_down_arrives_once(browser: Browser, server: ServerProcess) -> None:
    users = Users(browser, server.url)
    try:
        erin = sign_in(users, "erin")
        sid = create_session(erin, "Through the outage")
        frank = sign_in(users, "frank", f"/sessions/{sid}")
        frank.get_by_role("button", name="Join").click()
        expect(frank.get_by_role("log", name="Messages")).to_be_visible()

        server.kill()
        expect(erin.get_by_role("status", name="Connection")).to_contain_text(re.compile("Reconnecting|Offline"))
        send(erin, "said while the server was down")
        log = erin.get_by_role("log", name="Messages")
        expect(log.locator("article").filter(has_text="said while the server was down")).to_contain_text("Sending")

        server.start()
        for page in (erin, frank):
            expect(page.get_by_role("status", name="Connection")).to_contain_text("Connected", timeout=40_000)
            same = page.get_by_role("log", name="Messages").locator("article").filter(has_text="said while the server was down")
            expect(same.filter(has_not_text="Sending")).to_have_count(1, timeout=30_000)
            expect(same).to_have_count(1)
        stored = rest(server, "GET", f"/api/sessions/{sid}/messages", "erin").json()["messages"]
        assert [m["message"] for m in stored].count("said while the server was down") == 1
        # a message the server refuses says why and is not left behind: written offline, and the
        # session ends before erin's browser is back
        server.kill()
        erin.context.set_offline(True)
        send(erin, "too late for this one")
        expect(log.locator("article").filter(has_text="too late for this one")).to_contain_text("Sending")
        server.start()
        assert rest(server, "DELETE", f"/api/sessions/{sid}", "erin").status_code == 200
        erin.context.set_offline(False)
        refused = log.locator("article").filter(has_text="too late for this one")
        expect(refused.filter(has_text="Not sent")).to_contain_text("ended", timeout=30_000)
        expect(refused).to_have_count(1)
        expect(erin.get_by_text("This session has ended.", exact=True)).to_be_visible()
        expect(erin.get_by_role("status", name="Connection")).not_to_contain_text("to send")
        # reconnect errors while the server was down are the browser's own reports, not the app's
        assert users.errors(allow=("WebSocket connection to", "Failed to load resource", "ERR_CONNECTION_REFUSED")) == []
    finally:
        users.close()


def test_notes_lock_and_conflicting_save(users: Users, server: ServerProcess) -> None:
    srv = server
    gina = sign_in(users, "gina")
    sid = create_session(gina, "Notes for planning")  # a title naming nothing else on the page
    hal = sign_in(users, "hal", f"/sessions/{sid}")
    hal.get_by_role("button", name="Join").click()

    notes_g = gina.get_by_role("region", name="Notes")
    notes_h = hal.get_by_role("region", name="Notes")
    expect(notes_g.get_by_role("textbox", name="Notes text")).not_to_be_editable()
    notes_g.get_by_role("button", name="Edit").click()
    expect(notes_g.get_by_role("textbox", name="Notes text")).to_be_editable()
    check_accessible(gina)  # editing
    expect(notes_h).to_contain_text("Being edited by gina")
    expect(notes_h.get_by_role("button", name="Edit")).to_be_disabled()

    # gina saves: hal sees the text
    notes_g.get_by_role("textbox", name="Notes text").fill("Agenda: songs")
    notes_g.get_by_role("button", name="Save").click()
    expect(notes_h.get_by_role("textbox", name="Notes text")).to_have_value("Agenda: songs")
    expect(notes_h.get_by_role("button", name="Edit")).to_be_enabled()

    # a conflicting save: while gina edits from version 1, hal's backend saves version 2
    notes_g.get_by_role("button", name="Edit").click()
    notes_g.get_by_role("textbox", name="Notes text").fill("Agenda: songs, readings")
    r = rest(srv, "PUT", f"/api/sessions/{sid}/notes", "hal", json={"text": "Agenda: readings first", "version": 1})
    assert r.status_code == 200, r.text
    notes_g.get_by_role("button", name="Save").click()
    expect(notes_g.get_by_role("alert")).to_contain_text("hal saved these notes")
    expect(gina.get_by_role("alert")).to_have_count(1)  # the conflict is the page's only alert
    expect(gina.get_by_role("alert")).to_contain_text("hal saved these notes")
    expect(notes_g.get_by_role("textbox", name="Notes text")).to_have_value("Agenda: readings first")
    notes_g.get_by_role("button", name="Cancel").click()
    expect(notes_h.get_by_role("button", name="Edit")).to_be_enabled()
    expect(notes_h).not_to_contain_text("Being edited by")

    # history pages back when the log is scrolled to the top
    with httpx.Client(base_url=srv.url, headers={"Authorization": "Bearer hal"}, timeout=10) as h:
        for i in range(60):
            assert h.post(f"/api/sessions/{sid}/messages", json={"message": f"history {i:02d}"}).status_code == 201
    later = users.open(gina.context, f"/sessions/{sid}").page
    log = later.get_by_role("log", name="Messages")
    expect(log).to_contain_text("history 59")
    expect(log.get_by_text("history 00", exact=True)).to_have_count(0)
    log.evaluate("el => { el.scrollTop = 0; }")
    expect(log.get_by_text("history 00", exact=True)).to_be_visible()
    assert users.errors(allow=(CONFLICT,)) == []  # the refused save's 409, logged by Chromium itself


def test_devices_progress_and_credits(users: Users, server: ServerProcess, tmp_path: Path) -> None:
    srv = server
    ivy = sign_in(users, "ivy")
    ivy.get_by_role("link", name="Devices").click()
    expect(ivy.get_by_role("heading", name="Devices", level=1)).to_be_visible()
    expect(ivy.get_by_role("heading", name="Devices")).to_be_visible()  # non-exact: one heading only
    devices = ivy.get_by_role("list", name="My devices")
    expect(devices.get_by_role("listitem")).to_have_count(1)
    other = sign_in(users, "ivy")  # another browser: another device of ivy
    expect(devices.get_by_role("listitem")).to_have_count(2)
    other.context.close()
    expect(devices.get_by_role("listitem")).to_have_count(1)

    def push(type: str, data: dict[str, Any]) -> None:
        r = rest(srv, "POST", "/api/users/ivy/events", json={"type": type, "data": data})
        assert r.status_code == 202, r.text

    push("SHOOT_PROGRESS", {"shootId": "shoot-7", "processedCount": 3, "totalCount": 10, "status": "processing"})
    bar = ivy.get_by_role("progressbar", name="shoot-7")
    expect(bar).to_have_attribute("aria-valuenow", "30")
    push("SHOOT_PROGRESS", {"shootId": "shoot-7", "processedCount": 10, "totalCount": 10, "status": "completed"})
    expect(bar).to_have_attribute("aria-valuenow", "100")
    push("CREDIT_UPDATE", {"balance": 42, "change": -3, "reason": "export"})
    expect(ivy.get_by_text("Credits: 42")).to_be_visible()
    # a new tab of ivy gets the retained balance at once
    push("SHOOT_PROGRESS", {"shootId": "shoot-8", "processedCount": 1, "totalCount": 4})
    late = users.open(ivy.context, "/devices").page
    expect(late.get_by_text("Credits: 42")).to_be_visible()
    expect(late.get_by_role("progressbar", name="shoot-8")).to_have_attribute("aria-valuenow", "25")
    check_accessible(late)
    shot(late, "devices", tmp_path)
    assert users.errors() == []


def test_tab_opened_mid_stream_shows_text_so_far(users: Users, server: ServerProcess) -> None:
    """A participant streams a message into the session; every tab sees it grow, a late tab the text so far,
    and the final text is stored once."""
    srv = server
    jo = sign_in(users, "jo")
    sid = create_session(jo, "Streamed answers")
    assert rest(srv, "POST", f"/api/sessions/{sid}/join", "bot", json={}).status_code == 200

    with ws_connect(srv.ws_url("bot:worker")) as ws:
        def request(type: str, data: dict[str, Any]) -> dict[str, Any]:
            rid = f"r{type}"
            ws.send(json.dumps({"type": type, "id": rid, "data": data}))
            while True:
                frame = json.loads(ws.recv(timeout=10))
                if frame.get("id") == rid:
                    return frame

        started = request("STREAM_START", {"channel": f"sessions.{sid}", "data": {"message_type": "text"}})
        assert started["type"] != "ERROR", f"the server refused a stream into the session: {started['data']}"
        stream_id = started["data"]["stream_id"]
        first = request("STREAM_DELTA", {"stream_id": stream_id, "delta": "Grace and "})
        assert first["type"] == "ACK", first
        log = jo.get_by_role("log", name="Messages")
        expect(log).to_contain_text("Grace and")
        late = users.open(jo.context, f"/sessions/{sid}").page
        expect(late.get_by_role("log", name="Messages")).to_contain_text("Grace and")
        assert request("STREAM_DELTA", {"stream_id": stream_id, "delta": "peace to you"})["type"] == "ACK"
        for page in (jo, late):
            expect(page.get_by_role("log", name="Messages")).to_contain_text("Grace and peace to you")
        assert request("STREAM_END", {"stream_id": stream_id})["type"] == "ACK"
    for page in (jo, late):
        final = page.get_by_role("log", name="Messages").locator("article").filter(has_text="Grace and peace to you")
        expect(final).to_have_count(1)
    stored = rest(srv, "GET", f"/api/sessions/{sid}/messages", "jo").json()["messages"]
    assert [m["message"] for m in stored].count("Grace and peace to you") == 1
    assert users.errors() == []


def test_sign_in_page_is_accessible_and_remembered(users: Users, tmp_path: Path) -> None:
    ctx = users.context()
    page = users.open(ctx, "/").page
    expect(page.get_by_role("textbox", name="User name")).to_be_visible()
    expect(page.get_by_role("textbox", name="Token")).to_have_count(0)  # this server takes user names
    check_accessible(page)
    shot(page, "sign-in", tmp_path)
    page.get_by_role("textbox", name="User name").fill("not a name")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("textbox", name="User name")).to_have_attribute("aria-invalid", "true")
    page.get_by_role("textbox", name="User name").fill("kim")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_text("Signed in as kim")).to_be_visible()
    # every text the status "Connection" of a new tab shows, from its first render on
    ctx.add_init_script(CONNECTION_TEXTS)
    second = users.open(ctx, "/devices").page  # a new tab is signed in too
    expect(second.get_by_role("status", name="Connection")).to_contain_text("Connected")
    shown = second.evaluate("window.__connectionTexts")
    assert shown and all(re.search("Connected|Reconnecting|Offline", t) for t in shown), shown
    assert not any("Offline" in t for t in shown), f"a tab on its way to connecting said Offline: {shown}"
    expect(second.get_by_text("Signed in as kim")).to_be_visible()
    expect(second.get_by_role("button", name="Sync")).to_be_visible()
    second.get_by_role("button", name="Sync").click()
    expect(second.get_by_text(re.compile(r"Last synced \d"))).to_be_visible()
    assert users.errors() == []


def test_jwt_sign_in_by_link_and_by_token_field(browser: Browser, server_factory: Any) -> None:
    """Under JWT auth the app takes a token from #token=… or from the Token field, which the first page shows."""
    secret = "browser-test-secret-0123456789abcdef"
    srv = server_factory("--auth", "jwt", env={"TETHER_JWT_SECRET": secret})

    def mint(user: str) -> str:
        return jwt.encode({"sub": user, "device_id": "laptop", "exp": int(time.time()) + 600}, secret, algorithm="HS256")

    users = Users(browser, srv.url)
    try:
        linked = users.open(users.context(), f"/sessions#token={mint('uma')}").page
        expect(linked.get_by_text("Signed in as uma")).to_be_visible()
        expect(linked.get_by_role("status", name="Connection")).to_contain_text("Connected")
        assert "token=" not in linked.url  # the token does not stay in the address bar

        page = users.open(users.context(), "/").page
        token = page.get_by_role("textbox", name="Token")
        token.fill("vic", timeout=5_000)  # at once: no user name first, no switch to press
        expect(page.get_by_role("textbox", name="User name")).to_have_count(0)
        check_accessible(page)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("not a token")
        expect(token).to_have_attribute("aria-invalid", "true")
        check_accessible(page)
        token.fill(mint("vic"))
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_text("Signed in as vic")).to_be_visible()
        expect(page.get_by_role("status", name="Connection")).to_contain_text("Connected")
        assert users.errors() == []
    finally:
        users.close()
