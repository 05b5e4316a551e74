"""What a domain module plugs into a node: channel namespaces, WebSocket ops, REST routes, hooks.

Each concept of SPEC.md is one :class:`Feature` subclass in its own module
(``channels``, ``presence``, ``locks``, ``documents``, ``sessions``, ``devices``,
``streams``); the node calls every feature's hooks, so no module reaches into
another's code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable

from fastapi import APIRouter

from tether.namespaces import Namespace

if TYPE_CHECKING:
    from tether.connection import Connection
    from tether.node import Node

#: A WebSocket request handler: (connection, request data) -> ACK data.
Op = Callable[["Connection", dict[str, Any]], Awaitable[Any]]


class Feature:
    name = "feature"

    def __init__(self, node: "Node") -> None:
        self.node = node

    def namespaces(self) -> list[Namespace]:
        return []

    def ops(self) -> dict[str, Op]:
        return {}

    def router(self) -> APIRouter | None:
        return None

    async def start(self) -> None:
        """Create tables, start timers."""

    async def stop(self) -> None: ...

    async def connected(self, conn: "Connection") -> None:
        """After CONNECTED went out and ``users.{id}`` is subscribed."""

    async def disconnected(self, conn: "Connection") -> None: ...

    async def subscribed(self, conn: "Connection", channel: str, data: dict[str, Any]) -> None:
        """After a SUBSCRIBE was acknowledged (``data`` is the request, e.g. ``presence``)."""

    async def unsubscribed(self, conn: "Connection", channel: str) -> None: ...
