"""Streamed content (SPEC §4.6): live growth, a mid-stream joiner, coalescing, one stored copy, abandonment."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from tests.helpers import RequestFailed, WsClient
from tests.services import unique

WORDS = [f"word{i} " for i in range(80)] + ["¡olé! 🎉 done."]


class Reader:
    """What a subscriber's UI holds: the content of one stream, rebuilt from STATE, DELTA and ENDED."""

    def __init__(self) -> None:
        self.content = ""
        self.ended: dict | None = None
        self.deltas = 0
        self.state: str | None = None

    def apply(self, frame: dict) -> None:
        d = frame["data"]
        if frame["type"] == "STREAM_STATE":
            self.content = self.state = d["content"]
        elif frame["type"] == "STREAM_DELTA":
            self.deltas += 1
            start, text = d["start"], d["delta"]
            assert start <= len(self.content), "a gap: a delta was missed"
            self.content += text[len(self.content) - start:]  # skip what a STATE already held
        elif frame["type"] == "STREAM_ENDED":
            self.ended = d

    async def follow(self, client: WsClient, channel: str) -> "Reader":
        while self.ended is None:
            frame = await client.next(channel=channel)
            if frame["type"].startswith("STREAM_"):
                self.apply(frame)
        return self


async def test_three_subscribers_one_mid_stream_all_end_with_the_exact_text(server) -> None:
    channel = f"public.{unique('chat')}"
    writer = await WsClient.connect(server, "alice:laptop")
    same_user = await WsClient.connect(server, "alice:phone")  # another device of the writer
    other = await WsClient.connect(server, "bob:mac")
    for c in (same_user, other):
        await c.request("SUBSCRIBE", {"channel": channel})
    started = await writer.request("STREAM_START", {"channel": channel, "data": {"messageId": "m1", "role": "assistant"}})
    sid = started["stream_id"]
    ev = await other.next("STREAM_STARTED", channel=channel)
    assert ev["data"]["stream_id"] == sid and ev["data"]["data"] == {"messageId": "m1", "role": "assistant"}
    assert ev["data"]["userId"] == "alice" and ev["data"]["deviceId"] == "laptop"
    readers = [asyncio.create_task(Reader().follow(c, channel)) for c in (same_user, other)]

    half = len(WORDS) // 2
    for w in WORDS[:half]:
        await writer.send("STREAM_DELTA", {"stream_id": sid, "delta": w})  # fire-and-forget, as a token pump does
    await asyncio.sleep(0.2)
    late = await WsClient.connect(server, "carol:tablet")
    for w in WORDS[half:half + 10]:  # these race with the SUBSCRIBE below: in the STATE, or after it, never lost
        await writer.send("STREAM_DELTA", {"stream_id": sid, "delta": w})
    await late.request("SUBSCRIBE", {"channel": channel})
    late_reader = asyncio.create_task(Reader().follow(late, channel))
    for w in WORDS[half + 10:]:
        await writer.send("STREAM_DELTA", {"stream_id": sid, "delta": w})
    length = (await writer.request("STREAM_DELTA", {"stream_id": sid, "delta": ""}))["length"]
    final = "".join(WORDS)
    assert length == len(final)
    end = await writer.request("STREAM_END", {"stream_id": sid})
    assert end["status"] == "completed" and end["length"] == len(final)

    results = await asyncio.wait_for(asyncio.gather(*readers, late_reader), 10)
    for r in results:
        assert r.content == final and r.ended == {"stream_id": sid, "status": "completed", "content": final, "length": len(final)}
    assert results[2].state is not None and 0 < len(results[2].state) < len(final)  # joined mid-stream
    assert results[0].state is None
    assert results[0].deltas < len(WORDS) / 2  # coalesced, not one event per delta
    await writer.nothing("STREAM_DELTA", wait=0.1)  # the writer is not echoed

    # stored once: one row with the final text; history holds only the coalesced deltas
    async with server.http("bob") as http:
        r = await http.get(f"/api/streams/{sid}")
    assert r.status_code == 200 and r.json()["content"] == final and r.json()["status"] == "completed"
    db = sqlite3.connect(server.data_dir / "tether.sqlite3")
    assert db.execute("SELECT count(*), max(content) FROM streams WHERE stream_id = ?", (sid,)).fetchone() == (1, final)
    stored = db.execute("SELECT count(*) FROM channel_history WHERE channel = ? AND frame LIKE '%STREAM_DELTA%'", (channel,)).fetchone()[0]
    assert stored == results[0].deltas < len(WORDS) / 2
    db.close()
    # a finished stream takes no more writes
    with pytest.raises(RequestFailed) as err:
        await writer.request("STREAM_DELTA", {"stream_id": sid, "delta": "more"})
    assert err.value.code == "conflict" and "completed" in err.value.data["message"]
    for c in (writer, same_user, other, late):
        await c.close()


async def test_stream_on_the_user_channel_reaches_other_tabs_and_late_devices(server) -> None:
    channel = "users.dana"
    writer = await WsClient.connect(server, "dana:web")
    tab = await WsClient.connect(server, "dana:web")  # a second tab of the same device
    sid = (await writer.request("STREAM_START", {"channel": channel}))["stream_id"]
    await writer.request("STREAM_DELTA", {"stream_id": sid, "delta": "Hello, "})
    assert (await tab.next("STREAM_DELTA"))["data"] == {"stream_id": sid, "start": 0, "delta": "Hello, "}
    phone = await WsClient.connect(server, "dana:phone")
    state = await phone.next("STREAM_STATE")
    assert state["channel"] == channel and state["data"]["stream_id"] == sid and state["data"]["content"] == "Hello, "
    await writer.request("STREAM_END", {"stream_id": sid, "content": "Hello, world."})  # the final text wins
    for c in (tab, phone):
        assert (await c.next("STREAM_ENDED"))["data"]["content"] == "Hello, world."
    intruder = await WsClient.connect(server, "eve")
    with pytest.raises(RequestFailed) as err:
        await intruder.request("STREAM_START", {"channel": channel})
    assert err.value.code == "forbidden"
    for c in (writer, tab, phone, intruder):
        await c.close()


async def test_abandoned_stream_is_closed_after_the_timeout(server_factory) -> None:
    srv = server_factory("--stream-timeout", "1")
    channel = f"public.{unique('chat')}"
    writer = await WsClient.connect(srv, "alice")
    reader = await WsClient.connect(srv, "bob")
    await reader.request("SUBSCRIBE", {"channel": channel})
    sid = (await writer.request("STREAM_START", {"channel": channel, "stream_id": "answer-1"}))["stream_id"]
    assert sid == "answer-1"
    await writer.request("STREAM_DELTA", {"stream_id": sid, "delta": "partial"})
    await writer.close()  # the writer vanishes mid-answer
    ended = await reader.next("STREAM_ENDED", timeout=5)
    assert ended["data"] == {"stream_id": sid, "status": "abandoned", "content": "partial", "length": 7}
    async with srv.http("bob") as http:
        r = await http.get(f"/api/streams/{sid}")
    assert r.json()["status"] == "abandoned" and r.json()["content"] == "partial" and r.json()["ended_at"]
    again = await WsClient.connect(srv, "alice")
    with pytest.raises(RequestFailed) as err:
        await again.request("STREAM_END", {"stream_id": sid})
    assert err.value.code == "conflict" and "abandoned" in err.value.data["message"]
    with pytest.raises(RequestFailed) as err:
        await again.request("STREAM_START", {"channel": channel, "stream_id": "answer-1"})
    assert err.value.code == "conflict"
    await again.close(); await reader.close()


async def test_stream_bad_input(shared_server) -> None:
    a = await WsClient.connect(shared_server, "alice")
    b = await WsClient.connect(shared_server, "bob")
    for op, data, code, word in [
        ("STREAM_START", {}, "bad_request", "channel"),
        ("STREAM_START", {"channel": "admin"}, "forbidden", "admin"),
        ("STREAM_START", {"channel": "public.x", "data": "meta"}, "bad_request", "data"),
        ("STREAM_START", {"channel": "public.x", "stream_id": "bad id!"}, "bad_request", "stream_id"),
        ("STREAM_DELTA", {"delta": "x"}, "bad_request", "stream_id"),
        ("STREAM_DELTA", {"stream_id": "nope", "delta": "x"}, "not_found", "nope"),
        ("STREAM_END", {"stream_id": 5}, "bad_request", "stream_id"),
    ]:
        with pytest.raises(RequestFailed) as err:
            await a.request(op, data)
        assert err.value.code == code and word in err.value.data["message"], (op, data, err.value.data)
    sid = (await a.request("STREAM_START", {"channel": "public.x"}))["stream_id"]
    with pytest.raises(RequestFailed) as err:
        await a.request("STREAM_DELTA", {"stream_id": sid, "delta": 42})
    assert err.value.code == "bad_request" and "delta" in err.value.data["message"]
    with pytest.raises(RequestFailed) as err:
        await b.request("STREAM_DELTA", {"stream_id": sid, "delta": "hijack"})
    assert err.value.code == "forbidden"
    await a.request("STREAM_END", {"stream_id": sid})
    await a.close(); await b.close()
