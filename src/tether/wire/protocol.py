"""The WebSocket wire format, free of any I/O: parse client frames, build server frames.

Every frame is ``{"type", "data", "id"?, "channel"?, "offset"?}`` as JSON text.
Server events are encoded once, as text, and the same text goes to every
recipient and into channel history, so a replayed event is byte-identical to
the live one.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from tether.wire.errors import TetherError, bad_request
from tether.wire.jsoncheck import strict_loads
from tether.wire.jsonutil import JSONDecodeError, dumps, loads

# WebSocket close codes the clients act on (docs/protocol.md).
CLOSE_UNAUTHORIZED = 4001
CLOSE_TOKEN_EXPIRED = 4003  # the token's exp passed: reconnect with a fresh token
CLOSE_SLOW = 4008
CLOSE_ABUSE = 4009
CLOSE_TIMEOUT = 4011
CLOSE_RESYNC = 4012  # the node lost a channel's live feed: reconnect and resubscribe with since
CLOSE_TOO_LARGE = 1009
CLOSE_SHUTDOWN = 1001
CLOSE_RESTART = 1012  # the node drains: reconnect now (with jitter), to another node
CLOSE_OPERATOR = 4100  # an operator disconnected this user: DISCONNECT {reason, reconnect} came first
MAX_CLOSE_REASON = 123  # bytes of UTF-8 a WebSocket close frame has room for (RFC 6455 5.5)


def close_reason(text: str, limit: int = MAX_CLOSE_REASON) -> str:
    """``text`` cut to fit a close frame, at a word boundary with an ellipsis, never mid-character."""
    if len(text.encode()) <= limit:
        return text
    cut = text.encode()[:limit - len("…".encode())].decode(errors="ignore")
    head, space, _ = cut.rpartition(" ")
    return (head if space and len(head) > limit // 2 else cut).rstrip(" ,;:(") + "…"

#: Frame types of the protocol itself: a client may never receive one from a publisher
#: (a user publishes only PUBLICATION; the API key any type but these).
PROTOCOL_TYPES = frozenset({
    "CONNECTED", "ACK", "ERROR", "PING", "PONG", "UNSUBSCRIBED", "DISCONNECT", "REFRESH",
    "SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH",
})

TYPE_RE = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
CHANNEL_RE = re.compile(r"^[A-Za-z0-9_@+\-=:.]{1,255}$")


@dataclass(slots=True)
class Frame:
    type: str
    data: dict[str, Any]
    id: str | None = None
    channel: str | None = None


def parse(text: str | bytes) -> Frame:
    """Decode one client frame or raise ``TetherError`` naming what is wrong.

    The ``id`` is recovered even from a frame that fails later checks, so the
    ERROR can still be matched to its request (see :func:`request_id`).
    """
    obj = strict_loads(text, "frame")  # also refuses what could not be stored or sent on (too deep, huge ints)
    if not isinstance(obj, dict):
        raise bad_request("frame must be a JSON object with a 'type'")
    ftype = obj.get("type")
    if not isinstance(ftype, str) or not TYPE_RE.fullmatch(ftype):
        raise bad_request("frame 'type' must be an UPPER_SNAKE_CASE string")
    fid = obj.get("id")
    if fid is not None and not isinstance(fid, (str, int)):
        raise bad_request("frame 'id' must be a string or a number")
    data = obj.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise bad_request("frame 'data' must be a JSON object")
    channel = obj.get("channel")
    if channel is not None and not isinstance(channel, str):
        raise bad_request("frame 'channel' must be a string")
    return Frame(ftype, data, None if fid is None else str(fid), channel)


_ID_RE = re.compile(r'"id"\s*:\s*(?:"([^"\\]{1,128})"|(\d{1,18}))')


def request_id(text: str | bytes) -> str | None:
    """Best effort: the ``id`` of a frame that :func:`parse` refused (even a truncated one)."""
    try:
        obj = loads(text)
        if isinstance(obj, dict) and isinstance(obj.get("id"), (str, int)):
            return str(obj["id"])
    except (JSONDecodeError, TypeError):
        pass
    head = text[:65536]
    if isinstance(head, bytes):
        head = head.decode("utf-8", "replace")
    match = _ID_RE.search(head)
    return (match.group(1) or match.group(2)) if match else None


def check_channel(channel: Any, field: str = "channel") -> str:
    if not isinstance(channel, str) or not CHANNEL_RE.fullmatch(channel):
        raise bad_request(
            f"'{field}' must be 1-255 characters of letters, digits and _ @ + - = : ."
        )
    return channel


def check_type(value: Any, field: str = "type") -> str:
    if not isinstance(value, str) or not TYPE_RE.fullmatch(value):
        raise bad_request(f"'{field}' must be an UPPER_SNAKE_CASE name (A-Z, 0-9, _; up to 64)")
    return value


def now_ms() -> int:
    return int(time.time() * 1000)


def frame(ftype: str, data: Any, **extra: Any) -> str:
    obj: dict[str, Any] = {"type": ftype, "data": data}
    obj.update({k: v for k, v in extra.items() if v is not None})
    return dumps(obj)


def event(channel: str, offset: int, ftype: str, data: Any) -> str:
    """A channel event, the one encoding used for live delivery and history."""
    return dumps({"type": ftype, "channel": channel, "offset": offset, "data": data})


def event_parts(channel: str, ftype: str, data: Any) -> tuple[str, str]:
    """:func:`event` split around its offset, for brokers that learn the offset elsewhere
    (the Redis broker in its Lua script): ``head + str(offset) + tail == event(...)``."""
    head = dumps({"type": ftype, "channel": channel})[:-1] + ',"offset":'
    return head, ',"data":' + dumps(data) + "}"


def ack(request: str | None, data: Any) -> str:
    return frame("ACK", data, id=request)


def error(request: str | None, exc: TetherError) -> str:
    return frame("ERROR", exc.to_dict(), id=request)


def ping() -> str:
    return frame("PING", {"timestamp": now_ms()})


def subscribe_ack_data(channel: str, offset: int, epoch: str, recovered: bool, publications: list[str],
                       filtered: bool = False) -> str:
    """SUBSCRIBE's ACK data, splicing the stored event texts in without re-decoding them.
    ``filtered``: the channel's events are judged per subscriber, so its offsets may skip."""
    fields: dict[str, object] = {"channel": channel, "offset": offset, "epoch": epoch, "recovered": recovered}
    if filtered:
        fields["filtered"] = True
    head = dumps(fields)
    return head[:-1] + ',"publications":[' + ",".join(publications) + "]}"


def ack_raw(request: str | None, data: str) -> str:
    """ACK around data that is already JSON text."""
    rid = "" if request is None else ',"id":' + dumps(request)
    return '{"type":"ACK","data":' + data + rid + "}"
