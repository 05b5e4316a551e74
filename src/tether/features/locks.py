"""Edit locks with fencing tokens (SPEC §4.2), over REST and WebSocket requests.

A lock is (key -> token, holder, fencing token, expiry). The token is the
capability: only it extends or releases. ``fencing_token`` strictly increases
per key across every grant, restart and node, so a guarded resource can refuse
a holder that paused past its TTL. Two stores sit behind :class:`LockStore`:

* :class:`SqlLockStore` (embedded default): one row per key in ``node.db``;
  the fencing counter lives on the row and is never reset, so it survives
  restarts (SQLite WAL keeps a committed grant across ``kill -9``).
* :class:`RedisLockStore` (``TETHER_REDIS_URL``): atomic Lua scripts that
  compare the token; expiry is Redis' own PEXPIRE. Redis' INCR counter is
  lost if Redis loses its data, so every grant is also recorded as a
  high-water mark in SQL *before* it is answered, and a missing Redis counter
  is re-seeded from that mark (see docs/presence-locks.md).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from tether.core.auth import Identity
from tether.core.connection import Connection, Op
from tether.core.node import Feature
from tether.core.rest import Caller
from tether.storage.database import Database
from tether.wire import protocol
from tether.wire.errors import TetherError

log = logging.getLogger("tether.locks")

DEFAULT_TTL = 30
MAX_TTL = 3600


@dataclass(frozen=True)
class Lock:
    token: str
    holder: str
    fencing_token: int
    expires_at: float  # unix seconds


class LockStore(ABC):
    @abstractmethod
    async def acquire(self, key: str, holder: str, ttl: float) -> Lock | None:
        """Grant the lock unless a live one exists; a grant gets the next fencing token."""

    @abstractmethod
    async def extend(self, key: str, token: str, ttl: float) -> Lock | None:
        """Push the expiry to now + ttl if ``token`` is the live lock's token."""

    @abstractmethod
    async def release(self, key: str, token: str) -> bool: ...

    @abstractmethod
    async def status(self, key: str) -> Lock | None: ...

    @abstractmethod
    async def held(self) -> int:
        """How many locks are live (for the gauge)."""

    async def start(self) -> None: ...


# -- embedded: SQL ------------------------------------------------------------

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS tether_locks (
        lock_key TEXT PRIMARY KEY,
        fencing BIGINT NOT NULL,
        token TEXT,
        holder TEXT,
        expires_at DOUBLE PRECISION NOT NULL
    )""",
    # High-water mark of fencing tokens granted through Redis (seeds a lost Redis counter).
    """CREATE TABLE IF NOT EXISTS tether_lock_fencing (
        lock_key TEXT PRIMARY KEY,
        fencing BIGINT NOT NULL
    )""",
]


class SqlLockStore(LockStore):
    """Each statement is a single atomic conditional write, so no transaction is needed."""

    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self) -> None:
        await self.db.migrate(SCHEMA)

    async def acquire(self, key: str, holder: str, ttl: float) -> Lock | None:
        now, token = time.time(), new_token()
        rows = await self.db.fetchall(
            "INSERT INTO tether_locks (lock_key, fencing, token, holder, expires_at) VALUES (?, 1, ?, ?, ?) "
            "ON CONFLICT (lock_key) DO UPDATE SET fencing = tether_locks.fencing + 1, token = excluded.token, "
            "holder = excluded.holder, expires_at = excluded.expires_at "
            "WHERE tether_locks.token IS NULL OR tether_locks.expires_at <= ? RETURNING fencing",
            key, token, holder, now + ttl, now,
        )  # fetchall, not fetchone: SQLite commits a RETURNING statement only once it is stepped to the end
        return Lock(token, holder, int(rows[0]["fencing"]), now + ttl) if rows else None

    async def extend(self, key: str, token: str, ttl: float) -> Lock | None:
        now = time.time()
        rows = await self.db.fetchall(
            "UPDATE tether_locks SET expires_at = ? WHERE lock_key = ? AND token = ? AND expires_at > ? "
            "RETURNING fencing, holder",
            now + ttl, key, token, now,
        )
        return Lock(token, rows[0]["holder"], int(rows[0]["fencing"]), now + ttl) if rows else None

    async def release(self, key: str, token: str) -> bool:
        changed = await self.db.execute(
            "UPDATE tether_locks SET token = NULL, holder = NULL, expires_at = 0 "
            "WHERE lock_key = ? AND token = ? AND expires_at > ?",
            key, token, time.time(),
        )
        return changed > 0

    async def status(self, key: str) -> Lock | None:
        row = await self.db.fetchone(
            "SELECT token, holder, fencing, expires_at FROM tether_locks "
            "WHERE lock_key = ? AND token IS NOT NULL AND expires_at > ?",
            key, time.time(),
        )
        return Lock(row["token"], row["holder"], int(row["fencing"]), float(row["expires_at"])) if row else None

    async def held(self) -> int:
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM tether_locks WHERE token IS NOT NULL AND expires_at > ?", time.time())
        return int(row["n"]) if row else 0


# -- Redis ------------------------------------------------------------------------

# KEYS: lock hash, fencing counter, held zset. ARGV: token, holder, ttl ms, expires_at, key, floor ("" = none).
# -> {0} held by someone, {-1} the counter is gone and needs a floor, {1, fencing}.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return {0} end
local counter = redis.call('GET', KEYS[2])
if ARGV[6] == '' then
  if not counter then return {-1} end
elseif (not counter) or tonumber(counter) < tonumber(ARGV[6]) then
  redis.call('SET', KEYS[2], ARGV[6])
end
local f = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'token', ARGV[1], 'holder', ARGV[2], 'fencing', f, 'expires_at', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return {1, f}
"""
# KEYS: lock hash, held zset. ARGV: token, ttl ms, expires_at, key. -> {} or {fencing, holder}
_EXTEND = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return {} end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
return {redis.call('HGET', KEYS[1], 'fencing'), redis.call('HGET', KEYS[1], 'holder')}
"""
# KEYS: lock hash, held zset. ARGV: token, key. -> 1 released, 0 not the holder
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
return 1
"""


class RedisLockStore(LockStore):
    def __init__(self, redis: Any, db: Database, prefix: str) -> None:
        self.redis, self.db, self.prefix = redis, db, prefix
        self._acquire = redis.register_script(_ACQUIRE)
        self._extend = redis.register_script(_EXTEND)
        self._release = redis.register_script(_RELEASE)
        self._held = prefix + "locks:held"

    def _k(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

    async def start(self) -> None:
        await self.db.migrate(SCHEMA)

    async def acquire(self, key: str, holder: str, ttl: float) -> Lock | None:
        token, expires = new_token(), time.time() + ttl
        keys = [self._k(key), f"{self.prefix}lockfence:{key}", self._held]
        args = [token, holder, int(ttl * 1000), repr(expires), key, ""]
        result = await self._acquire(keys=keys, args=args)
        if int(result[0]) == -1:  # Redis lost the counter (restart without persistence): re-seed it
            args[5] = str(await self._floor(key))
            result = await self._acquire(keys=keys, args=args)
        if int(result[0]) != 1:
            return None
        fencing = int(result[1])
        # Record the grant durably before anyone learns of it, so a re-seeded counter starts above it.
        await self.db.execute(
            "INSERT INTO tether_lock_fencing (lock_key, fencing) VALUES (?, ?) ON CONFLICT (lock_key) DO UPDATE "
            "SET fencing = CASE WHEN tether_lock_fencing.fencing < excluded.fencing "
            "THEN excluded.fencing ELSE tether_lock_fencing.fencing END",
            key, fencing,
        )
        return Lock(token, holder, fencing, expires)

    async def _floor(self, key: str) -> int:
        row = await self.db.fetchone("SELECT fencing FROM tether_lock_fencing WHERE lock_key = ?", key)
        return int(row["fencing"]) if row else 0

    async def extend(self, key: str, token: str, ttl: float) -> Lock | None:
        expires = time.time() + ttl
        got = await self._extend(keys=[self._k(key), self._held], args=[token, int(ttl * 1000), repr(expires), key])
        if not got:
            return None
        return Lock(token, _text(got[1]), int(got[0]), expires)

    async def release(self, key: str, token: str) -> bool:
        return int(await self._release(keys=[self._k(key), self._held], args=[token, key])) == 1

    async def status(self, key: str) -> Lock | None:
        h = {_text(k): _text(v) for k, v in (await self.redis.hgetall(self._k(key))).items()}
        if "token" not in h:
            return None
        return Lock(h["token"], h["holder"], int(h["fencing"]), float(h["expires_at"]))

    async def held(self) -> int:
        await self.redis.zremrangebyscore(self._held, "-inf", time.time())
        return int(await self.redis.zcard(self._held))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# -- domain: what REST and WebSocket both call -------------------------------------


def new_token() -> str:
    return secrets.token_urlsafe(24)


def iso(ts: float) -> str:
    """Whole seconds, rounded down (never later than the real expiry), parseable by Swift's .iso8601."""
    return datetime.fromtimestamp(int(ts), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_key(key: Any) -> str:
    return protocol.check_channel(key, "key")


def check_ttl(value: Any) -> int:
    if value is None:
        return DEFAULT_TTL
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_TTL:
        raise TetherError("bad_request", f"ttl_seconds must be an integer from 1 to {MAX_TTL}", status=422,
                          field="ttl_seconds")
    return value


def check_token(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TetherError("bad_request", "token must be the lock's token string", status=422, field="token")
    return value


def granted(lock: Lock) -> dict[str, Any]:
    return {"acquired": True, "token": lock.token, "fencing_token": lock.fencing_token,
            "expires_at": iso(lock.expires_at)}


REFUSED: dict[str, Any] = {"acquired": False, "token": None}


class LockRequest(BaseModel):
    ttl_seconds: int = Field(DEFAULT_TTL, ge=1, le=MAX_TTL, strict=True, description="seconds until the lock expires")


class ExtendRequest(BaseModel):
    token: str = Field(..., min_length=1)
    ttl_seconds: int = Field(DEFAULT_TTL, ge=1, le=MAX_TTL, strict=True)


class UnlockRequest(BaseModel):
    token: str = Field(..., min_length=1)


class LocksFeature(Feature):
    name = "locks"
    store: LockStore
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        node = self.node
        self.store = (RedisLockStore(node.redis, node.db, node.settings.redis_prefix)
                      if node.redis is not None else SqlLockStore(node.db))
        await self.store.start()
        self._task = asyncio.create_task(self._gauge_loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def _gauge_loop(self) -> None:
        """Locks also end by expiring, with no request to notice it: poll the count."""
        while True:
            try:
                self.node.metrics.locks_held.set(await self.store.held())
            except Exception:
                log.warning("could not count held locks", exc_info=True)
            await asyncio.sleep(1.0)

    # The domain operations (REST and WebSocket adapters below call exactly these).

    async def acquire(self, who: Identity, key: str, ttl: int) -> dict[str, Any]:
        lock = await self.store.acquire(check_key(key), who.user_id, ttl)
        return granted(lock) if lock else dict(REFUSED)

    async def extend(self, key: str, token: str, ttl: int) -> dict[str, Any]:
        lock = await self.store.extend(check_key(key), token, ttl)
        return granted(lock) if lock else dict(REFUSED)

    async def release(self, key: str, token: str) -> dict[str, Any]:
        released = await self.store.release(check_key(key), token)
        return {"released": released}

    async def status(self, key: str) -> dict[str, Any]:
        lock = await self.store.status(check_key(key))
        if lock is None:
            return {"locked": False, "holder": None, "expires_at": None, "fencing_token": None}
        return {"locked": True, "holder": lock.holder, "expires_at": iso(lock.expires_at),
                "fencing_token": lock.fencing_token}

    # -- WebSocket ----------------------------------------------------------------

    def ops(self) -> dict[str, Op]:
        return {"LOCK_ACQUIRE": self.ws_acquire, "LOCK_EXTEND": self.ws_extend,
                "LOCK_RELEASE": self.ws_release, "LOCK_STATUS": self.ws_status}

    def _mine(self, conn: Connection) -> dict[str, str]:
        """Locks this connection asked to release when it drops: key -> token."""
        return conn.state.setdefault("locks", {})  # type: ignore[no-any-return]

    async def ws_acquire(self, conn: Connection, data: dict[str, Any]) -> Any:
        release = data.get("release_on_disconnect", False)
        if not isinstance(release, bool):
            raise TetherError("bad_request", "release_on_disconnect must be true or false")
        key = check_key(data.get("key"))
        result = await self.acquire(conn.identity, key, check_ttl(data.get("ttl_seconds")))
        if result["acquired"] and release:
            self._mine(conn)[key] = result["token"]
        return result

    async def ws_extend(self, conn: Connection, data: dict[str, Any]) -> Any:
        key, token = check_key(data.get("key")), check_token(data.get("token"))
        result = await self.extend(key, token, check_ttl(data.get("ttl_seconds")))
        if not result["acquired"] and self._mine(conn).get(key) == token:
            del self._mine(conn)[key]
        return result

    async def ws_release(self, conn: Connection, data: dict[str, Any]) -> Any:
        key, token = check_key(data.get("key")), check_token(data.get("token"))
        if self._mine(conn).get(key) == token:
            del self._mine(conn)[key]
        return await self.release(key, token)

    async def ws_status(self, conn: Connection, data: dict[str, Any]) -> Any:
        return await self.status(data.get("key"))  # type: ignore[arg-type]

    async def disconnected(self, conn: Connection) -> None:
        for key, token in list(conn.state.get("locks", {}).items()):
            await self.release(key, token)

    # -- REST (the seed's paths and shapes) ------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(tags=["locks"])

        @router.post("/locks/{key}")
        async def acquire(key: str, who: Caller, body: LockRequest | None = Body(None)) -> dict[str, Any]:
            """Acquire: `{"acquired": true, "token", "fencing_token", "expires_at"}` or `{"acquired": false, "token": null}`."""
            return await self.acquire(who, key, body.ttl_seconds if body else DEFAULT_TTL)

        @router.get("/locks/{key}")
        async def status(key: str, who: Caller) -> dict[str, Any]:
            """`{"locked", "holder", "expires_at", "fencing_token"}`."""
            return await self.status(key)

        @router.post("/locks/{key}/extend")
        async def extend(key: str, body: ExtendRequest, who: Caller) -> dict[str, Any]:
            """Only the current token extends; `{"acquired": false, "token": null}` otherwise."""
            return await self.extend(key, body.token, body.ttl_seconds)

        @router.delete("/locks/{key}")
        async def release(key: str, body: UnlockRequest, who: Caller) -> dict[str, Any]:
            """Body `{"token"}` -> `{"released": bool}`; only the current token releases."""
            return await self.release(key, body.token)

        return router

