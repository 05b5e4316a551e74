"""A rolling restart of 3 nodes (PostgreSQL + Redis, behind deploy/haproxy.cfg, each node on
deploy/tether-cluster.toml) under publish load, with every client on tether.client: nothing
lost, nothing duplicated, and the reconnects of a drained node's clients spread over time
wherever they land, not a herd.

The figures (events, reconnects per node per second, the peak against the cluster's size) are
printed; run with `-s` to see them.
"""

from __future__ import annotations

import asyncio
import collections
import json
from concurrent.futures import ThreadPoolExecutor
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import Cluster
from tests.helpers import API_KEY, ServerProcess, free_port
from tests.services import unique, with_query
from tests.test_deploy import CONFIG as HAPROXY_CONFIG
from tests.test_deploy import haproxy, lb_env
from tether.client import Backoff, Client

pytestmark = pytest.mark.services

ROOT = Path(__file__).resolve().parent.parent
NODE_CONFIG = ROOT / "deploy" / "tether-cluster.toml"
SUBSCRIBERS = 90  # with the publishers about 31 clients a node: every drained node has enough for
PUBLISHERS = 3    # the spread check to tell a herd from jitter (see herd_bound)
MIN_MOVED = 25
RATE = 4.0  # publishes per second per publisher
RESTART_JITTER = 2.0  # the Python client reconnects after uniform(0, 2 s) when closed with 1012
OPENED = re.compile(r"^tether_connections_opened_total ([0-9.e+]+)$", re.M)


class Sampler:
    """Polls each node's /metrics: connections opened, stamped, per node process."""

    def __init__(self, nodes: list[ServerProcess]) -> None:
        self.nodes = nodes
        self.samples: dict[int, list[tuple[float, float]]] = collections.defaultdict(list)  # node -> (t, opened)
        self.base: dict[int, float] = collections.defaultdict(float)  # counts of earlier lives of a node
        self.running = True

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=1) as http:
            while self.running:
                for i, node in enumerate(self.nodes):
                    try:
                        text = (await http.get(node.url + "/metrics")).text
                    except httpx.HTTPError:
                        continue
                    m = OPENED.search(text)
                    if m:
                        value = float(m.group(1))
                        last = self.samples[i][-1][1] if self.samples[i] else 0.0
                        if value + self.base[i] < last:  # the node restarted: its counter began again
                            self.base[i] = last
                        self.samples[i].append((time.monotonic(), value + self.base[i]))
                await asyncio.sleep(0.1)

    def peak_per_second(self, node: int, start: float, end: float) -> int:
        """The most connections the node opened within any 1-second window of [start, end]."""
        points = [(t, v) for t, v in self.samples[node] if start <= t <= end]
        best = 0.0
        for i, (t0, v0) in enumerate(points):
            for t1, v1 in points[i + 1:]:
                if t1 - t0 > 1.0:
                    break
                best = max(best, v1 - v0)
        return int(best)


async def routed_to(front: str, node_id: str) -> bool:
    """Does the balancer send a new WebSocket to this node? (It prefers an empty node: leastconn.)"""
    probe = Client(front, f"probe{unique()}:x", backoff=Backoff(base=0.1, cap=0.2, max_attempts=3))
    try:
        await asyncio.wait_for(probe.connect(), 5)
        async with httpx.AsyncClient(base_url=front, headers={"X-API-Key": API_KEY}, timeout=5) as http:
            conns = (await http.get(f"/api/admin/users/{probe.user_id}/connections")).json()["connections"]
        return any(c["node"] == node_id for c in conns)
    except Exception:
        return False
    finally:
        await probe.close()


async def test_rolling_restart_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    binary = haproxy()
    cluster = Cluster(tmp_path, 3, "--config", str(NODE_CONFIG))
    for node in cluster.nodes:  # the example file, with this machine's services and loopback dev auth
        node.env.update(TETHER_AUTH="dev", TETHER_HOST="127.0.0.1", TETHER_LOG_LEVEL="info",
                        # a small pool: the machine's PostgreSQL is shared with other suites
                        TETHER_DATABASE_URL=with_query(node.env["TETHER_DATABASE_URL"], pool_max="3"))
    port = free_port()
    front = f"http://127.0.0.1:{port}"
    clients: list[Client] = []
    sampler = Sampler(cluster.nodes)
    lb: subprocess.Popen[bytes] | None = None
    try:
        with ThreadPoolExecutor(len(cluster.nodes)) as pool:  # as Cluster.start, with room for a loaded machine
            list(pool.map(lambda n: n.start(timeout=60), cluster.nodes))
        lb = subprocess.Popen([binary, "-db", "-f", str(HAPROXY_CONFIG)], env=lb_env(port, cluster.nodes),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        async def main() -> None:
            async with httpx.AsyncClient(timeout=2) as http:
                for _ in range(200):
                    try:
                        if (await http.get(front + "/healthz")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.05)
            channel = unique("public.rolling")
            received: list[list[tuple[int, int]]] = []

            def backoff() -> Backoff:
                return Backoff(base=0.2, cap=1.0, max_attempts=None)

            # When each client set off to reconnect: the moment its sleep while reconnecting ended
            # (its `sleep` is injectable), so a stalled loop shows as the herd it causes. Where it
            # landed is asked of the admin API.
            attempts: dict[str, list[float]] = collections.defaultdict(list)

            def recording(client: Client, user: str) -> Client:
                async def sleep(delay: float) -> None:
                    await asyncio.sleep(delay)
                    if client.state == "reconnecting":
                        attempts[user].append(time.monotonic())
                client.sleep = sleep
                return client

            async def subscriber(i: int) -> None:
                sub = recording(Client(front, f"sub{i}:d", backoff=backoff()), f"sub{i}")
                clients.append(sub)
                got: list[tuple[int, int]] = []
                received.append(got)
                await sub.connect()
                await sub.subscribe(channel, lambda e: got.append((e["data"]["p"], e["data"]["n"])))

            await asyncio.gather(*(subscriber(i) for i in range(SUBSCRIBERS)))
            publishers = [recording(Client(front, f"pub{p}:d", backoff=backoff()), f"pub{p}")
                          for p in range(PUBLISHERS)]
            clients.extend(publishers)
            for pub in publishers:
                await pub.connect()
            sampling = asyncio.ensure_future(sampler.run())
            stop = asyncio.Event()
            writes: list[list[Any]] = [[] for _ in publishers]

            async def publish(p: int) -> None:
                n = 0
                while not stop.is_set():
                    writes[p].append(await publishers[p].publish(channel, {"p": p, "n": n}))
                    n += 1
                    await asyncio.sleep(1 / RATE)

            load = [asyncio.ensure_future(publish(p)) for p in range(PUBLISHERS)]
            await asyncio.sleep(1.5)

            async with httpx.AsyncClient(base_url=front, headers={"X-API-Key": API_KEY}, timeout=5) as admin:
                node_ids = {}
                for i, node in enumerate(cluster.nodes):
                    async with httpx.AsyncClient(base_url=node.url, timeout=5) as direct:
                        node_ids[i] = (await direct.get("/livez")).json()["node"]
                restarts = []
                for i, node in enumerate(cluster.nodes):
                    before = await per_node_connections(admin)
                    moved = before.get(node_ids[i], 0)
                    started = time.monotonic()
                    assert node.proc is not None
                    node.proc.send_signal(signal.SIGTERM)
                    code = await asyncio.to_thread(node.proc.wait, 40)
                    drained = time.monotonic()
                    # in a thread: the clients (this event loop) reconnect meanwhile, as they would
                    await asyncio.to_thread(node.start, timeout=60)
                    await asyncio.sleep(2.5)  # HAProxy's `rise 2` x `inter 1s`; then make sure
                    for _ in range(100):  # the balancer sends new sockets to it again
                        if await routed_to(front, node_ids[i]):
                            break
                        await asyncio.sleep(0.5)
                    landed: dict[str, list[float]] = collections.defaultdict(list)  # node id -> attempt times
                    for user, times in attempts.items():
                        mine = [t for t in times if t >= started]
                        if mine:
                            conns = (await admin.get(f"/api/admin/users/{user}/connections")).json()["connections"]
                            landed[conns[0]["node"] if conns else "?"].append(mine[0])
                    restarts.append((i, code, moved, started, drained, landed))
                stop.set()
                await asyncio.gather(*load)
                for pub in publishers:
                    await pub.flush(timeout=60)
                offsets = sorted([(await w)["offset"] for ws in writes for w in ws])
                total = sum(len(ws) for ws in writes)

                for _ in range(600):  # every subscriber catches up
                    if all(len(got) >= total for got in received):
                        break
                    await asyncio.sleep(0.05)
                history = (await admin.get(f"/api/admin/channels/{channel}/history",
                                           params={"since": 0, "limit": 1000})).json()
            sampler.running = False
            await sampling

            stored = [(e["data"]["p"], e["data"]["n"]) for e in history["publications"]]
            expected = sorted((p, n) for p in range(PUBLISHERS) for n in range(len(writes[p])))
            lost = sum(len(set(expected) - set(got)) for got in received)
            duplicated = sum(len(got) - len(set(got)) for got in received)
            print(f"\nrolling restart: {len(cluster.nodes)} nodes, {SUBSCRIBERS} subscribers + {PUBLISHERS} publishers "
                  f"(tether.client) behind HAProxy; {total} events published, {total * SUBSCRIBERS} deliveries expected")
            print(f"  stored {len(stored)} (duplicates {len(stored) - len(set(stored))}), "
                  f"lost {lost}, duplicated {duplicated}")
            # (clients moved, most set off towards one node in a second, most set off in a second)
            peaks: list[tuple[int, int, int]] = []
            name = {node_id: f"node{j}" for j, node_id in node_ids.items()}  # admin API id -> node{j}
            for i, code, moved, started, drained, landed in restarts:
                served = {j: sampler.peak_per_second(j, started, started + 4) for j in range(len(cluster.nodes)) if j != i}
                set_off = {name.get(node, node): peak_in_a_second(times) for node, times in sorted(landed.items())}
                print(f"  node{i}: exit code {code} {drained - started:.2f} s after SIGTERM (its own drain, from its "
                      f"log: {drain_seconds(cluster.nodes[i].log):.2f} s), {moved} clients moved to "
                      f"{ {name.get(n, n): len(t) for n, t in sorted(landed.items())} }; peak reconnects per node in "
                      f"one second: set off {set_off}, opened (server /metrics) { {f'node{j}': v for j, v in served.items()} }")
                assert code == 0 and sum(map(len, landed.values())) == moved
                # Spread over the jitter window, not a herd, wherever the balancer sent them (leastconn
                # sends most to the node restarted just before): of the `moved` clients of the drained
                # node, at most herd_bound(moved) set off within any one second, all nodes together,
                # so no node takes more (a herd the balancer splits evenly fails it too).
                assert moved >= MIN_MOVED, f"node{i} had {moved} clients: too few for the spread check"
                pooled = peak_in_a_second([t for times in landed.values() for t in times])
                assert pooled <= herd_bound(moved), (f"node{i}: {pooled} of {moved} reconnects within one second "
                                                     f"(bound {herd_bound(moved):.1f}); per node {set_off}")
                peaks.append((moved, max(set_off.values()), pooled))
            cluster_size = len(cluster.nodes)
            for moved, peak, pooled in peaks:
                print(f"  peak reconnect rate on one node: {peak}/s of {moved} moved clients ({peak / moved:.0%}; "
                      f"all nodes {pooled}/s, bound {herd_bound(moved):.1f}) with {cluster_size} nodes; spread evenly over the "
                      f"{cluster_size - 1} others it would be {moved / RESTART_JITTER / (cluster_size - 1):.1f}/s, "
                      f"all on one node {moved / RESTART_JITTER:.1f}/s, a herd {moved}/s")
            assert sorted(stored) == expected and offsets == list(range(1, total + 1))
            assert lost == 0 and duplicated == 0
            assert all(got == stored for got in received)  # each in the channel's order

        await asyncio.wait_for(main(), 85)
    finally:
        sampler.running = False
        for c in clients:
            await c.close()
        if lb is not None:
            lb.kill()
            lb.wait()
        await cluster.cleanup()


def drain_seconds(log: Path) -> float:
    """From the node's first "draining" line to its first "Finished server process" line after it."""
    stamps: dict[str, datetime] = {}
    for raw in log.read_text().splitlines():
        if raw.startswith("{"):
            entry = json.loads(raw)
            key = "start" if entry["msg"].startswith("draining:") else "end" if entry["msg"].startswith("Finished") else ""
            if key and not (key == "end" and "start" not in stamps) and key not in stamps:
                stamps[key] = datetime.fromisoformat(entry["ts"].replace("Z", "+00:00"))
    return (stamps["end"] - stamps["start"]).total_seconds()


def herd_bound(moved: int) -> float:
    """The most of a drained node's ``moved`` clients that may set off within one second, all
    nodes together (so also the most one node may take).

    Each client sets off after uniform(0, RESTART_JITTER = 2 s), so a 1 s window holds about half
    of them, even if all go to the same node (and leastconn sends most to one); the busiest 1 s
    window holds more by chance. With the binomial's standard deviation sqrt(n)/2 the bound is
    n/2 + 4.5 sd = n/2 + 2.25 sqrt(n): simulated for n = 20…80 (200,000 draws each), the busiest
    second of n uniform set-offs exceeds it in fewer than 1 in 10,000 draws. A herd (no jitter)
    puts all n in one second, over the bound for n >= 21; MIN_MOVED = 25 keeps the check real."""
    return moved / RESTART_JITTER + 2.25 * moved ** 0.5


def peak_within(times: list[float], window: float) -> int:
    times = sorted(times)
    return max((sum(1 for u in times[k:] if u - t <= window) for k, t in enumerate(times)), default=0)


def peak_in_a_second(times: list[float]) -> int:
    return peak_within(times, 1.0)


async def per_node_connections(admin: httpx.AsyncClient) -> dict[str, int]:
    return {n["id"]: n["connections"] for n in (await admin.get("/api/admin/nodes")).json()["nodes"]}
