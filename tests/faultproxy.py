"""A TCP proxy that can stall or drop the server's replies: faults between a client and a
real server (Redis, a Tether node) that a test turns on at an exact point."""

from __future__ import annotations

import asyncio
import contextlib


class Link:
    def __init__(self, proxy: "FaultProxy", reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.proxy, self.client_reader, self.client_writer = proxy, reader, writer
        self.upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self.drop_next_reply = False

    async def run(self) -> None:
        if self.proxy.refuse:
            self.client_writer.transport.abort()
            return
        self.proxy.links.add(self)
        try:
            self.upstream = await asyncio.open_connection(self.proxy.host, self.proxy.upstream_port)
        except OSError:
            self.client_writer.close()
            return
        up_reader, up_writer = self.upstream
        await asyncio.gather(self._requests(up_writer), self._replies(up_reader), return_exceptions=True)

    async def _requests(self, up_writer: asyncio.StreamWriter) -> None:
        proxy = self.proxy
        while data := await self.client_reader.read(65536):
            proxy.requests.append(data)
            if proxy.drop_reply_to is not None and proxy.drop_reply_to in data:
                proxy.drop_reply_to = None
                self.drop_next_reply = True  # the server runs the request; its reply never arrives
            if proxy.hold_reply_to is not None and proxy.hold_reply_to in data:
                proxy.hold_reply_to = None
                proxy.hold()
                proxy.held.set()
            up_writer.write(data)
            await up_writer.drain()
        self.cut()

    async def _replies(self, up_reader: asyncio.StreamReader) -> None:
        proxy = self.proxy
        while data := await up_reader.read(65536):
            if self.drop_next_reply:
                proxy.dropped.set()
                self.cut()
                return
            await proxy._open.wait()
            self.client_writer.write(data)
            await self.client_writer.drain()
        self.cut()

    def cut(self) -> None:
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
        finally:
            self._links.discard(task)

    def hold(self) -> None:
        """Replies stall (bytes wait in the proxy) until :meth:`release`."""
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def cut_all(self) -> None:
        """Reset every open link (a network drop)."""
        for link in list(self.links):
            link.cut()

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
