"""A TCP proxy that can stall or drop the server's replies: faults between a client and a
real server (Redis, a Tether node) that a test turns on at an exact point.

Each proxied connection is a :class:`Link` that can also be faulted on its own: reset
(both sockets aborted), made half-open (bytes vanish both ways, nothing is closed: a
dead network path), or stalled (bytes wait in the proxy until it resumes)."""

from __future__ import annotations

import asyncio
import contextlib


class Link:
    def __init__(self, proxy: "FaultProxy", reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy, self.client_reader, self.client_writer = proxy, reader, writer
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.drop_next_reply = False
        self.flowing = asyncio.Event()  # cleared while the link stalls
        self.flowing.set()
        self.black_hole = False  # half-open: whatever either side sends is lost
        self.waiting: bytes | None = None  # what the client sent that a stall holds back
        if proxy.stalling:
            self.flowing.clear()

    @property
    def healthy(self) -> bool:
        """Open, forwarding, not half-open."""
        return self in self.proxy.links and self.flowing.is_set() and not self.black_hole

    def reset(self) -> None:
        """A connection reset: both sides see their socket aborted."""
        self.cut()

    def half_open(self) -> None:
        """Stop forwarding both ways without closing anything. The client's side ends when
        the client gives up on it; the server's side lives on, a zombie, until the server's
        own keepalive closes it."""
        self.black_hole = True
        self.flowing.set()

    def stall(self) -> None:
        """Bytes wait in the proxy (both ways) until :meth:`resume`."""
        self.flowing.clear()

    def resume(self) -> None:
        self.flowing.set()

    async def run(self) -> None:
        if self.proxy.refuse:
            self.client_writer.transport.abort()
            return
        self.proxy.links.add(self)
        try:
            self.upstream = await asyncio.open_connection(self.proxy.host, self.proxy.upstream_port)
        except OSError:  # the server is down: the client sees its connection closed
            self.proxy.links.discard(self)
            self.client_writer.close()
            return
        up_reader, up_writer = self.upstream
        await asyncio.gather(self._requests(up_writer), self._replies(up_reader), return_exceptions=True)

    async def _requests(self, up_writer: asyncio.StreamWriter) -> None:
        try:
            await self._forward_requests(up_writer)
        except OSError:
            pass
        if not self.black_hole:  # a half-open link's server side stays until the server ends it
            self.cut()

    async def _forward_requests(self, up_writer: asyncio.StreamWriter) -> None:
        proxy = self.proxy
        while data := await self.client_reader.read(65536):
            if self.black_hole:
                continue
            proxy.requests.append(data)
            if proxy.drop_reply_to is not None and proxy.drop_reply_to in data:
                proxy.drop_reply_to = None
                self.drop_next_reply = True  # the server runs the request; its reply never arrives
            if proxy.hold_reply_to is not None and proxy.hold_reply_to in data:
                proxy.hold_reply_to = None
                proxy.hold()
                proxy.held.set()
            if proxy.stall_request_with is not None and proxy.stall_request_with in data:
                proxy.stall_request_with = None
                self.stall()  # this request waits in the proxy: the server has not seen it
            if not self.flowing.is_set():
                self.waiting = data
                await self.flowing.wait()
                self.waiting = None
            if self.black_hole:
                continue
            up_writer.write(data)
            await up_writer.drain()

    async def _replies(self, up_reader: asyncio.StreamReader) -> None:
        try:
            await self._forward_replies(up_reader)
        except OSError:
            pass
        self.cut()

    async def _forward_replies(self, up_reader: asyncio.StreamReader) -> None:
        proxy = self.proxy
        while data := await up_reader.read(65536):
            if self.black_hole:
                continue
            if self.drop_next_reply:
                proxy.dropped.set()
                return
            await proxy._open.wait()
            await self.flowing.wait()
            if self.black_hole:
                continue
            self.client_writer.write(data)
            await self.client_writer.drain()

    def cut(self) -> None:
        self.black_hole = True  # a pump waiting on a stall wakes and drops what it held
        self.flowing.set()
        self.proxy.links.discard(self)
        self.client_writer.transport.abort()
        if self.upstream is not None:
            self.upstream[1].transport.abort()


class FaultProxy:
    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.upstream_port = host, upstream_port
        self.port = 0
        self.requests: list[bytes] = []  # every chunk a client sent, in order
        self.drop_reply_to: bytes | None = None  # the reply to the next request containing this is lost
        self.hold_reply_to: bytes | None = None  # replies stall from the next request containing this
        self.refuse = False  # new connections are reset at once (the server looks down)
        self.stalling = False  # set by stall_all: new connections start stalled too
        self.stall_request_with: bytes | None = None  # the link of the next request containing this stalls
        self.links: set[Link] = set()
        self.dropped = asyncio.Event()
        self.held = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.Task[None]] = set()

    async def start(self) -> "FaultProxy":
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        try:
            await Link(self, reader, writer).run()
        except asyncio.CancelledError:
            pass  # closed by close(): ends quietly (asyncio logs a cancelled connection task)
        finally:
            self._links.discard(task)

    def hold(self) -> None:
        """Replies stall (bytes wait in the proxy) until :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def cut_all(self) -> int:
        """Reset every open link (a network drop); how many there were."""
        links = list(self.links)
        for link in links:
            link.cut()
        return len(links)

    def stall_all(self) -> int:
        """Stall every open link, and every new one, until :meth:`resume_all`; how many were open."""
        self.stalling = True
        links = list(self.links)
        for link in links:
            link.stall()
        return len(links)

    def resume_all(self) -> None:
        self.stalling = False
        for link in list(self.links):
            link.resume()

    def count(self, marker: bytes) -> int:
        return sum(chunk.count(marker) for chunk in self.requests)

    async def close(self) -> None:
        self.release()
        if self._server is not None:
            self._server.close()
        for task in list(self._links):
            task.cancel()
        for task in list(self._links):
            with contextlib.suppress(BaseException):
                await task
