"""The chaos suite: writers and readers (tether.client) keep publishing and subscribing while
their links are reset, made half-open and stalled, and servers are SIGKILLed and restarted;
once the faults stop, nothing may be lost, duplicated or out of order.

Run with ``-s`` to see each test's summary line (faults by kind, events, findings).
"""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.chaos import SERVER_ARGS, Faults, LinkChaos, Workload, audit, backend_link_chaos, run_chaos, start_server
from tests.cluster import Cluster
from tests.faultproxy import FaultProxy
from tests.helpers import ServerProcess
from tests.services import with_query

SEED = int(os.environ.get("TETHER_CHAOS_SEED", "20240611"))
SECONDS = float(os.environ.get("TETHER_CHAOS_SECONDS", "25"))
CLUSTER_SECONDS = float(os.environ.get("TETHER_CHAOS_CLUSTER_SECONDS", "20"))


# A run injects 400-600 faults on an idle machine and fewer on a loaded one (the faults are paced
# in time); the floor only guards that chaos really happened.
MINIMUM_FAULTS = 200


def report(name: str, faults: Faults, work: Workload, histories: dict, minimum: int = MINIMUM_FAULTS) -> None:  # type: ignore[type-arg]
    result = audit(work, histories)
    line = result.line(name, faults) + f" seed={SEED}"
    print("\n" + line)
    for detail in result.details:
        print("  " + detail)
    assert result.ok and faults.total >= minimum and result.events >= work.published > 0, \
        "\n".join([line, *result.details])


async def test_embedded_server_under_chaos_loses_duplicates_and_reorders_nothing(tmp_path: Path) -> None:
    """Client links faulted, the server SIGKILLed and restarted on its data dir and port."""
    rng = random.Random(SEED)
    server = ServerProcess(tmp_path / "data", *SERVER_ARGS)
    await start_server(server)
    faults = Faults()
    work = Workload(rng, [server.port])
    try:
        await work.start()

        async def kill_and_restart(stop: asyncio.Event) -> None:
            kills = 3
            for _ in range(kills):
                await asyncio.sleep(rng.uniform(0.6, 1.0) * SECONDS / (kills + 1))
                if stop.is_set():
                    return
                server.kill()
                faults["server_kills"] += 1
                await asyncio.sleep(rng.uniform(0.1, 1.0))
                await start_server(server)

        await run_chaos(SECONDS, LinkChaos(rng, work.linked, faults), kill_and_restart)
        histories = await work.settle(server.url)
        report("embedded", faults, work, histories)
    finally:
        await work.close()
        server.kill()


def through(proxy: FaultProxy, url: str) -> str:
    """``url`` with its host and port replaced by the proxy's."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{proxy.port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


async def cluster_chaos(tmp_path: Path, name: str, rng: random.Random, *, node_kills: bool, backend_links: bool,
                        seconds: float = CLUSTER_SECONDS, writers: int = 3) -> None:
    """Three nodes whose links to Redis and PostgreSQL go through proxies, the workload given
    every node's URL, and the chaos asked for; then the audit."""
    probe = Cluster(tmp_path, 0)  # the service URLs (skips when PostgreSQL or Redis is down)
    redis_proxy = await FaultProxy(urlsplit(probe.redis_url).port or 6379).start()
    pg_proxy = await FaultProxy(urlsplit(probe.pg).port or 5432).start()
    cluster = Cluster(tmp_path, 3, *SERVER_ARGS, redis_url=through(redis_proxy, probe.redis_url))
    for node in cluster.nodes:  # every node reaches PostgreSQL through the proxy too
        node.env["TETHER_DATABASE_URL"] = with_query(through(pg_proxy, cluster.pg), schema=cluster.schema)
    faults = Faults()
    work = Workload(rng, [node.port for node in cluster.nodes], writers=writers)
    try:
        await asyncio.gather(*(start_server(node) for node in cluster.nodes))
        await work.start()

        async def kill_nodes(stop: asyncio.Event) -> None:
            rounds, everyone = 4, 2  # the third round kills every node at once
            for round in range(rounds):
                await asyncio.sleep(rng.uniform(0.6, 1.0) * seconds / (rounds + 1))
                if stop.is_set():
                    return
                victims = cluster.nodes if round == everyone else [rng.choice(cluster.nodes)]
                for node in victims:
                    node.kill()
                faults["cluster_kills" if round == everyone else "node_kills"] += 1
                await asyncio.sleep(rng.uniform(0.1, 1.0))
                await asyncio.gather(*(start_server(node) for node in victims))

        actors = [LinkChaos(rng, work.linked, faults)]
        if node_kills:
            actors.append(kill_nodes)
        if backend_links:
            actors += [backend_link_chaos("redis", redis_proxy, random.Random(rng.random()), faults, every=(0.08, 0.25),
                                          stall=(0.1, 0.6)),
                       backend_link_chaos("pg", pg_proxy, random.Random(rng.random()), faults, every=(0.2, 0.6))]
        await run_chaos(seconds, *actors)
        histories = await work.settle(cluster.nodes[0].url)
        report(name, faults, work, histories)
    finally:
        await work.close()
        await cluster.cleanup()  # (its Redis URL is the proxy's: close that after)
        await redis_proxy.close()
        await pg_proxy.close()


@pytest.mark.services
async def test_cluster_under_chaos_loses_duplicates_and_reorders_nothing(tmp_path: Path) -> None:
    """Client links faulted, single nodes SIGKILLed and restarted, once every node at once."""
    await cluster_chaos(tmp_path, "cluster", random.Random(SEED + 1), node_kills=True, backend_links=False)


@pytest.mark.services
async def test_cluster_with_faulty_redis_and_postgres_links_loses_duplicates_and_reorders_nothing(
        tmp_path: Path) -> None:
    """Client links faulted, and every node's links to Redis and PostgreSQL reset or stalled."""
    await cluster_chaos(tmp_path, "cluster backend links", random.Random(SEED + 2), node_kills=False,
                        backend_links=True, seconds=SECONDS)
