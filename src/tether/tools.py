"""What `tether tail` and `tether publish` do, kept out of cli.py so they can be tested."""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

import httpx
import websockets

from tether.wire.jsonutil import dumps, loads
from tether.wire.protocol import CLOSE_UNAUTHORIZED

GET_A_TOKEN = ("get one: a dev server (tether serve --auth dev) takes any 'user' or 'user:device'; "
               "a JWT server takes `tether token --user U` minted with its TETHER_JWT_SECRET")


def ws_url(url: str, token: str) -> str:
    base = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    return f"{base}/ws?token={quote(token)}"


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def refused(reason: str) -> int:
    say(f"error: the server refused the token ({reason}); {GET_A_TOKEN}")
    return 1


def no_token() -> int:
    say(f"error: no token: pass --token or set TETHER_TOKEN; {GET_A_TOKEN}")
    return 2


class _Tail:
    """Prints one channel's events, replayed then live, and notices what it missed."""

    def __init__(self, channel: str, count: int) -> None:
        self.channel, self.count = channel, count
        self.seen = 0
        self.last: int | None = None

    def event(self, event: dict[str, Any]) -> bool:
        """Print one event; True once --count events are out."""
        offset = event.get("offset")
        if isinstance(offset, int):
            if self.last is not None and offset > self.last + 1:
                say(f"gap: offsets {self.last + 1}..{offset - 1} of {self.channel} were missed")
            if self.last is not None and offset <= self.last:
                return False  # a duplicate (at-least-once delivery): already printed
            self.last = offset
        print(dumps(event), flush=True)
        self.seen += 1
        return bool(self.count) and self.seen >= self.count

    def subscribed(self, ack: dict[str, Any], since: int | None, epoch: str | None = None) -> bool:
        current = ack.get("epoch")
        say(f"subscribed to {self.channel}: epoch {current}, offset {ack.get('offset')}")
        self.last = since if since is not None else ack.get("offset")
        if since is not None and not ack.get("recovered"):
            if epoch is not None and epoch != current:
                say(f"not recovered: --epoch {epoch} does not match the channel's current epoch {current} "
                    f"(its history was reset, or the epoch is wrong); showing live events only")
            else:
                say(f"not recovered: the events after offset {since} of epoch {current} are no longer all in "
                    f"the channel's history; showing live events only")
            self.last = ack.get("offset")
        for event in ack.get("publications", []):
            if self.event(event):
                return True
        return False


async def tail(url: str, token: str, channel: str, since: int | None, epoch: str | None, count: int) -> int:
    if not token:
        return no_token()
    if since is not None and not epoch:
        say("error: --since needs --epoch (offsets count within one epoch); `tether tail` prints the "
            "channel's epoch when it subscribes")
        return 2
    printer = _Tail(channel, count)
    try:
        async with websockets.connect(ws_url(url, token), max_size=None) as ws:
            request: dict[str, object] = {"channel": channel}
            if since is not None:
                request["since"] = {"offset": since, "epoch": epoch}
            await ws.send(dumps({"type": "SUBSCRIBE", "id": "tail", "data": request}))
            async for raw in ws:
                frame = loads(raw)
                if frame.get("type") == "PING":
                    await ws.send(dumps({"type": "PONG", "data": frame.get("data", {})}))
                    continue
                if frame.get("id") == "tail":
                    if frame["type"] == "ERROR":
                        say(f"error: {frame['data']['code']}: {frame['data']['message']}")
                        return 1
                    if printer.subscribed(frame["data"], since, epoch):
                        return 0
                    continue
                if frame.get("channel") == channel and printer.event(frame):
                    return 0
    except websockets.ConnectionClosed as exc:
        received = exc.rcvd
        if received is not None and received.code == CLOSE_UNAUTHORIZED:
            return refused(received.reason.removeprefix("unauthorized: "))
        why = f"{received.code} {received.reason}".strip() if received is not None else "no close frame"
        say(f"error: the server at {url} closed the connection ({why})")
        return 1
    except websockets.InvalidStatus as exc:
        say(f"error: {url} refused the WebSocket upgrade (HTTP {exc.response.status_code}); is it a Tether server?")
        return 1
    except (OSError, websockets.WebSocketException) as exc:
        say(f"error: cannot reach {url} ({exc}); is `tether serve` running?")
        return 1
    say(f"error: the server at {url} closed the connection")
    return 1


def publish(url: str, token: str, api_key: str | None, channel: str, data: str, etype: str) -> int:
    try:
        payload = loads(data)
    except ValueError:
        say(f"error: DATA must be JSON, e.g. '{{\"text\": \"hi\"}}', not {data!r}")
        return 2
    if not api_key and not token:
        return no_token()
    headers = {"X-API-Key": api_key} if api_key else {"Authorization": f"Bearer {token}"}
    try:
        r = httpx.post(f"{url.rstrip('/')}/api/channels/{quote(channel, safe='')}/publish",
                       json={"type": etype, "data": payload}, headers=headers)
    except httpx.HTTPError as exc:
        say(f"error: cannot reach {url} ({exc}); is `tether serve` running?")
        return 1
    try:
        err = r.json().get("error", {}) if r.status_code >= 400 else None
    except ValueError:
        err = {"code": str(r.status_code), "message": r.text[:200]}
    if err is not None:
        if r.status_code == 401:
            if api_key:
                say(f"error: the server refused the API key ({err.get('message')})")
                return 1
            return refused(str(err.get("message")))
        say(f"error: {err.get('code')}: {err.get('message')}")
        return 1
    print(dumps(r.json()))
    return 0
