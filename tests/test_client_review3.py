"""Regression tests from review 3 of tether.client (real server, real sockets)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from tests.helpers import ServerProcess, WsClient, eventually, fast_client
from tests.test_client_core import history
from tether.client.errors import ClientError


async def test_handler_may_subscribe_and_refresh(shared_server: ServerProcess) -> None:
    """A handler that subscribes (or refreshes) must not deadlock the dispatcher it runs on."""
    client = fast_client(shared_server, "rev3a:phone")
    await client.connect()
    seen: list[Any] = []
    joined = asyncio.Event()

    async def on_invite(event: dict[str, Any]) -> None:
        await client.subscribe("public.rev3-room", lambda e: seen.append(e["data"]))
        await client.refresh()
        joined.set()

    await client.subscribe("public.rev3-invites", on_invite)
    other = await WsClient.connect(shared_server, "rev3b")
    await other.request("PUBLISH", {"channel": "public.rev3-invites", "data": {"room": 1}})
    await asyncio.wait_for(joined.wait(), 15)
    await other.request("PUBLISH", {"channel": "public.rev3-room", "data": {"n": 1}})
    await eventually(lambda: seen == [{"n": 1}])
    await other.close()
    await client.close()


async def test_a_refused_resubscribe_does_not_keep_the_client_offline(shared_server: ServerProcess) -> None:
    """A subscription the server refuses on (re)connect (made offline, or no longer allowed) is
    dropped and reported; it must not drop every connection and keep the whole client offline."""
    client = fast_client(shared_server, "rev3c:phone")
    refused: list[tuple[str, str]] = []
    client.on_subscribe_error(lambda channel, error: refused.append((channel, error.code)))
    await client.subscribe("users.someone-else")  # offline: made on connect, where it is refused
    await client.connect()
    await client.wait_for("connected", timeout=15)
    await eventually(lambda: refused == [("users.someone-else", "forbidden")])
    write = await client.publish("public.rev3-after", {"ok": 1})
    await asyncio.wait_for(write, 15)
    assert client.state == "connected" and "users.someone-else" not in client._subs
    await client.close()


async def test_dead_link_is_noticed_while_the_send_buffer_is_full(server_factory) -> None:
    """A frozen server while the outbox is draining: the socket's send buffer fills and every
    send blocks; the keepalive must still declare the link dead within two ping intervals."""
    srv = server_factory("--ping-interval", "0.5")
    client = fast_client(srv, "rev3d:phone")
    await client.connect()
    assert client.state == "connected" and srv.proc is not None
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        blob = "x" * 512 * 1024
        for i in range(64):  # ~32 MB: more than the loopback socket buffers hold
            await client.publish("public.rev3-big", {"i": i, "blob": blob})
        await client.wait_for("reconnecting", timeout=20)
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    await asyncio.wait_for(client.close(), 15)


async def test_close_wakes_whoever_awaits_a_queued_write(server_factory, tmp_path) -> None:
    """close() with a write still queued: the write stays in the outbox for the next client on
    the store, and a task awaiting it is told (it used to wait forever)."""
    srv = server_factory()
    srv.kill()  # offline
    store = str(tmp_path / "c.db")
    client = fast_client(srv, "rev3e:phone", store=store)
    await client.connect()
    write = await client.publish("public.rev3-closed", {"n": 1})
    waiter = asyncio.ensure_future(asyncio.wait_for(asyncio.shield(write.future), 60))
    await client.close()
    with pytest.raises(ClientError):
        await asyncio.wait_for(waiter, 10)
    srv.start()
    again = fast_client(srv, "rev3e:phone", store=store)
    await again.connect()
    await again.flush(timeout=15)
    assert [e["data"] for e in await history(srv, "public.rev3-closed")] == [{"n": 1}]
    await again.close()
