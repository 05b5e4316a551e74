"""Prometheus metrics, one registry per node so tests can run several in one process."""

from __future__ import annotations

from typing import Any, Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def labelled(metric: Any) -> Callable[[str], Any]:
    """``metric.labels(value)``, remembered: prometheus-client looks a child up under a lock on
    every call, a cost per frame on the hot path. Only for labels from a bounded set."""
    children: dict[str, Any] = {}

    def child(value: str) -> Any:
        c = children.get(value)
        if c is None:
            c = children[value] = metric.labels(value)
        return c

    return child


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("tether_connections", "Open WebSocket connections", registry=r)
        self.connections_opened = Counter("tether_connections_opened", "WebSocket connections opened", registry=r)
        self.messages_in = Counter("tether_messages_in", "Frames received from clients", ["type"], registry=r)
        self.messages_out = Counter("tether_messages_out", "Frames written to clients", registry=r)
        self.deliveries = Counter("tether_deliveries", "Channel events delivered to connections", registry=r)
        # One per publish a client or backend asked for (PUBLISH, REST channel publish, a pushed user
        # event); the events features emit themselves (joins, chat, device and lock changes) are not publishes.
        self.publishes = Counter("tether_publishes", "Publishes asked for by clients and backends", registry=r)
        self.events = Counter("tether_events", "Events stored and fanned out, every feature's included", registry=r)
        self.publish_latency = Histogram(
            "tether_publish_latency_seconds", "Time to store and fan out one event", buckets=LATENCY_BUCKETS, registry=r
        )
        self.request_latency = Histogram(
            "tether_request_latency_seconds", "WebSocket request handling time", ["type"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.messages_in_of = labelled(self.messages_in)  # "type": known frame types, "unknown", "invalid"
        self.request_latency_of = labelled(self.request_latency)  # "type": the node's ops only
        self.errors = Counter("tether_errors", "Errors answered, by code", ["code"], registry=r)
        self.disconnects = Counter("tether_disconnects", "Connections closed by the server, by reason", ["reason"], registry=r)
        self.locks_held = Gauge("tether_locks_held", "Locks currently held", registry=r)
        self.presence_members = Gauge("tether_presence_members", "Present (key, user) pairs", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
