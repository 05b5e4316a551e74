"""The server API for operators and backends, under ``/api/admin`` (API key or ``admin`` role).

Channels with their subscriber counts and positions, a channel's history by
offset, a user's connections, disconnecting a user, the nodes of the cluster
and running totals (the console samples them for its charts).

In a cluster (``TETHER_REDIS_URL``) each node reports itself into Redis every
:data:`HEARTBEAT` seconds: its health, whether it drains, its connection count
and totals, and its channels' local subscriber counts; a user's connections are
kept in one hash per user. A disconnect is an event on the internal channel
:data:`CONTROL`, so it reaches every node through the broker, embedded or Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import secrets
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Security
from fastapi.responses import Response
from fastapi.security import APIKeyHeader, HTTPBearer
from pydantic import BaseModel, Field, StrictBool

from tether import __version__
from tether.core.auth import Identity, valid_id
from tether.core.connection import Connection
from tether.core.namespaces import Namespace
from tether.core.node import Feature, Node
from tether.features.rest import NodeDep
from tether.wire import protocol
from tether.wire.errors import TetherError, bad_request, forbidden
from tether.wire.jsonutil import dumps, loads
from tether.wire.protocol import CLOSE_OPERATOR
from tether.wire.timestamps import iso, now_iso

log = logging.getLogger("tether.admin")

HEARTBEAT = 1.0  # seconds between a node's reports into Redis
NODE_TTL = 5.0  # a node silent this long is reported unhealthy …
NODE_FORGET = 60.0  # … and this long, forgotten
MAX_REPORTED_CHANNELS = 10_000  # per node per heartbeat: the report stays small however busy the node
CONTROL = "tether.control"  # operator commands to every node; no client may subscribe or publish
INTERNAL_PREFIX = "internal."  # node-to-node channels (access re-checks …)

# The OpenAPI security schemes of /api/admin: either one is enough.
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey",
                       description="The server API key (TETHER_API_KEY).")
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer",
                    description="A JWT whose `roles` claim contains `admin`.")


async def get_admin(request: Request, key: Annotated[str | None, Security(API_KEY)],
                    _: Annotated[Any, Security(BEARER)]) -> Identity:
    node: Node = request.app.state.node
    who = node.auth.headers(request.headers.get("authorization"), key)  # no credentials: 401
    if not who.is_admin:
        raise forbidden("the admin API needs the server API key (X-API-Key) or a token with the admin role")
    return who


Admin = Annotated[Identity, Depends(get_admin)]


def is_internal(node: Node, channel: str) -> bool:
    """A node-to-node channel (operator commands, access re-checks): nobody subscribes to it
    or publishes on it but the nodes, and the admin API neither lists it nor shows its history."""
    if channel == CONTROL or channel.startswith(INTERNAL_PREFIX):
        return True
    try:
        ns = node.namespaces.find(channel)
    except TetherError:
        return False
    return ns.subscribe == "none" and ns.publish == "none"


# -- response shapes (for OpenAPI) ---------------------------------------------------------

class ChannelInfo(BaseModel):
    channel: str
    subscribers: int = Field(description="connections subscribed (every live node's, in a cluster)")
    offset: int = Field(description="the channel's last offset")
    epoch: str


class ChannelsOut(BaseModel):
    channels: list[ChannelInfo]


class HistoryOut(BaseModel):
    publications: list[dict[str, Any]] = Field(description="the stored events after `since`, oldest first")
    offset: int
    epoch: str
    complete: bool = Field(description="false when the history window no longer holds some events after `since`")


class ConnectionInfo(BaseModel):
    connection_id: str
    device_id: str
    node: str
    connected_at: str


class ConnectionsOut(BaseModel):
    connections: list[ConnectionInfo]


class DisconnectIn(BaseModel):
    reason: str = Field("disconnected by an operator", min_length=1, max_length=200,
                        description="told to the client in its DISCONNECT frame")
    reconnect: StrictBool = Field(False, description="whether the client may connect again")


class DisconnectOut(BaseModel):
    disconnected: int = Field(description="the user's connections (on every node) when the request arrived")


class NodeInfo(BaseModel):
    id: str
    version: str
    connections: int
    healthy: bool
    draining: bool


class NodesOut(BaseModel):
    nodes: list[NodeInfo]


class StatsOut(BaseModel):
    connections: int
    deliveries_total: int
    publishes_total: int
    time: str
    nodes: int


class _ControlListener:
    """The node's own subscriber on :data:`CONTROL` (the hub's Subscriber protocol)."""

    id = "admin-control"

    def __init__(self, feature: "AdminFeature") -> None:
        self.feature = feature

    def deliver(self, channel: str, offset: int, text: str) -> None:
        try:
            event = loads(text)
            if event.get("type") == "DISCONNECT_USER":
                d = event["data"]
                self.feature.disconnect_here(str(d["user_id"]), str(d["reason"]), bool(d["reconnect"]))
        except Exception:
            log.exception("bad control event %r", text[:200])

    def drop(self, channel: str) -> None: ...

    def close(self, code: int, reason: str) -> None:
        log.warning("control feed interrupted (%s); commands sent meanwhile may be missed", reason)


class AdminFeature(Feature):
    name = "admin"

    def __init__(self, node: Node) -> None:
        super().__init__(node)
        self.boot = secrets.token_hex(4)  # tells a restarted node (same id) from its previous life
        self._listener = _ControlListener(self)
        self._task: asyncio.Task[None] | None = None
        self._prefix = node.settings.redis_prefix + "admin:"

    def namespaces(self) -> list[Namespace]:
        return [Namespace(CONTROL, "none", "none", 100, 60.0, "operator commands between nodes")]

    async def start(self) -> None:
        await self.node.hub.add(self._listener, CONTROL)
        if self.node.redis is not None:
            await self._report()
            self._task = asyncio.create_task(self._heartbeat())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self.node.hub.remove(self._listener, CONTROL)
        if self.node.redis is not None:
            with contextlib.suppress(Exception):  # a clean exit leaves the list at once
                await self.node.redis.hdel(self._prefix + "nodes", self.node.id)
                await self.node.redis.delete(self._prefix + "subs:" + self.node.id)

    # -- connections registry (cluster) -----------------------------------------------------

    async def connected(self, conn: Connection) -> None:
        if self.node.redis is not None:
            entry = {"device_id": conn.device_id, "node": self.node.id, "boot": self.boot,
                     "connected_at": conn.connected_at}
            await self.node.redis.hset(self._prefix + "conns:" + conn.user_id, conn.id, dumps(entry))

    async def disconnected(self, conn: Connection) -> None:
        if self.node.redis is not None:
            await self.node.redis.hdel(self._prefix + "conns:" + conn.user_id, conn.id)

    # -- this node's report -------------------------------------------------------------

    def _total(self, name: str) -> int:
        return int(self.node.metrics.registry.get_sample_value(name) or 0)

    async def own_report(self) -> dict[str, Any]:
        node = self.node
        return {
            "id": node.id, "boot": self.boot, "version": __version__,
            "connections": len(node.connections),
            "healthy": await node.healthy(), "draining": node.draining,
            "deliveries_total": self._total("tether_deliveries_total"),
            "publishes_total": self._total("tether_publishes_total"),
            "seen": time.time(),
        }

    async def _report(self) -> None:
        redis, node = self.node.redis, self.node
        counts = {ch: len(subs) for ch, subs in node.hub.channels.items() if not is_internal(node, ch)}
        if len(counts) > MAX_REPORTED_CHANNELS:
            counts = dict(sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_REPORTED_CHANNELS])
        subs_key = self._prefix + "subs:" + node.id
        async with redis.pipeline(transaction=True) as pipe:
            pipe.hset(self._prefix + "nodes", node.id, dumps(await self.own_report()))
            pipe.delete(subs_key)
            if counts:
                pipe.hset(subs_key, mapping=counts)
                pipe.expire(subs_key, int(NODE_TTL) + 1)
            await pipe.execute()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT)
            try:
                await self._report()
            except Exception as exc:  # Redis away: /healthz says so; keep trying
                log.warning("node report failed: %s", exc)

    async def reports(self) -> list[dict[str, Any]]:
        """Every node's latest report (this node's fresh), with ``alive`` set; long-gone ones dropped."""
        own = await self.own_report()
        own["alive"] = True
        if self.node.redis is None:
            return [own]
        now = time.time()
        out = [own]
        for raw_id, raw in (await self.node.redis.hgetall(self._prefix + "nodes")).items():
            report = loads(raw)
            if report.get("id") == self.node.id:
                continue
            age = now - float(report.get("seen", 0))
            if age > NODE_FORGET:
                await self.node.redis.hdel(self._prefix + "nodes", raw_id)
                continue
            report["alive"] = age <= NODE_TTL
            out.append(report)
        return sorted(out, key=lambda r: str(r["id"]))

    # -- operations ---------------------------------------------------------------------

    def disconnect_here(self, user_id: str, reason: str, reconnect: bool) -> int:
        conns = list(self.node.users.get(user_id, ()))
        for conn in conns:
            conn.send(protocol.frame("DISCONNECT", {"reason": reason, "reconnect": reconnect}))
            conn.close(CLOSE_OPERATOR, "operator: disconnected (see the DISCONNECT frame)")  # metric label "operator"
        if conns:
            log.info("disconnected user %s (%d connections): %s", user_id, len(conns), reason)
        return len(conns)

    async def channel_counts(self) -> dict[str, int]:
        counts = {ch: len(subs) for ch, subs in self.node.hub.channels.items() if not is_internal(self.node, ch)}
        if self.node.redis is not None:
            for report in await self.reports():
                if report["id"] == self.node.id or not report["alive"]:
                    continue
                for ch, n in (await self.node.redis.hgetall(self._prefix + "subs:" + report["id"])).items():
                    key = ch.decode() if isinstance(ch, bytes) else ch
                    if not is_internal(self.node, key):  # (a node of an older version reported them)
                        counts[key] = counts.get(key, 0) + int(n)
        return counts

    async def user_connections(self, user_id: str) -> list[dict[str, Any]]:
        node = self.node
        if node.redis is None:
            rows = [{"connection_id": c.id, "device_id": c.device_id, "node": node.id, "connected_at": c.connected_at}
                    for c in node.users.get(user_id, ())]
        else:
            live = {(r["id"], r["boot"]) for r in await self.reports() if r["alive"]}
            key = self._prefix + "conns:" + user_id
            rows, stale = [], []
            for cid, raw in (await node.redis.hgetall(key)).items():
                cid = cid.decode() if isinstance(cid, bytes) else cid
                e = loads(raw)
                if (e["node"], e["boot"]) in live:
                    rows.append({"connection_id": cid, "device_id": e["device_id"], "node": e["node"],
                                 "connected_at": e["connected_at"]})
                elif (e["node"], e["boot"]) != (node.id, self.boot):
                    stale.append(cid)  # its node died without saying goodbye
            if stale:
                await node.redis.hdel(key, *stale)
        rows.sort(key=lambda r: r["connected_at"])
        for r in rows:
            r["connected_at"] = iso(r["connected_at"])
        return rows

    def router(self) -> APIRouter:
        router = APIRouter(prefix="/admin", tags=["admin"])
        feature = self

        @router.get("/channels", response_model=ChannelsOut)
        async def channels(node: NodeDep, who: Admin,
                           pattern: Annotated[str | None, Query(max_length=255, description=(
                               "a glob on channel names (`public.*`); every channel when omitted"))] = None,
                           limit: Annotated[int, Query(ge=1, le=1000)] = 1000) -> dict[str, Any]:
            """Channels with subscribers, busiest first: subscriber count, last offset and epoch."""
            counts = await feature.channel_counts()
            names = [c for c in counts if pattern is None or fnmatch.fnmatchcase(c, pattern)]
            names.sort(key=lambda c: (-counts[c], c))
            out = []
            for name in names[:limit]:
                position = (await node.broker.read(name, None)).position
                out.append({"channel": name, "subscribers": counts[name],
                            "offset": position.offset, "epoch": position.epoch})
            return {"channels": out}

        @router.get("/channels/{channel}/history", response_model=None, responses={200: {"model": HistoryOut}})
        async def history(channel: str, node: NodeDep, who: Admin,
                          since: Annotated[int | None, Query(ge=0, description=(
                              "return the events after this offset; the last `limit` events when omitted"))] = None,
                          limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> Response:
            """A channel's stored events by offset, as clients receive them. Node-to-node channels
            (`tether.control`, `internal.*`) are refused: 403, as they are not listed either."""
            protocol.check_channel(channel)
            if is_internal(node, channel):
                raise forbidden(f"channel {channel!r} is internal (node-to-node): the admin API does not show it")
            ttl = next((ns.history_ttl for ns in node.namespaces if ns.matches(channel)), node.settings.history_ttl)
            after = since
            if after is None:
                top = (await node.broker.read(channel, None)).position.offset
                after = max(0, top - limit)
            stream = await node.broker.read(channel, after, history_ttl=ttl, limit=limit)
            texts = [text for _, text in stream.events[:limit]]
            # The window loses the oldest events first: nothing is missing when the first one follows `since`.
            complete = after >= stream.position.offset or (bool(stream.events) and stream.events[0][0] == after + 1)
            body = ('{"publications":[' + ",".join(texts) + '],"offset":' + str(stream.position.offset)
                    + ',"epoch":' + dumps(stream.position.epoch) + ',"complete":' + dumps(complete) + "}")
            return Response(body, media_type="application/json")

        @router.get("/users/{user_id}/connections", response_model=ConnectionsOut)
        async def connections(user_id: str, who: Admin) -> dict[str, Any]:
            """The user's open connections on every node."""
            if not valid_id(user_id):
                raise bad_request("user_id must be 1-128 of A-Z a-z 0-9 _ . @ + -")
            return {"connections": await feature.user_connections(user_id)}

        @router.post("/users/{user_id}/disconnect", response_model=DisconnectOut)
        async def disconnect(user_id: str, body: DisconnectIn, node: NodeDep, who: Admin) -> dict[str, Any]:
            """Close every connection of the user, on every node: each gets `DISCONNECT {reason,
            reconnect}` and then close code 4100. Clients connect again only when `reconnect` is true
            (and nothing stops a client that ignores it: revoke its tokens to keep it out)."""
            if not valid_id(user_id):
                raise bad_request("user_id must be 1-128 of A-Z a-z 0-9 _ . @ + -")
            n = await node.count_user_connections(user_id)
            await node.publish(CONTROL, "DISCONNECT_USER",
                               {"user_id": user_id, "reason": body.reason, "reconnect": body.reconnect})
            log.warning("%s disconnected user %s: %s", who.user_id, user_id, body.reason)
            return {"disconnected": n}

        @router.get("/nodes", response_model=NodesOut)
        async def nodes(who: Admin) -> dict[str, Any]:
            """Every node of the cluster (this one alone on the embedded default)."""
            return {"nodes": [{"id": r["id"], "version": r["version"], "connections": r["connections"],
                               "healthy": bool(r["healthy"]) and r["alive"], "draining": r["draining"]}
                              for r in await feature.reports()]}

        @router.get("/stats", response_model=StatsOut)
        async def stats(who: Admin) -> dict[str, Any]:
            """Running totals over the live nodes (the console charts their rates)."""
            live = [r for r in await feature.reports() if r["alive"]]
            return {"connections": sum(r["connections"] for r in live),
                    "deliveries_total": sum(r["deliveries_total"] for r in live),
                    "publishes_total": sum(r["publishes_total"] for r in live),
                    "time": now_iso(), "nodes": len(live)}

        return router
