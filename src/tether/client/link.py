"""One WebSocket connection to the server: replies matched to requests, everything else handed on in order.

The keepalive lives here: the link answers the server's PINGs, sends its own
every ``ping_interval``, and aborts the socket when nothing at all has arrived
for two intervals, so a dead network path (no FIN, no RST) is noticed within
two ping intervals instead of at the next TCP timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from typing import Any, Callable
from urllib.parse import quote, urlsplit, urlunsplit

import websockets

from tether.client.errors import Disconnected, ServerError
from tether.wire.jsonutil import dumps, loads

CLOSE_UNAUTHORIZED = 4001
CLOSE_TOKEN_EXPIRED = 4003  # the token's exp passed while connected: reconnect with a fresh one
OnFrame = Callable[[dict[str, Any]], None]
OnAck = Callable[[dict[str, Any]], None]


def ws_url(base: str, token: str) -> str:
    parts = urlsplit(base)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    path = parts.path.rstrip("/") + "/ws"
    return urlunsplit((scheme, parts.netloc, path, "token=" + quote(token, safe=""), ""))


class Link:
    _ids = itertools.count(1)

    def __init__(self, ws: Any, hello: dict[str, Any], on_frame: OnFrame, ping_interval: float) -> None:
        self.ws = ws
        self.hello = hello  # the CONNECTED frame's data
        self.on_frame = on_frame
        self.ping_interval = ping_interval
        self.last_rx = time.monotonic()
        self.close_code: int | None = None
        self.close_reason = ""
        self.disconnect: dict[str, Any] | None = None  # a DISCONNECT frame's data: why the server is closing
        self._replies: dict[str, tuple[asyncio.Future[dict[str, Any]], OnAck | None]] = {}
        self._closed = asyncio.Event()
        self._tasks = [asyncio.create_task(self._read()), asyncio.create_task(self._keepalive())]

    @classmethod
    async def open(cls, url: str, token: str, on_frame: OnFrame, *, timeout: float = 10,
                   ping_interval: float | None = None) -> "Link":
        """Connect and read ``CONNECTED``; a refused token raises ``ServerError('unauthorized')``."""
        ws = await websockets.connect(ws_url(url, token), open_timeout=timeout, ping_interval=None,
                                      close_timeout=1, max_size=None)
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout)
        except websockets.ConnectionClosed as exc:
            rcvd = exc.rcvd
            if rcvd is not None and rcvd.code == CLOSE_UNAUTHORIZED:
                raise ServerError("unauthorized", rcvd.reason, 401) from None
            raise Disconnected(f"closed before CONNECTED: {exc}") from None
        except BaseException:
            ws.transport.abort()
            raise
        hello = loads(raw)
        if hello.get("type") != "CONNECTED":
            ws.transport.abort()
            raise Disconnected(f"expected CONNECTED first, got {hello.get('type')}")
        interval = ping_interval or float(hello["data"].get("pingInterval") or 25)
        return cls(ws, hello["data"], on_frame, interval)

    # -- requests -------------------------------------------------------------------

    async def request(self, type: str, data: dict[str, Any], *, timeout: float = 10, on_ack: OnAck | None = None) -> dict[str, Any]:
        (result,) = await self.requests([(type, data, on_ack)], timeout=timeout)
        if isinstance(result, BaseException):
            raise result
        return result

    async def requests(self, items: list[tuple[str, dict[str, Any], OnAck | None]], *, timeout: float = 10) -> list[Any]:
        """Send several requests back to back (the server handles them in order) and
        collect each answer: the ACK data, or the ``ServerError`` / ``Disconnected`` it got."""
        if self.closed:
            raise Disconnected("not connected")
        loop = asyncio.get_running_loop()
        futures = []
        frames = []
        for type, data, on_ack in items:
            rid = f"c{next(self._ids)}"
            fut: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._replies[rid] = (fut, on_ack)
            futures.append(fut)
            frames.append(dumps({"type": type, "data": data, "id": rid}))
        try:
            for text in frames:
                await self.ws.send(text)
        except websockets.ConnectionClosed:
            self.abort()
        done, _ = await asyncio.wait(futures, timeout=timeout)
        out: list[Any] = []
        for fut in futures:
            if fut in done:
                out.append(fut.exception() or fut.result())
            else:
                fut.cancel()  # its entry stays in _replies: a late ACK still runs its on_ack
                out.append(Disconnected(f"no answer within {timeout:g} s"))
        return out

    async def send(self, type: str, data: dict[str, Any]) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await self.ws.send(dumps({"type": type, "data": data}))

    # -- life -------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def abort(self) -> None:
        """Drop the socket at once (no close handshake: the peer may be gone)."""
        with contextlib.suppress(Exception):
            self.ws.transport.abort()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.close(), 1)
        self.abort()
        for task in self._tasks:
            task.cancel()
        self._finish()

    def _finish(self) -> None:
        if self._closed.is_set():
            return
        if self.close_code is None:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason or ""
        for fut, _ in self._replies.values():
            if not fut.done():
                fut.set_exception(Disconnected(f"connection closed ({self.close_code} {self.close_reason})".strip()))
        self._replies.clear()
        self._closed.set()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                self.last_rx = time.monotonic()
                frame = loads(raw)
                ftype = frame.get("type")
                rid = frame.get("id")
                if rid is not None and rid in self._replies and ftype in ("ACK", "ERROR"):
                    fut, on_ack = self._replies.pop(rid)
                    data = frame.get("data") or {}
                    if ftype == "ACK":
                        # Even after the request timed out: the server did what it acknowledges
                        # (a late SUBSCRIBE ACK carries the epoch and offset the subscription needs).
                        if on_ack is not None:
                            on_ack(data)  # before any later frame is handed on: keeps replay before live
                        if not fut.done():
                            fut.set_result(data)
                    elif not fut.done():
                        fut.set_exception(ServerError(data.get("code", "unavailable"), data.get("message", ""), None, data))
                elif ftype == "DISCONNECT":
                    self.disconnect = frame.get("data") or {}
                    self.on_frame(frame)
                elif ftype == "PING":
                    await self.send("PONG", {"timestamp": (frame.get("data") or {}).get("timestamp")})
                elif ftype != "PONG":
                    self.on_frame(frame)
        except (websockets.ConnectionClosed, OSError):
            pass
        finally:
            self._finish()
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()

    async def _keepalive(self) -> None:
        interval = self.ping_interval
        tick = min(1.0, interval / 4)
        last_ping = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if now - self.last_rx > 2 * interval:
                self.close_code, self.close_reason = 4011, f"nothing received for {2 * interval:g} s: link is dead"
                self.abort()
                self._finish()
                return
            if now - last_ping >= interval:
                last_ping = now
                # Bounded: on a dead link with a full send buffer every send blocks on drain
                # forever, and so would this check if it waited for the PING to go out.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self.send("PING", {"timestamp": int(time.time() * 1000)}), tick)
