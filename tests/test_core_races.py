"""Races and leaks in the sans-I/O core, driven directly (no sockets): each test pins
an interleaving that once left state behind or ran a write twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.auth import Identity
from tether.channels import ChannelsFeature
from tether.config import Settings
from tether.connection import Connection
from tether.feature import Feature


class FailingHook(Feature):
    name = "failing-hook"

    async def connected(self, conn: Connection) -> None:
        raise RuntimeError("connect hook failed")


async def test_a_failed_open_leaves_no_connection_behind(tmp_path: Path) -> None:
    # The ASGI transport calls node.open() outside its cleanup; a failing connect hook
    # used to leave the connection in node.connections, node.users and the hub forever.
    from tether.node import Node

    node = Node(Settings(data_dir=tmp_path, ping_interval=1000), features=[ChannelsFeature, FailingHook])
    await node.start()
    try:
        conn = Connection(node, Identity("alice"))
        with pytest.raises(RuntimeError):
            await node.open(conn)
        assert node.connections == {}
        assert node.users == {}
        assert "users.alice" not in node.hub.channels
        await node.close(conn)  # a transport's own cleanup afterwards is harmless
    finally:
        await node.stop()
