"""Helpers for the web app and console browser tests: Chromium, the built pages, users in contexts.

The pages are the committed build in ``src/tether/server/static/web``. When the server under
test does not serve them itself (older servers), they are served at its origin through
Playwright routing, so the app still talks to the real server over real sockets.
"""

from __future__ import annotations

import mimetypes
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    sync_playwright,
)

STATIC = Path(__file__).resolve().parents[2] / "src" / "tether" / "server" / "static" / "web"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 # pages fulfilled by routing have no address: let them reach the loopback server
                 "--disable-features=LocalNetworkAccessChecks"]
APP_PATHS = re.compile(r"^/(sessions(/.*)?|devices)?$")


def launch() -> Iterator[Browser]:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def serves_pages(url: str) -> bool:
    try:
        r = httpx.get(url + "/console", timeout=5)
    except httpx.HTTPError:
        return False
    return r.status_code == 200 and "text/html" in r.headers.get("content-type", "")


def _built(path: str) -> tuple[bytes, str] | None:
    if path == "/console":
        f = STATIC / "console.html"
    elif APP_PATHS.match(path):
        f = STATIC / "index.html"
    elif path.startswith("/assets/"):
        f = STATIC / path.lstrip("/")
    else:
        return None
    if not f.is_file():
        return None
    return f.read_bytes(), mimetypes.guess_type(f.name)[0] or "application/octet-stream"


def route_pages(context: BrowserContext, url: str) -> None:
    """Serve the built pages at the server's origin (only used when the server has no page routes)."""

    def handle(route: Any) -> None:
        path = "/" + route.request.url.split("/", 3)[3].split("?", 1)[0].split("#", 1)[0]
        found = _built(path)
        if found is None:
            route.continue_()
        else:
            route.fulfill(status=200, body=found[0], content_type=found[1])

    context.route(f"{url}/**", handle)
    context.route(url, handle)


@dataclass
class Tab:
    page: Page
    errors: list[str] = field(default_factory=list)


class Users:
    """Browser contexts (one per user, like separate browsers) on one server; collects console errors."""

    def __init__(self, browser: Browser, url: str) -> None:
        self.browser, self.url = browser, url
        self.contexts: list[BrowserContext] = []
        self.tabs: list[Tab] = []
        self.route = not serves_pages(url)

    def context(self) -> BrowserContext:
        ctx = self.browser.new_context(viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(15_000)
        if self.route:
            route_pages(ctx, self.url)
        self.contexts.append(ctx)
        return ctx

    def open(self, ctx: BrowserContext, path: str = "/") -> Tab:
        page = ctx.new_page()
        tab = Tab(page)

        def on_console(msg: ConsoleMessage) -> None:
            if msg.type == "error":
                tab.errors.append(f"{page.url}: {msg.text}")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: tab.errors.append(f"{page.url}: uncaught {exc}"))
        page.goto(self.url + path)
        self.tabs.append(tab)
        return tab

    def errors(self, allow: tuple[str, ...] = ()) -> list[str]:
        return [e for t in self.tabs for e in t.errors if not any(a in e for a in allow)]

    def close(self) -> None:
        for ctx in self.contexts:
            ctx.close()
