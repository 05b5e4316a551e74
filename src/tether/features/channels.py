"""Channels: SUBSCRIBE / UNSUBSCRIBE / PUBLISH over WebSocket, publish over REST."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Header
from pydantic import BaseModel, Field

from tether.broker.base import Position
from tether.core.auth import Identity
from tether.core.connection import Connection, Op
from tether.core.idempotency import answer_on_publish
from tether.core.node import Feature
from tether.features.rest import Caller, NodeDep, once
from tether.wire import protocol
from tether.wire.errors import TetherError, bad_request
from tether.wire.jsonutil import dumps


class PublishBody(BaseModel):
    type: str = Field("PUBLICATION", description="UPPER_SNAKE_CASE event type",
                      json_schema_extra={"pattern": protocol.TYPE_RE.pattern})  # checked by the node (400)
    data: Any = Field(..., description="the event payload (any JSON)")


def publishable_type(who: Identity, value: Any, requests: Any = ()) -> str:
    """A user's publish always goes out as a ``PUBLICATION``, whatever ``type`` it names: every
    other type (the protocol's, the modules' events such as ``SESSION_ENDED``) would let it pass
    for the server. The API key may give any type but the protocol's own frames and requests."""
    etype = protocol.check_type(value)
    if not who.is_server:
        return "PUBLICATION"
    if etype in protocol.PROTOCOL_TYPES or etype in requests:
        raise bad_request(f"'type': {etype} is a frame of the protocol itself and cannot be published")
    return etype


def published(channel: str, position: Position, **more: Any) -> dict[str, Any]:
    """A publish's answer (also stored with its idempotency record, for a retry after a crash)."""
    return {"channel": channel, "offset": position.offset, "epoch": position.epoch, **more}


class ChannelsFeature(Feature):
    name = "channels"

    def ops(self) -> dict[str, Op]:
        return {"SUBSCRIBE": self.subscribe, "UNSUBSCRIBE": self.unsubscribe, "PUBLISH": self.publish}

    async def subscribe(self, conn: Connection, data: dict[str, Any]) -> Any:
        channel = protocol.check_channel(data.get("channel"))
        if not isinstance(data.get("presence", False), bool):
            raise bad_request("'presence' must be true or false")
        fresh = channel not in conn.channels
        reply = await conn.subscribe(channel, data.get("since"))
        try:
            for f in self.node.features:
                await f.subscribed(conn, channel, data)
        except BaseException:
            await conn.abandon(channel, fresh)  # a refused new subscriber gets none of the held events
            raise
        return reply

    async def unsubscribe(self, conn: Connection, data: dict[str, Any]) -> Any:
        channel = protocol.check_channel(data.get("channel"))
        if channel == f"users.{conn.user_id}":
            raise bad_request("a connection stays subscribed to its own user channel")
        await conn.unsubscribe(channel)
        for f in self.node.features:
            await f.unsubscribed(conn, channel)
        return {"channel": channel}

    async def publish(self, conn: Connection, data: dict[str, Any]) -> Any:
        channel = protocol.check_channel(data.get("channel"))
        if "data" not in data:
            raise bad_request("PUBLISH needs 'data'")
        await self.node.namespaces.may_publish(conn.identity, channel)
        answer_on_publish(lambda position: published(channel, position))
        position = await self.node.publish(channel, "PUBLICATION", data["data"])
        self.node.metrics.publishes.inc()
        return published(channel, position)

    def router(self) -> APIRouter:
        router = APIRouter(tags=["channels"])

        @router.post("/channels/{channel}/publish")
        async def publish(channel: str, body: PublishBody, node: NodeDep, who: Caller,
                          idempotency_key: str | None = Header(None)) -> dict[str, Any]:
            """Broadcast an event on a channel (server API key, or a user the namespace lets publish; a user's
            event goes out as ``PUBLICATION`` whatever ``type`` says, and the answer says which type went out)."""
            protocol.check_channel(channel)
            event_type = publishable_type(who, body.type, node.ops)
            await node.namespaces.may_publish(who, channel)
            size = len(dumps(body.data))  # the same bound as a WebSocket PUBLISH, whose frame holds the data
            if size > node.settings.max_frame_bytes:
                raise TetherError("too_large", f"data is {size} bytes of JSON, over the "
                                               f"{node.settings.max_frame_bytes}-byte frame limit", field="data")

            async def run() -> dict[str, Any]:
                answer_on_publish(lambda position: published(channel, position, type=event_type))
                position = await node.publish(channel, event_type, body.data)
                node.metrics.publishes.inc()
                return published(channel, position, type=event_type)

            return await once(node, who, f"rest:publish {channel}", idempotency_key, run)  # type: ignore[no-any-return]

        return router
