"""Presence: who is in a key, by REST heartbeat or WebSocket subscription.

One set per key, whichever way users arrive. A member is a user; a user is
present while at least one *source* of theirs is alive: a REST heartbeat
(``rest:{device}``, alive for the presence TTL) or a WebSocket subscription
with ``presence: true`` (``ws:{connection}:{channel}``, alive while the
connection is, refreshed by its node every TTL / 3 so a dead node's members
expire too). Several devices are several sources of one user, who joins with
the first and leaves with the last.

Changes are events on ``presence.{key}`` through ``node.publish``:
``PRESENCE_JOINED {user_id, state?}``, ``PRESENCE_UPDATED {user_id, state}``,
``PRESENCE_LEFT {user_id}``. A sweeper removes expired sources every
min(0.25 s, TTL / 4), so a vanished client is gone within TTL + 1 s.

Two stores behind :class:`PresenceStore`: in memory (embedded) and Redis
(``TETHER_REDIS_URL``; Lua scripts keep each change atomic, so exactly one
node sees a given join or leave and publishes it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import APIRouter, Body
from pydantic import BaseModel, Field

from tether.core import namespaces
from tether.core.auth import Identity, valid_id
from tether.core.connection import Connection
from tether.core.namespaces import Namespace
from tether.core.node import Feature
from tether.features.rest import Caller
from tether.wire import protocol
from tether.wire.errors import TetherError, forbidden

log = logging.getLogger("tether.presence")

PREFIX = "presence."
MAX_STATE = 4096  # bytes of JSON per member: presence state is a status, not a document
USER_ID = r"^[A-Za-z0-9_.@+\-]{1,128}$"


@dataclass(frozen=True)
class Change:
    joined: bool = False
    updated: bool = False


class PresenceStore(ABC):
    """``state`` is JSON text; ``None`` means "leave it as it is"."""

    @abstractmethod
    async def touch(self, key: str, user: str, source: str, ttl: float, state: str | None = None) -> Change:
        """Add or refresh a source of ``user`` in ``key``, alive for ``ttl`` seconds."""

    @abstractmethod
    async def remove(self, key: str, user: str, source: str, *, prefix: bool = False) -> bool:
        """Drop a source (every source starting with ``source`` when ``prefix``); true if the user left."""

    @abstractmethod
    async def members(self, key: str) -> dict[str, str | None]:
        """Live users of ``key`` and their state text."""

    @abstractmethod
    async def present(self, key: str, user: str) -> bool: ...

    @abstractmethod
    async def sweep(self) -> list[tuple[str, str]]:
        """Remove expired sources; return the (key, user) pairs that left because of it."""

    @abstractmethod
    async def count(self) -> int:
        """Present (key, user) pairs, for the gauge."""


class MemoryPresenceStore(PresenceStore):
    def __init__(self) -> None:
        self._keys: dict[str, dict[str, dict[str, float]]] = {}  # key -> user -> source -> expiry
        self._states: dict[tuple[str, str], str] = {}

    async def touch(self, key: str, user: str, source: str, ttl: float, state: str | None = None) -> Change:
        users = self._keys.setdefault(key, {})
        joined = user not in users
        users.setdefault(user, {})[source] = time.monotonic() + ttl
        updated = False
        if state is not None and self._states.get((key, user)) != state:
            self._states[key, user] = state
            updated = not joined
        return Change(joined, updated)

    async def remove(self, key: str, user: str, source: str, *, prefix: bool = False) -> bool:
        sources = self._keys.get(key, {}).get(user)
        if not sources:
            return False
        for s in [s for s in sources if (s.startswith(source) if prefix else s == source)]:
            del sources[s]
        return self._drop_if_empty(key, user)

    def _drop_if_empty(self, key: str, user: str) -> bool:
        users = self._keys[key]
        if users[user]:
            return False
        del users[user]
        self._states.pop((key, user), None)
        if not users:
            del self._keys[key]
        return True

    async def members(self, key: str) -> dict[str, str | None]:
        now = time.monotonic()
        return {u: self._states.get((key, u)) for u, sources in self._keys.get(key, {}).items()
                if any(exp > now for exp in sources.values())}

    async def present(self, key: str, user: str) -> bool:
        return user in self._keys.get(key, {})

    async def sweep(self) -> list[tuple[str, str]]:
        now, left = time.monotonic(), []
        for key, users in list(self._keys.items()):
            for user, sources in list(users.items()):
                for s in [s for s, exp in sources.items() if exp <= now]:
                    del sources[s]
                if self._drop_if_empty(key, user):
                    left.append((key, user))
        return left

    async def count(self) -> int:
        return sum(len(users) for users in self._keys.values())


# Redis layout under a prefix P (single instance; the sweep touches keys it derives):
#   P s:{key}  hash  user\x1fsource -> expiry ms      P u:{key}  hash user -> live source count
#   P st:{key} hash  user -> state JSON                P exp      zset key\x1fuser\x1fsource by expiry
#   P n        count of present (key, user) pairs
_TOUCH = r"""
local f = ARGV[1] .. '\31' .. ARGV[2]
local joined, updated = 0, 0
if redis.call('HSET', KEYS[1], f, ARGV[3]) == 1 then
  if redis.call('HINCRBY', KEYS[2], ARGV[1], 1) == 1 then joined = 1; redis.call('INCR', KEYS[5]) end
end
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[5] .. '\31' .. f)
if ARGV[4] ~= '' and redis.call('HGET', KEYS[3], ARGV[1]) ~= ARGV[4] then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
  if joined == 0 then updated = 1 end
end
return {joined, updated}
"""
_REMOVE = r"""
local removed = 0
local function drop(f)
  if redis.call('HDEL', KEYS[1], f) == 1 then
    redis.call('ZREM', KEYS[4], ARGV[4] .. '\31' .. f)
    removed = removed + 1
  end
end
local head = ARGV[1] .. '\31' .. ARGV[2]
if ARGV[3] == '1' then
  for _, f in ipairs(redis.call('HKEYS', KEYS[1])) do
    if string.sub(f, 1, #head) == head then drop(f) end
  end
else
  drop(head)
end
if removed == 0 then return 0 end
if redis.call('HINCRBY', KEYS[2], ARGV[1], -removed) <= 0 then
  redis.call('HDEL', KEYS[2], ARGV[1]); redis.call('HDEL', KEYS[3], ARGV[1]); redis.call('DECR', KEYS[5])
  return 1
end
return 0
"""
_SWEEP = r"""
local out = {}
local now = tonumber(ARGV[1])
for _, m in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))) do
  redis.call('ZREM', KEYS[1], m)
  local a = string.find(m, '\31', 1, true)
  local b = string.find(m, '\31', a + 1, true)
  local key, user, f = string.sub(m, 1, a - 1), string.sub(m, a + 1, b - 1), string.sub(m, a + 1)
  local s = ARGV[3] .. 's:' .. key
  local exp = tonumber(redis.call('HGET', s, f))
  if exp and exp <= now then
    redis.call('HDEL', s, f)
    local u = ARGV[3] .. 'u:' .. key
    if redis.call('HINCRBY', u, user, -1) <= 0 then
      redis.call('HDEL', u, user); redis.call('HDEL', ARGV[3] .. 'st:' .. key, user); redis.call('DECR', KEYS[2])
      table.insert(out, key); table.insert(out, user)
    end
  end
end
return out
"""


class RedisPresenceStore(PresenceStore):
    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis, self.p = redis, prefix
        self._touch = redis.register_script(_TOUCH)
        self._remove = redis.register_script(_REMOVE)
        self._sweep = redis.register_script(_SWEEP)

    def _keys(self, key: str) -> list[str]:
        p = self.p
        return [f"{p}s:{key}", f"{p}u:{key}", f"{p}st:{key}", f"{p}exp", f"{p}n"]

    async def touch(self, key: str, user: str, source: str, ttl: float, state: str | None = None) -> Change:
        expiry = int((time.time() + ttl) * 1000)
        joined, updated = await self._touch(keys=self._keys(key), args=[user, source, expiry, state or "", key])
        return Change(bool(joined), bool(updated))

    async def remove(self, key: str, user: str, source: str, *, prefix: bool = False) -> bool:
        return bool(await self._remove(keys=self._keys(key), args=[user, source, "1" if prefix else "0", key]))

    async def members(self, key: str) -> dict[str, str | None]:
        k = self._keys(key)
        async with self.redis.pipeline(transaction=True) as pipe:
            sources, states = await pipe.hgetall(k[0]).hgetall(k[2]).execute()
        now, out = time.time() * 1000, {}
        states = {_text(u): _text(s) for u, s in states.items()}
        for field, expiry in sources.items():
            if float(expiry) > now:
                user = _text(field).split("\x1f", 1)[0]
                out[user] = states.get(user)
        return out

    async def present(self, key: str, user: str) -> bool:
        return bool(await self.redis.hexists(self._keys(key)[1], user))

    async def sweep(self) -> list[tuple[str, str]]:
        flat = await self._sweep(keys=[f"{self.p}exp", f"{self.p}n"], args=[int(time.time() * 1000), 1000, self.p])
        flat = [_text(x) for x in flat]
        return list(zip(flat[0::2], flat[1::2]))

    async def count(self) -> int:
        return int(await self.redis.get(f"{self.p}n") or 0)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def encode_state(state: Any) -> str:
    """Canonical JSON, so an unchanged state compares equal and raises no PRESENCE_UPDATED."""
    try:
        text = orjson.dumps(state, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError as exc:
        raise TetherError("bad_request", f"state must be JSON: {exc}", status=422, field="state") from None
    if len(text) > MAX_STATE:
        raise TetherError("too_large", f"state is {len(text)} bytes of JSON; the limit is {MAX_STATE}", field="state")
    return text


def key_of(channel: str) -> str:
    """``presence.room`` and ``room`` are the same presence key ``room``."""
    return channel[len(PREFIX):] if channel.startswith(PREFIX) and len(channel) > len(PREFIX) else channel


class Heartbeat(BaseModel):
    user_id: str | None = Field(None, pattern=USER_ID,
                                description="the caller when absent; another user only with X-API-Key")
    state: Any = Field(None, description="optional JSON state; a change is published as PRESENCE_UPDATED")


class PresenceFeature(Feature):
    name = "presence"
    store: PresenceStore

    def __init__(self, node: Any) -> None:
        super().__init__(node)
        self._locks = [asyncio.Lock() for _ in range(64)]  # per-key order of store change + event
        self._local: dict[tuple[str, str, str], None] = {}  # this node's WS sources, refreshed while they live
        self._task: asyncio.Task[None] | None = None

    @property
    def ttl(self) -> float:
        return float(self.node.settings.presence_ttl)

    def namespaces(self) -> list[Namespace]:
        # Watching follows the key's own channel rules (see guard); only the server publishes.
        async def may_watch(who: Identity, channel: str) -> None:
            await self.guard(who, key_of(channel))

        return [Namespace(f"{PREFIX}*", may_watch, "none", 100, 600.0, "presence events of a key")]

    async def guard(self, who: Identity, key: str) -> None:
        """Presence of a key that is a channel (``sessions.x``, ``users.bob``) is for those who
        may subscribe to that channel; a plain key (``room1``) is open to every signed-in user."""
        protocol.check_channel(key, "key")
        if key.startswith(PREFIX):
            # A presence key is never a presence channel: asking its namespace (``presence.*``,
            # whose rule is this guard) would recurse without end for ``presence.``.
            raise TetherError("bad_request", f"'key' must not start with {PREFIX!r} (that is the events channel "
                                             "of a key, not a key)", field="key")
        try:
            ns = self.node.namespaces.find(key)
        except TetherError:
            return
        await namespaces.check(ns.subscribe, who, key, "see or join the presence of")

    async def start(self) -> None:
        node = self.node
        self.store = (RedisPresenceStore(node.redis, node.settings.redis_prefix + "presence:")
                      if node.redis is not None else MemoryPresenceStore())
        self._task = asyncio.create_task(self._sweeper())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks[zlib.crc32(key.encode()) % len(self._locks)]

    # -- domain ------------------------------------------------------------------------

    async def join(self, key: str, user: str, source: str, state: str | None = None) -> Change:
        async with self._lock(key):
            change = await self.store.touch(key, user, source, self.ttl, state)
            if change.joined:
                data: dict[str, Any] = {"user_id": user}
                if state is not None:
                    data["state"] = orjson.loads(state)
                await self.node.publish(PREFIX + key, "PRESENCE_JOINED", data)
            elif change.updated:
                await self.node.publish(PREFIX + key, "PRESENCE_UPDATED",
                                        {"user_id": user, "state": orjson.loads(state or "null")})
        return change

    async def leave(self, key: str, user: str, source: str, *, prefix: bool = False) -> bool:
        async with self._lock(key):
            left = await self.store.remove(key, user, source, prefix=prefix)
            if left:
                await self.node.publish(PREFIX + key, "PRESENCE_LEFT", {"user_id": user})
        return left

    async def _refresh(self, key: str, user: str, source: str) -> None:
        async with self._lock(key):
            if (key, user, source) not in self._local:  # dropped meanwhile: do not resurrect it
                return
            if (await self.store.touch(key, user, source, self.ttl)).joined:  # it had expired (a stalled node)
                await self.node.publish(PREFIX + key, "PRESENCE_JOINED", {"user_id": user})

    async def users(self, key: str) -> dict[str, str | None]:
        return await self.store.members(key)

    async def _sweeper(self) -> None:
        last_refresh = 0.0
        while True:
            await asyncio.sleep(min(0.25, self.ttl / 4))
            try:
                now = time.monotonic()
                if now - last_refresh >= self.ttl / 3:
                    last_refresh = now
                    for key, user, source in list(self._local):
                        await self._refresh(key, user, source)
                for key, user in await self.store.sweep():
                    async with self._lock(key):
                        # A rejoin since the sweep already said JOINED: then nobody left.
                        if not await self.store.present(key, user):
                            await self.node.publish(PREFIX + key, "PRESENCE_LEFT", {"user_id": user})
                self.node.metrics.presence_members.set(await self.store.count())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("presence sweep failed; retrying", exc_info=True)

    # -- WebSocket: SUBSCRIBE {channel, presence: true, state?} ---------------------------

    async def subscribed(self, conn: Connection, channel: str, data: dict[str, Any]) -> None:
        if data.get("presence") is not True:
            return
        state = encode_state(data["state"]) if "state" in data else None
        key, source = key_of(channel), f"ws:{conn.id}:{channel}"
        conn.state.setdefault("presence", {})[channel] = key
        self._local[key, conn.user_id, source] = None
        await self.join(key, conn.user_id, source, state)

    async def unsubscribed(self, conn: Connection, channel: str) -> None:
        key = conn.state.get("presence", {}).pop(channel, None)
        if key is not None:
            await self._drop(conn, channel, key)

    async def disconnected(self, conn: Connection) -> None:
        for channel, key in list(conn.state.get("presence", {}).items()):
            await self._drop(conn, channel, key)

    async def _drop(self, conn: Connection, channel: str, key: str) -> None:
        source = f"ws:{conn.id}:{channel}"
        self._local.pop((key, conn.user_id, source), None)
        await self.leave(key, conn.user_id, source)

    # -- REST (the documented paths and shapes)----------------------------------------------

    def router(self) -> APIRouter:
        router = APIRouter(tags=["presence"])

        async def check(who: Identity, key: str, user_id: str) -> None:
            await self.guard(who, key)
            if not who.may_act_for(user_id):
                raise forbidden("user_id must be your own user (only the server API key may act for others)")

        @router.post("/presence/{key}")
        async def heartbeat(key: str, who: Caller, body: Heartbeat | None = Body(None)) -> dict[str, Any]:
            """Heartbeat: the user stays present for the presence TTL. Body `{"user_id"}`, `{}` or none
            (the caller). Answers `{}`."""
            body = body or Heartbeat()
            if body.user_id is None and who.is_server:  # a well-formed body, but the API key is nobody
                raise TetherError("forbidden", "user_id: the API key has no presence of its own; name the user",
                                  field="user_id")
            user = body.user_id or who.user_id
            await check(who, key, user)
            state = encode_state(body.state) if "state" in body.model_fields_set else None
            await self.join(key, user, "rest:" + source_device(who), state)
            return {}

        @router.get("/presence/{key}")
        async def listing(key: str, who: Caller, states: bool = False) -> dict[str, Any]:
            """`{"users": [...]}` (sorted); `?states=true` adds `"states": {user_id: state}`."""
            await self.guard(who, key)
            members = await self.users(key)
            out: dict[str, Any] = {"users": sorted(members)}
            if states:
                out["states"] = {u: orjson.loads(s) if s is not None else None for u, s in sorted(members.items())}
            return out

        @router.delete("/presence/{key}/{user_id}")
        async def leave(key: str, user_id: str, who: Caller) -> dict[str, Any]:
            """End this device's heartbeat (every REST heartbeat of the user with the API key). Answers `{}`."""
            if not valid_id(user_id):
                raise TetherError("bad_request", "'user_id' must be 1-128 letters, digits and _ . @ + -")
            await check(who, key, user_id)
            if who.is_server:
                await self.leave(key, user_id, "rest:", prefix=True)
            else:
                await self.leave(key, user_id, "rest:" + source_device(who))
            return {}

        return router


def source_device(who: Identity) -> str:
    return "api" if who.is_server else who.device_id
