"""Edit locks with fencing tokens, over REST and WebSocket requests.

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

Every change is an event on ``locks.{key}``: ``LOCK_ACQUIRED``, ``LOCK_EXTENDED``,
``LOCK_RELEASED`` and ``LOCK_EXPIRED``. Expiry happens with no request to notice
it, so each node sweeps for grants that expired unannounced; the store hands each
such grant to exactly one caller (a conditional write decides), across nodes.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from tether.broker.redis import LOST_REPLY
from tether.core.auth import Identity
from tether.core.connection import Connection, Op
from tether.core.namespaces import Namespace
from tether.core.node import Feature
from tether.features.rest import Caller, JsonInt
from tether.storage.database import Database
from tether.wire import protocol
from tether.wire.errors import TetherError
from tether.wire.timestamps import iso

log = logging.getLogger("tether.locks")

DEFAULT_TTL = 30
MAX_TTL = 3600
PREFIX = "locks."
SWEEP_INTERVAL = 0.5  # seconds between expiry sweeps: LOCK_EXPIRED follows an expiry within about this


@dataclass(frozen=True)
class Lock:
    token: str
    holder: str
    fencing_token: int
    expires_at: float  # unix seconds
    key: str = ""


@dataclass(frozen=True)
class Grant:
    """What an acquire did: the grant (or None: refused), the expired grants of the key it
    claimed on the way (to announce), and on a refusal the live lock that refused it."""

    lock: Lock | None
    ended: list[Lock]
    holder: Lock | None = None


class LockStore(ABC):
    async def acquire(self, key: str, holder: str, ttl: float) -> Lock | None:
        """Grant the lock unless a live one exists; a grant gets the next fencing token."""
        return (await self.grant(key, holder, ttl)).lock

    @abstractmethod
    async def extend(self, key: str, token: str, ttl: float) -> Lock | None:
        """Push the expiry to now + ttl if ``token`` is the live lock's token."""

    async def release(self, key: str, token: str) -> bool:
        return await self.end(key, token) is not None

    @abstractmethod
    async def end(self, key: str, token: str) -> Lock | None:
        """Release the lock if ``token`` is the live lock's token; the released grant, or None."""

    @abstractmethod
    async def grant(self, key: str, holder: str, ttl: float) -> Grant:
        """Acquire, claiming on the way an expired grant of ``key`` not yet announced."""

    @abstractmethod
    async def expired(self, now: float, limit: int = 100) -> list[Lock]:
        """Claim grants that reached their expiry unannounced: each is returned once, across nodes."""

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
    "CREATE INDEX IF NOT EXISTS tether_locks_expiry ON tether_locks (expires_at)",
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

    async def _take(self, key: str, holder: str, ttl: float, now: float) -> Lock | None:
        """Grant a free key (no row, or a row without a token: released, or an expiry already claimed)."""
        token = new_token()
        rows = await self.db.fetchall(
            "INSERT INTO tether_locks (lock_key, fencing, token, holder, expires_at) VALUES (?, 1, ?, ?, ?) "
            "ON CONFLICT (lock_key) DO UPDATE SET fencing = tether_locks.fencing + 1, token = excluded.token, "
            "holder = excluded.holder, expires_at = excluded.expires_at "
            "WHERE tether_locks.token IS NULL RETURNING fencing",
            key, token, holder, now + ttl,
        )  # fetchall, not fetchone: SQLite commits a RETURNING statement only once it is stepped to the end
        return Lock(token, holder, int(rows[0]["fencing"]), now + ttl, key) if rows else None

    async def grant(self, key: str, holder: str, ttl: float) -> Grant:
        """One statement when the key is free; when it is not, one read says who holds it, or that
        its grant expired: then claim that expiry (to announce it) and take the key."""
        now, ended = time.time(), []
        for _ in range(3):  # a racing release or claim may free the key between the two statements
            lock = await self._take(key, holder, ttl, now)
            if lock is not None:
                return Grant(lock, ended)
            row = await self.db.fetchone(
                "SELECT token, holder, fencing, expires_at FROM tether_locks WHERE lock_key = ?", key)
            if row is None or row["token"] is None:
                continue
            live = Lock(row["token"], row["holder"], int(row["fencing"]), float(row["expires_at"]), key)
            if live.expires_at > now:
                return Grant(None, ended, live)
            if await self._claim(key, live.fencing_token):
                ended.append(Lock("", live.holder, live.fencing_token, live.expires_at, key))
        return Grant(None, ended)

    async def _claim(self, key: str, fencing: int) -> bool:
        """End an expired grant; the conditional write decides which caller (node) announces it."""
        return await self.db.execute("UPDATE tether_locks SET token = NULL WHERE lock_key = ? AND fencing = ? "
                                     "AND token IS NOT NULL", key, fencing) > 0

    async def expired(self, now: float, limit: int = 100) -> list[Lock]:
        rows = await self.db.fetchall(
            "SELECT lock_key, fencing, holder, expires_at FROM tether_locks WHERE token IS NOT NULL "
            f"AND expires_at <= ? LIMIT {int(limit)}", now)
        out = []
        for r in rows:
            if await self._claim(r["lock_key"], int(r["fencing"])):
                out.append(Lock("", r["holder"], int(r["fencing"]), float(r["expires_at"]), r["lock_key"]))
        return out

    async def extend(self, key: str, token: str, ttl: float) -> Lock | None:
        now = time.time()
        rows = await self.db.fetchall(
            "UPDATE tether_locks SET expires_at = ? WHERE lock_key = ? AND token = ? AND expires_at > ? "
            "RETURNING fencing, holder",
            now + ttl, key, token, now,
        )
        return Lock(token, rows[0]["holder"], int(rows[0]["fencing"]), now + ttl, key) if rows else None

    async def end(self, key: str, token: str) -> Lock | None:
        # Holder and expiry stay on the row (unused once the token is gone) for the event.
        rows = await self.db.fetchall(
            "UPDATE tether_locks SET token = NULL WHERE lock_key = ? AND token = ? AND expires_at > ? "
            "RETURNING fencing, holder, expires_at",
            key, token, time.time(),
        )
        return Lock(token, rows[0]["holder"], int(rows[0]["fencing"]), float(rows[0]["expires_at"]), key) if rows else None

    async def status(self, key: str) -> Lock | None:
        row = await self.db.fetchone(
            "SELECT token, holder, fencing, expires_at FROM tether_locks "
            "WHERE lock_key = ? AND token IS NOT NULL AND expires_at > ?",
            key, time.time(),
        )
        return Lock(row["token"], row["holder"], int(row["fencing"]), float(row["expires_at"]), key) if row else None

    async def held(self) -> int:
        row = await self.db.fetchone(
            "SELECT COUNT(*) AS n FROM tether_locks WHERE token IS NOT NULL AND expires_at > ?", time.time())
        return int(row["n"]) if row else 0


# -- Redis ------------------------------------------------------------------------

# Beside each lock hash (which Redis expires itself), the hash ``locks:info`` keeps key -> "fencing\nholder\nexpires_at"
# of every grant not yet known to have ended, so an expiry can still be announced after Redis dropped the lock.
# KEYS: lock hash, fencing counter, held zset, info hash. ARGV: token, holder, ttl ms, expires_at, key, floor ("" = none).
# -> {0, holder, expires_at} held, {-1} the counter is gone and needs a floor, {1, fencing, previous grant's
# info or ""} (a previous grant still in info expired unannounced: the caller announces it). Idempotent by
# token: a call repeated after its reply was lost gets the grant it made.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('HGET', KEYS[1], 'token') == ARGV[1] then  -- a repeat of a call that granted it
    return {1, tonumber(redis.call('HGET', KEYS[1], 'fencing')), ''}
  end
  return {0, redis.call('HGET', KEYS[1], 'holder'), redis.call('HGET', KEYS[1], 'expires_at'),
          redis.call('HGET', KEYS[1], 'fencing')}
end
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
local old = redis.call('HGET', KEYS[4], ARGV[5])
redis.call('HSET', KEYS[4], ARGV[5], f .. '\\n' .. ARGV[2] .. '\\n' .. ARGV[4])
return {1, f, old or ''}
"""
# KEYS: lock hash, held zset, info hash. ARGV: token, ttl ms, expires_at, key. -> {} or {fencing, holder}
_EXTEND = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return {} end
redis.call('HSET', KEYS[1], 'expires_at', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
local f, h = redis.call('HGET', KEYS[1], 'fencing'), redis.call('HGET', KEYS[1], 'holder')
redis.call('HSET', KEYS[3], ARGV[4], f .. '\\n' .. h .. '\\n' .. ARGV[3])
return {f, h}
"""
# KEYS: lock hash, held zset, info hash. ARGV: token, key. -> {} not the holder, or {fencing, holder, expires_at}
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return {} end
local got = redis.call('HMGET', KEYS[1], 'fencing', 'holder', 'expires_at')
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[3], ARGV[2])
return got
"""
# KEYS: held zset, info hash, lock hash. ARGV: now, key. -> the expired grant's info, or "" (not expired, or claimed)
_CLAIM = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[2])
if (not score) or tonumber(score) > tonumber(ARGV[1]) or redis.call('EXISTS', KEYS[3]) == 1 then return '' end
redis.call('ZREM', KEYS[1], ARGV[2])
local old = redis.call('HGET', KEYS[2], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
return old or ''
"""


class RedisLockStore(LockStore):
    def __init__(self, redis: Any, db: Database, prefix: str) -> None:
        self.redis, self.db, self.prefix = redis, db, prefix
        self._acquire = redis.register_script(_ACQUIRE)
        self._extend = redis.register_script(_EXTEND)
        self._release = redis.register_script(_RELEASE)
        self._claim = redis.register_script(_CLAIM)
        self._held = prefix + "locks:held"
        self._info = prefix + "locks:info"

    def _k(self, key: str) -> str:
        return f"{self.prefix}lock:{key}"

    async def start(self) -> None:
        await self.db.migrate(SCHEMA)

    async def _call(self, script: Any, keys: list[str], args: list[Any], *, repeatable: bool) -> Any:
        """One script call. The client never re-sends by itself (broker.redis.open_client): a
        lost reply is repeated here once when the script is idempotent, else "unavailable"."""
        for attempt in (1, 2):
            try:
                return await script(keys=keys, args=args)
            except LOST_REPLY as exc:
                if not repeatable or attempt == 2:
                    raise TetherError("unavailable", f"Redis did not answer ({type(exc).__name__}); "
                                      "whether the lock changed is unknown: retry") from exc

    async def grant(self, key: str, holder: str, ttl: float) -> Grant:
        token, expires = new_token(), time.time() + ttl
        keys = [self._k(key), f"{self.prefix}lockfence:{key}", self._held, self._info]
        args = [token, holder, int(ttl * 1000), repr(expires), key, ""]
        result = await self._call(self._acquire, keys, args, repeatable=True)
        if int(result[0]) == -1:  # Redis lost the counter (restart without persistence): re-seed it
            args[5] = str(await self._floor(key))
            result = await self._call(self._acquire, keys, args, repeatable=True)
        if int(result[0]) != 1:
            live = Lock("", _text(result[1]), int(result[3]), float(result[2]), key) if len(result) == 4 else None
            return Grant(None, [], live)
        fencing = int(result[1])
        ended = [_info(key, result[2])] if _text(result[2]) else []
        # Record the grant durably before anyone learns of it, so a re-seeded counter starts above it.
        await self.db.execute(
            "INSERT INTO tether_lock_fencing (lock_key, fencing) VALUES (?, ?) ON CONFLICT (lock_key) DO UPDATE "
            "SET fencing = CASE WHEN tether_lock_fencing.fencing < excluded.fencing "
            "THEN excluded.fencing ELSE tether_lock_fencing.fencing END",
            key, fencing,
        )
        return Grant(Lock(token, holder, fencing, expires, key), ended)

    async def expired(self, now: float, limit: int = 100) -> list[Lock]:
        out = []
        for raw in await self.redis.zrangebyscore(self._held, "-inf", now, start=0, num=limit):
            key = _text(raw)
            info = _text(await self._claim(keys=[self._held, self._info, self._k(key)], args=[repr(now), key]))
            if info:
                out.append(_info(key, info))
        return out

    async def _floor(self, key: str) -> int:
        row = await self.db.fetchone("SELECT fencing FROM tether_lock_fencing WHERE lock_key = ?", key)
        return int(row["fencing"]) if row else 0

    async def extend(self, key: str, token: str, ttl: float) -> Lock | None:
        expires = time.time() + ttl
        got = await self._call(self._extend, [self._k(key), self._held, self._info],
                               [token, int(ttl * 1000), repr(expires), key], repeatable=True)  # the same expiry set twice
        if not got:
            return None
        return Lock(token, _text(got[1]), int(got[0]), expires, key)

    async def end(self, key: str, token: str) -> Lock | None:
        # Not repeated: a repeat after a release that ran would answer "not the holder".
        got = await self._call(self._release, [self._k(key), self._held, self._info], [token, key], repeatable=False)
        if not got:
            return None
        return Lock(token, _text(got[1]), int(got[0]), float(got[2]), key)

    async def status(self, key: str) -> Lock | None:
        h = {_text(k): _text(v) for k, v in (await self.redis.hgetall(self._k(key))).items()}
        if "token" not in h:
            return None
        return Lock(h["token"], h["holder"], int(h["fencing"]), float(h["expires_at"]), key)

    async def held(self) -> int:
        # Expired entries stay in the zset until an expiry sweep claims (and announces) them.
        return int(await self.redis.zcount(self._held, f"({time.time()!r}", "+inf"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _info(key: str, raw: Any) -> Lock:
    fencing, holder, expires = _text(raw).split("\n")
    return Lock("", holder, int(fencing), float(expires), key)


# -- domain: what REST and WebSocket both call -------------------------------------


def new_token() -> str:
    return secrets.token_urlsafe(24)


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


def refused(holder: Lock | None) -> dict[str, Any]:
    """A refusal names who holds the lock and until when (``null``s if it is free again by now)."""
    return {"acquired": False, "token": None, "holder": holder.holder if holder else None,
            "expires_at": iso(holder.expires_at) if holder else None}


def lock_event(lock: Lock) -> dict[str, Any]:
    return {"key": lock.key, "holder": lock.holder, "fencing_token": lock.fencing_token,
            "expires_at": iso(lock.expires_at)}


class LockRequest(BaseModel):
    ttl_seconds: JsonInt = Field(DEFAULT_TTL, ge=1, le=MAX_TTL, description="seconds until the lock expires")


class ExtendRequest(BaseModel):
    token: str = Field(..., min_length=1)
    ttl_seconds: JsonInt = Field(DEFAULT_TTL, ge=1, le=MAX_TTL)


class UnlockRequest(BaseModel):
    token: str = Field(..., min_length=1)


class LocksFeature(Feature):
    name = "locks"
    store: LockStore
    _task: asyncio.Task[None] | None = None
    _sweeper: asyncio.Task[None] | None = None

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        # A key's store change and its event run under one lock, so on a node a key's events follow its changes.
        self._stripes = [asyncio.Lock() for _ in range(64)]

    def _lock(self, key: str) -> asyncio.Lock:
        return self._stripes[zlib.crc32(key.encode()) % len(self._stripes)]

    def namespaces(self) -> list[Namespace]:
        async def may_watch(who: Identity, channel: str) -> None:
            self.may_see(who, channel[len(PREFIX):])

        # A lock's events are state changes (the current state is one LOCK_STATUS away): a short history
        # is enough to recover a brief disconnect, as for presence.
        return [Namespace(f"{PREFIX}*", may_watch, "none", 100, 600.0,
                          "a lock's changes: LOCK_ACQUIRED, LOCK_EXTENDED, LOCK_RELEASED, LOCK_EXPIRED")]

    def may_see(self, who: Identity, key: str) -> None:
        """Who may see a lock (its status, its events): any signed-in user; the token is the capability."""
        check_key(key)

    async def start(self) -> None:
        node = self.node
        self.store = (RedisLockStore(node.redis, node.db, node.settings.redis_prefix)
                      if node.redis is not None else SqlLockStore(node.db))
        await self.store.start()
        self._task = asyncio.create_task(self._gauge_loop())
        self._sweeper = asyncio.create_task(self._sweep_loop())

    async def stop(self) -> None:
        for task in (self._task, self._sweeper):
            if task is not None:
                task.cancel()

    async def _sweep_loop(self) -> None:
        """Announce expiries: every node sweeps, the store gives each expired grant to one of them."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                await self.sweep(time.time())
            except Exception:
                log.warning("lock expiry sweep failed", exc_info=True)

    async def sweep(self, now: float) -> None:
        for lock in await self.store.expired(now):
            async with self._lock(lock.key):
                await self._announce("LOCK_EXPIRED", lock)

    async def _announce(self, type: str, lock: Lock) -> None:
        """Publish a lock change; the change itself is done, so a failed publish is logged, not raised."""
        try:
            await self.node.publish(PREFIX + lock.key, type, lock_event(lock))
        except Exception:
            log.warning("could not publish %s for lock %r", type, lock.key, exc_info=True)

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
        check_key(key)
        async with self._lock(key):
            result = await self.store.grant(key, who.user_id, ttl)
            for old in result.ended:  # the grant it took over expired unannounced: that comes first
                await self._announce("LOCK_EXPIRED", old)
            if result.lock is not None:
                await self._announce("LOCK_ACQUIRED", result.lock)
                return granted(result.lock)
        return refused(result.holder)

    async def extend(self, key: str, token: str, ttl: int) -> dict[str, Any]:
        check_key(key)
        async with self._lock(key):
            lock = await self.store.extend(key, token, ttl)
            if lock is not None:
                await self._announce("LOCK_EXTENDED", lock)
                return granted(lock)
        return refused(await self.store.status(key))

    async def release(self, key: str, token: str) -> dict[str, Any]:
        check_key(key)
        async with self._lock(key):
            lock = await self.store.end(key, token)
            if lock is not None:
                await self._announce("LOCK_RELEASED", lock)
        return {"released": lock is not None}

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

    # -- REST (the documented paths and shapes)------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(tags=["locks"])

        @router.post("/locks/{key}")
        async def acquire(key: str, who: Caller, body: LockRequest | None = Body(None)) -> dict[str, Any]:
            """Acquire: `{"acquired": true, "token", "fencing_token", "expires_at"}`, or
            `{"acquired": false, "token": null, "holder", "expires_at"}` naming who holds it until when."""
            return await self.acquire(who, key, body.ttl_seconds if body else DEFAULT_TTL)

        @router.get("/locks/{key}")
        async def status(key: str, who: Caller) -> dict[str, Any]:
            """`{"locked", "holder", "expires_at", "fencing_token"}`."""
            return await self.status(key)

        @router.post("/locks/{key}/extend")
        async def extend(key: str, body: ExtendRequest, who: Caller) -> dict[str, Any]:
            """Only the current token extends; otherwise a refusal like acquire's (`holder`, `expires_at` of the live lock)."""
            return await self.extend(key, body.token, body.ttl_seconds)

        @router.delete("/locks/{key}")
        async def release(key: str, body: UnlockRequest, who: Caller) -> dict[str, Any]:
            """Body `{"token"}` -> `{"released": bool}`; only the current token releases."""
            return await self.release(key, body.token)

        return router

