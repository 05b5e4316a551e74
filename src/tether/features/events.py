"""Server-pushed typed events (``UPDATE_PROGRESS`` computed into ``SHOOT_PROGRESS``, REST pushes) and retained state.

Every event goes to ``users.{userId}`` through ``node.publish``. Some are also
*retained*, so a device that connects later gets the current state right after
``CONNECTED`` instead of waiting for the next update: progress events per id
(until ``retain_ended`` s after they completed or failed: the generic
``PROGRESS {id, status, done, total}``, the photo-shoot ``SHOOT_PROGRESS`` per
``shootId``, and any type added with ``--retained-progress``), the latest of each
``--retained-latest`` type (``CREDIT_UPDATE``), and the latest of any other type
pushed with ``retain: true``. The retained store is SQL on the embedded default and Redis
when the node has one (see :class:`RetainedStore`).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Header
from pydantic import BaseModel, Field, StrictBool

from tether.core.auth import valid_id
from tether.core.connection import Op, holding_user_channel
from tether.core.idempotency import rerun_on_failure
from tether.core.node import Feature
from tether.features.rest import Caller, NodeDep, once, require_server
from tether.storage.database import Database
from tether.wire import protocol
from tether.wire.errors import TetherError, bad_request
from tether.wire.jsonutil import dumps, loads

if TYPE_CHECKING:
    from tether.core.connection import Connection

STATUSES = ("queued", "processing", "completed", "failed")
ENDED = ("completed", "failed")
#: Types a backend may not push: the protocol's own frames and events only Tether itself emits.
RESERVED = protocol.PROTOCOL_TYPES | frozenset({
    "DEVICE_CONNECTED", "DEVICE_DISCONNECTED",
    "STREAM_STARTED", "STREAM_DELTA", "STREAM_ENDED", "STREAM_STATE",
})


# -- the domain: validation and what to retain ---------------------------------

def shoot_progress(data: Any) -> dict[str, Any]:
    """Validate an ``UPDATE_PROGRESS`` (or pushed ``SHOOT_PROGRESS``) payload into a ``SHOOT_PROGRESS`` one,
    fields named as an iOS app's ``ShootProgressPayload`` (Swift ``Codable``) decodes them."""
    if not isinstance(data, dict):
        raise bad_request("data must be an object {shootId, processedCount, totalCount, …}")
    shoot = data.get("shootId")
    if not isinstance(shoot, str) or not 0 < len(shoot) <= 256:
        raise bad_request("'shootId' must be a non-empty string (up to 256 characters)")
    counts = {}
    for key in ("processedCount", "totalCount"):
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad_request(f"'{key}' must be a non-negative integer")
        counts[key] = value
    processed, total = counts["processedCount"], counts["totalCount"]
    if processed > total:
        raise bad_request(f"'processedCount' ({processed}) cannot exceed 'totalCount' ({total})")
    status = data.get("status", "processing")
    if status not in STATUSES:
        raise bad_request(f"'status' must be one of {', '.join(STATUSES)}")
    out: dict[str, Any] = {"shootId": shoot, "processedCount": processed, "totalCount": total,
                           "progress": processed / total if total else 0.0}
    for key in ("currentImage", "provider"):
        if data.get(key) is not None:
            if not isinstance(data[key], str):
                raise bad_request(f"'{key}' must be a string")
            out[key] = data[key]
    eta = data.get("eta")
    if eta is not None:
        if not isinstance(eta, (int, float)) or isinstance(eta, bool) or eta < 0:
            raise bad_request("'eta' must be a non-negative number of seconds")
        out["eta"] = eta
    out["status"] = status
    return out


def progress(data: Any) -> dict[str, Any]:
    """Validate a generic ``PROGRESS {id, status?, done, total}`` (other fields pass through)."""
    if not isinstance(data, dict):
        raise bad_request("data must be an object {id, status, done, total}")
    pid = data.get("id")
    if not isinstance(pid, str) or not 0 < len(pid) <= 256:
        raise bad_request("'id' must be a non-empty string (up to 256 characters)")
    for key in ("done", "total"):
        value = data.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise bad_request(f"'{key}' must be a non-negative integer")
    if data["done"] > data["total"]:
        raise bad_request(f"'done' ({data['done']}) cannot exceed 'total' ({data['total']})")
    status = data.get("status", "processing")
    if status not in STATUSES:
        raise bad_request(f"'status' must be one of {', '.join(STATUSES)}")
    return {**data, "status": status}


def keyed(data: Any, field: str) -> dict[str, Any]:
    """A configured progress type: an object with a non-empty string id field and, if any, a known status."""
    if not isinstance(data, dict):
        raise bad_request(f"data must be an object with '{field}'")
    if not isinstance(data.get(field), str) or not 0 < len(data[field]) <= 256:
        raise bad_request(f"'{field}' must be a non-empty string (up to 256 characters)")
    if "status" in data and data["status"] not in STATUSES:
        raise bad_request(f"'status' must be one of {', '.join(STATUSES)}")
    return data


@dataclass(frozen=True)
class RetainRules:
    """What is retained: progress types (per id, until ended) and latest-only types."""

    progress: dict[str, str]  # event type -> its id field
    latest: frozenset[str]

    def validate(self, type: str, data: Any) -> Any:
        """A progress type's payload, checked (and for SHOOT_PROGRESS completed) before it is pushed."""
        if type == "SHOOT_PROGRESS" and self.progress.get(type) == "shootId":
            return shoot_progress(data)
        if type == "PROGRESS" and self.progress.get(type) == "id":
            return progress(data)
        if type in self.progress:
            return keyed(data, self.progress[type])
        return data


DEFAULT_RULES = RetainRules({"SHOOT_PROGRESS": "shootId", "PROGRESS": "id"}, frozenset({"CREDIT_UPDATE"}))


def retention(type: str, data: dict[str, Any], retain: bool, now: float, ended_ttl: float = 5.0,
              rules: RetainRules = DEFAULT_RULES) -> tuple[str, float | None] | None:
    """Whether an event is retained: ``(key, expires_at)``, or None. The key makes "latest per key"."""
    field = rules.progress.get(type)
    if field is not None:
        return data[field], (now + ended_ttl if data.get("status") in ENDED else None)
    if type in rules.latest or retain:
        return "", None
    return None


def event_type(value: Any) -> str:
    protocol.check_type(value)
    if value in RESERVED:
        raise bad_request(f"'type': {value} is emitted by Tether itself and cannot be pushed")
    return str(value)


# -- the retained store ----------------------------------------------------------

class RetainedStore(ABC):
    """Latest retained event per (user, type, key). ``now`` is passed in so tests control time."""

    @abstractmethod
    async def put(self, user: str, type: str, key: str, data: Any, expires_at: float | None, now: float) -> None: ...

    @abstractmethod
    async def get(self, user: str, now: float) -> list[tuple[str, Any]]:
        """The user's unexpired retained events ``(type, data)``, oldest update first."""


class SqlRetainedStore(RetainedStore):
    SCHEMA = ["""CREATE TABLE IF NOT EXISTS retained_events (
        user_id TEXT NOT NULL, type TEXT NOT NULL, key TEXT NOT NULL, data TEXT NOT NULL,
        expires_at DOUBLE PRECISION, updated_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (user_id, type, key))"""]

    def __init__(self, db: Database) -> None:
        self.db = db

    async def start(self) -> None:
        await self.db.migrate(self.SCHEMA)

    async def put(self, user: str, type: str, key: str, data: Any, expires_at: float | None, now: float) -> None:
        async with self.db.transaction() as tx:
            await tx.execute("DELETE FROM retained_events WHERE user_id = ? AND expires_at <= ?", user, now)
            await tx.execute(
                """INSERT INTO retained_events (user_id, type, key, data, expires_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)
                   ON CONFLICT (user_id, type, key) DO UPDATE SET data = excluded.data,
                   expires_at = excluded.expires_at, updated_at = excluded.updated_at""",
                user, type, key, dumps(data), expires_at, now)

    async def get(self, user: str, now: float) -> list[tuple[str, Any]]:
        rows = await self.db.fetchall(
            "SELECT type, data FROM retained_events WHERE user_id = ? AND (expires_at IS NULL OR expires_at > ?) "
            "ORDER BY updated_at, type, key", user, now)
        return [(str(r["type"]), loads(r["data"])) for r in rows]


class RedisRetainedStore(RetainedStore):
    """One hash per user: field ``type\\nkey`` -> ``[data, expires_at, updated_at]``."""

    def __init__(self, redis: Any, prefix: str) -> None:
        self.redis, self.prefix = redis, prefix

    async def start(self) -> None: ...

    async def put(self, user: str, type: str, key: str, data: Any, expires_at: float | None, now: float) -> None:
        await self.redis.hset(f"{self.prefix}:{user}", f"{type}\n{key}", dumps([data, expires_at, now]))

    async def get(self, user: str, now: float) -> list[tuple[str, Any]]:
        name = f"{self.prefix}:{user}"
        live, expired = [], []
        for field, raw in (await self.redis.hgetall(name)).items():
            data, expires_at, updated_at = loads(raw)
            if expires_at is not None and expires_at <= now:
                expired.append(field)
            else:
                live.append((updated_at, field.decode(), data))
        if expired:
            await self.redis.hdel(name, *expired)
        live.sort(key=lambda item: item[:2])
        return [(field.split("\n", 1)[0], data) for _, field, data in live]


# -- the feature ---------------------------------------------------------------

class PushBody(BaseModel):
    type: str = Field(..., description="UPPER_SNAKE_CASE event type, e.g. CREDIT_UPDATE",
                      json_schema_extra={"pattern": protocol.TYPE_RE.pattern})  # checked by the node (400)
    data: dict[str, Any] = Field(..., description="the event payload (a JSON object)")
    retain: StrictBool = Field(False, description="keep the latest event of this type for devices that connect later")


class EventsFeature(Feature):
    name = "events"
    store: SqlRetainedStore | RedisRetainedStore

    async def start(self) -> None:
        s = self.node.settings
        self.rules = RetainRules(s.progress_rules(), s.latest_types())
        redis = self.node.redis
        self.store = (RedisRetainedStore(redis, self.node.settings.redis_prefix + "retained")
                      if redis is not None else SqlRetainedStore(self.node.db))
        await self.store.start()

    def ops(self) -> dict[str, Op]:
        return {"UPDATE_PROGRESS": self.update_progress}

    async def connected(self, conn: "Connection") -> None:
        async with holding_user_channel(conn):
            for type, data in await self.store.get(conn.user_id, time.time()):
                conn.send(protocol.frame(type, data, retained=True))

    async def update_progress(self, conn: "Connection", data: dict[str, Any]) -> Any:
        """A photo shoot's ``{shootId, …}`` becomes ``SHOOT_PROGRESS``; the generic ``{id, done, total, status?}``
        (no ``shootId``) becomes ``PROGRESS``."""
        if "shootId" not in data and "id" in data:
            generic = progress({k: v for k, v in data.items() if k not in ("idempotency_key", "channel")})
            position = await self.push(conn.user_id, "PROGRESS", generic, exclude=conn.id)
            self.node.metrics.publishes.inc()
            return {"id": generic["id"], "status": generic["status"], "offset": position.offset}
        payload = shoot_progress(data)
        position = await self.push(conn.user_id, "SHOOT_PROGRESS", payload, exclude=conn.id)
        self.node.metrics.publishes.inc()
        return {"shootId": payload["shootId"], "progress": payload["progress"], "offset": position.offset}

    async def push(self, user: str, type: str, data: dict[str, Any], *, retain: bool = False, exclude: str | None = None) -> Any:
        """Retain (first, so a device connecting meanwhile misses nothing), then publish to the user."""
        now = time.time()
        rule = retention(type, data, retain, now, self.node.settings.retain_ended, self.rules)
        rerun_on_failure()  # the retained state is an upsert: a retry after a failed publish redoes both
        if rule is not None:
            await self.store.put(user, type, rule[0], data, rule[1], now)
        return await self.node.publish(f"users.{user}", type, data, exclude=exclude)

    async def connections(self, user: str) -> int:
        return await self.node.count_user_connections(user)

    def router(self) -> APIRouter:
        router = APIRouter(tags=["events"])

        @router.post("/users/{user_id}/events", status_code=202)
        async def push(user_id: str, body: PushBody, node: NodeDep, who: Caller,
                       idempotency_key: str | None = Header(None)) -> dict[str, Any]:
            """Push a typed event to every connection of a user (server API key only)."""
            require_server(who)
            if not valid_id(user_id):
                raise bad_request("user_id: letters, digits and _ . @ + - only (up to 128)")
            etype = event_type(body.type)
            if etype in node.ops:
                raise bad_request(f"'type': {etype} is a request of the protocol and cannot be pushed")
            data = self.rules.validate(etype, body.data)
            try:
                size = len(dumps(data))
            except TypeError as exc:  # e.g. nested deeper than JSON encoders go
                raise bad_request(f"data cannot be sent: {exc}", status=422) from None
            if size > node.settings.max_frame_bytes:
                raise TetherError("too_large", f"data is {size} bytes, over the {node.settings.max_frame_bytes}-byte limit")

            async def run() -> dict[str, Any]:
                await self.push(user_id, etype, data, retain=body.retain)
                node.metrics.publishes.inc()
                return {"delivered": await self.connections(user_id)}

            return await once(node, who, f"rest:push {user_id}", idempotency_key, run)  # type: ignore[no-any-return]

        return router
