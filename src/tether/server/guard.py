"""The HTTP edge: what every REST request passes before any route sees it.

- A body over ``max_body_bytes`` is refused with 413 before it is read
  (``Content-Length``) or as soon as it grows past the cap (chunked).
- A JSON body is parsed once, strictly (``tether.wire.jsoncheck``): NaN,
  Infinity, overflowing numbers, out-of-range integers, lone surrogates and
  nesting past the limit get a 422 naming the field; what reaches the route is
  the re-encoded body, so it sees exactly the values that were checked.
- An exception no handler turned into an answer becomes a 503 here, logged as
  one line. Starlette's own last-resort handler answers and then re-raises,
  which makes uvicorn close the keep-alive connection under the client's next
  request; this one answers and stops.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable

from tether.core.logs import one_line
from tether.wire.errors import TetherError
from tether.wire.jsoncheck import strict_loads
from tether.wire.jsonutil import dumpb

log = logging.getLogger("tether.http")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


class TooLarge(Exception):
    pass


class InputGuard:
    def __init__(self, app: App, max_body_bytes: int, on_error: Callable[[str], None] | None = None) -> None:
        self.app = app
        self.max_body = max_body_bytes
        self.on_error = on_error or (lambda code: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            body = await self._body(scope, receive)
        except TooLarge:
            await self._refuse(send, TetherError(
                "too_large", f"request body exceeds the limit of {self.max_body} bytes"))
            return
        except TetherError as exc:
            await self._refuse(send, exc)
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # the disconnect, when it comes

        try:
            await self.app(scope, replay, tracked)
        except Exception as exc:
            log.error("%s %s failed: %s", scope.get("method"), scope.get("path"), one_line(exc))
            if started:
                return  # the answer is out or half out: nothing better to send
            await self._refuse(send, TetherError("unavailable", "the server could not complete this request; retry"))

    async def _body(self, scope: Scope, receive: Receive) -> bytes:
        headers = dict(scope.get("headers") or ())
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise TooLarge()
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                raise TooLarge()
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        ctype = headers.get(b"content-type", b"").lower()
        if body and (not ctype or b"json" in ctype):
            # Raises bad_request (422) naming the field; the route gets the checked values re-encoded.
            body = dumpb(strict_loads(body, "body"))
            scope["headers"] = [(k, v) for k, v in scope.get("headers") or () if k != b"content-length"] + [
                (b"content-length", str(len(body)).encode())]
        return body

    async def _refuse(self, send: Send, exc: TetherError) -> None:
        # No "Connection: close" after a 413: the client may still be sending, and a closed socket
        # would lose it the answer. uvicorn discards the rest of the body and keeps the connection.
        self.on_error(exc.code)
        payload = dumpb({"error": exc.to_dict()})
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": exc.status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})
