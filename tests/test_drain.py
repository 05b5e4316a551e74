"""SIGTERM drains a node: /healthz 503, new upgrades 503, clients closed with 1012, exit code 0
within --drain-timeout; the Python client comes back at once (jitter, not backoff)."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import httpx
import pytest
import websockets

from tests.helpers import ServerProcess, WsClient
from tests.services import unique
from tether.client import Backoff, Client


def terminate(srv: ServerProcess) -> None:
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)


async def exit_code(srv: ServerProcess, timeout: float = 30) -> int:
    assert srv.proc is not None
    return await asyncio.to_thread(srv.proc.wait, timeout)


@pytest.mark.parametrize("transport", ["native", "asgi"])
async def test_sigterm_drains_then_exits_0(server_factory: Any, transport: str) -> None:
    srv = server_factory("--ws-transport", transport, "--drain-delay", "2")
    channel = unique("public.drain")
    clients = [await WsClient.connect(srv, f"u{i}:d") for i in range(3)]
    for c in clients:
        await c.request("SUBSCRIBE", {"channel": channel})
    terminate(srv)
    async with httpx.AsyncClient(base_url=srv.url, timeout=5) as http:
        for _ in range(100):
            health = await http.get("/healthz")
            if health.status_code == 503:
                break
            await asyncio.sleep(0.02)
        assert health.status_code == 503, health.text
        assert health.json()["error"]["message"].startswith("draining") and health.json()["error"]["checks"]["draining"] == "yes"
        assert (await http.get("/readyz")).status_code == 503
        assert (await http.get("/livez")).status_code == 200
        # A new WebSocket is refused with 503 while the node drains (a balancer retries it elsewhere).
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(srv.ws_url("late:d"))
        assert refused.value.response.status_code == 503
        # REST still answers meanwhile (requests are finished, not cut).
        assert (await http.post(f"/api/channels/{channel}/publish", json={"data": {"n": 1}},
                                headers={"X-API-Key": "test-api-key"})).status_code == 200
    for c in clients:
        code, reason = await c.closed(timeout=15)
        assert code == 1012 and reason and reason.startswith("service restart"), (code, reason)
    assert await exit_code(srv) == 0
    assert "drained: 3 connections closed" in srv.log.read_text()


async def test_publishes_in_flight_at_sigterm_are_stored(server_factory: Any) -> None:
    srv = server_factory()
    channel = unique("public.flight")
    ws = await WsClient.connect(srv, "pub:d")
    # 150: under the connection's burst allowance (200), so none is refused for its rate
    burst = asyncio.ensure_future(ws.burst([("PUBLISH", {"channel": channel, "data": {"n": n}}) for n in range(150)],
                                           timeout=20))
    await asyncio.sleep(0.05)
    terminate(srv)
    acked: list[int] = []
    try:
        replies, _ = await burst
        acked = [r["data"]["offset"] for r in replies if r["type"] == "ACK"]
    except (ConnectionError, asyncio.TimeoutError):
        acked = []  # closed before every answer: check what was answered through the history below
    assert await exit_code(srv) == 0
    srv.start()  # same data dir: every acknowledged publish is in history, in order
    async with srv.http(api_key=True) as http:
        history = (await http.get(f"/api/admin/channels/{channel}/history", params={"since": 0, "limit": 1000})).json()
    stored = [p["data"]["n"] for p in history["publications"]]
    assert stored == list(range(len(stored))) and len(stored) >= len(acked)
    assert set(acked) <= {p["offset"] for p in history["publications"]}


async def test_a_client_that_ignores_the_close_does_not_hold_the_exit(server_factory: Any) -> None:
    srv = server_factory("--drain-timeout", "4")
    sock = socket.create_connection(("127.0.0.1", srv.port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws?token=mute:d HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    assert b" 101 " in sock.recv(4096).split(b"\r\n", 1)[0]
    terminate(srv)  # it never answers the close frame, and never closes
    assert await exit_code(srv, timeout=20) == 0
    sock.close()


async def test_the_python_client_reconnects_at_once_after_1012(server_factory: Any) -> None:
    a, b = server_factory(), server_factory()
    # Its backoff would wait 30 s; after 1012 it waits uniform(0, 2 s) instead.
    client = Client([a.url, b.url], "kai:phone", backoff=Backoff(base=30, cap=30, random=lambda: 0.99))
    await client.connect()
    assert client.url == a.url
    states: list[str] = []
    client.on_state(states.append)
    terminate(a)
    await client.wait_for("reconnecting", timeout=10)
    await client.wait_for("connected", timeout=20)
    assert client.url == b.url and states == ["reconnecting", "connected"]
    assert await exit_code(a) == 0
    await client.close()


def test_the_drain_settings_are_refused_out_of_range() -> None:
    for flag, value in (("--drain-timeout", "0"), ("--drain-delay", "-1")):
        out = subprocess.run([sys.executable, "-m", "tether", "serve", flag, value], capture_output=True, text=True,
                             env={**os.environ}, timeout=60)
        assert out.returncode == 2 and flag in out.stderr, out.stderr
