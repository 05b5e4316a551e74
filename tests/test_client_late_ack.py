"""The Python client never skips events silently when a SUBSCRIBE's ACK comes late.

A stalling proxy between the client and a real server holds the server's frames past
the client's request timeout. The late ACK carries the subscription's epoch and offset:
the client must use it, so that after the next reconnect it resubscribes with ``since``
and receives what was published while it was away.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tests.faultproxy import FaultProxy
from tether.client import Client
from tether.client.backoff import Backoff


async def until(condition: Any, what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


async def test_a_subscribe_acked_after_the_timeout_keeps_its_position_across_a_reconnect(server) -> None:  # type: ignore[no-untyped-def]
    proxy = await FaultProxy(server.port).start()
    client = Client(f"http://127.0.0.1:{proxy.port}", "alice:phone", request_timeout=0.3,
                    backoff=Backoff(base=0.05, cap=0.2, max_attempts=None))
    got: list[int] = []
    reloads: list[str] = []
    try:
        await client.connect()
        proxy.hold()  # the server's frames (the ACK among them) stall in the proxy
        subscribing = asyncio.ensure_future(
            client.subscribe("public.late", lambda e: got.append(e["data"]["i"]), on_reload=reloads.append))
        link = client._link
        assert link is not None
        await until(lambda: link._replies and all(f.done() for f, _ in link._replies.values()),
                    "the SUBSCRIBE request timing out")
        async with server.http(api_key=True) as http:
            async def publish(i: int) -> None:
                r = await http.post("/api/channels/public.late/publish", json={"data": {"i": i}})
                assert r.status_code == 200, r.text

            await publish(1)  # after the (held) ACK: delivered live once the path unstalls
            proxy.release()
            await asyncio.wait_for(subscribing, 30)  # a bound for a broken client, not a speed check
            await until(lambda: got == [1], "the live event")
            proxy.refuse = True  # the network drops and stays down …
            proxy.cut_all()
            await client.wait_for("reconnecting")
            await publish(2)  # … while these are published
            await publish(3)
            proxy.refuse = False
            await client.wait_for("connected")
            await until(lambda: len(got) >= 3, "the events published while away")
        assert got == [1, 2, 3] and reloads == []
    finally:
        await client.close()
        await proxy.close()
