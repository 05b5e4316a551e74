"""The recipes in docs/recipes run as written: the Python script, the web page in Chromium, the Swift types."""

from __future__ import annotations

import functools
import http.server
import os
import re
import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.helpers import API_KEY, free_port

RECIPES = Path(__file__).resolve().parents[1] / "docs" / "recipes"


def blocks(name: str, language: str) -> list[str]:
    text = (RECIPES / name).read_text()
    return re.findall(rf"^```{language}\n(.*?)^```", text, re.S | re.M)


# -- multi-device progress: the script, run as is ------------------------------------------------

def test_multi_device_progress_recipe_runs(server, tmp_path: Path) -> None:
    (script,) = blocks("multi-device-progress.md", "python")
    path = tmp_path / "progress.py"
    path.write_text(script)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TETHER_")}
    out = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120,
                         env={**env, "TETHER_URL": server.url, "TETHER_API_KEY": API_KEY})
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    for expected in ("laptop: export export-7 3/3 (done)", "tablet, connecting late, sees: export export-7 3/3 (done)",
                     "phone: reported 50%", "laptop: shoot shoot-1 100% (completed)"):
        assert expected in lines, out.stdout


# -- iOS: every Swift type the page decodes matches what the server answers ------------------------

SWIFT_STRUCT = re.compile(r"struct (\w+): Decodable \{([^}]*)\}")
SWIFT_FIELD = re.compile(r"let (\w+): ([\w\[\]]+)(\?)?")


def swift_types() -> dict[str, list[tuple[str, str, bool]]]:
    code = "\n".join(blocks("ios-presence-locks.md", "swift"))
    return {name: [(f, t, bool(opt)) for f, t, opt in SWIFT_FIELD.findall(body)]
            for name, body in SWIFT_STRUCT.findall(code)}


def snake(name: str) -> str:  # JSONDecoder.KeyDecodingStrategy.convertFromSnakeCase, backwards
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def decodes(value: Any, swift: str) -> bool:
    if swift == "Bool":
        return isinstance(value, bool)
    if swift == "Int":
        return isinstance(value, int) and not isinstance(value, bool)
    if swift == "String":
        return isinstance(value, str)
    if swift == "Date":  # what the page's two ISO8601DateFormatters accept
        return isinstance(value, str) and bool(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)", value)) \
            and datetime.fromisoformat(value.replace("Z", "+00:00")) is not None
    if swift == "[String]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise AssertionError(f"no check for Swift type {swift}")


def check(swift: dict[str, list[tuple[str, str, bool]]], name: str, answer: dict[str, Any]) -> None:
    assert name in swift, f"the recipe declares no {name}"
    for field, kind, optional in swift[name]:
        value = answer.get(snake(field))
        if value is None:
            assert optional, f"{name}.{field} is not optional, but the server sent {answer}"
            continue
        assert decodes(value, kind), f"{name}.{field}: {kind} cannot decode {value!r}"


async def test_ios_recipe_swift_types_match_the_server(server) -> None:
    swift = swift_types()
    assert {"PresenceList", "LockGrant", "LockStatus", "Released", "Empty"} <= set(swift)
    async with server.http("alice:iphone") as alice, server.http("bob:ipad") as bob:
        r = await alice.post("/api/presence/doc-42", json={"user_id": "alice"})
        assert r.status_code == 200 and r.json() == {}
        r = await bob.get("/api/presence/doc-42")
        check(swift, "PresenceList", r.json())
        assert r.json()["users"] == ["alice"]
        grant = (await alice.post("/api/locks/doc-42", json={"ttl_seconds": 30.0})).json()  # a Swift Double
        check(swift, "LockGrant", grant)
        assert grant["acquired"] and grant["fencing_token"] >= 1
        refused = (await bob.post("/api/locks/doc-42", json={"ttl_seconds": 30})).json()
        check(swift, "LockGrant", refused)
        assert refused["acquired"] is False
        status = (await bob.get("/api/locks/doc-42")).json()
        check(swift, "LockStatus", status)
        assert status["holder"] == "alice"
        extended = (await alice.post("/api/locks/doc-42/extend", json={"token": grant["token"], "ttl_seconds": 30})).json()
        check(swift, "LockGrant", extended)
        released = (await alice.request("DELETE", "/api/locks/doc-42", json={"token": grant["token"]})).json()
        check(swift, "Released", released)
        assert released["released"] is True
        check(swift, "LockStatus", (await bob.get("/api/locks/doc-42")).json())
        r = await alice.delete("/api/presence/doc-42/alice")
        assert r.status_code == 200 and r.json() == {}
        error = (await bob.post("/api/locks/doc-42/extend", json={"ttl_seconds": 30})).json()["error"]
        check(swift, "Detail", error)  # TetherError's body


# -- web chat: the page, from another origin, in Chromium ------------------------------------------

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture
def page_origin(tmp_path: Path) -> Iterator[str]:
    (html,) = blocks("web-chat.md", "html")
    (tmp_path / "chat.html").write_text(html)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None  # type: ignore[method-assign]
    port = free_port()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()


async def test_web_chat_recipe_in_chromium(server_factory, page_origin: str) -> None:
    playwright = pytest.importorskip("playwright.async_api")
    if not Path("/usr/bin/chromium").exists():
        pytest.skip("SKIPPED LOUDLY: no Chromium at /usr/bin/chromium")
    srv = server_factory("--cors-origins", page_origin)
    async with playwright.async_playwright() as p:
        browser = await p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
        try:
            alice = await browser.new_page()
            await alice.goto(f"{page_origin}/chat.html?server={srv.url}&token=alice")
            await alice.wait_for_function("document.getElementById('status').textContent === 'live'", timeout=30000)
            session = await alice.evaluate("document.body.dataset.session")
            bob = await browser.new_page()
            await bob.goto(f"{page_origin}/chat.html?server={srv.url}&token=bob&session={session}")
            await bob.wait_for_function("document.getElementById('status').textContent === 'live'", timeout=30000)
            await bob.fill("#text", "hello from bob")
            await bob.click("button")
            await alice.wait_for_function(
                "[...document.querySelectorAll('#log li')].some(li => li.textContent === 'bob: hello from bob')",
                timeout=30000)
            log = await alice.evaluate("[...document.querySelectorAll('#log li')].map(li => li.className + '|' + li.textContent)")
            assert "system|bob joined" in log and log[-1] == "text|bob: hello from bob", log
            # bob, who joined later, reads the history too, each message once
            await bob.wait_for_function(
                "[...document.querySelectorAll('#log li')].some(li => li.textContent === 'bob: hello from bob')",
                timeout=30000)
            bob_log = await bob.evaluate("[...document.querySelectorAll('#log li')].map(li => li.textContent)")
            assert len(bob_log) == len(set(bob_log)), bob_log
        finally:
            await browser.close()
    async with httpx.AsyncClient() as http:  # the page's origin was the one allowed
        r = await http.options(f"{srv.url}/api/sessions", headers={"Origin": page_origin,
                                                                   "Access-Control-Request-Method": "POST"})
        assert r.headers.get("access-control-allow-origin") == page_origin
