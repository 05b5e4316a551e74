"""A cluster of real `tether serve` nodes on the machine's PostgreSQL and Redis.

Each cluster gets its own PostgreSQL schema and Redis key prefix, so tests (and
xdist workers) never see each other's data.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import redis.asyncio

from tests.helpers import ServerProcess
from tests.services import need_postgres, need_redis, unique, with_query


class Cluster:
    def __init__(self, root: Path, size: int = 3, *args: str, redis_url: str | None = None) -> None:
        self.pg = need_postgres()
        self.redis_url = redis_url or need_redis()
        self.schema = unique("cluster_")
        self.prefix = unique("cluster:") + ":"
        env = {
            "TETHER_DATABASE_URL": with_query(self.pg, schema=self.schema),
            "TETHER_REDIS_URL": self.redis_url,
            "TETHER_REDIS_PREFIX": self.prefix,
        }
        self.nodes = [ServerProcess(root / f"node{i}", *args, env=env) for i in range(size)]

    def start(self) -> "Cluster":
        """Start every node at once (they migrate the same schema concurrently)."""
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: n.start(), self.nodes))
        return self

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()

    async def cleanup(self) -> None:
        self.kill()
        conn = await asyncpg.connect(self.pg)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        finally:
            await conn.close()
        try:
            client = redis.asyncio.from_url(self.redis_url)
            keys = [k async for k in client.scan_iter(self.prefix + "*")]
            if keys:
                await client.delete(*keys)
            await client.aclose()
        except (OSError, redis.RedisError):
            pass


async def wait_until(predicate, timeout: float = 10, every: float = 0.05) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(every)
