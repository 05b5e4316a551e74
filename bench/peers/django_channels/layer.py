"""``channels_redis``' ``RedisChannelLayer`` on a blocking connection pool.

channels_redis builds a plain ``redis.asyncio.ConnectionPool``, which redis-py (6 and
later) caps at 100 connections and then fails with ``MaxConnectionsError``: with a
``group_send`` in flight on each of hundreds of consumers, the consumers crashed and their
WebSockets closed. A blocking pool makes the 101st command wait for a free connection, the
usual fix; 256 connections are plenty for one Redis (it runs one command at a time).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from channels_redis.core import RedisChannelLayer

MAX_CONNECTIONS = 256


class BlockingPoolLayer(RedisChannelLayer):
    def create_pool(self, index: int) -> Any:
        host = self.hosts[index]
        return aioredis.BlockingConnectionPool.from_url(host["address"], max_connections=MAX_CONNECTIONS, timeout=None)
