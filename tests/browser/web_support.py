"""Users of the web app and the console in Chromium: one browser context per user (like separate
browsers), console errors of every page collected for the final assertion."""

from __future__ import annotations

from dataclasses import dataclass, field

from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page


@dataclass
class Tab:
    page: Page
    errors: list[str] = field(default_factory=list)


class Users:
    def __init__(self, browser: Browser, url: str) -> None:
        self.browser, self.url = browser, url
        self.contexts: list[BrowserContext] = []
        self.tabs: list[Tab] = []

    def context(self) -> BrowserContext:
        ctx = self.browser.new_context(viewport={"width": 1280, "height": 900})
        ctx.set_default_timeout(15_000)
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
