"""A minimal HTTP/1.1 keep-alive client for REST load generation.

Why hand-rolled: a full client (httpx) spent about as much CPU per request as
the server it measured, so on two shared cores the generator set the REST
figures. Here one connection per simulated client, one request at a time, the
request built with a single format and the response parsed with two ``find``
calls (``Content-Length``, or chunked for completeness). Nothing else: no
redirects, no cookies, no TLS, no pooling.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson


class HttpError(RuntimeError):
    pass


class Http(asyncio.Protocol):
    """One keep-alive connection to ``127.0.0.1:port``."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.head = f"Host: 127.0.0.1:{port}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiting: asyncio.Future[tuple[int, bytes]] | None = None
        self.method = b""

    @classmethod
    async def open(cls, port: int, headers: dict[str, str] | None = None) -> "Http":
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(lambda: cls(port, headers), "127.0.0.1", port)
        return conn

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(HttpError(f"connection closed: {exc}"))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """(status, body bytes); ``body`` is sent as JSON when not None."""
        if self.transport is None:
            raise HttpError("not connected")
        if body is None:
            data = b"%s %s HTTP/1.1\r\n%s\r\n" % (method.encode(), path.encode(), self.head.encode())
        else:
            raw = orjson.dumps(body)
            data = b"%s %s HTTP/1.1\r\n%sContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
                method.encode(), path.encode(), self.head.encode(), len(raw), raw)
        self.method = method.encode()
        self.waiting = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await asyncio.wait_for(self.waiting, 30)

    async def json(self, method: str, path: str, body: Any = None) -> Any:
        """The decoded JSON body of a 2xx answer (None when empty); anything else raises."""
        status, raw = await self.request(method, path, body)
        if status >= 300:
            raise HttpError(f"{method} {path}: {status} {raw[:200].decode('latin-1')}")
        return orjson.loads(raw) if raw else None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        done = self._parse()
        if done is not None and self.waiting is not None and not self.waiting.done():
            self.waiting.set_result(done)

    def _parse(self) -> tuple[int, bytes] | None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return None
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        start = end + 4
        if status in (204, 304) or status < 200 or self.method == b"HEAD":
            del buf[:start]
            return status, b""
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            n = int(head[i + 17: j if j >= 0 else len(head)])
            if len(buf) - start < n:
                return None
            body = bytes(buf[start:start + n])
            del buf[:start + n]
            return status, body
        if b"\r\ntransfer-encoding: chunked" in head:
            out, pos = bytearray(), start
            while True:
                nl = buf.find(b"\r\n", pos)
                if nl < 0:
                    return None
                size = int(bytes(buf[pos:nl]).split(b";")[0], 16)
                if len(buf) < nl + 2 + size + 2:
                    return None
                if size == 0:  # no trailers expected
                    del buf[:nl + 4]
                    return status, bytes(out)
                out += buf[nl + 2:nl + 2 + size]
                pos = nl + 2 + size + 2
        raise HttpError(f"response without length: {head[:200]!r}")
