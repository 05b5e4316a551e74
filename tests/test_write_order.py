"""A client's keyed publishes are stored in the order it sent them, even when one is refused
for now (``rate_limited``, ``unavailable``) and resent: the keyed publishes after it on the
connection are refused too until it comes back, so none overtakes it."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.helpers import WsClient


def keyed(channel: str, n: int) -> tuple[str, dict[str, Any]]:
    return ("PUBLISH", {"channel": channel, "data": {"n": n}, "idempotency_key": f"w-{n}"})


async def history(ws: WsClient, channel: str) -> list[int]:
    ack = await ws.request("SUBSCRIBE", {"channel": channel})
    full = await ws.request("SUBSCRIBE", {"channel": channel, "since": {"offset": 0, "epoch": ack["epoch"]}})
    return [p["data"]["n"] for p in full["publications"]]


async def test_a_publish_refused_for_now_is_not_overtaken_by_the_next(server_factory: Any) -> None:
    # Three requests at once, then one a second: the fourth of a burst is refused for now.
    srv = server_factory("--rate-burst", "3", "--rate-per-connection", "1")
    channel = "public.order"
    ws = await WsClient.connect(srv, "writer")
    replies, _ = await ws.burst([keyed(channel, n) for n in range(1, 5)])
    assert [r["type"] for r in replies] == ["ACK", "ACK", "ACK", "ERROR"]
    assert replies[3]["data"]["code"] == "rate_limited"
    await asyncio.sleep(1.5)  # tokens again: the next write would pass the rate limit
    overtaking = await ws.frame(*keyed(channel, 5))
    assert overtaking["type"] == "ERROR" and overtaking["data"]["code"] == "unavailable", overtaking
    assert "w-4" in overtaking["data"]["message"]
    await asyncio.sleep(1.1)
    assert (await ws.request(*keyed(channel, 4)))["offset"] == 4  # the resend, in its place
    await asyncio.sleep(1.1)
    assert (await ws.request(*keyed(channel, 5)))["offset"] == 5
    await asyncio.sleep(1.1)
    reader = await WsClient.connect(srv, "reader")
    assert await history(reader, channel) == [1, 2, 3, 4, 5]
    await ws.close()
    await reader.close()


async def test_keyless_publishes_are_not_stopped(server_factory: Any) -> None:
    """Without a key a refused write is not resent by the client as the same write: nothing waits for it."""
    srv = server_factory("--rate-burst", "2", "--rate-per-connection", "1")
    ws = await WsClient.connect(srv, "writer")
    replies, _ = await ws.burst([("PUBLISH", {"channel": "public.free", "data": {"n": n}}) for n in range(3)])
    assert [r["type"] for r in replies] == ["ACK", "ACK", "ERROR"]
    await asyncio.sleep(1.5)
    assert (await ws.request("PUBLISH", {"channel": "public.free", "data": {"n": 3}}))["offset"] == 3
    await ws.close()
