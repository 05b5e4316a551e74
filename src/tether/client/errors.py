"""What can go wrong, sorted into what the client does about it.

``classify`` maps a server answer to one of three actions:
- ``retry``: the write may succeed later (network, 5xx, rate limit): keep it queued.
- ``reauth``: the token is no longer accepted: refresh it, then retry.
- ``reject``: the server refused this write for good (other 4xx): roll it back, tell the app.
"""

from __future__ import annotations

from typing import Any, Literal

Action = Literal["retry", "reauth", "reject"]

RETRY_CODES = {"rate_limited", "unavailable"}


class ClientError(Exception):
    """Base of every error ``tether.client`` raises."""


class ServerError(ClientError):
    """The server answered with an error (WS ``ERROR`` frame or REST ``{"error": …}``)."""

    def __init__(self, code: str, message: str, status: int | None = None, data: dict[str, Any] | None = None) -> None:
        if message.startswith(code + ": "):  # a WebSocket close reason already names its code
            message = message[len(code) + 2:]
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.status = code, message, status
        self.data = data or {}

    @property
    def action(self) -> Action:
        return classify(self.code, self.status)


class Disconnected(ClientError):
    """The link dropped (or was not up) before an answer came: always retryable."""

    action: Action = "retry"


class Failed(ClientError):
    """The client gave up: attempts exhausted, or the token was refused and could not be refreshed."""


class DisconnectedByServer(Failed):
    """An operator disconnected this user (``DISCONNECT {reason, reconnect: false}``, close 4100):
    the client stays ``failed`` rather than reconnecting; ``reason`` is what the operator said."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"disconnected by the server: {reason}")
        self.reason = reason


class Conflict(ClientError):
    """``update_with_retry`` still hit version conflicts after its last retry."""


class LockTimeout(ClientError):
    """``lock()`` could not acquire the lock within its timeout.

    ``holder`` (a user id) and ``expires_at`` (RFC 3339) say who held it at the last try and until
    when, as the server's refusal did; either is None when the server did not say.
    """

    def __init__(self, key: str, holder: str | None = None, expires_at: str | None = None) -> None:
        who = f"held by {holder}" if holder else "held by someone else"
        until = f" until {expires_at}" if expires_at else ""
        super().__init__(f"lock {key!r} is {who}{until}")
        self.key, self.holder, self.expires_at = key, holder, expires_at


def classify(code: str | None, status: int | None = None) -> Action:
    if code == "unauthorized" or status == 401:
        return "reauth"
    if code in RETRY_CODES or (status is not None and (status >= 500 or status in (408, 429))):
        return "retry"
    return "reject"
