"""The operator console in real Chromium against a real server (controls found by role and name)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from websockets.sync.client import connect as ws_connect

from tests.browser.test_web_app import check_accessible, shot
from tests.browser.web_support import Users
from tests.helpers import API_KEY, ServerProcess

UNAUTHORIZED = ("the server responded with a status of 401", "the server responded with a status of 403")


@pytest.fixture
def users(browser: Browser, server: ServerProcess) -> Iterator[Users]:
    u = Users(browser, server.url)
    yield u
    u.close()


def console(users: Users, fragment: str = "") -> Page:
    return users.open(users.context(), "/console" + fragment).page


def test_only_operators_see_data(users: Users) -> None:
    page = console(users)
    check_accessible(page)
    page.get_by_role("textbox", name="API key").fill("not-the-key")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("Not an operator")
    expect(page.get_by_role("table", name="Channels")).to_have_count(0)
    # a signed-in user without the admin role, by token in the address: refused the same way
    user = console(users, "#token=mallory")
    expect(user.get_by_role("alert")).to_contain_text("Not an operator")
    expect(user.get_by_role("table", name="Channels")).to_have_count(0)
    expect(user.get_by_role("log", name="Events")).to_have_count(0)
    assert users.errors(allow=UNAUTHORIZED) == []


def test_channels_publish_tail_and_charts(users: Users, server: ServerProcess, tmp_path: Path) -> None:
    srv = server
    page = console(users)
    page.get_by_role("textbox", name="API key").fill(API_KEY)
    page.get_by_role("button", name="Sign in").click()
    channels = page.get_by_role("table", name="Channels")
    expect(channels).to_be_visible()
    expect(page.get_by_role("region", name="Connections")).to_contain_text("deliveries")

    with ws_connect(srv.ws_url("watcher:cli")) as ws:
        assert json.loads(ws.recv(timeout=10))["type"] == "CONNECTED"
        ws.send(json.dumps({"type": "SUBSCRIBE", "id": "s1", "data": {"channel": "public.console-news"}}))
        while json.loads(ws.recv(timeout=10)).get("id") != "s1":
            pass
        row = channels.get_by_role("row").filter(has_text="public.console-news")
        expect(row.get_by_role("cell").nth(1)).to_have_text("1")

        # the tail follows the channel live
        page.get_by_role("textbox", name="Tail channel").fill("public.console-news")
        page.get_by_role("button", name="Tail").click()
        expect(page.get_by_text("Following public.console-news")).to_be_visible()

        # publish from the form: the subscriber gets it, the tail shows it
        page.get_by_role("textbox", name="Channel", exact=True).fill("public.console-news")
        page.get_by_role("textbox", name="Data").fill('{"headline": "from the console"}')
        page.get_by_role("button", name="Publish").click()
        while True:
            frame = json.loads(ws.recv(timeout=10))
            if frame.get("channel") == "public.console-news":
                break
        assert frame["type"] == "PUBLICATION" and frame["data"] == {"headline": "from the console"}
        events = page.get_by_role("log", name="Events")
        expect(events).to_contain_text("from the console")
        for prompt in ("second", "third"):
            r = httpx.post(f"{srv.url}/api/channels/public.console-news/publish", headers={"X-API-Key": API_KEY},
                           json={"type": "PROMPT_CHANGE", "data": {"prompt": prompt}}, timeout=10)
            assert r.status_code == 200, r.text
        expect(events).to_contain_text("third")
        expect(events).to_contain_text("PROMPT_CHANGE")
        expect(row.get_by_role("cell").nth(2)).to_have_text(str(r.json()["offset"]))
        page.evaluate("() => window.scrollTo(0, 0)")
        shot(page, "console", tmp_path)

        # a bad payload is refused next to its field
        page.get_by_role("textbox", name="Data").fill("{not json")
        page.get_by_role("button", name="Publish").click()
        expect(page.get_by_role("textbox", name="Data")).to_have_attribute("aria-invalid", "true")

    expect(row.get_by_role("cell").nth(1)).to_have_text("1")  # the console's own tail is left
    page.get_by_role("button", name="Stop").click()
    # no subscriber left: the row says 0, or an idle channel is no longer listed
    expect(row.get_by_role("cell").nth(1).filter(has_text=re.compile(r"^[1-9]"))).to_have_count(0)
    expect(page.get_by_role("img", name="Connections over the last 5 minutes")).to_be_visible()
    expect(page.get_by_role("img", name="Deliveries per second over the last 5 minutes")).to_be_visible()
    expect(page.get_by_role("list", name="Nodes").get_by_role("listitem").first).to_contain_text("healthy")
    check_accessible(page)
    assert users.errors() == []
