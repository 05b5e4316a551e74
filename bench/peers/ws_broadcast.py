"""The Python ceiling: a bare ``websockets`` server that fans out with ``broadcast()``.

No offsets, no history, no auth. Frames: ``{"sub": channel}`` joins a channel
(answered ``{"ok":0}``); ``{"pub": channel, "id": n, "d": data}`` encodes
``{"channel", "data"}`` once, broadcasts it without awaiting, answers ``{"ok":n}``.
"""

from __future__ import annotations

import asyncio
import sys

import orjson
from websockets.asyncio.server import broadcast, serve
from websockets.exceptions import ConnectionClosed

channels: dict[str, set] = {}


async def handler(ws) -> None:  # type: ignore[no-untyped-def]
    mine: list[str] = []
    try:
        async for raw in ws:
            msg = orjson.loads(raw)
            if "pub" in msg:
                frame = orjson.dumps({"channel": msg["pub"], "data": msg["d"]}).decode()
                broadcast(channels.get(msg["pub"], ()), frame)
                await ws.send('{"ok":%d}' % msg["id"])
            elif "sub" in msg:
                channels.setdefault(msg["sub"], set()).add(ws)
                mine.append(msg["sub"])
                await ws.send('{"ok":0}')
    except ConnectionClosed:
        pass
    finally:
        for c in mine:
            channels[c].discard(ws)


async def main(port: int) -> None:
    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None, ping_interval=None):
        print("listening", port, flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(main(int(sys.argv[1])))
