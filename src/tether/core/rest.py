"""What a feature's REST routes depend on: the caller's identity and the node serving it.

Features declare their routes with FastAPI's ``APIRouter``; the server layer
(``tether.server``) builds the application, its middleware and error handlers.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tether.core.auth import Identity
from tether.core.node import Node
from tether.wire.errors import TetherError


def get_node(request: Request) -> Node:
    return request.app.state.node  # type: ignore[no-any-return]


def get_caller(request: Request) -> Identity:
    node: Node = request.app.state.node
    return node.auth.headers(request.headers.get("authorization"), request.headers.get("x-api-key"))


NodeDep = Annotated[Node, Depends(get_node)]
Caller = Annotated[Identity, Depends(get_caller)]


def require_server(who: Identity) -> None:
    if not who.is_server:
        raise TetherError("forbidden", "this endpoint needs the server API key (X-API-Key)")
