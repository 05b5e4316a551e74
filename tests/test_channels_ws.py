"""The core protocol over a real server: channels, ordering, recovery, errors, limits."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
import websockets

from tests.helpers import RequestFailed, WsClient


async def test_connected_first_and_ping_pong(shared_server) -> None:
    c = await WsClient.connect(shared_server, "alice:phone")
    assert c.connected["userId"] == "alice" and c.connected["deviceId"] == "phone"
    assert c.connected["connectionId"] and c.connected["pingInterval"] > 0 and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", c.connected["serverTime"])
    await c.send("PING", {"timestamp": 12345})
    pong = await c.next("PONG")
    assert pong["data"] == {"timestamp": 12345}
    await c.close()


async def test_two_clients_see_publications_in_order(shared_server) -> None:
    a = await WsClient.connect(shared_server, "alice")
    b = await WsClient.connect(shared_server, "bob")
    for c in (a, b):
        ack = await c.request("SUBSCRIBE", {"channel": "public.order"})
        assert ack["channel"] == "public.order" and ack["recovered"] is False and ack["publications"] == []
    offsets = []
    for i in range(20):
        pub = a if i % 2 else b
        offsets.append((await pub.request("PUBLISH", {"channel": "public.order", "data": {"n": i}}))["offset"])
    assert offsets == sorted(offsets) and len(set(offsets)) == 20
    for c in (a, b):
        got = [await c.next("PUBLICATION", channel="public.order") for _ in range(20)]
        assert [e["data"]["n"] for e in got] == list(range(20))
        assert [e["offset"] for e in got] == offsets
    await a.close(); await b.close()


async def test_recovery_replays_exactly_the_missed_events(shared_server) -> None:
    a = await WsClient.connect(shared_server, "alice")
    ack = await a.request("SUBSCRIBE", {"channel": "public.recover"})
    pub = await WsClient.connect(shared_server, "bob")
    for i in range(3):
        await pub.request("PUBLISH", {"channel": "public.recover", "data": {"n": i}})
    seen = [await a.next("PUBLICATION") for _ in range(3)]
    last = seen[-1]["offset"]
    await a.close()
    for i in range(3, 8):
        await pub.request("PUBLISH", {"channel": "public.recover", "data": {"n": i}})
    a2 = await WsClient.connect(shared_server, "alice")
    ack2 = await a2.request("SUBSCRIBE", {"channel": "public.recover", "since": {"offset": last, "epoch": ack["epoch"]}})
    assert ack2["recovered"] is True
    assert [p["data"]["n"] for p in ack2["publications"]] == [3, 4, 5, 6, 7]
    assert [p["offset"] for p in ack2["publications"]] == list(range(last + 1, last + 6))
    assert all(p["type"] == "PUBLICATION" and p["channel"] == "public.recover" for p in ack2["publications"])
    # live events continue after the replay, with the next offset, none twice
    await pub.request("PUBLISH", {"channel": "public.recover", "data": {"n": 8}})
    live = await a2.next("PUBLICATION")
    assert live["offset"] == last + 6 and live["data"]["n"] == 8
    await a2.nothing("PUBLICATION")
    # a wrong epoch cannot recover
    ack3 = await a2.request("SUBSCRIBE", {"channel": "public.other", "since": {"offset": 1, "epoch": "nope"}})
    assert ack3["recovered"] is False and ack3["publications"] == []
    await a2.close(); await pub.close()


async def test_recovered_false_past_the_history_window(server_factory) -> None:
    srv = server_factory("--history-size", "5")
    a = await WsClient.connect(srv, "alice")
    ack = await a.request("SUBSCRIBE", {"channel": "public.small"})
    await a.close()
    b = await WsClient.connect(srv, "bob")
    for i in range(20):
        await b.request("PUBLISH", {"channel": "public.small", "data": {"n": i}})
    a2 = await WsClient.connect(srv, "alice")
    ack2 = await a2.request("SUBSCRIBE", {"channel": "public.small", "since": {"offset": ack["offset"], "epoch": ack["epoch"]}})
    assert ack2["recovered"] is False and ack2["publications"] == [] and ack2["offset"] == 20
    # within the window it still recovers
    ack3 = await a2.request("SUBSCRIBE", {"channel": "public.small", "since": {"offset": 17, "epoch": ack["epoch"]}})
    assert ack3["recovered"] is True and [p["offset"] for p in ack3["publications"]] == [18, 19, 20]
    await a2.close(); await b.close()


async def test_offsets_and_epoch_survive_kill_9(server_factory) -> None:
    srv = server_factory()
    a = await WsClient.connect(srv, "alice")
    ack = await a.request("SUBSCRIBE", {"channel": "public.durable"})
    for i in range(5):
        await a.request("PUBLISH", {"channel": "public.durable", "data": {"n": i}})
    srv.kill()
    srv.start()
    b = await WsClient.connect(srv, "alice")
    ack2 = await b.request("SUBSCRIBE", {"channel": "public.durable", "since": {"offset": 0, "epoch": ack["epoch"]}})
    assert ack2["epoch"] == ack["epoch"] and ack2["recovered"] is True
    assert [p["data"]["n"] for p in ack2["publications"]] == [0, 1, 2, 3, 4]
    assert (await b.request("PUBLISH", {"channel": "public.durable", "data": {}}))["offset"] == 6
    await b.close()


async def test_own_user_channel_is_automatic_and_private(shared_server) -> None:
    alice = await WsClient.connect(shared_server, "alice:laptop")
    with pytest.raises(RequestFailed) as exc:
        await alice.request("SUBSCRIBE", {"channel": "users.bob"})
    assert exc.value.code == "forbidden"
    with pytest.raises(RequestFailed) as exc:
        await alice.request("PUBLISH", {"channel": "users.bob", "data": {"x": 1}})
    assert exc.value.code == "forbidden"
    with pytest.raises(RequestFailed) as exc:
        await alice.request("SUBSCRIBE", {"channel": "admin"})
    assert exc.value.code == "forbidden"
    with pytest.raises(RequestFailed) as exc:
        await alice.request("SUBSCRIBE", {"channel": "nowhere.at.all"})
    assert exc.value.code == "forbidden"
    phone = await WsClient.connect(shared_server, "alice:phone")
    await phone.request("PUBLISH", {"channel": "users.alice", "data": {"hello": "laptop"}})
    got = await alice.next("PUBLICATION", channel="users.alice")
    assert got["data"] == {"hello": "laptop"}
    await alice.close(); await phone.close()


async def test_bad_frames_get_errors_and_the_server_keeps_serving(shared_server) -> None:
    c = await WsClient.connect(shared_server, "mallory")
    other = await WsClient.connect(shared_server, "carol")
    await other.request("SUBSCRIBE", {"channel": "public.still"})
    cases = [
        ("{not json", "bad_request", "not valid JSON"),
        ("[1,2]", "bad_request", "JSON object"),
        ('{"type": "lowercase"}', "bad_request", "UPPER_SNAKE_CASE"),
        ('{"type": "NO_SUCH_THING", "id": "x1"}', "bad_request", "unknown frame type"),
        ('{"type": "SUBSCRIBE", "id": "x2", "data": {}}', "bad_request", "channel"),
        ('{"type": "PUBLISH", "id": "x3", "data": {"channel": "public.still"}}', "bad_request", "'data'"),
        ('{"type": "SUBSCRIBE", "id": "x4", "data": {"channel": "public.a", "since": {"offset": -1, "epoch": "e"}}}', "bad_request", "since.offset"),
        ('{"type": "SUBSCRIBE", "id": "x5", "data": 7}', "bad_request", "'data'"),
    ]
    for raw, code, words in cases:
        await c.send_raw(raw)
        err = await c.next("ERROR")
        assert err["data"]["code"] == code and words in err["data"]["message"], (raw, err)
    err = await c.frame("PUBLISH", {"channel": "public.still", "data": "x" * 70_000})
    assert err["type"] == "ERROR" and err["data"]["code"] == "too_large"
    await c.send_raw(b"\x00\x01binary")
    assert (await c.next("ERROR"))["data"]["code"] == "bad_request"
    # still serving, this connection and the others
    await c.request("PUBLISH", {"channel": "public.still", "data": {"ok": True}})
    assert (await other.next("PUBLICATION"))["data"] == {"ok": True}
    await c.close(); await other.close()


async def test_errors_carry_the_request_id(shared_server) -> None:
    c = await WsClient.connect(shared_server, "dave")
    reply = await c.frame("SUBSCRIBE", {"channel": "users.someoneelse"})
    assert reply["type"] == "ERROR" and reply["data"]["code"] == "forbidden" and reply["data"]["message"]
    await c.close()


async def test_flood_is_rate_limited_then_closed(server_factory) -> None:
    srv = server_factory("--rate-per-connection", "5", "--rate-burst", "5")
    c = await WsClient.connect(srv, "flooder")
    bystander = await WsClient.connect(srv, "calm")
    for i in range(40):
        await c.send("PUBLISH", {"channel": "public.flood", "data": {"i": i}})
    codes = []
    while True:
        frame = await asyncio.wait_for(c.frames.get(), 10)
        if frame["type"] == "__CLOSED__":
            break
        if frame["type"] == "ERROR":
            codes.append(frame["data"]["code"])
    assert "rate_limited" in codes
    assert c.close_code == 4009 and "too many" in c.close_reason
    assert (await bystander.request("PUBLISH", {"channel": "public.calm", "data": 1}))["offset"] >= 1
    await bystander.close()


async def test_oversize_frame_far_over_the_limit_closes_with_1009(shared_server) -> None:
    c = await WsClient.connect(shared_server, "big")
    await c.send_raw('{"type":"PUBLISH","data":{"channel":"public.x","data":"' + "y" * 400_000 + '"}}')
    code, reason = await c.closed()
    assert code == 1009 and "limit" in reason


async def test_reader_that_never_reads_is_closed_as_slow_consumer(server_factory) -> None:
    srv = server_factory("--send-queue-frames", "50", "--rate-per-connection", "10000", "--rate-burst", "10000", "--rate-per-user", "10000")
    slow = await websockets.connect(srv.ws_url("sloth"), max_size=None, max_queue=1)
    # subscribe, then stop reading; the socket buffers fill and the server's queue overflows
    await slow.send('{"type":"SUBSCRIBE","id":"s","data":{"channel":"public.firehose"}}')
    pub = await WsClient.connect(srv, "firehose")
    watcher = await WsClient.connect(srv, "watcher")
    await watcher.request("SUBSCRIBE", {"channel": "public.firehose"})
    payload = "z" * 30_000
    for i in range(300):
        await pub.request("PUBLISH", {"channel": "public.firehose", "data": {"i": i, "p": payload}})
    # the watcher kept up and got everything; the server is still healthy
    got = [await watcher.next("PUBLICATION") for _ in range(300)]
    assert got[-1]["data"]["i"] == 299
    await asyncio.sleep(0.5)
    closes = []
    try:
        async for _ in slow:
            pass
    except websockets.ConnectionClosed as exc:
        closes.append(exc)
    assert slow.close_code == 4008 and "slow consumer" in slow.close_reason
    await pub.close(); await watcher.close()


async def test_silent_connection_is_closed_after_two_ping_intervals(server_factory) -> None:
    srv = server_factory("--ping-interval", "0.5")
    c = await WsClient.connect(srv, "quiet", answer_pings=False)
    ping = await c.next("PING", timeout=5)
    assert isinstance(ping["data"]["timestamp"], int)
    code, reason = await c.closed(timeout=10)
    assert code == 4011 and "dead" in reason


async def test_bad_token_is_refused_with_a_reason(shared_server) -> None:
    ws = await websockets.connect(shared_server.ws_url("no spaces allowed"))
    with pytest.raises(websockets.ConnectionClosed):
        await ws.recv()
    assert ws.close_code == 4001 and "unauthorized" in ws.close_reason


async def test_publish_is_idempotent_by_key(shared_server) -> None:
    c = await WsClient.connect(shared_server, "erin")
    await c.request("SUBSCRIBE", {"channel": "public.idem"})
    first = await c.request("PUBLISH", {"channel": "public.idem", "data": {"v": 1}, "idempotency_key": "k-1"})
    again = await c.request("PUBLISH", {"channel": "public.idem", "data": {"v": 1}, "idempotency_key": "k-1"})
    assert first == again
    await c.next("PUBLICATION")
    await c.nothing("PUBLICATION")
    await c.close()


async def test_a_flood_closed_for_abuse_finishes_its_closing_handshake(shared_server) -> None:
    """Hundreds of bad frames in one go: the server stops reading while it catches up; once it
    closes (4009) it reads again, so the peer's close reply ends the connection."""
    async with websockets.connect(shared_server.ws_url("abuser"), max_queue=None) as ws:
        assert json.loads(await ws.recv())["type"] == "CONNECTED"
        for _ in range(500):
            await ws.send("not json")
        with pytest.raises(websockets.ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 30)  # a hang detector, not a speed bound
    assert ws.close_code == 4009 and "too many" in (ws.close_reason or "")
