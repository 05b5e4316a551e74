"""A client may send publishes without waiting for each ACK: they are committed and fanned
out in batches, yet keep the order they were sent in, and every later request sees them."""

from __future__ import annotations

from tests.helpers import WsClient


def publishes(channel: str, n: int, **extra: object) -> list[tuple[str, dict]]:
    return [("PUBLISH", {"channel": channel, "data": {"i": i}, **extra}) for i in range(n)]


async def test_a_burst_of_publishes_keeps_its_order(shared_server) -> None:
    pub = await WsClient.connect(shared_server, "burster")
    sub = await WsClient.connect(shared_server, "watcher")
    await sub.request("SUBSCRIBE", {"channel": "public.burst"})
    replies, arrived = await pub.burst(publishes("public.burst", 60))
    assert arrived == replies  # keyless publishes are answered in the order they were sent
    assert [r["type"] for r in replies] == ["ACK"] * 60
    first = replies[0]["data"]["offset"]
    assert [r["data"]["offset"] for r in replies] == list(range(first, first + 60))
    got = [await sub.next("PUBLICATION", channel="public.burst") for _ in range(60)]
    assert [f["data"]["i"] for f in got] == list(range(60))
    assert [f["offset"] for f in got] == list(range(first, first + 60))
    await pub.close(); await sub.close()


async def test_keyed_publishes_in_a_burst_keep_their_order_and_apply_once(shared_server) -> None:
    """An idempotency key makes each publish await a lookup first: the order must hold anyway."""
    pub = await WsClient.connect(shared_server, "keyed")
    burst = [("PUBLISH", {"channel": "public.keyed", "data": {"i": i}, "idempotency_key": f"k{i}"}) for i in range(30)]
    # a keyless publish between keyed ones must not overtake them
    burst.insert(10, ("PUBLISH", {"channel": "public.keyed", "data": {"i": "plain"}}))
    replies, arrived = await pub.burst(burst)
    assert arrived == replies  # answered in request order, though each stores its record after publishing
    offsets = [r["data"]["offset"] for r in replies]
    assert offsets == list(range(offsets[0], offsets[0] + 31))
    again, _ = await pub.burst([b for b in burst if "idempotency_key" in b[1]])
    assert [r["data"]["offset"] for r in again] == offsets[:10] + offsets[11:]  # the same answers, nothing new
    late = await WsClient.connect(shared_server, "late")
    ack = await late.request("SUBSCRIBE", {"channel": "public.keyed", "since": {"offset": 0, "epoch": replies[0]["data"]["epoch"]}})
    assert ack["recovered"] and [p["data"]["i"] for p in ack["publications"]] == list(range(10)) + ["plain"] + list(range(10, 30))
    await pub.close(); await late.close()


async def test_a_request_after_a_burst_waits_for_it(shared_server) -> None:
    """Only PUBLISH is pipelined: a SUBSCRIBE sent after a burst answers after all of it."""
    c = await WsClient.connect(shared_server, "mixer")
    epoch = (await c.request("PUBLISH", {"channel": "public.mixed", "data": {"i": -1}}))["epoch"]
    burst = publishes("public.mixed", 40) + [("SUBSCRIBE", {"channel": "public.mixed", "since": {"offset": 1, "epoch": epoch}})]
    replies, arrived = await c.burst(burst)
    assert [r["type"] for r in replies] == ["ACK"] * 41
    assert arrived[-1] is replies[-1]  # the SUBSCRIBE's answer came last …
    assert [p["data"]["i"] for p in replies[-1]["data"]["publications"]] == list(range(40))  # … and holds the burst
    await c.nothing("PUBLICATION", channel="public.mixed")  # nothing of it twice
    await c.close()


async def test_refusals_in_a_burst_are_answered_in_request_order(shared_server) -> None:
    """A refused request (forbidden channel, unknown type) is known at once, yet its ERROR
    must not overtake the ACKs of the publishes sent before it."""
    c = await WsClient.connect(shared_server, "orderly")
    burst = publishes("public.orderly", 20)
    burst.insert(10, ("PUBLISH", {"channel": "users.somebody-else", "data": {}}))
    burst.insert(15, ("NO_SUCH_TYPE", {}))
    replies, arrived = await c.burst(burst)
    assert arrived == replies
    assert [r["type"] for r in replies] == ["ACK"] * 10 + ["ERROR"] + ["ACK"] * 4 + ["ERROR"] + ["ACK"] * 6
    assert replies[10]["data"]["code"] == "forbidden" and replies[15]["data"]["code"] == "bad_request"
    offsets = [r["data"]["offset"] for r in replies if r["type"] == "ACK"]
    assert offsets == list(range(offsets[0], offsets[0] + 20))
    await c.close()


async def test_a_long_mixed_burst_past_the_in_flight_limit_keeps_reply_and_offset_order(shared_server) -> None:
    c = await WsClient.connect(shared_server, "longburst")
    burst: list[tuple[str, dict]] = []
    for i in range(150):  # more than the 64 a connection may have in flight
        if i % 17 == 5:
            burst.append(("PUBLISH", {"channel": "users.other", "data": {}}))
        elif i % 23 == 7:
            burst.append(("NO_SUCH", {}))
        elif i % 29 == 11:
            burst.append(("PUBLISH", {"channel": "public.lb", "data": {"i": i}, "idempotency_key": f"lk{i}"}))
        else:
            burst.append(("PUBLISH", {"channel": "public.lb", "data": {"i": i}}))
    replies, arrived = await c.burst(burst, timeout=30)
    assert [r["id"] for r in arrived] == [r["id"] for r in replies]
    offsets = [r["data"]["offset"] for r in replies if r["type"] == "ACK"]
    assert offsets == list(range(offsets[0], offsets[0] + len(offsets)))
    # a connection closed in the middle of its burst leaves the server serving
    d = await WsClient.connect(shared_server, "closer")
    for i in range(120):
        await d.send("PUBLISH", {"channel": "public.lb2", "data": {"i": i}})
    await d.close()
    e = await WsClient.connect(shared_server, "after")
    assert (await e.request("PUBLISH", {"channel": "public.lb2", "data": {}}))["offset"] >= 1
    await e.close()
    await c.close()
