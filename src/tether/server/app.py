"""The ASGI application: REST routes of every feature under /api, /ws, /healthz, /metrics."""

from __future__ import annotations

import asyncio
import gc
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response

from tether import __version__
from tether.core.config import Settings
from tether.core.node import Feature, Node
from tether.features import DEFAULT_FEATURES
from tether.server import origins, ws
from tether.server.guard import InputGuard
from tether.server.http import error_body, install_error_handlers
from tether.server.openapi import install_openapi
from tether.server.pages import install_pages


async def readiness(node: Node) -> Response:
    checks = await node.health()
    wrong = [f"{name} {state}" for name, state in checks.items() if state not in ("ok", "no", "not configured")]
    if not wrong:
        return JSONResponse({"status": "ok", "node": node.id, "checks": checks})
    if node.draining:
        wrong = ["draining: this node is shutting down, connect elsewhere"] + [w for w in wrong if not w.startswith("draining")]
    return JSONResponse(error_body("unavailable", "; ".join(wrong), node=node.id, checks=checks), status_code=503)


#: Seconds between the full collections a node runs itself (see collect_less_often).
FULL_COLLECTION_EVERY = 60.0


async def collect_less_often() -> None:
    """CPython's cycle collector, tuned for a server: a node keeps many long-lived objects per
    connection and a full collection walks them all. At the defaults (700, 10, 10) full
    collections took about half the CPU of a node with 10,000 connections under load
    (``python -m bench --workloads rooms``: 50k against 90k deliveries/s). What a node frees
    in the normal course (closed connections, sent frames) is freed by reference counting, so
    the collector only has stray cycles left to find: it runs less often, and the objects made
    at start (modules, routes, settings) are frozen out of it. The stray cycles that live long
    enough to need a full collection would then wait for one (the soak workload's memory
    grew 1.5 MiB a minute): the node runs one itself, once a minute."""
    gc.freeze()
    gc.set_threshold(20_000, 10, 100)
    while True:
        await asyncio.sleep(FULL_COLLECTION_EVERY)
        gc.collect()


def create_app(settings: Settings, features: list[type[Feature]] | None = None) -> FastAPI:
    node = Node(settings, DEFAULT_FEATURES if features is None else features)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        collector = asyncio.get_running_loop().create_task(collect_less_often())
        try:
            yield
        finally:
            collector.cancel()
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
    app.add_middleware(InputGuard, max_body_bytes=settings.max_body_bytes,
                       on_error=lambda code: node.metrics.errors.labels(code).inc())
    allowed = origins.parse(settings.cors_origins)
    if allowed:
        app.add_middleware(origins.ApiCors, origins=allowed)
    for feature in node.features:
        router = feature.router()
        if router is not None:
            app.include_router(router, prefix="/api")

    @app.get("/healthz", tags=["ops"])
    async def healthz(request: Request) -> Response:
        """Readiness: 200 when this node should get traffic; 503 naming what is wrong
        (database, Redis, draining) when it should not."""
        return await readiness(node)

    @app.get("/readyz", tags=["ops"])
    async def readyz(request: Request) -> Response:
        """The same check as /healthz, under the name Kubernetes-style probes expect."""
        return await readiness(node)

    @app.get("/livez", tags=["ops"])
    async def livez() -> Response:
        """Liveness: 200 while the process answers at all (also while draining or cut off
        from its database); restart the node only when this fails."""
        return JSONResponse({"status": "alive", "node": node.id})

    @app.get("/metrics", tags=["ops"])
    async def metrics() -> Response:
        return Response(node.metrics.render(), media_type="text/plain; version=0.0.4")

    install_pages(app, node.auth.mode)
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
