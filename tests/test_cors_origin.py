"""Browsers: CORS on /api for listed origins, the WebSocket Origin check, /ws without an upgrade."""

from __future__ import annotations

import httpx
import pytest
import websockets

APP = "https://app.example.com"
PREFLIGHT = {"Origin": APP, "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization,content-type,x-api-key,if-match"}


async def test_listed_origin_gets_cors_on_api_with_preflight(server_factory) -> None:
    srv = server_factory("--cors-origins", f"{APP}, https://other.example.com")
    async with httpx.AsyncClient(base_url=srv.url) as http:
        r = await http.options("/api/presence/room1", headers=PREFLIGHT)
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == APP
        allowed = r.headers["access-control-allow-headers"].lower()
        for header in ("authorization", "content-type", "x-api-key", "if-match"):
            assert header in allowed
        assert "POST" in r.headers["access-control-allow-methods"]
        r = await http.post("/api/presence/room1", json={"user_id": "alice"},
                            headers={"Origin": APP, "Authorization": "Bearer alice"})
        assert r.status_code == 200, r.text
        assert r.headers["access-control-allow-origin"] == APP
        # a page of another origin gets no CORS grant, so its browser blocks the reply
        r = await http.options("/api/presence/room1", headers={**PREFLIGHT, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers
        # CORS is for /api only
        r = await http.get("/healthz", headers={"Origin": APP})
        assert "access-control-allow-origin" not in r.headers


async def test_default_is_same_origin_only(server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.options("/api/presence/room1", headers=PREFLIGHT)
        assert "access-control-allow-origin" not in r.headers
        r = await http.get("/api/presence/room1", headers={"Origin": APP, "Authorization": "Bearer alice"})
        assert "access-control-allow-origin" not in r.headers


async def test_star_with_dev_auth_allows_any_page(server_factory) -> None:
    srv = server_factory("--cors-origins", "*")
    async with httpx.AsyncClient(base_url=srv.url) as http:
        r = await http.options("/api/locks/doc1", headers={**PREFLIGHT, "Origin": "https://anything.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] in ("*", "https://anything.example")
    async with websockets.connect(srv.ws_url("alice"), origin="https://anything.example") as ws:  # type: ignore[arg-type]
        assert b"CONNECTED" in (await ws.recv()).encode()


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_websocket_origin_check(server_factory, transport: str) -> None:
    srv = server_factory("--cors-origins", APP, "--ws-transport", transport)
    refused = ["https://evil.example", "http://127.0.0.1:1", "null"]
    for origin in refused:
        with pytest.raises(websockets.InvalidStatus) as info:
            async with websockets.connect(srv.ws_url("alice"), origin=origin):  # type: ignore[arg-type]
                pass
        assert info.value.response.status_code == 403, origin
    for origin in [APP, srv.url, None]:  # listed, same origin, no Origin (not a browser)
        async with websockets.connect(srv.ws_url("alice"), origin=origin) as ws:  # type: ignore[arg-type]
            assert "CONNECTED" in await ws.recv()


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_websocket_from_another_origin_is_refused_by_default(server_factory, transport: str) -> None:
    srv = server_factory("--ws-transport", transport)
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(srv.ws_url("alice"), origin=APP):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 403


async def test_plain_get_ws_answers_426_with_a_hint(server) -> None:
    async with httpx.AsyncClient(base_url=server.url) as http:
        r = await http.get("/ws", params={"token": "alice"})
    assert r.status_code == 426
    assert r.headers["upgrade"].lower() == "websocket"
    error = r.json()["error"]
    assert error["code"] == "upgrade_required" and "WebSocket" in error["message"]


async def test_listed_origins_are_matched_as_browsers_send_them(server_factory) -> None:
    """Upper case, a default port or a trailing slash in --cors-origins still match the browser's Origin."""
    srv = server_factory("--cors-origins", "HTTPS://APP.EXAMPLE.COM:443/, http://Local.Example:80")
    async with httpx.AsyncClient(base_url=srv.url) as http:
        for origin in (APP, "http://local.example"):
            r = await http.options("/api/presence/room1", headers={**PREFLIGHT, "Origin": origin})
            assert r.headers.get("access-control-allow-origin") == origin, origin
    async with websockets.connect(srv.ws_url("alice"), origin=APP) as ws:  # type: ignore[arg-type]
        assert "CONNECTED" in await ws.recv()


def test_origin_normalisation() -> None:
    from tether.server.origins import invalid, normalize, parse

    assert parse("HTTPS://App.Example.com:443/, http://x:80, http://x:8080, http://[::1]:3000, *") == [
        APP, "http://x", "http://x:8080", "http://[::1]:3000", "*"]
    for entry, why in [("https://*.example.com", "wildcard"), ("ftp://app.example.com", "http"),
                       ("https://u:p@app.example.com", "user info"), ("https://app.example.com/app", "path"),
                       ("app.example.com", "http"), ("https://app.example.com:99999", "port")]:
        with pytest.raises(ValueError, match=why):
            normalize(entry)
        assert invalid([APP, entry]) is not None
