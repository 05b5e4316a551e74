"""The workloads, each run on every system in turn, with the same load generator."""

from __future__ import annotations

import platform
import statistics
import time
from array import array
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

from bench import ops as _ops
from bench import pin, workers
from bench.soak import soak
from bench.stats import ctx, percentile
from bench.systems import OPS_ONLY, Server, cpu_seconds, machine_busy


@dataclass
class Sizes:
    fanout: int = 1000  # subscribers on one channel
    many: int = 5000  # connections, each on its own channel plus one shared
    idle: int = 10000  # idle connections for memory per connection
    latency_rate: int = 10000  # deliveries/s for the latency run (well under every system's saturation)
    seconds: float = 5.0  # measuring window per phase
    warmup: float = 1.0
    procs: int = 3  # subscriber processes
    op_clients: int = 16  # concurrent clients per Tether op (ops workload)
    recover: int = 1000  # clients recovering after a server crash
    missed: int = 20  # events published while they are away
    rooms: int = 1000  # rooms workload: rooms …
    members: int = 10  # … of this many members, each publishing to its room
    repeat: int = 5  # latency windows per system (fan-out, rooms, cluster): p50/p99 are their medians
    pin: int = 1  # 1: during latency windows the server gets one CPU, the load generator the others (bench.pin)
    nodes: int = 2  # cluster workload: one node, then this many
    soak_seconds: float = 240.0  # soak workload (bench.soak): how long, sampled every soak_sample s
    soak_sample: float = 10.0
    soak_conns: int = 300  # subscriber connections …
    soak_churn: float = 20.0  # … of which this many reconnect each second
    soak_rate: float = 300.0  # publishes/s over soak_rooms rooms
    soak_rooms: int = 50
    soak_rest: float = 30.0  # REST calls/s: heartbeats, lock acquire + release, document updates


QUICK = Sizes(fanout=300, many=1000, idle=2000, latency_rate=6000, seconds=2.0, warmup=0.7, procs=2,
              op_clients=16, recover=300, missed=20, rooms=200, members=10, repeat=3, soak_seconds=60.0)
SMOKE = Sizes(fanout=10, many=10, idle=20, latency_rate=200, seconds=0.3, warmup=0.2, procs=1,
              op_clients=2, recover=5, missed=3, rooms=3, members=3, repeat=1,
              soak_seconds=3.0, soak_sample=1.0, soak_conns=20, soak_churn=5.0, soak_rate=50.0, soak_rooms=5,
              soak_rest=15.0)

Status = Callable[[str], None]


class Load:
    """The subscriber processes of one workload, with their shared counters."""

    def __init__(self, system: str, port: int | list[int], conns: list[tuple[str, list[str]]], procs: int) -> None:
        """``port`` a list: connection ``j`` goes to ``port[j % len(port)]``, the publisher to ``port[0]``."""
        procs = max(1, min(procs, len(conns)))
        ports = port if isinstance(port, list) else [port]
        placed = [(user, chs, ports[j % len(ports)]) for j, (user, chs) in enumerate(conns)]
        self.system, self.port, self.n = system, ports[0], len(conns)
        self.shared = SimpleNamespace(
            totals=ctx.Array("q", procs, lock=False), closed=ctx.Array("q", procs, lock=False),
            ready=ctx.Value("q", 0), phase=ctx.Value("i", workers.Phase.COUNT, lock=False),
            stop=ctx.Value("i", 0, lock=False), published=ctx.Value("q", 0, lock=False),
            counting=ctx.Value("i", 0, lock=False),
            results=ctx.Queue(),
            # rooms workload: members publish (bench.workers._members)
            member_rate=ctx.Value("d", 0.0, lock=False), member_saturate=ctx.Value("i", 0, lock=False),
            member_sent=ctx.Array("q", procs, lock=False), member_fan=ctx.Value("q", 1, lock=False),
            member_budget=ctx.Value("q", 0, lock=False),
        )
        self.subs = [ctx.Process(target=workers.subscriber, args=(system, i, placed[i::procs], self.shared),
                                 daemon=True) for i in range(procs)]
        for p in self.subs:
            p.start()
        self.pub: Any = None

    def wait_ready(self, status: Status, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while self.shared.ready.value < self.n:
            if time.monotonic() > deadline or not all(p.is_alive() for p in self.subs):
                raise RuntimeError(f"{self.system}: only {self.shared.ready.value}/{self.n} connections set up")
            status(f"connecting {self.shared.ready.value}/{self.n}")
            time.sleep(0.1)

    def delivered(self) -> int:
        return sum(self.shared.totals)

    def dropped(self) -> int:
        return sum(self.shared.closed)

    def publish(self, plan: list[tuple[str, int]], rate: float, budget: int = 0) -> None:
        self.shared.stop.value = 0
        self.pub = ctx.Process(target=workers.publisher, args=(self.system, self.port, plan, rate, budget, self.shared),
                               daemon=True)
        self.pub.start()

    def stop_publishing(self) -> None:
        self.shared.stop.value = 1
        if self.pub is not None:
            self.pub.join(10)
            if self.pub.is_alive():
                self.pub.kill()
        self.pub = None

    def latencies(self) -> list[float]:
        self.shared.phase.value = workers.Phase.REPORT
        out: list[float] = []
        for _ in self.subs:
            _, raw = self.shared.results.get(timeout=60)
            a = array("d")
            a.frombytes(raw)
            out.extend(a)
        self.shared.phase.value = workers.Phase.COUNT
        return out

    def pids(self) -> list[int]:
        return [p.pid for p in self.subs] + ([self.pub.pid] if self.pub is not None else [])

    def close(self) -> None:
        self.stop_publishing()
        self.shared.phase.value = workers.Phase.EXIT
        for p in self.subs:
            p.join(10)
            if p.is_alive():
                p.kill()


def saturate(load: Load, server: Server | list[Server], plan: list[tuple[str, int]], budget: int, sizes: Sizes, status: Status) -> dict[str, Any]:
    """Deliveries/s with the publisher as fast as the system absorbs, plus where the CPU went."""
    load.shared.counting.value = 1  # latency is done: from now on subscribers only count
    load.publish(plan, 0, budget)
    status("saturating (warm-up)")
    time.sleep(sizes.warmup)
    pids = load.pids()
    servers = server if isinstance(server, list) else [server]
    result = window(load, servers, pids, sizes, status)
    load.stop_publishing()
    return result


def window(load: Load, servers: list[Server], pids: list[int], sizes: Sizes, status: Status) -> dict[str, Any]:
    """Deliveries/s and CPU over one measuring window, whoever publishes."""

    def server_cpu() -> float:
        return sum(cpu_seconds(s.pid) for s in servers)

    d0, t0 = load.delivered(), time.monotonic()
    each0 = [cpu_seconds(s.pid) for s in servers]
    s0, c0, m0 = server_cpu(), sum(cpu_seconds(p) for p in pids), machine_busy()
    status("saturating")
    time.sleep(sizes.seconds)
    d1, t1 = load.delivered(), time.monotonic()
    s1, c1, m1 = server_cpu(), sum(cpu_seconds(p) for p in pids), machine_busy()
    wall = t1 - t0
    each = [cpu_seconds(s.pid) for s in servers]
    result = {
        "deliveries_per_s": round((d1 - d0) / wall),
        # On a shared machine the server may not get a whole core; this one is comparable anyway.
        "deliveries_per_server_cpu_s": round((d1 - d0) / (s1 - s0)) if s1 > s0 else None,
        "server_cpu_pct": round(100 * (s1 - s0) / wall),
        "loadgen_cpu_pct": round(100 * (c1 - c0) / wall),
        # Share of all the machine's cores busy (100 = none left for a faster run).
        "machine_busy_pct": round(100 * (m1[0] - m0[0]) / (m1[1] - m0[1])) if m1[1] > m0[1] else None,
    }
    if len(servers) > 1:  # how evenly the nodes shared the work
        result["server_cpu_pct_each"] = [round(100 * (e1 - e0) / wall) for e0, e1 in zip(each0, each)]
    return result


def latency_windows(load: Load, servers: list[Server], sizes: Sizes, status: Status) -> dict[str, Any]:
    """Warm up, then ``sizes.repeat`` back-to-back latency windows of ``sizes.seconds``, pinned
    when ``sizes.pin`` (load already publishing at the fixed rate). p50/p99/p99.9 are the
    medians over the windows; ``*_runs`` hold each window's value (their min–max is the spread)."""
    loadgen = [p.pid for p in load.subs] + ([load.pub.pid] if load.pub is not None else [])
    runs: list[list[float]] = []
    with pin.pinned([s.pid for s in servers], loadgen, bool(sizes.pin)) as where:
        status(f"latency at {sizes.latency_rate} deliveries/s (warm-up)")
        time.sleep(sizes.warmup)
        for k in range(max(1, sizes.repeat)):
            load.shared.phase.value = workers.Phase.RECORD
            status(f"latency at {sizes.latency_rate} deliveries/s, window {k + 1}/{max(1, sizes.repeat)}")
            time.sleep(sizes.seconds)
            runs.append(load.latencies())
    out: dict[str, Any] = {}
    for key, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999)):
        values = [percentile(lat, q) for lat in runs]
        out[key + "_runs"] = values
        known = [v for v in values if v is not None]
        out[key] = round(statistics.median(known), 3) if known else None
    out["latency_rate_deliveries_per_s"] = sizes.latency_rate
    out["latency_windows"] = len(runs)
    out["latency_samples"] = sum(len(lat) for lat in runs)
    out["pinned"] = where
    return out


def fanout(system: str, sizes: Sizes, status: Status) -> dict[str, Any]:
    server = Server(system)
    try:
        return fanout_on(system, [server], sizes, status)
    finally:
        server.stop()


def fanout_on(system: str, servers: list[Server], sizes: Sizes, status: Status) -> dict[str, Any]:
    """Workload 1 on running servers: subscribers spread evenly over them, the publisher on the first."""
    n = sizes.fanout
    load = Load(system, [s.port for s in servers], [(f"s{i}", ["fan"]) for i in range(n)], sizes.procs)
    try:
        load.wait_ready(status)
        plan = [("fan", n)]
        rate = sizes.latency_rate / n
        load.publish(plan, rate)
        result: dict[str, Any] = {"subscribers": n}
        result.update(latency_windows(load, servers, sizes, status))
        load.stop_publishing()
        result["latency_samples_expected"] = int(rate * sizes.seconds * n) * result["latency_windows"]
        time.sleep(0.3)
        result.update(saturate(load, servers, plan, 64 * n, sizes, status))
        result["dropped_connections"] = load.dropped()
        return result
    finally:
        load.close()


def many_channels(system: str, sizes: Sizes, status: Status) -> dict[str, Any]:
    n = sizes.many
    server = Server(system)
    load = Load(system, server.port, [(f"m{i}", [f"c{i}", "shared"]) for i in range(n)], sizes.procs)
    try:
        load.wait_ready(status)
        # One round: a publish on each connection's own channel, then one on the shared channel.
        plan = [(f"c{i}", 1) for i in range(n)] + [("shared", n)]
        result: dict[str, Any] = {"connections": n}
        result.update(saturate(load, server, plan, 16 * n, sizes, status))
        result["dropped_connections"] = load.dropped()
        return result
    finally:
        load.close()
        server.stop()


def rooms(system: str, sizes: Sizes, status: Status) -> dict[str, Any]:
    """R rooms of M members, every member publishing to its room (delivered to all M, itself
    included): latency at a fixed total delivery rate, then deliveries/s at saturation."""
    r, m = sizes.rooms, sizes.members
    server = Server(system)
    load = Load(system, server.port, [(f"r{i}m{j}", [f"room{i}"]) for i in range(r) for j in range(m)], sizes.procs)
    shared = load.shared
    try:
        load.wait_ready(status)
        shared.member_fan.value = m
        per_member = sizes.latency_rate / (m * r * m)  # publishes/s per member: latency_rate deliveries/s in all
        shared.member_rate.value = per_member
        result: dict[str, Any] = {"rooms": r, "members": m, "member_publishes_per_s": round(per_member, 4)}
        result.update(latency_windows(load, [server], sizes, status))
        shared.member_rate.value = 0.0
        result["latency_samples_expected"] = int(sizes.latency_rate * sizes.seconds) * result["latency_windows"]
        time.sleep(0.3)
        shared.counting.value = 1
        shared.member_budget.value = 8 * r * m
        shared.member_saturate.value = 1
        status("saturating (warm-up)")
        time.sleep(sizes.warmup)
        result.update(window(load, [server], load.pids(), sizes, status))
        shared.member_saturate.value = 0
        result["dropped_connections"] = load.dropped()
        # Every publish reaches its room's M members: what arrived over what was sent (settles to 1.0).
        sent = sum(shared.member_sent) * m
        result["delivered_of_sent"] = round(load.delivered() / sent, 3) if sent else None
        return result
    finally:
        load.close()
        server.stop()


def idle(system: str, sizes: Sizes, status: Status) -> dict[str, Any]:
    n = sizes.idle
    server = Server(system)
    time.sleep(0.5)
    before = server.rss()
    load = Load(system, server.port, [(f"i{i}", []) for i in range(n)], sizes.procs)
    try:
        load.wait_ready(status)
        status("settling")
        time.sleep(max(1.0, sizes.warmup))
        after = server.rss()
        return {"connections": n, "bytes_per_connection": round((after - before) / n),
                "rss_before_bytes": before, "rss_after_bytes": after}
    finally:
        load.close()
        server.stop()


def cluster(system: str, sizes: Sizes, status: Status) -> dict[str, Any]:
    """Workload 1 on PostgreSQL + Redis: one node, then ``sizes.nodes`` nodes sharing them
    (subscribers split evenly, the publisher on the first node)."""
    import dataclasses
    import uuid

    from bench.systems import drop_scaled, scaled_env

    n = max(2, sizes.nodes)
    sizes = dataclasses.replace(sizes, pin=0)  # N nodes, Redis and PostgreSQL on one CPU would measure the squeeze
    out: dict[str, Any] = {"subscribers": sizes.fanout, "nodes": n}
    for nodes in (1, n):
        tag = f"bench_{nodes}n_{uuid.uuid4().hex[:8]}"
        env = scaled_env(tag)
        servers: list[Server] = []
        try:
            for _ in range(nodes):
                servers.append(Server(system, env=env))
            out[f"nodes_{nodes}"] = fanout_on(system, servers, sizes, lambda t, k=nodes: status(f"{k} node(s): {t}"))
        finally:
            for s in servers:
                s.stop()
            drop_scaled(tag)
    one, many = out["nodes_1"], out[f"nodes_{n}"]
    out.update({k: many[k] for k in ("deliveries_per_s", "p50_ms", "p99_ms", "p999_ms", "p50_ms_runs", "p99_ms_runs",
                                     "p999_ms_runs", "deliveries_per_server_cpu_s", "server_cpu_pct", "loadgen_cpu_pct",
                                     "machine_busy_pct")})
    # Deliveries per server CPU-second, one node against N (the N nodes' CPU summed).
    out["deliveries_per_server_cpu_s_1_node"] = one.get("deliveries_per_server_cpu_s")
    out[f"deliveries_per_server_cpu_s_{n}_nodes"] = many.get("deliveries_per_server_cpu_s")
    out[f"ratio_{n}_to_1"] = round(many["deliveries_per_s"] / one["deliveries_per_s"], 2) if one["deliveries_per_s"] else None
    # What each added node adds where each node has cores of its own: deliveries per server CPU-second.
    if one.get("deliveries_per_server_cpu_s") and many.get("deliveries_per_server_cpu_s"):
        out[f"ratio_{n}_to_1_per_server_cpu"] = round(many["deliveries_per_server_cpu_s"] / one["deliveries_per_server_cpu_s"], 2)
    # The most any added node could add here: the cores the one-node run left idle.
    if one.get("machine_busy_pct"):
        out[f"ratio_{n}_to_1_ceiling"] = round(100 / one["machine_busy_pct"], 2)
    return out


WORKLOADS: dict[str, Callable[[str, Sizes, Status], dict[str, Any]]] = {
    "rooms": rooms,
    "fanout": fanout,
    "many_channels": many_channels,
    "idle_connections": idle,
    "ops": _ops.ops,
    "recovery": _ops.recovery,
    "cluster": cluster,
    "soak": soak,
}
TETHER_ONLY = {"recovery", "cluster", "soak"}


def runs_on(workload: str, system: str) -> bool:
    """Does this workload run on this system? Some systems serve the ops workload only."""
    if system in OPS_ONLY:
        return workload == "ops"
    return workload not in TETHER_ONLY | {"ops"} or system == "tether"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        mem = int(open("/proc/meminfo").readline().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import os

    return {"cpu": cpu, "cpus": os.cpu_count(), "memory_bytes": mem, "python": platform.python_version(),
            "platform": platform.platform()}
