"""Idempotency records: a repeated write with the same key gets the first answer again.

Kept in the durable database for ``idempotency_ttl`` (24 h by default), scoped
by user, so a client outbox can retry after a lost ACK without applying twice.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

from tether.errors import bad_request
from tether.jsonutil import dumps, loads
from tether.storage.database import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS idempotency (
        scope TEXT NOT NULL,
        key TEXT NOT NULL,
        result TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (scope, key)
    )""",
]


class Idempotency:
    def __init__(self, db: Database, ttl: float) -> None:
        self.db = db
        self.ttl = ttl
        # (scope, key) -> [lock, callers holding or awaiting it]; dropped when the last leaves
        self._inflight: dict[tuple[str, str], list[Any]] = {}
        self._writes = 0

    async def start(self) -> None:
        await self.db.migrate(SCHEMA)

    async def run(self, scope: str, key: Any, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` once per (scope, key); later calls return the stored result.

        A refusal (an exception) is not stored: the retry runs again.
        """
        if not isinstance(key, str) or not 1 <= len(key) <= 200:
            raise bad_request("'idempotency_key' must be a string of 1-200 characters")
        ident = (scope, key)
        entry = self._inflight.get(ident)
        if entry is None:
            entry = self._inflight[ident] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                row = await self.db.fetchone(
                    "SELECT result FROM idempotency WHERE scope = ? AND key = ? AND created_at > ?",
                    scope, key, time.time() - self.ttl,
                )
                if row is not None:
                    return loads(row["result"])
                result = await fn()
                await self.db.execute(
                    """INSERT INTO idempotency (scope, key, result, created_at) VALUES (?, ?, ?, ?)
                       ON CONFLICT (scope, key) DO UPDATE SET result = excluded.result, created_at = excluded.created_at""",
                    scope, key, dumps(result), time.time(),
                )
                self._writes += 1
                if self._writes % 1000 == 0:
                    await self.db.execute("DELETE FROM idempotency WHERE created_at < ?", time.time() - self.ttl)
                return result
        finally:
            # Not "lock.locked()": a released lock reads unlocked before its next waiter wakes.
            entry[1] -= 1
            if entry[1] == 0:
                del self._inflight[ident]
