"""/healthz and /api/admin/nodes answer, not hang, when PostgreSQL or Redis stops
answering (a stalled link: nothing is closed, bytes just stop), and name what is wrong."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import httpx

from tests.faultproxy import FaultProxy
from tests.helpers import API_KEY
from tests.services import need_postgres, need_redis, unique, with_query
from tether.core.config import Settings
from tether.server.app import create_app

#: A probe that has not answered by then hangs (the defect: it never answered). Far above the
#: checks' own 2 s bound, so the machine's speed never decides the outcome.
HANG = 20.0


def through(proxy: FaultProxy, url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@contextlib.asynccontextmanager
async def app_client(data_dir: Path, proxy: FaultProxy | None = None,
                     **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process app, its node started; the proxy (if any) resumes before the node stops."""
    app = create_app(Settings(data_dir=data_dir, ping_interval=1000, api_key=API_KEY, **settings))
    node = app.state.node
    await node.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://node",
                                     headers={"X-API-Key": API_KEY}, timeout=30) as http:
            yield http
    finally:
        if proxy is not None:
            proxy.resume_all()
        await asyncio.wait_for(node.stop(), 30)


async def probe(http: httpx.AsyncClient, path: str) -> httpx.Response:
    """The answer, which must come while the link is still stalled."""
    return await asyncio.wait_for(http.get(path), HANG)


async def test_a_stalled_postgres_is_reported_unreachable_while_stalled(tmp_path: Path) -> None:
    pg = need_postgres()
    proxy = await FaultProxy(urlsplit(pg).port or 5432).start()
    try:
        async with app_client(tmp_path, proxy, database_url=with_query(through(proxy, pg), schema=unique("health"))) as http:
            assert (await http.get("/healthz")).status_code == 200
            proxy.stall_all()
            for path in ("/healthz", "/readyz"):
                response = await probe(http, path)
                assert response.status_code == 503, response.text
                body = response.json()
                assert body["error"]["checks"]["database"] == "unreachable"
                assert "database" in body["error"]["message"]
            response = await probe(http, "/api/admin/nodes")
            assert response.status_code == 200 and response.json()["nodes"][0]["healthy"] is False
            # a second probe while the first's connections are still stuck: answered too
            response = await probe(http, "/healthz")
            assert response.status_code == 503
            proxy.resume_all()
            deadline = time.monotonic() + 20
            while (await http.get("/healthz")).status_code != 200:
                assert time.monotonic() < deadline, "healthy again once PostgreSQL answers"
                await asyncio.sleep(0.2)
    finally:
        proxy.resume_all()
        await proxy.close()


async def test_a_stalled_redis_is_reported_unreachable_while_stalled(tmp_path: Path) -> None:
    redis = need_redis()
    proxy = await FaultProxy(urlsplit(redis).port or 6379).start()
    try:
        async with app_client(tmp_path, proxy, redis_url=through(proxy, redis), redis_prefix=unique("health") + ":") as http:
            assert (await http.get("/healthz")).status_code == 200
            proxy.stall_all()
            response = await probe(http, "/healthz")
            assert response.status_code == 503 and response.json()["error"]["checks"]["redis"] == "unreachable"
            assert "redis" in response.json()["error"]["message"]
            proxy.resume_all()
    finally:
        proxy.resume_all()
        await proxy.close()


async def test_a_busy_sqlite_is_reported_while_busy(tmp_path: Path) -> None:
    """The embedded database serialises statements: a check queued behind a stuck one gives up."""
    async with app_client(tmp_path) as http:
        assert (await http.get("/healthz")).status_code == 200
        node = http._transport.app.state.node  # type: ignore[attr-defined]
        release, held = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with node.db.transaction() as tx:
                await tx.execute("SELECT 1")
                held.set()
                await release.wait()

        holder = asyncio.create_task(hold())
        await held.wait()
        try:
            response = await probe(http, "/healthz")
            assert response.status_code == 503 and response.json()["error"]["checks"]["database"] == "unreachable"
        finally:
            release.set()
            await holder
        assert (await http.get("/healthz")).status_code == 200
