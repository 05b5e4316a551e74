"""``/ws`` served straight from the socket: no ASGI, no per-connection task.

The ASGI path (``tether.server.ws``) costs two tasks per connection, an
``asyncio.Queue``, Starlette/FastAPI frames held by the live coroutine, and an
ASGI message per frame: about 25 KB of an idle connection's 40 KB
(docs/benchmarks.md). Here, once uvicorn's protocol has read the handshake
(``tether.server.wsproto``), the socket is handed to a :class:`NativeSocket`:
one small object holding the transport, websockets' sans-I/O parser and the
same sans-I/O :class:`~tether.core.connection.Connection` as the ASGI path.

- In: each complete message goes to ``conn.handle()``, in order, from a task
  that exists only while there is work (``handle`` returns at once for a
  pipelined PUBLISH: see ``Connection._pipeline``); reading pauses while too
  many messages wait.
- Out: frames wait in the connection's bounded queue (a full queue closes a
  slow consumer, 4008); the first one queued puts the socket on its loop's
  flush list, and one ``call_soon`` per loop turn writes every listed socket's
  frames in one ``transport.write`` each. A fan-out of a batch of events is
  thus one write per subscriber whatever the batch size, and allocates nothing
  per subscriber (a ``Handle`` each would keep the garbage collector busy
  enough to stall delivery by tens of milliseconds: docs/benchmarks.md).
- Close: a closed ``Connection`` sends its close frame; ``node.close()`` runs
  after the request in flight, so disconnect hooks see a settled connection.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import weakref
from collections import deque
from typing import Any

from websockets.frames import Frame, Opcode
from websockets.server import ServerProtocol

from tether.core.connection import Connection
from tether.core.node import Node
from tether.wire.protocol import CLOSE_SHUTDOWN, CLOSE_TOO_LARGE

log = logging.getLogger("tether.ws")

CLOSE_TIMEOUT = 10.0  # seconds to wait for the peer's close frame, as uvicorn does
LINGER = 2.0  # seconds a failed connection keeps reading (and discarding) so its close frame arrives
PAUSE_READING = 64  # messages waiting to be handled before the socket stops being read


_frames: dict[str, bytes] = {}  # event text -> its encoded server frame (a str's hash is cached, so lookups are cheap)
_MAX_CACHED = 4096
# Bytes, too: every frame passes here, and recovery ACKs splice up to a history window of
# events each, so 4096 of them could pin gigabytes.
_MAX_CACHED_BYTES = 8 << 20
_cached_bytes = 0


def frame(text: str) -> bytes:
    """One unmasked, unfragmented, uncompressed text frame (RFC 6455 §5.2).

    A fan-out event is the same str for every recipient, so it is framed once."""
    data = _frames.get(text)
    if data is not None:
        return data
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes((0x81, n))
    elif n < 65536:
        head = b"\x81\x7e" + n.to_bytes(2, "big")
    else:
        head = b"\x81\x7f" + n.to_bytes(8, "big")
    data = head + payload
    global _cached_bytes
    if len(_frames) >= _MAX_CACHED or _cached_bytes + len(data) > _MAX_CACHED_BYTES:
        _frames.clear()
        _cached_bytes = 0
    _frames[text] = data
    _cached_bytes += len(data)
    return data


class _Flusher:
    """The sockets with frames to write, flushed together once per loop turn."""

    __slots__ = ("dirty", "scheduled", "__weakref__")

    def __init__(self) -> None:
        self.dirty: list[NativeSocket] = []
        self.scheduled = False

    def add(self, sock: "NativeSocket") -> None:
        self.dirty.append(sock)
        if not self.scheduled:
            self.scheduled = True
            # A context of its own: the flush (and a close it may start) works for every
            # socket, not inside the request whose frame happened to come first.
            asyncio.get_running_loop().call_soon(self.run, context=contextvars.Context())

    def run(self) -> None:
        self.scheduled = False
        dirty, self.dirty = self.dirty, []
        sent: dict[Any, int] = {}  # metrics -> frames: one counter update per turn, not per subscriber
        for sock in dirty:
            try:
                n = sock._flush()
            except Exception:  # one broken socket must not keep the others' frames back
                log.exception("flushing connection %s failed", sock.conn.id)
                continue
            if n:
                metrics = sock.node.metrics
                sent[metrics] = sent.get(metrics, 0) + n
        for metrics, n in sent.items():
            metrics.messages_out.inc(n)


_flushers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Flusher]" = weakref.WeakKeyDictionary()


def _write_texts(transport: asyncio.Transport, texts: list[str]) -> None:
    if len(texts) == 1:
        transport.write(frame(texts[0]))
    else:
        transport.write(b"".join(map(frame, texts)))


class NativeSocket(asyncio.Protocol):
    __slots__ = ("transport", "ws", "conn", "node", "_loop", "_server_conns", "_server_tasks", "_inbox",
                 "_task", "_fragments", "_paused", "_reading_paused", "_scheduled", "_close_timer", "_ended",
                 "_finished", "_hard_limit", "_text", "_flusher", "_write")

    def __init__(self, transport: asyncio.Transport, ws: ServerProtocol, conn: Connection,
                 server_conns: set[Any], server_tasks: set[Any], loop: asyncio.AbstractEventLoop) -> None:
        self.transport = transport
        self.ws = ws
        self.conn = conn
        self.node: Node = conn.node
        self._loop = loop
        self._server_conns = server_conns  # uvicorn calls shutdown() on these when it stops …
        self._server_tasks = server_tasks  # … and waits for these before the lifespan ends
        self._inbox: deque[str | bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._fragments: list[bytes] | None = None
        self._text = True
        self._paused = self._reading_paused = self._scheduled = self._ended = self._finished = False
        self._close_timer: asyncio.TimerHandle | None = None
        self._hard_limit = 4 * self.node.settings.max_frame_bytes
        flusher = _flushers.get(loop)
        if flusher is None:
            flusher = _flushers[loop] = _Flusher()  # holds no reference to the loop: the entry dies with it
        self._flusher = flusher
        self._write = functools.partial(_write_texts, transport)
        conn.wake = self.wake
        self._server_conns.add(self)

    def start(self, events: list[Any]) -> None:
        """The socket is ours: open the connection, then handle what came with the handshake."""
        self._inbox = deque()
        self._kick(opening=True)
        self._events(events)
        self._write_output()

    # -- out ------------------------------------------------------------------

    def wake(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            self._flusher.add(self)

    def _flush(self) -> int:
        self._scheduled = False
        conn = self.conn
        sent = 0
        if not self._paused and not self.transport.is_closing() and self._close_timer is None:
            sent = conn.drain(self._write)
        if conn.close_code is not None:
            self._send_close(conn.close_code, conn.close_reason)
            self._end()
        return sent

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        n = self._flush()
        if n:
            self.node.metrics.messages_out.inc(n)

    def _send_close(self, code: int, reason: str) -> None:
        if self._close_timer is not None or self.transport.is_closing():
            return
        try:
            self.ws.send_close(code, reason)
        except Exception:  # the peer's close came first: websockets already answered it
            return
        self._write_output()
        self._close_timer = self._loop.call_later(CLOSE_TIMEOUT, self.transport.close)
        if self._reading_paused:  # paused behind a flood, we would never read the peer's close reply
            self._reading_paused = False
            if self._inbox is not None:
                self._inbox.clear()  # nothing more is handled once the connection closes
            self.transport.resume_reading()

    def _write_output(self) -> None:
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            elif self.ws.close_rcvd is None and self.transport.can_write_eof():
                # We failed the connection (a frame far over the limit) while the peer may still be
                # sending: closing now would answer its data with a TCP reset, which can destroy our
                # close frame before the peer reads it. Half-close, let the parser discard what still
                # arrives, and close when the peer does (or after a grace period).
                self.transport.write_eof()
                if self._close_timer is None:
                    self._close_timer = self._loop.call_later(LINGER, self.transport.close)
            else:  # end of stream: the closing handshake is over
                self.transport.close()

    # -- in -------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self.ws.receive_data(data)
        self._events(self.ws.events_received())
        self._write_output()  # pongs, close replies, protocol errors (e.g. 1009 from the parser)

    def eof_received(self) -> None:
        self.ws.receive_eof()
        return None  # let asyncio close the transport

    def _events(self, events: list[Any]) -> None:
        for event in events:
            if not isinstance(event, Frame):
                continue
            op = event.opcode
            if op is Opcode.TEXT or op is Opcode.BINARY or op is Opcode.CONT:
                self._message(event)
            # PING: websockets queued the PONG; PONG: nothing to do; CLOSE: websockets replied,
            # and connection_lost follows.

    def _message(self, event: Frame) -> None:
        if event.opcode is not Opcode.CONT:
            self._text = event.opcode is Opcode.TEXT
            if not event.fin:
                self._fragments = [event.data]
                return
            data = bytes(event.data)
        else:  # websockets has checked the sequence and the total size
            if self._fragments is None:
                return
            self._fragments.append(event.data)
            if not event.fin:
                return
            data, self._fragments = b"".join(self._fragments), None
        conn = self.conn
        if conn.close_code is not None:
            return
        if len(data) > self._hard_limit:
            conn.close(CLOSE_TOO_LARGE, f"frame of {len(data)} bytes is far over the "
                                        f"{self.node.settings.max_frame_bytes}-byte limit")
            return
        raw: str | bytes = data
        if self._text:
            try:
                raw = data.decode()
            except UnicodeDecodeError:
                self.ws.fail(1007, "invalid UTF-8")
                return
        assert self._inbox is not None
        self._inbox.append(raw)
        if len(self._inbox) >= PAUSE_READING and not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._kick()

    # -- the one task, only while there is work ---------------------------------

    def _kick(self, opening: bool = False) -> None:
        if self._task is None:
            task = self._task = self._loop.create_task(self._run(opening))
            self._server_tasks.add(task)
            task.add_done_callback(self._server_tasks.discard)

    async def _run(self, opening: bool) -> None:
        conn, inbox = self.conn, self._inbox
        assert inbox is not None
        try:
            if opening:
                await self.node.open(conn)
            while inbox and conn.close_code is None:
                await conn.handle(inbox.popleft())
                if self._reading_paused and len(inbox) < PAUSE_READING // 2 and not self.transport.is_closing():
                    self._reading_paused = False
                    self.transport.resume_reading()
            if self._ended and not self._finished:
                self._finished = True
                inbox.clear()
                await self.node.close(conn)
                # The connection's wake is a bound method of this socket: a cycle that would keep
                # both (and all they hold) until a full garbage collection. Nothing is sent any more.
                conn.wake = None
        except Exception:
            log.exception("connection %s failed", conn.id)
            if conn.close_code is None:
                conn.close(1011, "internal error")
        finally:
            self._task = None
        if self._ended and not self._finished:  # ended while node.open or a request was in flight
            self._kick()

    def _end(self) -> None:
        """The connection is over: run node.close() once, after the request in flight."""
        if not self._ended:
            self._ended = True
            self._kick()

    # -- the end ----------------------------------------------------------------

    def connection_lost(self, exc: Exception | None) -> None:
        self._server_conns.discard(self)
        # websockets keeps its parser as a generator holding the protocol (a cycle): finished
        # here, so the protocol and its buffers are freed with this socket, not at the next
        # full garbage collection. No byte is received after connection_lost.
        parser = getattr(self.ws, "parser", None)
        if parser is not None:
            parser.close()
        if self._close_timer is not None:
            self._close_timer.cancel()
        if self.conn.close_code is None:
            self.conn.close(1000, "closed")  # wakes _flush, which ends the connection
        self._end()

    def shutdown(self) -> None:
        """uvicorn is stopping: say so, and let the peer close."""
        self.conn.close(CLOSE_SHUTDOWN, "server shutting down")
