"""This node's subscriptions: which local connections get a channel's events."""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Protocol

from tether.broker.base import Broker
from tether.wire.protocol import CLOSE_RESYNC

if TYPE_CHECKING:
    from tether.core.metrics import Metrics


class Subscriber(Protocol):
    """What the hub needs of a connection (``tether.core.connection.Connection``)."""

    id: str

    def deliver(self, channel: str, offset: int, text: str) -> bool | None:
        """Take a channel event; truthy when it was queued to a client (a delivery)."""
        ...

    def drop(self, channel: str) -> None: ...

    def close(self, code: int, reason: str) -> None: ...


class Hub:
    def __init__(self, broker: Broker, metrics: "Metrics") -> None:
        self.broker = broker
        self.metrics = metrics
        self.channels: dict[str, dict[Subscriber, None]] = {}
        self._joining: dict[str, asyncio.Future[None]] = {}
        self._leaving: set[asyncio.Task[None]] = set()

    async def add(self, conn: Subscriber, channel: str) -> None:
        """Returns once this node receives the channel's events (a broker may need a round trip)."""
        subs = self.channels.get(channel)
        if subs is None:
            subs = self.channels[channel] = {}
            subs[conn] = None
            joining = self._joining[channel] = asyncio.ensure_future(self.broker.subscribe(channel))
            # Forgotten when the join lands, not when this caller leaves: a cancelled caller's
            # remove() must still see the join in flight and wait for it.
            joining.add_done_callback(lambda f: self._joined(channel, f))
            await asyncio.shield(joining)  # a cancelled caller must not cancel it for the others
        else:
            subs[conn] = None
            joining = self._joining.get(channel)
            if joining is not None:  # another connection's subscribe is still on its way
                await asyncio.shield(joining)

    async def remove(self, conn: Subscriber, channel: str) -> None:
        subs = self.channels.get(channel)
        if subs is None or conn not in subs:
            return
        del subs[conn]
        if not subs:
            del self.channels[channel]
            await self._leave(channel)

    def _joined(self, channel: str, joining: "asyncio.Future[None]") -> None:
        if self._joining.get(channel) is joining:
            del self._joining[channel]
        if not joining.cancelled():
            joining.exception()  # retrieved: each waiter got it already (or nobody waits any more)

    async def _leave(self, channel: str) -> None:
        """Tell the broker the last local subscriber left, after any join still on its way
        (an unsubscribe that overtook it would leave the node subscribed for good)."""
        joining = self._joining.get(channel)
        if joining is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(joining)
        if channel not in self.channels:
            await self.broker.unsubscribe(channel)

    def discard(self, conn: Subscriber, channel: str) -> None:
        """Remove at once, from inside a delivery (no await): the broker is told later."""
        subs = self.channels.get(channel)
        if subs is None or subs.pop(conn, False) is False:
            return
        conn.drop(channel)
        if not subs:
            del self.channels[channel]
            task = asyncio.get_running_loop().create_task(self._leave(channel))
            self._leaving.add(task)  # the loop keeps only a weak reference to a task
            task.add_done_callback(self._leaving.discard)

    def lost(self, channel: str) -> None:
        """The broker cannot vouch for the channel's feed: make its subscribers reconnect
        and resubscribe with ``since`` (recovering from history, or learning ``recovered: false``)."""
        for conn in tuple(self.channels.get(channel, ())):
            conn.close(CLOSE_RESYNC, f"resync: the feed of {channel} was interrupted; reconnect and resubscribe")

    def deliver(self, channel: str, offset: int, text: str, exclude: str | None) -> None:
        """The fan-out loop: one encoded frame, appended to each subscriber's queue, no awaits."""
        subs = self.channels.get(channel)
        if not subs:
            return
        n = 0
        for conn in tuple(subs):
            if conn.id != exclude:
                if conn.deliver(channel, offset, text):  # held or already sent: not (yet) a delivery
                    n += 1
        if n:
            self.metrics.deliveries.inc(n)
