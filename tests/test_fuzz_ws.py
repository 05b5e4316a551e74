"""Property-based fuzz of the WebSocket protocol on a live server, on both transports: hostile
frames of every request type (text and binary). Each request is answered, never `unavailable`;
a connection is closed only with a documented code and a reason (abuse 4009, a frame far over
the limit 1009), never dropped; nothing is logged as a failure; the server stays up."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.fuzz_strategies import FRAME_FIELDS, FUZZ, frames, poisoned
from tests.helpers import ServerProcess
from tether.wire.protocol import CLOSE_ABUSE, CLOSE_TOO_LARGE

DOCUMENTED_CLOSES = {CLOSE_ABUSE, CLOSE_TOO_LARGE}
TOKENS = ["alice:fuzz", "bob", "carol:tab"]


class Session:
    """One client that reconnects after a documented close, and checks every close it sees."""

    def __init__(self, srv: ServerProcess) -> None:
        self.srv = srv
        self.ws: dict[str, ClientConnection] = {}  # one connection per token
        self.ids = itertools.count()
        self.closes: list[tuple[int, str]] = []

    def open(self, token: str) -> ClientConnection:
        if token not in self.ws:
            ws = self.ws[token] = connect(self.srv.ws_url(token), max_size=None, open_timeout=10)
            assert json.loads(ws.recv(10))["type"] == "CONNECTED"
        return self.ws[token]

    def closed(self, token: str, exc: ConnectionClosed) -> None:
        del self.ws[token]
        code, reason = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")
        self.closes.append((code or 0, reason))
        assert code in DOCUMENTED_CLOSES and reason, f"connection dropped: {code} {reason!r}"

    def exchange(self, token: str, raw: str, binary: bool) -> list[dict[str, Any]]:
        """Send one frame, then a request that is answered only after it; return what came between."""
        ws = self.open(token)
        sentinel = f"sentinel-{next(self.ids)}"
        frames_in: list[dict[str, Any]] = []
        try:
            ws.send(raw.encode() if binary else raw)
            ws.send(json.dumps({"type": "LOCK_STATUS", "id": sentinel, "data": {"key": "sentinel"}}))
            while True:
                frame = json.loads(ws.recv(15))
                if frame.get("id") == sentinel:
                    return frames_in
                if frame["type"] == "PING":
                    ws.send(json.dumps({"type": "PONG", "data": frame["data"]}))
                frames_in.append(frame)
        except ConnectionClosed as exc:
            self.closed(token, exc)
            return frames_in


def expected_id(raw: str) -> str | None:
    try:
        obj = orjson.loads(raw)  # a frame the server can read at all (else the id is best effort)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict) and obj.get("type") not in ("PING", "PONG") and type(obj.get("id")) in (str, int):
        return str(obj["id"])
    return None


def check(session: Session, token: str, raw: str, binary: bool) -> None:
    closes = len(session.closes)
    got = session.exchange(token, raw, binary)
    errors = [f["data"] for f in got if f["type"] == "ERROR"]
    assert all(e["code"] != "unavailable" for e in errors), errors
    if poisoned(raw):  # refused, never acknowledged
        assert not [f for f in got if f["type"] == "ACK"], (raw[:200], got[:3])
    rid = expected_id(raw)
    if rid is not None and len(session.closes) == closes and len(raw) <= 64 * 1024:
        assert any(f.get("id") == rid and f["type"] in ("ACK", "ERROR") for f in got), (raw[:300], got[:5])


@pytest.fixture(scope="module", params=["native", "asgi"])
def live(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp(f"fuzzws-{request.param}"), "--ws-transport", request.param,
                        "--rate-per-connection", "1000000", "--rate-burst", "1000000", "--rate-per-user", "1000000",
                        "--max-streams-per-user", "1000000").start()
    try:
        yield srv
    finally:
        srv.kill()


@pytest.fixture(scope="module")
def session(live: ServerProcess) -> Session:
    return Session(live)


@pytest.mark.parametrize("type", sorted(FRAME_FIELDS))
@settings(FUZZ, max_examples=10)
@given(data=st.data())
def test_every_request_type(session: Session, type: str, data: st.DataObject) -> None:
    token = data.draw(st.sampled_from(TOKENS))
    check(session, token, data.draw(frames([type])), data.draw(st.booleans()))


@settings(FUZZ, max_examples=150)
@given(token=st.sampled_from(TOKENS), raw=frames(), binary=st.booleans())
def test_any_frame(session: Session, token: str, raw: str, binary: bool) -> None:
    check(session, token, raw, binary)


def test_server_alive_and_quiet_after_the_fuzz(live: ServerProcess, session: Session) -> None:
    got = session.exchange("alice:after", json.dumps({"type": "PUBLISH", "id": "p", "data": {
        "channel": "public.after", "data": {"n": 1}}}), False)
    assert [f["type"] for f in got if f.get("id") == "p"] == ["ACK"], got
    log = Path(live.log).read_text()
    assert "Traceback" not in log and " failed: " not in log, log[-3000:]
