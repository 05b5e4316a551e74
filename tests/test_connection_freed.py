"""A closed WebSocket connection is freed at once, by reference counting, not at the next
full garbage collection: no reference cycle between a connection and its socket.

The server runs in this process (uvicorn with Tether's native /ws, real sockets) so the
test can hold weak references to the server-side objects; the collector is off meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from pathlib import Path
from typing import Any, AsyncIterator

import pytest
import uvicorn
import websockets

from tether.core.config import Settings
from tether.server.app import create_app
from tether.server.wsproto import TetherWebSocketProtocol


@pytest.fixture
async def live(tmp_path: Path) -> AsyncIterator[tuple[Any, int]]:
    app = create_app(Settings.from_env(data_dir=tmp_path / "data", api_key="test-api-key"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, ws=TetherWebSocketProtocol,
                                           ws_per_message_deflate=False, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    yield app.state.node, server.servers[0].sockets[0].getsockname()[1]
    server.should_exit = True
    await task


async def until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)


async def opened(node: Any, client: Any) -> list[weakref.ref[Any]]:
    """Weak references to the server side of the client's connection: the Connection and the
    socket's WebSocket protocol (the socket object itself has no weakref slot)."""
    await client.recv()  # CONNECTED
    conn = next(iter(node.connections.values()))
    sock = conn.wake.__self__
    assert sock.conn is conn
    return [weakref.ref(conn), weakref.ref(sock.ws)]


async def freed(node: Any, refs: list[weakref.ref[Any]]) -> list[bool]:
    await until(lambda: not node.connections)
    await until(lambda: all(r() is None for r in refs))  # the close handshake's last turns
    return [r() is None for r in refs]


async def test_a_connection_the_client_closed_is_freed_without_a_collection(live: tuple[Any, int]) -> None:
    node, port = live
    gc.collect()
    gc.disable()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token=alice:phone") as client:
            refs = await opened(node, client)
            await client.send('{"type":"SUBSCRIBE","id":"1","channel":"public.room"}')
            await client.recv()
        assert await freed(node, refs) == [True, True]
    finally:
        gc.enable()


async def test_a_connection_whose_socket_dropped_is_freed_without_a_collection(live: tuple[Any, int]) -> None:
    node, port = live
    gc.collect()
    gc.disable()
    try:
        client = await websockets.connect(f"ws://127.0.0.1:{port}/ws?token=bob:laptop")
        refs = await opened(node, client)
        raw = client.transport.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST, no close frame
        client.transport.abort()
        assert await freed(node, refs) == [True, True]
    finally:
        gc.enable()


async def test_a_connection_the_server_closed_is_freed_without_a_collection(live: tuple[Any, int]) -> None:
    node, port = live
    gc.collect()
    gc.disable()
    try:
        async with websockets.connect(f"ws://127.0.0.1:{port}/ws?token=carol:tablet") as client:
            refs = await opened(node, client)
            next(iter(node.connections.values())).close(4000, "test closes it")
            with pytest.raises(websockets.ConnectionClosed):
                await client.recv()
        assert await freed(node, refs) == [True, True]
    finally:
        gc.enable()
