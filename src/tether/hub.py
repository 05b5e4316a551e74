"""This node's subscriptions: which local connections get a channel's events."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tether.broker.base import Broker

if TYPE_CHECKING:
    from tether.connection import Connection
    from tether.metrics import Metrics


class Hub:
    def __init__(self, broker: Broker, metrics: "Metrics") -> None:
        self.broker = broker
        self.metrics = metrics
        self.channels: dict[str, dict["Connection", None]] = {}

    async def add(self, conn: "Connection", channel: str) -> None:
        subs = self.channels.get(channel)
        if subs is None:
            subs = self.channels[channel] = {}
            subs[conn] = None
            await self.broker.subscribe(channel)
        else:
            subs[conn] = None

    async def remove(self, conn: "Connection", channel: str) -> None:
        subs = self.channels.get(channel)
        if subs is None or conn not in subs:
            return
        del subs[conn]
        if not subs:
            del self.channels[channel]
            await self.broker.unsubscribe(channel)

    def deliver(self, channel: str, offset: int, text: str, exclude: str | None) -> None:
        """The fan-out loop: one encoded frame, appended to each subscriber's queue, no awaits."""
        subs = self.channels.get(channel)
        if not subs:
            return
        n = 0
        for conn in tuple(subs):
            if conn.id != exclude:
                conn.deliver(channel, offset, text)
                n += 1
        self.metrics.deliveries.inc(n)
