"""What a browser loads from every node: the web app at /, the console at /console, the client module.

The files are built from ``web/`` and ``clients/js/`` and committed under ``static/``,
so a node serves them with nothing to build or start.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response

from tether.server.http import error_body

STATIC = Path(__file__).with_name("static")
WEB = STATIC / "web"

# Paths of the web app that a browser may open directly (client-side routes).
APP_PATHS = ["/", "/sessions", "/sessions/{rest:path}", "/devices"]


def _file(path: Path, media_type: str | None = None) -> Response:
    if not path.is_file():
        return JSONResponse(error_body("not_found", f"{path.name} is not built in this install"), status_code=404)
    # no-cache: a node upgraded in place serves its new pages at once (they revalidate by ETag).
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


def _app_page(auth: str) -> Response:
    """index.html with the server's sign-in mode in a meta tag, so the first page already asks
    for what this server takes: a user name (dev auth) or a token (JWT auth)."""
    path = WEB / "index.html"
    if not path.is_file():
        return _file(path)
    html = path.read_text(encoding="utf-8")
    html = html.replace("</head>", f'  <meta name="tether-auth" content="{auth}" />\n  </head>', 1)
    return HTMLResponse(html, headers={"Cache-Control": "no-cache"})


def install_pages(app: FastAPI, auth: str = "dev") -> None:
    """``auth`` is the node's auth mode ("dev" or "jwt"), told to the web app's sign-in page."""
    if auth not in ("dev", "jwt"):
        raise ValueError(f"auth must be 'dev' or 'jwt', not {auth!r}")

    async def web_app() -> Response:
        return _app_page(auth)

    for path in APP_PATHS:
        app.add_api_route(path, web_app, methods=["GET"], include_in_schema=False)

    @app.get("/console", include_in_schema=False)
    async def console() -> Response:
        return _file(WEB / "console.html")

    @app.get("/tether-client.js", include_in_schema=False)
    async def client_module() -> Response:
        return _file(STATIC / "tether-client.js", "text/javascript")

    @app.get("/assets/{name:path}", include_in_schema=False)
    async def asset(name: str) -> Response:
        assets = (WEB / "assets").resolve()
        path = (assets / name).resolve()
        if not path.is_relative_to(assets):  # no way out of assets/ (../, absolute names)
            return JSONResponse(error_body("not_found", "no such asset"), status_code=404)
        return _file(path)
