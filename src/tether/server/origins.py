"""Which web pages may call this server: CORS on /api, the Origin check of a WebSocket upgrade.

By default only same-origin pages may (the browser's own rule for REST; for
WebSockets, which browsers do not guard, the server checks ``Origin``).
``--cors-origins`` lists more; ``*`` means any page and is allowed only with
dev auth, where no token is secret anyway.
"""

from __future__ import annotations

from typing import Iterable
from urllib.parse import urlsplit

from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

# Request headers a page may send, and response headers it may read.
ALLOW_HEADERS = ["Authorization", "Content-Type", "X-API-Key", "If-Match", "If-None-Match", "Idempotency-Key"]
EXPOSE_HEADERS = ["ETag", "Location", "Retry-After"]


def parse(value: str | None) -> list[str]:
    """``"https://a.example, https://b.example"`` -> the origins, without trailing slashes."""
    return [o.strip().rstrip("/") for o in (value or "").split(",") if o.strip()]


def invalid(origins: Iterable[str]) -> str | None:
    """The first listed origin that is not ``*`` or ``scheme://host[:port]``, if any."""
    for origin in origins:
        if origin == "*":
            continue
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path or parts.query:
            return origin
    return None


def websocket_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """A WebSocket upgrade may proceed: no Origin (not a browser), same origin, or listed."""
    if origin is None:
        return True
    origin = origin.rstrip("/")
    if "*" in allowed or origin in allowed:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


class ApiCors:
    """Starlette's CORS middleware for ``/api`` only; every other path passes straight through."""

    def __init__(self, app: ASGIApp, origins: list[str]) -> None:
        self.app = app
        self.cors = CORSMiddleware(app, allow_origins=origins, allow_methods=["*"], allow_headers=ALLOW_HEADERS,
                                   expose_headers=EXPOSE_HEADERS, allow_credentials=False, max_age=600)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (scope["path"] == "/api" or scope["path"].startswith("/api/")):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
