"""The WebSocket transport: moves frames between a socket and a :class:`Connection`.

Two loops per socket: the reader hands each frame to the connection; the
writer drains the connection's queue. Nothing else happens here, so a faster
WebSocket stack can replace this file without touching the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from tether.core.connection import Connection
from tether.core.node import Node
from tether.server import origins
from tether.server.http import error_body
from tether.server.wsproto import DRAINING, EXTENSION
from tether.wire.errors import TetherError
from tether.wire.protocol import CLOSE_TOO_LARGE, CLOSE_UNAUTHORIZED, close_reason

log = logging.getLogger("tether.ws")


async def serve(websocket: WebSocket) -> None:
    node: Node = websocket.app.state.node
    if node.draining:  # refused with 503 before the handshake, as the native transport does
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse(error_body("unavailable", DRAINING), status_code=503))
        else:
            await websocket.close(1013, DRAINING)
        return
    if not origins.websocket_allowed(websocket.headers.get("origin"), websocket.headers.get("host"),
                                     origins.parse(node.settings.cors_origins)):
        await websocket.close(1008)  # before accept: the server answers the upgrade with HTTP 403
        return
    await websocket.accept()
    try:
        identity = node.auth.headers(
            websocket.headers.get("authorization"),
            websocket.headers.get("x-api-key"),
            websocket.query_params.get("token"),
            websocket.query_params.get("api_key"),
        )
    except TetherError as exc:
        await websocket.close(CLOSE_UNAUTHORIZED, close_reason(f"unauthorized: {exc.message}"))
        return
    conn = Connection(node, identity)
    await node.open(conn)
    writer = asyncio.create_task(_write(websocket, conn))
    hard_limit = 4 * node.settings.max_frame_bytes
    try:
        while not conn.closed:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text")
            if raw is None:
                raw = message.get("bytes") or b""
            if len(raw) > hard_limit:
                conn.close(CLOSE_TOO_LARGE, f"frame of {len(raw)} bytes is far over the {node.settings.max_frame_bytes}-byte limit")
                break
            await conn.handle(raw)
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("connection %s failed", conn.id)
    finally:
        if not conn.closed:
            conn.close(1000, "closed")
        await node.close(conn)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer, 5)
        writer.cancel()


async def _write(websocket: WebSocket, conn: Connection) -> None:
    # One write per batch when the server offers it (tether.server.wsproto); else frame by frame.
    send_frames = websocket.scope.get("extensions", {}).get(EXTENSION)
    try:
        while True:
            batch = await conn.next_batch()
            if batch is None:
                break
            if send_frames is not None:
                await send_frames(batch)
                continue
            for text in batch:
                await websocket.send_text(text)
    except Exception:
        if not conn.closed:
            conn.close(1006, "socket write failed")
        return
    if conn.close_code is not None and conn.close_code != 1000:
        with contextlib.suppress(Exception):
            await websocket.close(conn.close_code, conn.close_reason)
