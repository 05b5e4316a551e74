"""A minimal WebSocket client for load generation, plus each system's dialect.

Why hand-rolled: a full client library decodes every frame into a Python str
and wakes a coroutine per message; here one ``data_received`` call walks the
frame headers in a buffer and only *counts* deliveries (a C-level ``find`` of
the payload marker ``"t":``). Latency is read from that timestamp only while a
latency window is open. Client frames are masked with the all-zero key (legal,
servers unmask blindly), so no per-byte XOR in Python either.

At saturation even walking the headers costs a Python loop per frame, which
made the load generator, not the server, the bottleneck. So a client switches
for good to *counting mode* (:meth:`Client.count_only`) before a throughput
phase: each received chunk is one C-level ``bytes.count`` of the marker, exact
across chunk boundaries, and the only frames it still answers, the systems'
keepalive pings, are recognised by their bytes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Callable

MARK = b'"t":'
PAD = "x" * 72  # makes the JSON payload {"t":<16 digits>,"p":"xx…"} 100 bytes


def payload() -> bytes:
    return b'{"t":%d,"p":"%s"}' % (time.time_ns() // 1000, PAD.encode())


def now_us() -> int:
    return time.time_ns() // 1000


def client_frame(data: bytes) -> bytes:
    n = len(data)
    if n < 126:
        head = bytes((0x81, 0x80 | n))
    elif n < 65536:
        head = bytes((0x81, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x81, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + data


# -- dialects: how each system says subscribe / publish / ack ------------------


class Dialect:
    path = "/"
    greets = False  # the server sends a frame (CONNECTED, "40") once it has set the connection up

    def url_path(self, user: str) -> str:
        return self.path

    def hello(self) -> list[bytes]:
        return []

    def subscribe(self, channel: str, rid: int) -> bytes:
        raise NotImplementedError

    def publish(self, channel: str, data: bytes, rid: int) -> bytes:
        raise NotImplementedError

    def is_ack(self, frame: bytes) -> bool:
        raise NotImplementedError

    def is_ready(self, frame: bytes) -> bool:
        """Is this the greeting frame (only asked when ``greets``)?"""
        return False

    def pong(self, frame: bytes) -> bytes | None:
        return None

    #: In counting mode: the bytes of the server's keepalive ping, as they appear on the wire.
    ping_bytes: bytes | None = None
    pong_reply = b""


class TetherDialect(Dialect):
    greets = True
    def url_path(self, user: str) -> str:
        return f"/ws?token={user}"

    def subscribe(self, channel: str, rid: int) -> bytes:
        return b'{"type":"SUBSCRIBE","id":"%d","data":{"channel":"public.%s"}}' % (rid, channel.encode())

    def publish(self, channel: str, data: bytes, rid: int) -> bytes:
        return b'{"type":"PUBLISH","id":"%d","data":{"channel":"public.%s","data":%s}}' % (rid, channel.encode(), data)

    def is_ack(self, frame: bytes) -> bool:
        return frame.startswith(b'{"type":"ACK"')

    def is_ready(self, frame: bytes) -> bool:
        return frame.startswith(b'{"type":"CONNECTED"')

    def pong(self, frame: bytes) -> bytes | None:
        if frame.startswith(b'{"type":"PING"'):
            return b'{"type":"PONG","data":{}}'
        return None

    ping_bytes = b'{"type":"PING"'
    pong_reply = b'{"type":"PONG","data":{}}'


class WsBroadcastDialect(Dialect):
    def subscribe(self, channel: str, rid: int) -> bytes:
        return b'{"sub":"%s"}' % channel.encode()

    def publish(self, channel: str, data: bytes, rid: int) -> bytes:
        return b'{"pub":"%s","id":%d,"d":%s}' % (channel.encode(), rid, data)

    def is_ack(self, frame: bytes) -> bool:
        return frame.startswith(b'{"ok"')


class SocketIODialect(Dialect):
    """Engine.IO 4 / Socket.IO 5 over a bare WebSocket: 40 connect, 42 event, 43 ack."""

    path = "/socket.io/?EIO=4&transport=websocket"
    greets = True

    def hello(self) -> list[bytes]:
        return [b"40"]

    def subscribe(self, channel: str, rid: int) -> bytes:
        return b'42%d["join","%s"]' % (rid, channel.encode())

    def publish(self, channel: str, data: bytes, rid: int) -> bytes:
        return b'42%d["publish",{"r":"%s","d":%s}]' % (rid, channel.encode(), data)

    def is_ack(self, frame: bytes) -> bool:
        return frame.startswith(b"43")

    def is_ready(self, frame: bytes) -> bool:
        return frame.startswith(b"40")

    def pong(self, frame: bytes) -> bytes | None:
        return b"3" if frame == b"2" else None

    ping_bytes = b"\x81\x012"  # a one-byte text frame "2" (payloads are ASCII: no 0x81 inside one)
    pong_reply = b"3"


DIALECTS: dict[str, Dialect] = {
    "tether": TetherDialect(),
    "python-socketio": SocketIODialect(),
    "websockets-broadcast": WsBroadcastDialect(),
    "socket.io-node": SocketIODialect(),
    "django-channels": WsBroadcastDialect(),  # bench/peers/django_channels speaks the same frames
}


# -- the client ------------------------------------------------------------------


class Client(asyncio.Protocol):
    """One WebSocket connection that counts deliveries, acks and readiness."""

    def __init__(self, dialect: Dialect, path: str, port: int) -> None:
        self.d = dialect
        self.request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                        "Sec-WebSocket-Version: 13\r\n\r\n").encode()
        self.buf = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.delivered = 0
        self.acks = 0
        self.ready = False
        self.closed = False
        self.latencies: list[float] | None = None  # set to a list to record (ms)
        self.on_ack: Callable[[], None] | None = None
        self.on_frame: Callable[[bytes], None] | None = None  # when set: gets every text frame, decoded by the caller
        self.counting = False  # see count_only()
        self._tail = b""  # counting mode: the last bytes seen, for a marker split between chunks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(client_frame(data))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed during handshake"))

    def count_only(self) -> None:
        """From now on only count deliveries (and answer keepalive pings): no frame walking.

        Exact: the marker is 4 bytes, so one split between chunks lies within the
        previous chunk's last 3 bytes and this chunk's first 3."""
        buf = bytes(self.buf)
        self.delivered += buf.count(MARK)  # a delivery whose frame is still incomplete
        self._tail = buf[-15:]
        self.buf = bytearray()
        self.counting = True

    def _count(self, data: bytes) -> None:
        edge = self._tail + data[:15]
        self.delivered += data.count(MARK) + edge[max(0, len(self._tail) - 3):len(self._tail) + 3].count(MARK)
        ping = self.d.ping_bytes
        if ping is not None and (ping in data or ping in edge):
            self.send(self.d.pong_reply)
        self._tail = data[-15:] if len(data) >= 15 else (self._tail + data)[-15:]

    def data_received(self, data: bytes) -> None:
        if self.counting:
            self._count(data)
            return
        buf = self.buf
        buf += data
        if not self.upgraded.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buf[:end]).split(b"\r\n", 1)[0]
            del buf[: end + 4]
            if b" 101 " not in status:
                self.upgraded.set_exception(ConnectionError(status.decode("latin-1")))
                return
            self.upgraded.set_result(None)
            self.ready = not self.d.greets
            for hello in self.d.hello():
                self.send(hello)
        i, n = 0, len(buf)
        lat = self.latencies
        while n - i >= 2:
            op = buf[i] & 0x0F
            ln = buf[i + 1] & 0x7F
            h = 2
            if ln == 126:
                if n - i < 4:
                    break
                ln = (buf[i + 2] << 8) | buf[i + 3]
                h = 4
            elif ln == 127:
                if n - i < 10:
                    break
                ln = int.from_bytes(buf[i + 2 : i + 10], "big")
                h = 10
            if n - i < h + ln:
                break
            start = i + h
            i = start + ln
            if self.on_frame is not None and op == 1:
                self.on_frame(bytes(buf[start:i]))
                continue
            t = buf.find(MARK, start, i)
            if t >= 0:  # a delivery: count it, and time it when asked
                self.delivered += 1
                if lat is not None:
                    e = buf.find(b",", t, i)
                    lat.append((now_us() - int(buf[t + 4 : e])) / 1000)
                continue
            if op == 8:
                self.closed = True
                continue
            if op == 9:
                self.transport.write(bytes((0x8A, 0x80)) + b"\x00\x00\x00\x00")  # type: ignore[union-attr]
                continue
            frame = bytes(buf[start:i])
            if self.d.is_ack(frame):
                self.acks += 1
                if self.on_ack is not None:
                    self.on_ack()
            elif not self.ready and self.d.is_ready(frame):
                self.ready = True
            else:
                reply = self.d.pong(frame)
                if reply is not None:
                    self.send(reply)
        if i:
            del buf[:i]


async def connect(dialect: Dialect, port: int, user: str) -> Client:
    loop = asyncio.get_running_loop()
    path = dialect.url_path(user)
    _, client = await loop.create_connection(lambda: Client(dialect, path, port), "127.0.0.1", port)
    await client.upgraded
    return client
