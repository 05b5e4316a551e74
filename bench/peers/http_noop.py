"""The REST load generator's ceiling: a bare uvloop protocol that answers every request ``{}``.

No framework, no routing, no parsing beyond finding each request's end (bodyless
GETs only): what the generator reaches when the server costs next to nothing.
"""

from __future__ import annotations

import asyncio
import sys

REPLY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Noop(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        data = self.tail + data
        n = data.count(b"\r\n\r\n")
        self.tail = data[data.rfind(b"\r\n\r\n") + 4:] if n else data
        if n:
            self.transport.write(REPLY * n)  # type: ignore[attr-defined]


async def main(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(Noop, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
