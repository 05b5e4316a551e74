"""Hostile input, one deterministic case per hole: never a 5xx, never a dropped connection,
never a silent acceptance, never an unbounded resource. The property-based sweeps over every
request are tests/test_fuzz_*.py; these pin the holes by name."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import uvicorn
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from fastapi import APIRouter

from tests.helpers import WsClient, free_port
from tests.services import unique
from tether.core.auth import mint
from tether.core.config import Settings
from tether.core.node import Feature
from tether.features import DEFAULT_FEATURES
from tether.server.app import create_app

JSON = {"content-type": "application/json"}
DEEP = "[" * 300 + "]" * 300


def error_of(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, (r.status_code, r.text[:300])
    body = r.json()["error"]
    assert body["code"] == code, body
    return body


def log_is_bounded(srv: Any) -> None:
    text = srv.log.read_text()
    assert "Traceback" not in text, text[-2000:]
    assert all(len(line) < 2000 for line in text.splitlines()), max(map(len, text.splitlines()))


# -- 5xx or dropped connection from input -----------------------------------------------------

async def test_presence_keys_that_name_presence_channels_are_refused_not_recursed(shared_server) -> None:
    async with shared_server.http("alice") as c:
        for key in ("presence.", "presence.presence.", "presence.presence.room"):
            for r in (await c.post(f"/api/presence/{key}", json={"user_id": "alice"}),
                      await c.get(f"/api/presence/{key}"),
                      await c.delete(f"/api/presence/{key}/alice")):
                assert error_of(r, 400, "bad_request")["field"] == "key"
            assert (await c.get("/api/presence/room")).status_code == 200  # same connection, still answered
    ws = await WsClient.connect(shared_server, "alice")
    for channel in ("presence.", "presence.presence.", "presence.presence.x"):
        reply = await ws.frame("SUBSCRIBE", {"channel": channel, "presence": True})
        assert reply["type"] == "ERROR" and reply["data"]["code"] == "bad_request", reply
    assert (await ws.request("SUBSCRIBE", {"channel": "presence.room"}))["channel"] == "presence.room"
    await ws.close()
    log_is_bounded(shared_server)


async def test_integers_past_64_bits_are_refused_where_sql_would_get_them(shared_server) -> None:
    async with shared_server.http("alice") as c:
        sid = (await c.post("/api/sessions", json={"title": "paging"})).json()["id"]
        for param in ("before", "after"):
            for n in (2**63, 2**64, 10**30):
                r = await c.get(f"/api/sessions/{sid}/messages", params={param: n})
                assert error_of(r, 422, "bad_request")["field"] == param
            assert (await c.get(f"/api/sessions/{sid}/messages", params={param: 2**63 - 1})).status_code == 200
        coll = unique("c")
        doc = (await c.post(f"/api/collections/{coll}/documents", json={"data": {}})).json()
        r = await c.delete(f"/api/collections/{coll}/documents/{doc['id']}", params={"version": 2**63})
        assert error_of(r, 422, "bad_request")["field"] == "version"
        r = await c.put(f"/api/collections/{coll}/documents/{doc['id']}", json={"data": {}, "version": 2**63})
        assert error_of(r, 422, "bad_request")["field"].endswith("version")
    ws = await WsClient.connect(shared_server, "alice")
    for type, data in [("SESSION_MESSAGES", {"session_id": sid, "before": 2**63}),
                       ("SUBSCRIBE", {"channel": "public.x", "since": {"offset": 2**63, "epoch": "e"}}),
                       ("DOCUMENT_UPDATE", {"collection": coll, "id": doc["id"], "data": {}, "version": 2**64}),
                       ("LOCK_ACQUIRE", {"key": "k", "ttl_seconds": 2**70})]:
        raw = json.dumps({"type": type, "id": "big", "data": data})  # orjson cannot even write these
        await ws.send_raw(raw)
        reply = await ws.next("ERROR")
        assert reply["data"]["code"] == "bad_request" and "range" in reply["data"]["message"], reply
    await ws.close()
    log_is_bounded(shared_server)


async def test_json_nested_300_deep_is_refused_naming_the_field(shared_server) -> None:
    async with shared_server.http("alice") as c:
        r = await c.post("/api/channels/public.deep/publish", content='{"data": %s}' % DEEP, headers=JSON)
        assert error_of(r, 422, "bad_request")["field"].startswith("body.data")
        r = await c.post(f"/api/collections/{unique('c')}/documents", content='{"data": {"x": %s}}' % DEEP, headers=JSON)
        assert error_of(r, 422, "bad_request")["field"].startswith("body.data.x")
        r = await c.post("/api/channels/public.deep/publish", content="[" * 100_000, headers=JSON)
        assert error_of(r, 422, "bad_request")["field"] == "body"
    ws = await WsClient.connect(shared_server, "alice")
    await ws.send_raw('{"type":"PUBLISH","id":"d","data":{"channel":"public.deep","data":%s}}' % DEEP)
    reply = await ws.next("ERROR")
    assert reply["id"] == "d" and reply["data"]["code"] == "bad_request" and "deeper" in reply["data"]["message"]
    assert (await ws.request("PUBLISH", {"channel": "public.deep", "data": {"ok": 1}}))["offset"] >= 1
    await ws.close()


async def test_lone_surrogates_are_refused_everywhere(shared_server) -> None:
    lone = "\\ud800"
    async with shared_server.http("alice") as c:
        for path, body in [("/api/channels/public.s/publish", '{"data": "%s"}' % lone),
                           ("/api/sessions", '{"title": "x%s"}' % lone),
                           (f"/api/collections/{unique('c')}/documents", '{"id": "a%s", "data": {}}' % lone),
                           ("/api/presence/room", '{"user_id": "alice", "state": {"%s": 1}}' % lone),
                           ("/api/locks/k", '{"ttl_seconds": 5, "x": "%s"}' % lone)]:
            r = await c.post(path, content=body, headers=JSON)
            error_of(r, 422, "bad_request")
        # percent-encoded surrogate bytes in a path: not a valid name, never a crash
        r = await c.post("/api/channels/public.%ED%A0%80/publish", json={"data": 1})
        assert 400 <= r.status_code < 500, r.text
    ws = await WsClient.connect(shared_server, "alice")
    for data in ('{"channel":"public.%s"}' % lone, '{"channel":"public.s","data":"%s"}' % lone,
                 '{"channel":"public.s","data":{},"idempotency_key":"%s"}' % lone):
        await ws.send_raw('{"type":"PUBLISH","id":"s","data":%s}' % data)
        reply = await ws.next("ERROR")
        assert reply["data"]["code"] == "bad_request", reply
    await ws.send_raw('{"type":"PUBLISH","id":"%s","data":{}}' % lone)
    assert (await ws.next("ERROR"))["data"]["code"] == "bad_request"
    # a refusal that names a field under a key holding a lone surrogate can still be written
    await ws.send_raw('{"type":"PUBLISH","id":"k","data":{"channel":"public.s","data":{"%s":NaN}}}' % lone)
    reply = await ws.next("ERROR")
    assert reply["id"] == "k" and reply["data"]["code"] == "bad_request" and reply["data"]["field"].startswith("frame.data.data.")
    await ws.close()
    async with shared_server.http("alice") as c:
        r = await c.post("/api/channels/public.s/publish", content='{"data": {"%s": NaN}}' % lone, headers=JSON)
        assert error_of(r, 422, "bad_request")["field"].startswith("body.data.")
    log_is_bounded(shared_server)


async def test_integers_past_64_bits_in_published_data_are_refused_not_crashed(shared_server) -> None:
    async with shared_server.http("alice") as c:
        for n in (2**63, 2**64, -(2**63) - 1, 10**40):
            r = await c.post("/api/channels/public.n/publish", content='{"data": {"n": %d}}' % n, headers=JSON)
            assert error_of(r, 422, "bad_request")["field"] == "body.data.n"
        ok = await c.post("/api/channels/public.n/publish", content='{"data": {"n": %d}}' % (2**63 - 1), headers=JSON)
        assert ok.status_code == 200
    async with shared_server.http(api_key=True) as c:
        r = await c.post("/api/users/alice/events", content='{"type": "X", "data": {"n": %d}}' % 2**64, headers=JSON)
        error_of(r, 422, "bad_request")


class Crash(Feature):
    """A route with a bug: what an unexpected exception does to the connection it came on."""

    name = "crash"

    def router(self) -> APIRouter:
        router = APIRouter()

        @router.get("/crash")
        async def crash() -> dict[str, Any]:
            def deeper(n: int) -> int:
                return deeper(n + 1)
            return {"n": deeper(0)}  # RecursionError: the ~100 KB traceback of the presence hole

        return router


async def test_after_an_unexpected_error_the_keepalive_connection_still_answers(tmp_path: Path, caplog) -> None:
    port = free_port()
    app = create_app(Settings(data_dir=tmp_path, port=port), [*DEFAULT_FEATURES, Crash])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.02)
        caplog.set_level(logging.INFO)
        caplog.clear()
        # Three requests, one after another, on one TCP connection (HTTP/1.1 keep-alive).
        answers = await one_connection(port, ["/api/crash", "/api/presence/room", "/healthz"])
        assert [status for status, _ in answers] == [503, 200, 200], answers
        body = json.loads(answers[0][1])["error"]
        assert body["code"] == "unavailable" and "retry" in body["message"]
        failures = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
        assert len(failures) == 1, [rec.getMessage()[:200] for rec in failures]
        assert failures[0].exc_info is None and "RecursionError" in failures[0].getMessage()
        assert len(failures[0].getMessage()) < 500
    finally:
        server.should_exit = True
        await task


async def one_connection(port: int, paths: list[str]) -> list[tuple[int, bytes]]:
    """GET each path in turn on one socket; a connection the server dropped fails the read."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    conn = h11.Connection(h11.CLIENT)
    answers = []
    try:
        for path in paths:
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
            writer.write(conn.send(h11.Request(method="GET", target=path, headers=[
                ("Host", "127.0.0.1"), ("Authorization", "Bearer alice")])) + conn.send(h11.EndOfMessage()))
            status, body = 0, b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await asyncio.wait_for(reader.read(65536), 5)
                    assert data, f"the server closed the connection before answering {path}"
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            answers.append((status, body))
    finally:
        writer.close()
    return answers


# -- silently accepted ------------------------------------------------------------------------

async def test_nan_infinity_and_overflow_are_refused_naming_the_field(shared_server) -> None:
    async with shared_server.http("alice") as c:
        coll = unique("c")
        for token in ("NaN", "Infinity", "-Infinity", "1e309", "-1e999"):
            r = await c.post(f"/api/collections/{coll}/documents", content='{"data": {"score": %s}}' % token, headers=JSON)
            body = error_of(r, 422, "bad_request")
            assert body["field"] == "body.data.score" and "finite" in body["message"], body
            r = await c.post("/api/locks/k2", content='{"ttl_seconds": %s}' % token, headers=JSON)
            assert error_of(r, 422, "bad_request")["field"] == "body.ttl_seconds"
            r = await c.post("/api/channels/public.nan/publish", content='{"data": [1, %s]}' % token, headers=JSON)
            assert error_of(r, 422, "bad_request")["field"] == "body.data[1]"
        assert (await c.get(f"/api/collections/{coll}/documents")).json()["documents"] == []  # nothing stored


async def test_a_trailing_newline_passes_no_validator(shared_server) -> None:
    with pytest.raises(ConnectionError, match="4001"):
        await WsClient.connect(shared_server, "alice\n")
    with pytest.raises(ConnectionError, match="4001"):
        await WsClient.connect(shared_server, "alice:phone\n")
    ws = await WsClient.connect(shared_server, "alice")
    for type, data in [("SUBSCRIBE", {"channel": "public.x\n"}), ("PUBLISH", {"channel": "public.x\n", "data": 1}),
                       ("DOCUMENT_CREATE", {"collection": "notes\n", "data": {}}),
                       ("DOCUMENT_CREATE", {"collection": "notes", "id": "a\n", "data": {}}),
                       ("STREAM_START", {"channel": "public.x", "stream_id": "s\n"}),
                       ("LOCK_ACQUIRE", {"key": "k\n"})]:
        reply = await ws.frame(type, data)
        assert reply["type"] == "ERROR" and reply["data"]["code"] == "bad_request", (type, reply)
    reply = await ws.frame("PUBLISH\n", {"channel": "public.x", "data": 1})
    assert reply["type"] == "ERROR" and reply["data"]["code"] == "bad_request"
    await ws.close()
    async with shared_server.http("alice") as c:
        r = await c.post("/api/channels/public.x%0A/publish", json={"data": 1})
        error_of(r, 400, "bad_request")
        r = await c.post("/api/channels/public.x/publish", json={"type": "EVENT\n", "data": 1})
        error_of(r, 400, "bad_request")
        r = await c.post("/api/presence/room%0A", json={"user_id": "alice"})
        error_of(r, 400, "bad_request")
        r = await c.post("/api/presence/room", json={"user_id": "alice\n"})
        error_of(r, 422, "bad_request")
        r = await c.post("/api/collections/notes%0A/documents", json={"data": {}})
        error_of(r, 422, "bad_request")


async def test_a_jwt_subject_with_a_trailing_newline_is_refused(server_factory) -> None:
    secret = "s" * 32
    srv = server_factory("--auth", "jwt", "--jwt-secret", secret)
    async with srv.http(mint(secret, "alice\n")) as c:
        error_of(await c.get("/api/presence/room"), 401, "unauthorized")
    async with srv.http(mint(secret, "alice", device="phone\n")) as c:
        error_of(await c.get("/api/presence/room"), 401, "unauthorized")
    with pytest.raises(ConnectionError, match="4001"):
        await WsClient.connect(srv, mint(secret, "alice\n"))
    async with srv.http(mint(secret, "alice")) as c:
        assert (await c.get("/api/presence/room")).status_code == 200


# -- unbounded --------------------------------------------------------------------------------

async def test_request_bodies_are_capped_by_a_setting(server_factory) -> None:
    srv = server_factory("--max-body-bytes", "4096")
    async with srv.http("alice") as c:
        big = b'{"ttl_seconds": 5, "pad": "' + b"x" * 24 * 1024 * 1024 + b'"}'
        body = error_of(await c.post("/api/locks/k", content=big, headers=JSON), 413, "too_large")
        assert "4096" in body["message"]

        async def chunked():  # no Content-Length: refused once it grows past the cap
            for _ in range(64):
                yield b"x" * 1024
        error_of(await c.post("/api/locks/k", content=chunked(), headers=JSON), 413, "too_large")
        assert (await c.post("/api/locks/k", json={"ttl_seconds": 5, "pad": "x" * 3000})).status_code == 200
    async with httpx.AsyncClient(base_url=srv.url) as c:
        assert (await c.get("/healthz")).status_code == 200


async def test_a_rest_publish_is_capped_at_the_websocket_frame_limit(server_factory) -> None:
    srv = server_factory("--max-frame-bytes", "2048")
    async with srv.http("alice") as c:
        body = error_of(await c.post("/api/channels/public.big/publish", json={"data": "x" * 4000}), 413, "too_large")
        assert body["field"] == "data" and "2048" in body["message"]
        assert (await c.post("/api/channels/public.big/publish", json={"data": "x" * 1000})).status_code == 200
    async with srv.http(api_key=True) as c:
        error_of(await c.post("/api/channels/public.big/publish", json={"data": "x" * 3 * 1024 * 1024}), 413, "too_large")


async def test_streams_are_bounded_per_user_and_state_fits_one_frame(server_factory) -> None:
    srv = server_factory("--max-frame-bytes", "8192", "--max-streams-per-user", "3")
    a1, a2 = await WsClient.connect(srv, "alice:one"), await WsClient.connect(srv, "alice:two")
    channel = "public.streams"
    sids = [(await a.request("STREAM_START", {"channel": channel}))["stream_id"] for a in (a1, a2, a1)]
    reply = await a2.frame("STREAM_START", {"channel": channel})  # the 4th of the user, on any connection
    assert reply["type"] == "ERROR" and reply["data"]["code"] == "too_large" and "per user" in reply["data"]["message"]
    # one stream grows until its content would not fit in one frame
    grown, refused = 0, None
    while refused is None:
        reply = await a1.frame("STREAM_DELTA", {"stream_id": sids[0], "delta": "é\"\u0001" * 200})
        if reply["type"] == "ERROR":
            refused = reply["data"]
        else:
            grown += 1
    assert refused["code"] == "too_large" and grown > 0
    reply = await a1.frame("STREAM_END", {"stream_id": sids[2], "content": "y" * 9000})
    assert reply["type"] == "ERROR" and reply["data"]["code"] == "too_large"
    reply = await a1.frame("STREAM_START", {"channel": channel, "data": {"m": "z" * 7900}})
    assert reply["type"] == "ERROR" and reply["data"]["code"] == "too_large"
    await asyncio.sleep(0.2)  # the coalesced deltas reach the row
    joiner = await WsClient.connect(srv, "bob")
    await joiner.request("SUBSCRIBE", {"channel": channel})
    states = [await joiner.next("STREAM_STATE") for _ in range(3)]
    for raw in states:
        assert len(json.dumps(raw, ensure_ascii=False).encode()) <= 8192
    assert max(len(s["data"]["content"]) for s in states) > 0
    await a1.request("STREAM_END", {"stream_id": sids[1]})  # one ended: a new one may start
    assert (await a2.request("STREAM_START", {"channel": channel}))["stream_id"]


async def test_rest_requests_are_rate_limited_per_user_with_retry_after(server_factory) -> None:
    srv = server_factory("--rest-rate-per-user", "5", "--rest-rate-burst", "20")
    async with srv.http("alice:one") as one, srv.http("alice:two") as two, srv.http("bob") as bob:
        codes = [(await (one if i % 2 else two).get("/api/presence/room")) for i in range(150)]
        limited = [r for r in codes if r.status_code == 429]
        assert codes[0].status_code == 200 and len(limited) >= 100
        body = error_of(limited[0], 429, "rate_limited")
        assert int(limited[0].headers["retry-after"]) >= 1 and body["retry_after"] >= 1
        assert (await bob.get("/api/presence/room")).status_code == 200  # another user has its own budget
    async with srv.http(api_key=True) as key:  # a backend with the API key is not limited
        statuses = {(await key.get("/api/presence/room")).status_code for _ in range(60)}
        assert statuses == {200}


async def test_metrics_labels_only_name_known_frame_types(shared_server) -> None:
    ws = await WsClient.connect(shared_server, "alice")
    for i in range(15):  # (20 refused frames would close it as abuse)
        await ws.send_raw(json.dumps({"type": f"MADE_UP_{i}", "data": {}}))
    await ws.request("PUBLISH", {"channel": "public.m", "data": 1})
    async with httpx.AsyncClient(base_url=shared_server.url) as c:
        text = (await c.get("/metrics")).text
    assert "MADE_UP" not in text
    assert 'tether_messages_in_total{type="unknown"}' in text and 'tether_messages_in_total{type="PUBLISH"}' in text
    await ws.close()


@pytest.mark.parametrize("transport", ["native", "asgi"])
def test_a_frame_far_over_the_limit_gets_its_1009_close_while_the_client_still_sends(server_factory, transport) -> None:
    """The close frame must reach the client, not be destroyed by a TCP reset of the unread rest."""
    srv = server_factory("--ws-transport", transport, "--max-frame-bytes", "4096")
    for _ in range(25):  # a race without the fix (lost about one time in three): repeat it
        with connect(srv.ws_url("alice"), max_size=None, open_timeout=10) as ws:
            assert json.loads(ws.recv(10))["type"] == "CONNECTED"
            with pytest.raises(ConnectionClosed) as closed:
                ws.send('"' + "w" * 4_000_000 + '"')  # far over the limit: the parser fails it at its header
                for _ in range(50):
                    ws.send(json.dumps({"type": "PING", "data": {"timestamp": 1}}))
                while True:
                    ws.recv(10)
            assert closed.value.rcvd is not None, "the connection was dropped without its close frame"
            assert closed.value.rcvd.code == 1009 and closed.value.rcvd.reason
    with connect(srv.ws_url("alice"), open_timeout=10) as ws:  # and the server is fine
        assert json.loads(ws.recv(10))["type"] == "CONNECTED"

