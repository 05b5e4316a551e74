"""Property-based fuzz of the sans-I/O core: hostile frames of every request type straight into
a node's Connection (no sockets). Whatever arrives, each request is answered with an ACK or an
ERROR that is never `unavailable`, the connection is not closed, nothing is logged as a failure,
and the node still serves an ordinary request afterwards."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fuzz_strategies import FRAME_FIELDS, FUZZ, encode, frames, poisoned
from tests.helpers import started_node
from tether.core.auth import Identity
from tether.core.connection import Connection
from tether.features import DEFAULT_FEATURES

CALLERS = [Identity("alice", "phone"), Identity("bob"),
           Identity("server", "server", frozenset({"admin"}), is_server=True)]


class Failures(logging.Handler):
    """Every ERROR the server logs: input must never cause one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("tether"):
            self.records.append(record.getMessage()[:300])


class NodeThread:
    """A started node on an event loop of its own thread, so sync hypothesis tests can drive it."""

    def __init__(self, data_dir: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._cm = started_node(data_dir, *DEFAULT_FEATURES, rate_per_connection=1e9, rate_burst=10**9,
                                rate_per_user=1e9, max_streams_per_user=10**6)
        self.node = self.run(self._cm.__aenter__())

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.run(self._cm.__aexit__(None, None, None))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def core(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeThread]:
    failures = Failures()
    logging.getLogger().addHandler(failures)
    node = NodeThread(tmp_path_factory.mktemp("fuzzcore"))
    node.failures = failures  # type: ignore[attr-defined]
    try:
        yield node
    finally:
        node.stop()
        logging.getLogger().removeHandler(failures)


async def exchange(node: Any, who: Identity, raw: str) -> tuple[list[dict[str, Any]], Connection]:
    """Open a connection, hand it one frame, and return every frame it answered with."""
    conn = Connection(node, who)
    await node.open(conn)
    conn.take()  # CONNECTED and what follows it
    try:
        await conn.handle(raw)
        await conn.settle()
        await asyncio.sleep(0)
        return [json.loads(f) for f in conn.take()], conn
    finally:
        await node.close(conn)


def expects_reply(raw: str) -> str | None:
    try:
        obj = orjson.loads(raw)  # a frame the server can read at all (else the id is best effort)
    except orjson.JSONDecodeError:
        return None
    if isinstance(obj, dict) and obj.get("type") not in ("PING", "PONG") and isinstance(obj.get("id"), (str, int)) \
            and not isinstance(obj.get("id"), bool):
        return str(obj["id"])
    return None


def check(core: NodeThread, who: Identity, raw: str) -> None:
    out, conn = core.run(exchange(core.node, who, raw))
    errors = [f["data"] for f in out if f["type"] == "ERROR"]
    assert all(e["code"] != "unavailable" for e in errors), errors
    assert conn.close_code in (None, 1001), (conn.close_code, conn.close_reason)
    rid = expects_reply(raw)
    if rid is not None and errors == [] and not out:
        raise AssertionError(f"request {rid} got no answer: {raw[:200]}")
    if poisoned(raw):  # refused, never acknowledged (nothing silently stored as null or rounded)
        assert not [f for f in out if f["type"] == "ACK"] and errors, (raw[:200], out[:3])
    assert core.failures.records == [], core.failures.records  # type: ignore[attr-defined]


def test_the_fuzz_covers_every_request_type(core: NodeThread) -> None:
    assert set(core.node.ops) <= set(FRAME_FIELDS), set(core.node.ops) - set(FRAME_FIELDS)


@FUZZ
@given(who=st.sampled_from(CALLERS), raw=frames())
def test_any_frame_is_answered_never_unavailable(core: NodeThread, who: Identity, raw: str) -> None:
    check(core, who, raw)


@pytest.mark.parametrize("type", sorted(FRAME_FIELDS))
@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_every_request_type(core: NodeThread, type: str, data: st.DataObject) -> None:
    who = data.draw(st.sampled_from(CALLERS))
    check(core, who, data.draw(frames([type])))


def test_the_node_still_serves_after_the_fuzz(core: NodeThread) -> None:
    ok = encode({"type": "PUBLISH", "id": "after", "data": {"channel": "public.after", "data": {"n": 1}}})
    out, _ = core.run(exchange(core.node, CALLERS[0], ok))
    assert [f["type"] for f in out] == ["ACK"], out
