"""The ASGI application: REST routes of every feature under /api, /ws, /healthz, /metrics."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from tether import __version__
from tether.core.config import Settings
from tether.core.node import Feature, Node
from tether.features import DEFAULT_FEATURES
from tether.server import origins, ws
from tether.server.http import error_body, install_error_handlers
from tether.server.openapi import install_openapi
from tether.server.pages import install_pages


def create_app(settings: Settings, features: list[type[Feature]] | None = None) -> FastAPI:
    node = Node(settings, DEFAULT_FEATURES if features is None else features)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(
        title="Tether",
        version=__version__,
        description="Realtime sync backend: channels, presence, locks, documents, live sessions.",
        lifespan=lifespan,
        docs_url=None,  # served by install_openapi from local assets, not a CDN
        redoc_url=None,
    )
    app.state.node = node
    install_error_handlers(app)
    allowed = origins.parse(settings.cors_origins)
    if allowed:
        app.add_middleware(origins.ApiCors, origins=allowed)
    for feature in node.features:
        router = feature.router()
        if router is not None:
            app.include_router(router, prefix="/api")

    @app.get("/healthz", tags=["ops"])
    async def healthz(request: Request) -> Response:
        if await node.healthy():
            return JSONResponse({"status": "ok"})
        return JSONResponse(error_body("unavailable", "storage or broker is unreachable"), status_code=503)

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(node.metrics.render(), media_type="text/plain; version=0.0.4")

    install_pages(app)
    install_openapi(app)

    @app.get("/ws", include_in_schema=False)
    async def ws_without_upgrade() -> Response:
        return JSONResponse(
            error_body("upgrade_required", "/ws is a WebSocket endpoint: connect with a WebSocket client to "
                                           "ws://<host>/ws?token=<token> (see docs/protocol.md)"),
            status_code=426, headers={"Upgrade": "websocket", "Connection": "Upgrade"})

    @app.websocket("/ws")
    async def websocket(socket: WebSocket) -> None:
        await ws.serve(socket)

    return app
