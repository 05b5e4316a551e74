"""Hypothesis strategies for hostile input: every frame type and every REST body, filled with
strings, numbers, depth and size that a hostile client would send. Shared by tests/test_fuzz_*.py.

Values are encoded by :func:`encode`, not by orjson: it writes what a careless or hostile client
writes (NaN, Infinity, 1e309, integers past 64 bits, lone surrogates as ``\\ud800`` escapes),
which orjson refuses to produce.
"""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Deterministic and bounded: each fuzz test runs the same examples every time, within ~30 s.
FUZZ = settings(derandomize=True, database=None, deadline=None, max_examples=150,
                suppress_health_check=list(HealthCheck), print_blob=True)


class Raw(str):
    """A JSON token written as is (``NaN``, ``1e309``, 300 brackets)."""


def encode(value: Any) -> str:
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + encode(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(encode(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return json.dumps(value)  # ensure_ascii: a lone surrogate becomes a \udXXX escape


WORDS = ["", " ", "\n", "a\n", "alice", "alice\n", "bob", "server", "admin", "presence.", "presence.presence.",
         "presence.room", "public.x", "public.x\n", "public.", "users.alice", "users.bob", "sessions", "sessions.x",
         "collections.c", "collections.c.documents.d", "locks.k", "admin", "..", "../../etc/passwd", "%00", "\x00",
         "\ud800", "a\udfffb", "\U0001f600" * 3, "é", "x" * 129, "y" * 256, "z" * 5000, "NaN", "null", "true",
         "{}", "[]", "' OR 1=1 --", "<script>", "UPPER_CASE", "PUBLICATION", "ACK", "CONNECTED", "text", "prayer",
         "system", "completed", "streaming"]

hostile_strings = st.one_of(
    st.sampled_from(WORDS),
    st.text(st.characters(codec=None, categories=None), max_size=40),  # any code point, surrogates included
    st.text(alphabet="abcAZ09_.@+-=:\n", max_size=300),
)

hostile_numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2, 49, 50, 51, 3600, 3601, 2**31, 2**53 + 1, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1,
                     2**64, 10**30, -(10**40), 0.5, -0.0, 1e308, 5e-324]),
    st.sampled_from([Raw("NaN"), Raw("Infinity"), Raw("-Infinity"), Raw("1e309"), Raw("-1e999"), Raw("1E400")]),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
)


def nested(depth: int) -> Raw:
    return Raw("[" * depth + "]" * depth)


scalars = st.one_of(st.none(), st.booleans(), hostile_strings, hostile_numbers)
hostile_values = st.one_of(
    scalars,
    st.integers(min_value=30, max_value=400).map(nested),  # depth around and past every limit
    st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                  st.dictionaries(hostile_strings, inner, max_size=4)),
                 max_leaves=12),
    st.integers(min_value=60_000, max_value=300_000).map(lambda n: "w" * n),  # around the frame limit
)


# Hostile names first: hypothesis draws the first entries most often.
NAMES = ["presence.", "presence.presence.", "public.x\n", "alice\n", "\ud800", "", "x" * 300, "presence.room",
         "presence.users.bob", "users.bob", "admin", "sessions.nope", "server", "public.fuzz", "users.alice",
         "sessions", "collections.fuzz", "locks.k", "room", "fuzz", "doc1", "alice"]
NUMBERS = ["ttl_seconds", "version", "limit", "before", "after", "max_participants", "processedCount",
           "totalCount", "eta", "timestamp", "offset"]
OBJECTS = ["data", "state", "filter", "since", "members", "tags", "content", "delta", "message"]

MISSING = object()


def field_values(name: str) -> st.SearchStrategy[Any]:
    """What a hostile client puts in a field: names where names go, numbers where numbers go, anything."""
    if name in NUMBERS:
        focused: st.SearchStrategy[Any] = hostile_numbers
    elif name in OBJECTS:
        focused = st.one_of(hostile_values, st.fixed_dictionaries({"offset": hostile_numbers, "epoch": hostile_strings}))
    else:
        focused = st.one_of(st.sampled_from(NAMES), st.sampled_from(NAMES), st.sampled_from(NAMES), hostile_strings)
    return st.one_of(focused, focused, st.just(MISSING), hostile_values)


def payload(fields: list[str], plausible: dict[str, Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """The object a request carries: mostly a plausible one with one or two fields made hostile
    (so the hostile value gets past the other fields' checks), sometimes hostile throughout."""
    plausible = plausible or {}

    def build(mutated: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        base = {f: plausible[f] for f in fields if f in plausible}
        merged = {**extra, **base, **mutated}
        return {k: v for k, v in merged.items() if v is not MISSING}

    one_or_two = st.lists(st.sampled_from(fields), min_size=1, max_size=2, unique=True).flatmap(
        lambda chosen: st.fixed_dictionaries({f: field_values(f) for f in chosen}))
    everywhere = st.fixed_dictionaries({f: field_values(f) for f in fields})
    stray = st.dictionaries(hostile_strings, hostile_values, max_size=1)
    return st.builds(build, st.one_of(one_or_two, one_or_two, one_or_two, everywhere), stray)


#: Every WebSocket request type and the fields its handler reads (test_fuzz_core checks this covers
#: every op a node registers, so a new request cannot skip the fuzz).
FRAME_FIELDS: dict[str, list[str]] = {
    "PING": ["timestamp"],
    "PONG": ["timestamp"],
    "SUBSCRIBE": ["channel", "since", "presence", "state"],
    "UNSUBSCRIBE": ["channel"],
    "PUBLISH": ["channel", "data", "idempotency_key"],
    "LOCK_ACQUIRE": ["key", "ttl_seconds", "release_on_disconnect", "idempotency_key"],
    "LOCK_EXTEND": ["key", "token", "ttl_seconds"],
    "LOCK_RELEASE": ["key", "token"],
    "LOCK_STATUS": ["key"],
    "DOCUMENT_CREATE": ["collection", "id", "data", "access", "members", "owner", "idempotency_key"],
    "DOCUMENT_GET": ["collection", "id"],
    "DOCUMENT_LIST": ["collection", "limit", "after", "filter"],
    "DOCUMENT_UPDATE": ["collection", "id", "data", "version", "access", "members", "owner"],
    "DOCUMENT_PATCH": ["collection", "id", "data", "version"],
    "DOCUMENT_DELETE": ["collection", "id", "version"],
    "SESSION_CREATE": ["title", "description", "category", "max_participants", "tags", "is_private", "user_name", "user_id"],
    "SESSION_LIST": ["q", "category", "tag", "limit", "after"],
    "SESSION_GET": ["session_id"],
    "SESSION_UPDATE": ["session_id", "version", "title", "description", "max_participants", "tags", "is_private"],
    "SESSION_END": ["session_id"],
    "SESSION_JOIN": ["session_id", "user_name", "user_id"],
    "SESSION_LEAVE": ["session_id", "user_id"],
    "SESSION_INVITE": ["session_id", "user_id"],
    "SESSION_PARTICIPANTS": ["session_id"],
    "SESSION_MESSAGE": ["session_id", "message", "message_type", "user_id"],
    "SESSION_MESSAGES": ["session_id", "before", "after", "limit"],
    "UPDATE_PROGRESS": ["shootId", "processedCount", "totalCount", "currentImage", "eta", "provider", "status"],
    "STREAM_START": ["channel", "stream_id", "data"],
    "STREAM_DELTA": ["stream_id", "delta"],
    "STREAM_END": ["stream_id", "content"],
    "REFRESH": ["token"],
    "NOTES_GET": ["session_id"],
    "NOTES_SAVE": ["session_id", "text", "version"],
}

PLAUSIBLE: dict[str, Any] = {
    "channel": "public.fuzz", "key": "room", "collection": "fuzz", "id": "doc1", "data": {"a": 1},
    "ttl_seconds": 5, "limit": 10, "title": "t", "message": "hi", "message_type": "text", "shootId": "s1",
    "processedCount": 1, "totalCount": 2, "delta": "more", "stream_id": "st1", "timestamp": 1, "presence": True,
    "session_id": "s-none", "version": 1, "content": "done", "status": "processing", "token": "alice:web",
    "text": "notes",
}


def frames(types: list[str] | None = None) -> st.SearchStrategy[str]:
    """One frame's text: a request of any type, or a frame broken at its top level."""
    chosen = st.sampled_from(sorted(types or FRAME_FIELDS))
    request = chosen.flatmap(lambda t: st.tuples(st.just(t), payload(FRAME_FIELDS[t], PLAUSIBLE),
                                                 st.one_of(st.just("f1"), hostile_values)))
    broken = st.one_of(
        st.sampled_from(["", "{", "null", "[]", '"x"', "NaN", '{"type": 1}', '{"type": "ping"}', '{"type": "A\\n"}',
                         '{"type": "PUBLISH", "data": []}', '{"type": "PUBLISH", "channel": 5}', '{"id": "\\ud800"}']),
        hostile_values.map(encode),
    )
    whole = request.map(lambda r: encode({"type": r[0], "id": r[2], "data": r[1]}))
    return st.one_of(whole, whole, whole, broken)


def poisoned(raw: str) -> bool:
    """Whether JSON text holds what the server must refuse wherever it appears: NaN, Infinity,
    an overflowing number, an integer outside signed 64 bits, a lone surrogate, nesting past 64."""
    def constant(_: str) -> float:
        raise _Poison

    def number(text: str) -> float:
        if not math.isfinite(float(text)):
            raise _Poison
        return float(text)

    def integer(text: str) -> int:
        if not -(2**63) <= int(text) < 2**63:
            raise _Poison
        return int(text)

    try:
        value = json.loads(raw, parse_constant=constant, parse_float=number, parse_int=integer)
    except _Poison:
        return True
    except (ValueError, RecursionError):
        return False  # not JSON at all: refused as such
    return _deep_or_surrogate(value, 1)


class _Poison(Exception):
    pass


def _deep_or_surrogate(value: Any, depth: int) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, (dict, list)):
        if depth > 64:
            return True
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        return any(_deep_or_surrogate(v, depth + 1) for v in items)
    return False

