"""SPEC conformance spot-checks against a real server: every REST path of SPEC §4 exists, and
malformed input over REST and WebSocket gets a coded error, never a crash (a 5xx or an
`unavailable` caused by an exception), which the server log would show as a traceback."""

from __future__ import annotations

import json
import re

from tests.helpers import WsClient

# SPEC §4.1-4.5, method and path exactly as the contract names them.
SPEC_PATHS = {
    ("post", "/api/presence/{key}"), ("get", "/api/presence/{key}"), ("delete", "/api/presence/{key}/{user_id}"),
    ("post", "/api/locks/{key}"), ("get", "/api/locks/{key}"), ("delete", "/api/locks/{key}"),
    ("post", "/api/locks/{key}/extend"),
    ("post", "/api/collections/{collection}/documents"), ("get", "/api/collections/{collection}/documents"),
    ("get", "/api/collections/{collection}/documents/{id}"), ("put", "/api/collections/{collection}/documents/{id}"),
    ("patch", "/api/collections/{collection}/documents/{id}"), ("delete", "/api/collections/{collection}/documents/{id}"),
    ("post", "/api/sessions"), ("get", "/api/sessions"), ("get", "/api/sessions/{id}"), ("patch", "/api/sessions/{id}"),
    ("delete", "/api/sessions/{id}"), ("post", "/api/sessions/{id}/join"), ("post", "/api/sessions/{id}/leave"),
    ("get", "/api/sessions/{id}/participants"), ("post", "/api/sessions/{id}/messages"),
    ("get", "/api/sessions/{id}/messages"),
    ("post", "/api/users/{user_id}/events"), ("post", "/api/channels/{channel}/publish"),
    ("get", "/api/users/{user_id}/devices"),
    ("get", "/healthz"), ("get", "/metrics"),
}


def _shape(path: str) -> str:
    return re.sub(r"\{[^}]+\}", "{}", path)


def _crashes(server) -> list[str]:  # type: ignore[no-untyped-def]
    return [line[:300] for line in server.log.read_text(errors="replace").splitlines() if "Traceback" in line]


async def test_every_spec_rest_path_exists(shared_server) -> None:
    async with shared_server.http() as http:
        spec = (await http.get("/openapi.json")).json()
    have = {(m, _shape(p)) for p, item in spec["paths"].items() for m in item}
    have |= {("get", "/healthz"), ("get", "/metrics")}  # served outside the OpenAPI schema, if at all
    missing = {(m, p) for m, p in SPEC_PATHS if (m, _shape(p)) not in have}
    assert not missing, f"SPEC §4 paths missing from /openapi.json: {sorted(missing)}"


BODIES = [
    b"not json", b"[1]", b"null", b"{}",
    json.dumps({"data": 5, "version": "x", "ttl_seconds": "x", "token": 5, "user_id": 7, "title": 3,
                "type": 5, "message": [], "id": {}, "max_participants": "many"}).encode(),
    json.dumps({"user_id": "\u2603", "data": {"a": 1}, "type": "a b", "token": "x" * 5000, "ttl_seconds": 10**30,
                "version": -1, "title": "x" * 5000, "message": "", "message_type": "zzz", "tags": "x"}).encode(),
]
SEGMENTS = ["k" * 3000, "\u2603\u00e9", "no-such-id"]


async def test_rest_malformed_input_never_5xx(shared_server) -> None:
    async with shared_server.http() as anon:
        spec = (await anon.get("/openapi.json")).json()
    callers = [shared_server.http("fuzz"), shared_server.http()]
    checked: list[int] = []
    try:
        for path, item in spec["paths"].items():
            for method in item:
                for seg in SEGMENTS:
                    url = re.sub(r"\{[^}]+\}", seg, path)
                    for body in BODIES if method in ("post", "put", "patch", "delete") else [None]:
                        for http in callers:
                            r = await http.request(method.upper(), url, content=body,
                                                   headers={"content-type": "application/json"} if body else {})
                            where = f"{method.upper()} {url[:60]} {body[:40] if body else ''!r}"
                            checked.append(r.status_code)
                            assert r.status_code < 500, (where, r.status_code, r.text[:300])
                            if r.status_code >= 400:
                                err = r.json()["error"]
                                assert err["code"] and err["message"], where
    finally:
        for http in callers:
            await http.aclose()
    assert len(checked) > 500 and any(s >= 400 for s in checked)
    assert not _crashes(shared_server)


WRONG: list[object] = [5, None, [], {}, "x" * 5000, "\u2603", True, -1, 1.5]
FIELDS = ["channel", "since", "presence", "data", "idempotency_key", "collection", "id", "version", "limit", "after",
          "before", "key", "token", "ttl_seconds", "session_id", "title", "tags", "max_participants", "is_private",
          "user_id", "message", "message_type", "shootId", "processedCount", "totalCount", "status", "stream_id",
          "delta", "text"]
WS_OPS = ["SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH", "DOCUMENT_CREATE", "DOCUMENT_GET", "DOCUMENT_LIST", "DOCUMENT_UPDATE",
          "DOCUMENT_PATCH", "DOCUMENT_DELETE", "UPDATE_PROGRESS", "LOCK_ACQUIRE", "LOCK_EXTEND", "LOCK_RELEASE",
          "LOCK_STATUS", "SESSION_CREATE", "SESSION_LIST", "SESSION_GET", "SESSION_UPDATE", "SESSION_END",
          "SESSION_JOIN", "SESSION_LEAVE", "SESSION_INVITE", "SESSION_PARTICIPANTS", "SESSION_MESSAGE",
          "SESSION_MESSAGES", "STREAM_START", "STREAM_DELTA", "STREAM_END"]


async def test_ws_malformed_data_gets_coded_errors_not_crashes(shared_server) -> None:
    c = await WsClient.connect(shared_server, "fuzz:ws")
    refused = 0
    try:
        good = {"channel": "public.fuzz", "collection": "c", "id": "d1", "key": "k", "stream_id": "s1", "shootId": "s"}
        for op in WS_OPS:
            variants = [{}] + [{f: w for f in FIELDS} for w in WRONG] + [{**good, "idempotency_key": "fz-" + op}]
            variants += [{**good, f: w} for f in ("channel", "data", "since", "version", "ttl_seconds") for w in WRONG[:5]]
            for data in variants:
                if refused >= 15:  # stay under the abuse limit (20 refused frames in 10 s closes with 4009)
                    await c.close()
                    c = await WsClient.connect(shared_server, "fuzz:ws")
                    refused = 0
                reply = await c.frame(op, data, timeout=5)
                if reply["type"] == "ERROR":
                    refused += 1
                    assert reply["data"]["code"] and reply["data"]["code"] != "unavailable", (op, data, reply)
    finally:
        await c.close()
    assert not _crashes(shared_server)


async def test_subscribe_with_idempotency_key_acks_and_delivers(shared_server) -> None:
    """Regression: SUBSCRIBE carrying idempotency_key crashed storing its answer ('unavailable'),
    leaving the channel's live events held back on that connection for good."""
    sub = await WsClient.connect(shared_server, "idem-sub")
    pub = await WsClient.connect(shared_server, "idem-pub")
    first = await sub.request("SUBSCRIBE", {"channel": "public.idem-sub", "idempotency_key": "same"})
    assert first["channel"] == "public.idem-sub" and first["recovered"] is False
    sent = await pub.request("PUBLISH", {"channel": "public.idem-sub", "data": {"n": 1}})
    got = await sub.next("PUBLICATION", channel="public.idem-sub", timeout=5)
    assert got["data"] == {"n": 1} and got["offset"] == sent["offset"]
    # A repeat is a real resubscribe (a fresh recovery), not a replay of the first answer.
    again = await sub.request("SUBSCRIBE", {"channel": "public.idem-sub", "idempotency_key": "same",
                                            "since": {"offset": first["offset"], "epoch": first["epoch"]}})
    assert again["recovered"] is True and [p["data"] for p in again["publications"]] == [{"n": 1}]
    await sub.close(); await pub.close()
    assert not _crashes(shared_server)
