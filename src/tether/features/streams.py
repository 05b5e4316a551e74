"""Streamed content: growing text (an AI answer) on a channel, seen live by every subscriber.

A writer sends ``STREAM_START {channel, data?, stream_id?}``, any number of
``STREAM_DELTA {stream_id, delta}`` and ``STREAM_END {stream_id, content?}``.
Subscribers get ``STREAM_STARTED``, ``STREAM_DELTA {stream_id, start, delta}``
and ``STREAM_ENDED {stream_id, status, content}`` as ordinary channel events.

- Deltas are coalesced: those arriving within ``COALESCE`` s go out as one
  ``STREAM_DELTA`` through ``node.publish`` (so channel offsets stay gap-free
  and recovery replays them), never one event per token.
- The stream is one SQL row (``streams``): each coalesced delta is appended to
  its ``content`` *before* it is published, and the final content is written
  once at the end. Nothing else is stored per delta.
- A subscriber arriving mid-stream gets ``STREAM_STATE {stream_id, content, …}``
  for every live stream of the channel, sent while live events are held by the
  SUBSCRIBE (so just before its ACK). Because the row is written before the
  delta is published and the subscriber joined before reading the row, no delta
  is missed; one may overlap: apply a delta only past ``len(content)``
  (``start`` and lengths count Unicode code points).
- A stream with no delta for ``--stream-timeout`` s is closed by whichever
  node notices first (a conditional UPDATE decides) as ``abandoned``, with its
  content so far.
- A channel whose owner registered a sink (``node.stream_sinks``, e.g. a live
  session's chat) decides who may stream there and keeps the finished text
  (once: the conditional end decides before the sink stores it).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from tether.core.auth import valid_id
from tether.core.connection import Op, holding_user_channel
from tether.core.node import Feature
from tether.core.sinks import StreamSink
from tether.features.rest import Caller, NodeDep
from tether.wire import protocol
from tether.wire.errors import TetherError, bad_request, forbidden, not_found, shown
from tether.wire.jsonutil import dumps, loads
from tether.wire.timestamps import iso

if TYPE_CHECKING:
    from tether.core.connection import Connection

log = logging.getLogger("tether.streams")

COALESCE = 0.05  # seconds of deltas merged into one STREAM_DELTA event
MAX_CHARS = 1_000_000  # a stream's content is bounded like everything else
MAX_PER_CONNECTION = 16
# Room in a STREAM_STATE frame for all but the metadata and the content (ids, channel, timestamps),
# so the content so far always fits in one frame of --max-frame-bytes.
FRAME_OVERHEAD = 1024

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS streams (
        stream_id TEXT PRIMARY KEY, channel TEXT NOT NULL, user_id TEXT NOT NULL, device_id TEXT NOT NULL,
        meta TEXT NOT NULL, content TEXT NOT NULL, length BIGINT NOT NULL, status TEXT NOT NULL,
        started_at DOUBLE PRECISION NOT NULL, updated_at DOUBLE PRECISION NOT NULL, ended_at DOUBLE PRECISION)""",
    "CREATE INDEX IF NOT EXISTS streams_channel ON streams (channel, status)",
    "CREATE INDEX IF NOT EXISTS streams_idle ON streams (status, updated_at)",
]


@dataclass
class Live:
    """A stream being written through this node."""

    stream_id: str
    channel: str
    user_id: str
    writer: str  # the connection whose delta came last (it does not get its own text back)
    chunks: list[str] = field(default_factory=list)  # everything published so far
    length: int = 0
    buffer: list[str] = field(default_factory=list)  # received, not yet published
    meta_bytes: int = 0  # the metadata's JSON size
    used: int = 0  # JSON bytes of metadata + content accepted so far (bounded by budget())
    pending: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    flusher: asyncio.Task[None] | None = None
    sink: StreamSink | None = None  # the channel owner's, which keeps the finished text
    meta: dict[str, Any] = field(default_factory=dict)
    asked: dict[str, Any] = field(default_factory=dict)  # the metadata as STREAM_START gave it (re-checked at each write)
    limit: int = MAX_CHARS


class StreamsFeature(Feature):
    name = "streams"

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self.live: dict[str, Live] = {}

    async def start(self) -> None:
        await self.node.db.migrate(SCHEMA)
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def stop(self) -> None:
        self._sweeper.cancel()

    def ops(self) -> dict[str, Op]:
        return {"STREAM_START": self.start_stream, "STREAM_DELTA": self.delta, "STREAM_END": self.end}

    # -- writer side -------------------------------------------------------------

    async def start_stream(self, conn: "Connection", data: dict[str, Any]) -> Any:
        channel = protocol.check_channel(data.get("channel"))
        meta = data.get("data", {})
        if not isinstance(meta, dict):
            raise bad_request("'data' (the stream's metadata) must be an object")
        stream_id = data.get("stream_id") or secrets.token_hex(8)
        if not isinstance(stream_id, str) or not valid_id(stream_id):
            raise bad_request("'stream_id' must be 1-128 letters, digits and _ . @ + -")
        sink = self.node.stream_sinks.find(channel)
        asked = meta
        if sink is not None:  # the channel's owner decides who may stream there (and normalizes the metadata)
            meta = await sink.accept(conn.identity, channel, meta)
        else:
            await self.node.namespaces.may_publish(conn.identity, channel)
        meta_bytes = len(dumps(meta))
        if meta_bytes > self.budget():
            raise TetherError("too_large", f"'data' is {meta_bytes} bytes of JSON; a stream holds at most "
                                           f"{self.budget()} with its content", field="data")
        mine = conn.state.setdefault("streams", set())
        mine.intersection_update(self.live)
        if len(mine) >= MAX_PER_CONNECTION:
            raise TetherError("too_large", f"at most {MAX_PER_CONNECTION} open streams per connection: end one first")
        cap = self.node.settings.max_streams_per_user
        row = await self.node.db.fetchone(
            "SELECT COUNT(*) AS n FROM streams WHERE user_id = ? AND status = 'streaming'", conn.user_id)
        if row is not None and int(row["n"]) >= cap:  # every node's streams: the table is shared
            raise TetherError("too_large", f"at most {cap} open streams per user: end one first")
        now = time.time()
        inserted = await self.node.db.execute(
            """INSERT INTO streams (stream_id, channel, user_id, device_id, meta, content, length, status, started_at, updated_at)
               VALUES (?, ?, ?, ?, ?, '', 0, 'streaming', ?, ?) ON CONFLICT (stream_id) DO NOTHING""",
            stream_id, channel, conn.user_id, conn.device_id, dumps(meta), now, now)
        if not inserted:
            raise TetherError("conflict", f"stream {stream_id!r} already exists")
        self.live[stream_id] = Live(stream_id, channel, conn.user_id, conn.id, sink=sink, meta=meta, asked=asked,
                                    limit=min(MAX_CHARS, sink.max_chars) if sink else MAX_CHARS,
                                    meta_bytes=meta_bytes, used=meta_bytes)
        mine.add(stream_id)
        position = await self.node.publish(channel, "STREAM_STARTED", {
            "stream_id": stream_id, "userId": conn.user_id, "deviceId": conn.device_id, "data": meta,
            "startedAt": iso(now)}, exclude=conn.id)
        return {"stream_id": stream_id, "channel": channel, "offset": position.offset}

    async def _writable(self, conn: "Connection", data: dict[str, Any]) -> Live:
        stream_id = data.get("stream_id")
        if not isinstance(stream_id, str):
            raise bad_request("'stream_id' must be the string STREAM_START returned")
        live = self.live.get(stream_id)
        if live is None:
            row = await self.node.db.fetchone("SELECT status FROM streams WHERE stream_id = ?", stream_id)
            if row is None:
                raise not_found(f"no stream {shown(stream_id)}")
            if row["status"] != "streaming":
                raise TetherError("conflict", f"stream {stream_id!r} is already {row['status']}", stream_status=row["status"])
            raise TetherError("conflict", f"stream {stream_id!r} is written through another server node")
        if live.user_id != conn.user_id:
            raise forbidden(f"stream {stream_id!r} belongs to another user")
        # Asked again at every write: a writer who lost the right to publish there (left the
        # session, refreshed to a token without the role) stops writing into it.
        if live.sink is not None:
            await live.sink.accept(conn.identity, live.channel, live.asked)
        else:
            await self.node.namespaces.may_publish(conn.identity, live.channel)
        live.writer = conn.id
        return live

    async def delta(self, conn: "Connection", data: dict[str, Any]) -> Any:
        live = await self._writable(conn, data)
        text = data.get("delta")
        if not isinstance(text, str):
            raise bad_request("'delta' must be a string (the text to append)")
        if live.length + live.pending + len(text) > live.limit:
            raise TetherError("too_large", f"a stream on {live.channel} holds at most {live.limit} characters: "
                                           "end it (what was sent so far stays)")
        cost = len(dumps(text)) - 2  # as it will sit, JSON-escaped, in STREAM_STATE
        if live.used + cost > self.budget():
            raise TetherError("too_large", f"a stream's content and metadata fit in one frame: at most "
                                           f"{self.budget()} bytes of JSON", field="delta")
        live.used += cost
        if text:
            live.buffer.append(text)
            live.pending += len(text)
            if live.flusher is None:
                live.flusher = asyncio.create_task(self._flush_soon(live))
        return {"stream_id": live.stream_id, "length": live.length + live.pending}

    def budget(self) -> int:
        """JSON bytes a stream's metadata and content may take together."""
        return max(self.node.settings.max_frame_bytes - FRAME_OVERHEAD, 0)

    async def _flush_soon(self, live: Live) -> None:
        await asyncio.sleep(COALESCE)
        live.flusher = None
        try:
            async with live.lock:
                await self._flush(live)
        except Exception:
            log.exception("stream %s: flush failed", live.stream_id)

    async def _flush(self, live: Live) -> None:
        """Append the buffered deltas to the row, then publish them as one event (caller holds the lock)."""
        if not live.buffer:
            return
        text, start = "".join(live.buffer), live.length
        live.buffer.clear()
        live.pending = 0
        changed = await self.node.db.execute(
            "UPDATE streams SET content = content || ?, length = ?, updated_at = ? WHERE stream_id = ? AND status = 'streaming'",
            text, start + len(text), time.time(), live.stream_id)
        if not changed:  # closed as abandoned meanwhile
            self.live.pop(live.stream_id, None)
            return
        live.chunks.append(text)
        live.length += len(text)
        await self.node.publish(live.channel, "STREAM_DELTA",
                                {"stream_id": live.stream_id, "start": start, "delta": text}, exclude=live.writer)

    async def end(self, conn: "Connection", data: dict[str, Any]) -> Any:
        live = await self._writable(conn, data)
        final = data.get("content")
        if final is not None and (not isinstance(final, str) or len(final) > live.limit):
            raise TetherError("too_large" if isinstance(final, str) else "bad_request",
                              f"'content' must be the final text (a string of at most {live.limit} characters)")
        if final is not None and live.meta_bytes + len(dumps(final)) - 2 > self.budget():
            raise TetherError("too_large", f"'content' and the stream's metadata exceed {self.budget()} "
                                           "bytes of JSON", field="content")
        async with live.lock:
            if live.flusher is not None:
                live.flusher.cancel()
                live.flusher = None
            if final is None:  # publish the tail, so a reader that only appends deltas ends complete too
                await self._flush(live)
                final = "".join(live.chunks)
            if live.sink is not None:
                live.sink.check(final)  # refused: the stream stays open for a valid end
            live.buffer.clear()
            self.live.pop(live.stream_id, None)
            now = time.time()
            changed = await self.node.db.execute(
                "UPDATE streams SET content = ?, length = ?, status = 'completed', updated_at = ?, ended_at = ? "
                "WHERE stream_id = ? AND status = 'streaming'", final, len(final), now, now, live.stream_id)
            if not changed:
                raise TetherError("conflict", f"stream {live.stream_id!r} was closed as abandoned")
            position = await self._ended(live.channel, live.stream_id, "completed", final, exclude=conn.id)
            answer = {"stream_id": live.stream_id, "status": "completed", "length": len(final), "offset": position.offset}
            if live.sink is not None:  # ended above, once; now its owner keeps it (e.g. as a chat message)
                answer["stored"] = await live.sink.store(conn.identity, live.channel, live.stream_id, final, live.meta)
        return answer

    async def _ended(self, channel: str, stream_id: str, status: str, content: str, exclude: str | None = None) -> Any:
        return await self.node.publish(channel, "STREAM_ENDED", {
            "stream_id": stream_id, "status": status, "content": content, "length": len(content)}, exclude=exclude)

    # -- reader side -----------------------------------------------------------------

    async def subscribed(self, conn: "Connection", channel: str, data: dict[str, Any]) -> None:
        await self._send_state(conn, channel)

    async def connected(self, conn: "Connection") -> None:
        async with holding_user_channel(conn):
            await self._send_state(conn, f"users.{conn.user_id}")

    async def _send_state(self, conn: "Connection", channel: str) -> None:
        """The content so far of every live stream on the channel (live events are held meanwhile)."""
        rows = await self.node.db.fetchall(
            "SELECT stream_id, user_id, device_id, meta, content, started_at FROM streams "
            "WHERE channel = ? AND status = 'streaming' ORDER BY started_at", channel)
        for r in rows:
            conn.send(protocol.frame("STREAM_STATE", {
                "stream_id": r["stream_id"], "userId": r["user_id"], "deviceId": r["device_id"],
                "data": loads(r["meta"]), "content": r["content"], "length": len(r["content"]),
                "startedAt": iso(r["started_at"])}, channel=channel))

    # -- abandoned streams ---------------------------------------------------------------

    async def _sweep_loop(self) -> None:
        timeout = self.node.settings.stream_timeout
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            try:
                await self.sweep(time.time() - timeout)
            except Exception:
                log.exception("stream sweep failed")

    async def sweep(self, cutoff: float) -> None:
        """Close streams idle since ``cutoff`` as abandoned; any node may run it, one wins per stream."""
        rows = await self.node.db.fetchall(
            "SELECT stream_id, channel, content FROM streams WHERE status = 'streaming' AND updated_at < ? LIMIT 100", cutoff)
        for r in rows:
            now = time.time()
            changed = await self.node.db.execute(
                "UPDATE streams SET status = 'abandoned', ended_at = ? WHERE stream_id = ? AND status = 'streaming' AND updated_at < ?",
                now, r["stream_id"], cutoff)
            if changed:
                self.live.pop(r["stream_id"], None)
                await self._ended(r["channel"], r["stream_id"], "abandoned", r["content"])

    def router(self) -> APIRouter:
        router = APIRouter(tags=["streams"])

        @router.get("/streams/{stream_id}")
        async def get_stream(stream_id: str, node: NodeDep, who: Caller) -> dict[str, Any]:
            """A stream's stored content and status (for whoever may subscribe to its channel)."""
            row = await node.db.fetchone("SELECT * FROM streams WHERE stream_id = ?", stream_id)
            if row is None:
                raise not_found(f"no stream {shown(stream_id)}")
            await node.namespaces.may_subscribe(who, row["channel"])
            return {"stream_id": row["stream_id"], "channel": row["channel"], "user_id": row["user_id"],
                    "device_id": row["device_id"], "data": loads(row["meta"]), "content": row["content"],
                    "length": row["length"], "status": row["status"], "started_at": iso(row["started_at"]),
                    "ended_at": iso(row["ended_at"]) if row["ended_at"] is not None else None}

        return router
