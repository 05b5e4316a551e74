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


DEFAULT_PORTS = {"http": 80, "https": 443}


def parse(value: str | None) -> list[str]:
    """``"https://a.example, HTTPS://B.example:443/"`` -> the origins as browsers send them
    (``https://a.example``, ``https://b.example``); an entry that is not an origin is kept as written."""
    listed = []
    for entry in (value or "").split(","):
        entry = entry.strip()
        if entry:
            try:
                listed.append(normalize(entry))
            except ValueError:
                listed.append(entry)
    return listed


def normalize(origin: str) -> str:
    """``origin`` as a browser sends it in ``Origin``: lower-case scheme and host, no default port,
    no trailing slash. ValueError, saying why, for what no browser would ever send."""
    if origin == "*":
        return origin
    parts = urlsplit(origin.rstrip("/"))
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.netloc:
        raise ValueError("is not an http:// or https:// origin")
    if "*" in origin:
        raise ValueError("has a wildcard, which matches nothing: list each origin (only a lone '*' means any)")
    if "@" in parts.netloc:
        raise ValueError("has user info, which browsers never send")
    if parts.path or parts.query or parts.fragment or origin.rstrip("/").endswith(("?", "#")):
        raise ValueError("has a path, query or fragment, which browsers never send")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has a port outside 0-65535") from None
    host = (parts.hostname or "").lower()
    if not host or any(c.isspace() for c in host):
        raise ValueError("has no host")
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}" + (f":{port}" if port is not None and port != DEFAULT_PORTS[scheme] else "")


def invalid(origins: Iterable[str]) -> tuple[str, str] | None:
    """The first listed entry that is not ``*`` or an origin, and why, if any."""
    for origin in origins:
        try:
            normalize(origin)
        except ValueError as exc:
            return origin, str(exc)
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
