"""What a feature's REST routes depend on: the caller's identity and the node serving it.

Features declare their routes with FastAPI's ``APIRouter``; the server layer
(``tether.server``) builds the application, its middleware and error handlers.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Awaitable, Callable

from annotated_types import Ge, Le
from fastapi import Depends, Request
from pydantic import BeforeValidator, Strict

from tether.core.auth import Identity
from tether.core.idempotency import scope
from tether.core.node import Node
from tether.wire.errors import TetherError
from tether.wire.jsoncheck import INT_MAX


async def get_node(request: Request) -> Node:
    return request.app.state.node  # type: ignore[no-any-return]


async def get_caller(request: Request) -> Identity:
    node: Node = request.app.state.node
    who = node.auth.headers(request.headers.get("authorization"), request.headers.get("x-api-key"))
    if not who.is_server:  # a backend with the API key is trusted with its own pace
        wait = node.rest_rate(who.user_id)
        if wait is not None:
            raise TetherError("rate_limited", "too many requests: slow down and retry",
                              retry_after=max(1, math.ceil(wait)))
    return who


def _whole(value: Any) -> Any:
    return int(value) if isinstance(value, float) and value.is_integer() else value


# An integer body field: JSON has one number type, so 30.0 (Swift's JSONEncoder writes a Double so)
# is 30; "30", true and 30.5 are refused.
JsonInt = Annotated[int, Strict(), BeforeValidator(_whole)]
# The same, at least 1 (bounds must sit inside the one Annotated to reach the JSON schema when optional).
JsonVersion = Annotated[int, Strict(), Ge(1), Le(INT_MAX), BeforeValidator(_whole)]

NodeDep = Annotated[Node, Depends(get_node)]
Caller = Annotated[Identity, Depends(get_caller)]


def require_server(who: Identity) -> None:
    if not who.is_server:
        raise TetherError("forbidden", "this endpoint needs the server API key (X-API-Key)")


async def once(node: Node, who: Identity, op: str, key: str | None, fn: Callable[[], Awaitable[Any]]) -> Any:
    """Run a REST write once per ``Idempotency-Key`` (the same key again gets the first answer).
    A header that is present but empty is refused (400), never taken for no key."""
    if key is None:
        return await fn()
    return await node.idempotency.run(scope(who, op), key, fn)
