"""Test plumbing: a real `tether serve` process on a free port, and a small WebSocket client."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import quote

import httpx
import websockets

from tether.wire.jsonutil import dumps, loads

API_KEY = "test-api-key"

# TETHER_TEST_BACKEND=scaled runs every ServerProcess on the machine's PostgreSQL and Redis
# (tests/services.py) instead of SQLite + in-process: the same suites against the scaled-out
# engines. Each data dir gets its own schema and key prefix, so a restart (same data dir) finds
# its data again and two servers on one data dir are two nodes of one cluster.
SCALED = os.environ.get("TETHER_TEST_BACKEND", "embedded") == "scaled"
SCALED_RUN = f"scaled_{os.getpid()}_{uuid.uuid4().hex[:6]}"  # one per test process, for cleanup


def scaled_env(data_dir: Path) -> dict[str, str]:
    from tests.services import need_postgres, need_redis, with_query

    tag = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]
    return {
        "TETHER_DATABASE_URL": with_query(need_postgres(), schema=f"{SCALED_RUN}_{tag}"),
        "TETHER_REDIS_URL": need_redis(),
        "TETHER_REDIS_PREFIX": f"{SCALED_RUN}:{tag}:",
    }


async def drop_scaled_data() -> None:
    """Drop the schemas and Redis keys this test process's servers created."""
    import asyncpg
    import redis.asyncio

    from tests.services import POSTGRES_URL, REDIS_URL

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        for row in await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", SCALED_RUN + "%"):
            await conn.execute(f'DROP SCHEMA IF EXISTS "{row["nspname"]}" CASCADE')
    finally:
        await conn.close()
    client = redis.asyncio.from_url(REDIS_URL)
    try:
        keys = [k async for k in client.scan_iter(SCALED_RUN + ":*", count=1000)]
        for i in range(0, len(keys), 1000):
            await client.delete(*keys[i:i + 1000])
    finally:
        await client.aclose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """`python -m tether serve` in a subprocess: killed, restarted, inspected like the real thing."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        scaled = scaled_env(data_dir) if SCALED and not {"TETHER_DATABASE_URL", "TETHER_REDIS_URL"} & set(env or {}) else {}
        self.env = {**os.environ, "TETHER_API_KEY": API_KEY, "TETHER_LOG_LEVEL": "warning", **scaled, **(env or {})}
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / f"server-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ws_url(self, token: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ws?token={quote(token)}"

    def start(self, timeout: float = 20) -> "ServerProcess":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "tether", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir), *self.args]
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server did not become healthy: {self.log.read_text()[-3000:]}")

    def kill(self) -> None:
        """SIGKILL: no goodbye, no flush."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def restart(self) -> "ServerProcess":
        self.stop()
        return self.start()

    def http(self, token: str | None = None, *, api_key: bool = False) -> httpx.AsyncClient:
        headers = {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if api_key:
            headers["X-API-Key"] = API_KEY
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=10)


class RequestFailed(Exception):
    def __init__(self, data: dict[str, Any]) -> None:
        super().__init__(f"{data.get('code')}: {data.get('message')}")
        self.code = data.get("code")
        self.data = data


class WsClient:
    """Reads every frame in the background; replies go to their request, the rest to `events`."""

    _ids = itertools.count(1)

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._reader = asyncio.create_task(self._read())
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.connected: dict[str, Any] | None = None

    @classmethod
    async def connect(cls, server: ServerProcess, token: str, *, answer_pings: bool = True) -> "WsClient":
        ws = await websockets.connect(server.ws_url(token), max_size=None)
        client = cls(ws)
        client.answer_pings = answer_pings
        first = await client.next(timeout=5)
        assert first["type"] == "CONNECTED", first
        client.connected = first["data"]
        return client

    answer_pings = True

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                frame = loads(raw)
                fid = frame.get("id")
                if fid is not None and fid in self._replies:
                    self._replies.pop(fid).set_result(frame)
                    continue
                if frame.get("type") == "PING" and self.answer_pings:
                    await self.ws.send(dumps({"type": "PONG", "data": frame["data"]}))
                    continue
                await self.frames.put(frame)
        except websockets.ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.close_reason = self.ws.close_reason
            for fut in self._replies.values():
                if not fut.done():
                    fut.set_exception(ConnectionError(f"closed {self.close_code} {self.close_reason}"))
            await self.frames.put({"type": "__CLOSED__", "data": {"code": self.close_code, "reason": self.close_reason}})

    async def send_raw(self, raw: str | bytes) -> None:
        await self.ws.send(raw)

    async def send(self, type: str, data: dict[str, Any] | None = None) -> None:
        await self.ws.send(dumps({"type": type, "data": data or {}}))

    async def frame(self, type: str, data: dict[str, Any] | None = None, timeout: float = 10) -> dict[str, Any]:
        """Send a request with an id; return the whole reply frame (ACK or ERROR)."""
        rid = f"r{next(self._ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[rid] = fut
        await self.ws.send(dumps({"type": type, "data": data or {}, "id": rid}))
        return await asyncio.wait_for(fut, timeout)

    async def burst(self, requests: list[tuple[str, dict[str, Any]]], timeout: float = 10
                    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Send requests back to back without waiting; their reply frames in request order,
        and in the order they arrived."""
        arrived: list[dict[str, Any]] = []
        futures = []
        for type, data in requests:
            rid = f"r{next(self._ids)}"
            fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            fut.add_done_callback(lambda f: arrived.append(f.result()) if not f.exception() else None)
            self._replies[rid] = fut
            futures.append(fut)
            await self.ws.send(dumps({"type": type, "data": data, "id": rid}))
        return await asyncio.wait_for(asyncio.gather(*futures), timeout), arrived

    async def request(self, type: str, data: dict[str, Any] | None = None, timeout: float = 10) -> Any:
        reply = await self.frame(type, data, timeout)
        if reply["type"] == "ERROR":
            raise RequestFailed(reply["data"])
        assert reply["type"] == "ACK", reply
        return reply["data"]

    async def next(self, type: str | None = None, *, channel: str | None = None, timeout: float = 10) -> dict[str, Any]:
        """The next frame (of `type` on `channel`), skipping others."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            frame = await asyncio.wait_for(self.frames.get(), max(remaining, 0.001))
            if frame["type"] == "__CLOSED__" and type != "__CLOSED__":
                raise ConnectionError(f"closed while waiting for {type}: {frame['data']}")
            if (type is None or frame["type"] == type) and (channel is None or frame.get("channel") == channel):
                return frame

    async def nothing(self, type: str | None = None, *, channel: str | None = None, wait: float = 0.3) -> None:
        """Assert no matching frame arrives within `wait` seconds."""
        try:
            frame = await self.next(type, channel=channel, timeout=wait)
        except asyncio.TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def closed(self, timeout: float = 10) -> tuple[int | None, str | None]:
        await self.next("__CLOSED__", timeout=timeout)
        return self.close_code, self.close_reason

    async def close(self) -> None:
        await self.ws.close()
        self._reader.cancel()


async def eventually(predicate: Any, timeout: float = 15) -> None:
    """Poll until ``predicate()`` holds (a loaded machine may be slow; never assert on time)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


FAST_BACKOFF = dict(base=0.05, cap=0.2, max_attempts=None)


def fast_client(srv: ServerProcess, token: str = "alice:phone", store: str = ":memory:", **kw: Any) -> Any:
    """A tether.client.Client that reconnects quickly, for tests."""
    from tether.client import Backoff, Client

    return Client(srv.url, token, store=store, backoff=Backoff(**FAST_BACKOFF), **kw)


@contextlib.asynccontextmanager
async def started_node(data_dir: Path, *features: Any, **settings: Any) -> AsyncIterator[Any]:
    """A started in-process Node (sans-I/O tests: no server, no sockets), stopped afterwards."""
    from tether.core.config import Settings
    from tether.core.node import Node

    node = Node(Settings(data_dir=data_dir, ping_interval=1000, **settings), features=list(features))
    await node.start()
    try:
        yield node
    finally:
        await node.stop()

