"""uvicorn's WebSocket protocol plus one ASGI extension: write a batch of frames at once.

Profiling fan-out (docs/benchmarks.md) showed most server time in the per-frame
path: each ``websocket.send_text`` crosses Starlette's ASGI wrappers, builds
the frame in Python (websockets' ``Frame.serialize``) and makes its own
``write`` syscall. A fan-out event is the *same* text for every recipient, so
here it is framed once (cached by the str object), and a connection's whole
batch goes out in one ``transport.write``.

The extension is ``scope["extensions"]["tether.send_frames"]``: an async
callable taking a list of str. ``tether.server.ws`` falls back to plain
``send_text`` when a server does not offer it, so any ASGI server still works.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

EXTENSION = "tether.send_frames"
WRITE_NOW = "tether.write_now"  # sync (str) -> bool: wrote it now, or False (back-pressure, closing)

_frames: dict[str, bytes] = {}  # event text -> its encoded server frame (a str's hash is cached, so lookups are cheap)
_MAX_CACHED = 4096


def frame(text: str) -> bytes:
    """One unmasked, unfragmented, uncompressed text frame (RFC 6455 §5.2)."""
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
    if len(_frames) >= _MAX_CACHED:
        _frames.clear()
    _frames[text] = data
    return data


class TetherWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if not self.conn.extensions:  # raw frames are valid only without permessage-deflate
            self.scope["extensions"][EXTENSION] = self.send_frames  # type: ignore[index]
            self.scope["extensions"][WRITE_NOW] = self.write_now  # type: ignore[index]

    def write_now(self, text: str) -> bool:
        if not self.writable.is_set() or self.disconnected or self.close_sent or not self.handshake_complete \
                or self.transport.is_closing():
            return False
        self.transport.write(frame(text))
        return True

    async def send_frames(self, texts: list[str]) -> None:
        await self.writable.wait()  # the same back-pressure as send()
        if self.disconnected or not self.handshake_complete:
            raise ClientDisconnected()
        if self.close_sent or self.transport.is_closing():
            return
        self.transport.write(b"".join([frame(t) for t in texts]))
