"""Multi-device sync: which devices of a user are online, and telling the others.

A device is online while it has at least one connection (two tabs of one
device are one device). Its first open sends ``DEVICE_CONNECTED`` and its last
close ``DEVICE_DISCONNECTED`` on ``users.{userId}`` to the user's other
connections. The registry of connections lives behind :class:`DeviceRegistry`:
in memory for one process, in Redis when the node has one, so every node
agrees. Each connection entry expires unless its node heartbeats it, so the
devices of a node that died go offline (and are announced) within the TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter

from tether.core.auth import valid_id
from tether.core.connection import holding_user_channel
from tether.core.node import Feature
from tether.features.rest import Caller, NodeDep
from tether.wire import protocol
from tether.wire.errors import bad_request, forbidden
from tether.wire.timestamps import iso

if TYPE_CHECKING:
    from tether.core.connection import Connection

log = logging.getLogger("tether.devices")


@dataclass(frozen=True)
class Device:
    device_id: str
    connected_at: float
    last_seen: float


class DeviceRegistry(ABC):
    """Connections per (user, device). ``now`` is passed in so the contract test controls time."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl

    @abstractmethod
    async def add(self, user: str, device: str, conn: str, now: float) -> bool:
        """Register a connection; True when it is the device's first (the device came online)."""

    @abstractmethod
    async def remove(self, user: str, device: str, conn: str) -> bool:
        """Forget a connection; True when it was the device's last (the device went offline)."""

    @abstractmethod
    async def heartbeat(self, seen: list[tuple[str, str, str, float]], now: float) -> None:
        """Keep these live ``(user, device, conn, last_seen)`` entries from expiring."""

    @abstractmethod
    async def sweep(self, now: float) -> list[tuple[str, str]]:
        """Drop expired connections; the ``(user, device)`` pairs that went offline by it."""

    @abstractmethod
    async def devices(self, user: str) -> list[Device]: ...

    @abstractmethod
    async def connections(self, user: str) -> int:
        """How many connections the user has, on every node."""


class MemoryDeviceRegistry(DeviceRegistry):
    def __init__(self, ttl: float) -> None:
        super().__init__(ttl)
        # user -> device -> {conn: expires_at}; and (user, device) -> [connected_at, last_seen]
        self._conns: dict[str, dict[str, dict[str, float]]] = {}
        self._meta: dict[tuple[str, str], list[float]] = {}

    async def add(self, user: str, device: str, conn: str, now: float) -> bool:
        conns = self._conns.setdefault(user, {}).setdefault(device, {})
        first = not conns
        conns[conn] = now + self.ttl
        if first:
            self._meta[(user, device)] = [now, now]
        else:
            self._meta[(user, device)][1] = now
        return first

    async def remove(self, user: str, device: str, conn: str) -> bool:
        devices = self._conns.get(user, {})
        conns = devices.get(device)
        if conns is None or conns.pop(conn, None) is None:
            return False  # already swept (and announced)
        if conns:
            return False
        del devices[device]
        if not devices:
            del self._conns[user]
        del self._meta[(user, device)]
        return True

    async def heartbeat(self, seen: list[tuple[str, str, str, float]], now: float) -> None:
        for user, device, conn, last_seen in seen:
            conns = self._conns.get(user, {}).get(device)
            if conns is not None and conn in conns:
                conns[conn] = now + self.ttl
                meta = self._meta[(user, device)]
                meta[1] = max(meta[1], last_seen)

    async def sweep(self, now: float) -> list[tuple[str, str]]:
        gone = []
        for user, devices in list(self._conns.items()):
            for device, conns in list(devices.items()):
                for conn, expires in list(conns.items()):
                    if expires <= now and await self.remove(user, device, conn):
                        gone.append((user, device))
        return gone

    async def devices(self, user: str) -> list[Device]:
        return [Device(d, *self._meta[(user, d)]) for d in self._conns.get(user, {})]

    async def connections(self, user: str) -> int:
        return sum(len(c) for c in self._conns.get(user, {}).values())


# Redis layout (prefix P): P:c:{user}:{device} SET of connection ids; P:at:{user} and
# P:seen:{user} HASH device -> connected_at / last_seen; P:exp ZSET "user\ndevice\nconn"
# scored by expiry. Each step is one Lua script, so "first"/"last" is decided once.
_ADD = """
local p, user, device, conn, now, ttl = KEYS[1], ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZADD', p..':exp', now + ttl, user..'\\n'..device..'\\n'..conn)
local set = p..':c:'..user..':'..device
redis.call('SADD', set, conn)
redis.call('HSET', p..':seen:'..user, device, ARGV[4])
if redis.call('SCARD', set) == 1 then
  redis.call('HSET', p..':at:'..user, device, ARGV[4])
  return 1
end
return 0
"""
_REMOVE = """
local p, user, device, conn = KEYS[1], ARGV[1], ARGV[2], ARGV[3]
redis.call('ZREM', p..':exp', user..'\\n'..device..'\\n'..conn)
local set = p..':c:'..user..':'..device
if redis.call('SREM', set, conn) == 1 and redis.call('SCARD', set) == 0 then
  redis.call('HDEL', p..':at:'..user, device)
  redis.call('HDEL', p..':seen:'..user, device)
  return 1
end
return 0
"""
_SWEEP = """
local p = KEYS[1]
local gone = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', p..':exp', '-inf', ARGV[1], 'LIMIT', 0, 1000)) do
  redis.call('ZREM', p..':exp', member)
  local user, device, conn = string.match(member, '^(.-)\\n(.-)\\n(.*)$')
  local set = p..':c:'..user..':'..device
  if redis.call('SREM', set, conn) == 1 and redis.call('SCARD', set) == 0 then
    redis.call('HDEL', p..':at:'..user, device)
    redis.call('HDEL', p..':seen:'..user, device)
    table.insert(gone, user)
    table.insert(gone, device)
  end
end
return gone
"""
_HEARTBEAT = """
local p, expires = KEYS[1], ARGV[1]
for i = 2, #ARGV, 4 do
  local user, device, conn, seen = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  redis.call('ZADD', p..':exp', 'XX', expires, user..'\\n'..device..'\\n'..conn)
  if redis.call('SISMEMBER', p..':c:'..user..':'..device, conn) == 1 then
    local old = tonumber(redis.call('HGET', p..':seen:'..user, device) or '0')
    if tonumber(seen) > old then redis.call('HSET', p..':seen:'..user, device, seen) end
  end
end
return 0
"""


class RedisDeviceRegistry(DeviceRegistry):
    def __init__(self, redis: Any, ttl: float, prefix: str) -> None:
        super().__init__(ttl)
        self.redis, self.prefix = redis, prefix
        self._add, self._remove = redis.register_script(_ADD), redis.register_script(_REMOVE)
        self._sweep, self._heartbeat = redis.register_script(_SWEEP), redis.register_script(_HEARTBEAT)

    async def add(self, user: str, device: str, conn: str, now: float) -> bool:
        return bool(await self._add(keys=[self.prefix], args=[user, device, conn, repr(now), self.ttl]))

    async def remove(self, user: str, device: str, conn: str) -> bool:
        return bool(await self._remove(keys=[self.prefix], args=[user, device, conn]))

    async def heartbeat(self, seen: list[tuple[str, str, str, float]], now: float) -> None:
        for i in range(0, len(seen), 500):
            args: list[Any] = [repr(now + self.ttl)]
            for user, device, conn, last in seen[i:i + 500]:
                args += [user, device, conn, repr(last)]
            await self._heartbeat(keys=[self.prefix], args=args)

    async def sweep(self, now: float) -> list[tuple[str, str]]:
        flat = [x.decode() for x in await self._sweep(keys=[self.prefix], args=[repr(now)])]
        return list(zip(flat[0::2], flat[1::2]))

    async def devices(self, user: str) -> list[Device]:
        at = await self.redis.hgetall(f"{self.prefix}:at:{user}")
        seen = await self.redis.hgetall(f"{self.prefix}:seen:{user}")
        return [Device(d.decode(), float(t), float(seen.get(d, t))) for d, t in sorted(at.items())]

    async def connections(self, user: str) -> int:
        at = await self.redis.hkeys(f"{self.prefix}:at:{user}")
        counts = [await self.redis.scard(f"{self.prefix}:c:{user}:{d.decode()}") for d in at]
        return sum(counts)


class DevicesFeature(Feature):
    name = "devices"
    registry: DeviceRegistry

    async def start(self) -> None:
        ttl = self.node.settings.device_ttl
        redis = self.node.redis
        prefix = self.node.settings.redis_prefix + "devices"
        self.registry = RedisDeviceRegistry(redis, ttl, prefix) if redis is not None else MemoryDeviceRegistry(ttl)
        self.node.count_user_connections = self.registry.connections  # cluster-wide, for pushed events
        self._task = asyncio.create_task(self._heartbeat())

    async def stop(self) -> None:
        self._task.cancel()

    async def connected(self, conn: "Connection") -> None:
        now = time.time()
        async with holding_user_channel(conn):
            # The newcomer learns which of its user's devices are already online.
            for d in await self.registry.devices(conn.user_id):
                if d.device_id != conn.device_id:
                    conn.send(protocol.frame("DEVICE_CONNECTED", _payload(conn.user_id, d.device_id, "connectedAt", d.connected_at)))
        if await self.registry.add(conn.user_id, conn.device_id, conn.id, now):
            await self.node.publish(f"users.{conn.user_id}", "DEVICE_CONNECTED",
                                    _payload(conn.user_id, conn.device_id, "connectedAt", now), exclude=conn.id)

    async def disconnected(self, conn: "Connection") -> None:
        if await self.registry.remove(conn.user_id, conn.device_id, conn.id):
            await self._announce_gone(conn.user_id, conn.device_id)

    async def _announce_gone(self, user: str, device: str) -> None:
        await self.node.publish(f"users.{user}", "DEVICE_DISCONNECTED", _payload(user, device, "disconnectedAt", time.time()))

    async def _heartbeat(self) -> None:
        """Refresh this node's entries every third of the TTL and expire those of dead nodes."""
        while True:
            await asyncio.sleep(self.registry.ttl / 3)
            try:
                now, mono = time.time(), time.monotonic()
                seen = [(c.user_id, c.device_id, c.id, now - (mono - c.last_seen)) for c in self.node.connections.values()]
                await self.registry.heartbeat(seen, now)
                for user, device in await self.registry.sweep(now):
                    await self._announce_gone(user, device)
            except Exception:
                log.exception("device heartbeat failed")

    def router(self) -> APIRouter:
        router = APIRouter(tags=["devices"])

        @router.get("/users/{user_id}/devices")
        async def devices(user_id: str, node: NodeDep, who: Caller) -> dict[str, Any]:
            """The user's online devices (own user, or the server API key)."""
            if not valid_id(user_id):
                raise bad_request("user_id: letters, digits and _ . @ + - only (up to 128)")
            if not who.may_act_for(user_id):
                raise forbidden("only the user itself or the server API key may list a user's devices")
            found = await self.registry.devices(user_id)
            return {"devices": [{"device_id": d.device_id, "connected_at": iso(d.connected_at),
                                 "last_seen": iso(d.last_seen)} for d in found]}

        return router


def _payload(user: str, device: str, key: str, ts: float) -> dict[str, Any]:
    return {"userId": user, "deviceId": device, key: iso(ts)}
