"""One error type for every layer: REST answers it as JSON, WebSocket as an ERROR frame."""

from __future__ import annotations

from typing import Any

#: Error code -> default HTTP status. Clients act on the codes (WS ``ERROR`` and REST ``{"error": {code}}``): they never change.
STATUS = {
    "bad_request": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "conflict": 409,
    "too_large": 413,
    "rate_limited": 429,
    "unavailable": 503,
}


class TetherError(Exception):
    """A refusal with a code from :data:`STATUS` and a message naming the problem.

    ``status`` overrides the HTTP status where the code alone is not precise
    (422 for a field out of bounds, 412 for a failed ``If-Match``); ``extra``
    adds fields beside ``code`` and ``message`` (the current document of a 409).
    """

    def __init__(self, code: str, message: str, *, status: int | None = None, **extra: Any) -> None:
        assert code in STATUS, code
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS[code]
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, **self.extra}


def bad_request(message: str, *, status: int = 400) -> TetherError:
    return TetherError("bad_request", message, status=status)


def forbidden(message: str) -> TetherError:
    return TetherError("forbidden", message)


def not_found(message: str) -> TetherError:
    return TetherError("not_found", message)


#: Characters of a caller's value that an error message repeats; the rest is elided.
ECHO_LIMIT = 64


def shown(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)`` for a message, cut to ``limit`` characters, saying how long the value was."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f" ({len(value)} characters)" if isinstance(value, str) else ""
    return text[:limit] + "…" + size
