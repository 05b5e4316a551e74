"""Regression tests from review 3 of tether.client (real server, real sockets)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import ServerProcess, WsClient, eventually, fast_client


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
