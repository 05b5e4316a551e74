"""uvicorn's WebSocket protocol: ``/ws`` served natively, batched writes for ASGI.

For ``/ws`` (when the app is Tether's and its node has started), the handshake
is completed here and the socket handed to ``tether.server.native`` (no ASGI).
Any other path, or ``--ws-transport asgi``, goes through the ASGI app with the
extensions below.

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
from urllib.parse import parse_qs

from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Request

from tether.core.connection import Connection
from tether.server import origins
from tether.server.native import LINGER, NativeSocket, frame
from tether.wire.errors import TetherError
from tether.wire.protocol import CLOSE_UNAUTHORIZED, close_reason

NATIVE_PATH = "/ws"

EXTENSION = "tether.send_frames"

DRAINING = "draining: this node is shutting down, connect to another one"

def find_node(app: Any) -> Any:
    """The Tether node behind uvicorn's middleware wrappers (``app.state.node``), or None."""
    for _ in range(10):
        node = getattr(getattr(app, "state", None), "node", None)
        if node is not None:
            return node
        app = getattr(app, "app", None)
        if app is None:
            return None
    return None


class TetherWebSocketProtocol(WebSocketsSansIOProtocol):
    def handle_events(self) -> None:
        # uvicorn's loop, except that a /ws handshake hands the socket (and any frames that
        # came with it) to tether.server.native instead of starting the ASGI app.
        events = self.conn.events_received()
        for i, event in enumerate(events):
            if isinstance(event, Request):
                if self.serve_natively(event, events[i + 1:]):
                    return
                self.handle_connect(event)
            elif isinstance(event, Frame):
                op = event.opcode
                if op == Opcode.CONT:
                    self.handle_cont(event)
                elif op == Opcode.TEXT:
                    self.handle_text(event)
                elif op == Opcode.BINARY:
                    self.handle_bytes(event)
                elif op == Opcode.PING:
                    self.handle_ping()
                elif op == Opcode.PONG:
                    self.handle_pong(event)
                elif op == Opcode.CLOSE:
                    self.handle_close(event)

    def serve_natively(self, request: Request, rest: list[Any]) -> bool:
        path, _, query = request.path.partition("?")
        if path != NATIVE_PATH or self.root_path or self.config.ws_per_message_deflate:
            return False
        node = find_node(self.app)
        if node is None or not node.started:
            return False
        self.request = request
        self.handshake_initiated = True
        if node.draining:  # a load balancer that has not noticed yet retries elsewhere on a 503
            response = self.conn.reject(503, DRAINING + "\n")
        elif origins.websocket_allowed(request.headers.get("Origin"), request.headers.get("Host"),
                                       origins.parse(node.settings.cors_origins)):
            response = self.conn.accept(request)
        else:
            response = self.conn.reject(403, "this page's origin may not open /ws: add it to --cors-origins\n")
        if response.status_code != 101:
            self.handshake_complete = self.close_sent = True
            self.conn.send_response(response)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()
            return True
        del response.headers["Date"]
        response.headers.update([(n.decode("latin-1").lower(), v.decode("latin-1")) for n, v in self.default_headers])
        self.conn.send_response(response)
        self.handshake_complete = True
        try:
            params = parse_qs(query) if query else {}
            token = params.get("token", [None])[-1]
            identity = node.auth.headers(request.headers.get("authorization"), request.headers.get("x-api-key"), token,
                                         params.get("api_key", [None])[-1])
        except TetherError as exc:  # as the ASGI path: accept, then close with 4001 and the reason
            self.conn.send_close(CLOSE_UNAUTHORIZED, close_reason(f"unauthorized: {exc.message}"))
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)
            return True  # uvicorn's protocol keeps the socket and finishes the closing handshake
        self.transport.write(b"".join(self.conn.data_to_send()))
        native = NativeSocket(self.transport, self.conn, Connection(node, identity),
                              self.connections, self.tasks, self.loop)
        self.connections.discard(self)
        self.native = native
        # uvicorn's HTTP protocol sets this object as the transport's protocol right after this
        # call returns, so the handover waits a tick; until then events are forwarded.
        self.loop.call_soon(self.transport.set_protocol, native)
        native.start(rest)
        return True

    native: NativeSocket | None = None

    def data_received(self, data: bytes) -> None:
        if self.native is not None:
            return self.native.data_received(data)
        super().data_received(data)

    def eof_received(self) -> None:
        if self.native is not None:
            return self.native.eof_received()
        super().eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.native is not None:
            return self.native.connection_lost(exc)
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        if self.native is not None:
            return self.native.pause_writing()
        super().pause_writing()

    def resume_writing(self) -> None:
        if self.native is not None:
            return self.native.resume_writing()
        super().resume_writing()

    lingering = False

    def handle_parser_exception(self) -> None:
        # uvicorn's, except that the socket is not closed at once: a frame far over the limit is
        # failed with 1009 while the peer is still sending it, and closing now would answer with a
        # TCP reset that can destroy the close frame on its way (see native.LINGER). Later data is
        # discarded by the parser.
        if self.lingering:
            return
        self.lingering = True
        assert self.conn.close_sent is not None
        close = self.conn.close_sent
        self.queue.put_nowait({"type": "websocket.disconnect", "code": close.code, "reason": close.reason})
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        if self.transport.can_write_eof():
            self.transport.write_eof()
            # As close_timer, uvicorn does not close the socket when the app returns meanwhile.
            self.close_timer = self.loop.call_later(LINGER, self.transport.close)
        else:
            self.transport.close()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        if not self.conn.extensions:  # raw frames are valid only without permessage-deflate
            self.scope["extensions"][EXTENSION] = self.send_frames  # type: ignore[index]

    async def send_frames(self, texts: list[str]) -> None:
        await self.writable.wait()  # the same back-pressure as send()
        if self.disconnected or not self.handshake_complete:
            raise ClientDisconnected()
        if self.close_sent or self.transport.is_closing():
            return
        self.transport.write(b"".join([frame(t) for t in texts]))


class AsgiWebSocketProtocol(TetherWebSocketProtocol):
    """Every WebSocket through the ASGI app (``tether serve --ws-transport asgi``)."""

    def serve_natively(self, request: Request, rest: list[Any]) -> bool:
        return False
