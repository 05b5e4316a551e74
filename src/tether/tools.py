"""What `tether tail` and `tether publish` do, kept out of cli.py so they can be tested."""

from __future__ import annotations

import sys
from urllib.parse import quote

import httpx
import websockets

from tether.wire.jsonutil import dumps, loads


def ws_url(url: str, token: str) -> str:
    base = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    return f"{base}/ws?token={quote(token)}"


async def tail(url: str, token: str, channel: str, since: int | None, epoch: str | None, count: int) -> int:
    try:
        async with websockets.connect(ws_url(url, token), max_size=None) as ws:
            request: dict[str, object] = {"channel": channel}
            if since is not None:
                request["since"] = {"offset": since, "epoch": epoch or ""}
            await ws.send(dumps({"type": "SUBSCRIBE", "id": "tail", "data": request}))
            seen = 0
            async for raw in ws:
                frame = loads(raw)
                if frame.get("type") == "PING":
                    await ws.send(dumps({"type": "PONG", "data": frame.get("data", {})}))
                    continue
                if frame.get("id") == "tail":
                    if frame["type"] == "ERROR":
                        print(f"error: {frame['data']['message']}", file=sys.stderr)
                        return 1
                    for event in frame["data"]["publications"]:
                        print(dumps(event), flush=True)
                        seen += 1
                    continue
                if frame.get("channel") == channel:
                    print(dumps(frame), flush=True)
                    seen += 1
                if count and seen >= count:
                    return 0
    except (OSError, websockets.WebSocketException) as exc:
        print(f"error: cannot reach {url} ({exc}); is `tether serve` running?", file=sys.stderr)
        return 1
    return 0


def publish(url: str, token: str, api_key: str | None, channel: str, data: str, etype: str) -> int:
    try:
        payload = loads(data)
    except ValueError:
        print(f"error: DATA must be JSON, e.g. '{{\"text\": \"hi\"}}', not {data!r}", file=sys.stderr)
        return 2
    headers = {"X-API-Key": api_key} if api_key else {"Authorization": f"Bearer {token}"}
    try:
        r = httpx.post(f"{url.rstrip('/')}/api/channels/{channel}/publish", json={"type": etype, "data": payload}, headers=headers)
    except httpx.HTTPError as exc:
        print(f"error: cannot reach {url} ({exc}); is `tether serve` running?", file=sys.stderr)
        return 1
    if r.status_code >= 400:
        err = r.json().get("error", {})
        print(f"error: {err.get('code')}: {err.get('message')}", file=sys.stderr)
        return 1
    print(dumps(r.json()))
    return 0


