"""Browser fixtures: one Debian Chromium per test module, and pages at a real server's origin.

`browser` is a module-scoped Chromium (never a downloaded one). `client_page(context, server)`
opens a blank page at the server's origin with `window.T` = the served `/tether-client.js`
module, collecting console errors and uncaught exceptions in `page.tether_errors`. Only while
the server is down (a page reloaded during an outage) is the committed build served at its
origin through Playwright routing, as from a browser's cache; whatever a running server answers
for `/tether-client.js` is what the page gets, so a broken route fails the test.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, expect, sync_playwright

# How long an expectation waits for the page to get there: two Chromiums, servers and the suite share
# two cores in CI, where a live update can take seconds (a bound on waiting, not a speed claim).
expect.set_options(timeout=15_000)

BUNDLE = Path(__file__).resolve().parents[2] / "src" / "tether" / "server" / "static" / "tether-client.js"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # a routed page has no network address: let it reach the loopback server
                 "--disable-features=LocalNetworkAccessChecks"]
BLANK = "/__tether_client_test__"
# What Chromium itself logs while the server is down (not errors of the page's code).
NETWORK_NOISE = ("WebSocket connection to", "Failed to load resource", "ERR_CONNECTION_REFUSED")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A browser test that fails is run once more before it counts (pytest-rerunfailures).

    Two Chromiums, their servers and the rest of the suite share two cores in CI; a page that
    misses its wait there once in several runs is the machine, a defect fails both runs.
    """
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).parent == here:
            item.add_marker(pytest.mark.flaky(reruns=1))


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # Module, not session: a sync Playwright keeps an event loop running in this thread until it
    # stops, and the asyncio tests that a worker runs after the browser tests need the thread free.
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


def route_client(context: BrowserContext, url: str) -> None:
    """A blank page at the server's origin; `/tether-client.js` comes from the server, or, only when
    the server is down (a page reloaded during an outage, as from a browser cache), from the
    committed build."""

    def handle(route: Any) -> None:
        path = "/" + route.request.url.split("/", 3)[3].split("?", 1)[0]
        if path == BLANK:
            route.fulfill(status=200, content_type="text/html", body="<!doctype html><title>tether client test</title>")
        elif path == "/tether-client.js":
            try:
                served = route.fetch()
            except Exception:  # the server is down: the page has the module as from a browser's cache
                route.fulfill(status=200, content_type="text/javascript", body=BUNDLE.read_bytes())
                return
            route.fulfill(response=served)  # whatever the server answers: a broken route fails the test
        else:
            route.continue_()

    context.route(f"{url}/**", handle)


def client_page(context: BrowserContext, url: str, *, routed: bool = False) -> Page:
    """A page at `url`'s origin with the client module loaded as `window.T`."""
    if not routed and not getattr(context, "_tether_routed", False):
        route_client(context, url)
        setattr(context, "_tether_routed", True)
    page = context.new_page()
    errors: list[str] = []

    def on_console(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    page.on("console", on_console)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    setattr(page, "tether_errors", errors)
    load(page, url)
    return page


def load(page: Page, url: str) -> None:
    """(Re)loads the blank page and imports the client (after a reload too)."""
    page.goto(url + BLANK)
    page.evaluate("async () => { window.T = await import('/tether-client.js'); }")


def page_errors(page: Page, allow: tuple[str, ...] = ()) -> list[str]:
    return [e for e in getattr(page, "tether_errors", []) if not any(a in e for a in allow)]
