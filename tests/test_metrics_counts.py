"""/metrics counts what its names say: one user publish is one publish, whatever events features add."""

from __future__ import annotations

from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import ServerProcess, WsClient, started_node
from tether.core.auth import Identity
from tether.core.connection import Connection
from tether.features.channels import ChannelsFeature
from tether.wire.jsonutil import dumps


def metrics(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(server.url + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(m: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return m.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_one_publish_counts_once_and_internal_events_are_not_publishes(server: ServerProcess) -> None:
    # Connections, a second device (DEVICE_CONNECTED), a session with a join and a chat message:
    # all of them events, none of them a publish.
    alice = await WsClient.connect(server, "alice:phone")
    await WsClient.connect(server, "alice:tablet")
    bob = await WsClient.connect(server, "bob")
    carol = await WsClient.connect(server, "carol")
    async with server.http("alice") as http:
        sid = (await http.post("/api/sessions", json={"title": "Count"})).json()["id"]
        await http.post(f"/api/sessions/{sid}/messages", json={"message": "hi"})
    await bob.request("SUBSCRIBE", {"channel": "public.count"})
    await carol.request("SUBSCRIBE", {"channel": "public.count"})
    before = metrics(server)
    assert value(before, "tether_publishes_total") == 0
    assert value(before, "tether_events_total") >= 3  # the device, session and chat events

    await alice.request("PUBLISH", {"channel": "public.count", "data": {"n": 1}})
    await bob.next("PUBLICATION")
    await carol.next("PUBLICATION")
    after = metrics(server)
    assert value(after, "tether_publishes_total") == 1
    assert value(after, "tether_events_total") - value(before, "tether_events_total") == 1
    assert value(after, "tether_deliveries_total") - value(before, "tether_deliveries_total") == 2  # bob, carol

    async with server.http(api_key=True) as backend:
        await backend.post("/api/channels/public.count/publish", json={"type": "NEWS", "data": {}})
        await backend.post("/api/users/bob/events", json={"type": "CREDIT_UPDATE", "data": {"balance": 1}})
    await alice.request("UPDATE_PROGRESS", {"shootId": "s", "processedCount": 1, "totalCount": 2})
    assert value(metrics(server), "tether_publishes_total") == 4


async def test_frame_types_a_client_makes_up_do_not_become_metric_labels(server: ServerProcess) -> None:
    client = await WsClient.connect(server, "mallory")
    for i in range(5):
        await client.send(f"MADE_UP_{i}", {})
    await client.send_raw("not json")
    await client.request("SUBSCRIBE", {"channel": "public.x"})  # in order: the made-up ones were handled
    m = metrics(server)
    assert value(m, "tether_messages_in_total", type="unknown") == 5
    assert value(m, "tether_messages_in_total", type="invalid") == 1
    assert value(m, "tether_messages_in_total", type="SUBSCRIBE") == 1
    assert not any(labels and dict(labels).get("type", "").startswith("MADE_UP") for _, labels in m)


async def test_an_event_handed_over_twice_is_delivered_and_counted_once(tmp_path: Path) -> None:
    # The Redis broker filling a gap may hand a subscriber the same event twice; the
    # connection sends it once, and tether_deliveries_total must say once too.
    async with started_node(tmp_path, ChannelsFeature) as node:
        conn = Connection(node, Identity("bob"))
        await node.open(conn)
        await conn.handle(dumps({"type": "SUBSCRIBE", "data": {"channel": "public.d"}, "id": "1"}))
        count = lambda: node.metrics.registry.get_sample_value("tether_deliveries_total")  # noqa: E731
        before, queued = count(), len(conn.take())
        node.hub.deliver("public.d", 100, '{"n":1}', None)
        node.hub.deliver("public.d", 100, '{"n":1}', None)  # the same offset again
        node.hub.deliver("public.d", 99, '{"n":0}', None)  # an older one
        assert conn.take() == ['{"n":1}'] and queued >= 1
        assert count() - before == 1
        await node.close(conn)
