"""Tether-only workloads: REST and WebSocket ops/s, and recovery after a crash.

Each op runs on ``op_clients`` concurrent clients spread over ``procs``
processes; every client does one op after another (closed loop), so ops/s is
what the server sustains at that concurrency and p50/p99 is each op's round
trip. A "lock" op is acquire + release, and a WebSocket "presence" op is
``SUBSCRIBE {presence: true}`` + ``UNSUBSCRIBE`` (WebSocket presence is a
subscription, not a heartbeat); each pair counts as one op.
"""

from __future__ import annotations

import asyncio
import time
from array import array
from typing import Any, Awaitable, Callable

import orjson

from bench.http import Http
from bench.stats import ctx, percentile
from bench.systems import API_KEY, Server, cpu_seconds
from bench.wire import DIALECTS, Client, connect
from bench.workers import _loop

OPS = ["presence", "lock", "document", "chat"]
TRANSPORTS = ["rest", "ws"]


class Rpc:
    """Requests with ids over one raw WebSocket (``bench.wire``), for op round trips."""

    def __init__(self, client: Client) -> None:
        self.c = client
        self.next_id = 0
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.connected = asyncio.get_running_loop().create_future()
        self.frames: list[dict[str, Any]] = []  # frames without an id (events), when kept
        self.keep = False
        client.on_frame = self._frame

    @classmethod
    async def open(cls, port: int, user: str) -> "Rpc":
        rpc = cls(await connect(DIALECTS["tether"], port, user))
        if rpc.c.ready and not rpc.connected.done():  # CONNECTED came with the handshake's reply
            rpc.connected.set_result({})
        await asyncio.wait_for(rpc.connected, 30)
        return rpc

    def _frame(self, raw: bytes) -> None:
        f = orjson.loads(raw)
        t = f.get("type")
        fut = self.waiting.pop(f.get("id"), None) if "id" in f else None
        if fut is not None:
            if not fut.done():
                fut.set_result(f)
        elif t == "CONNECTED":
            if not self.connected.done():
                self.connected.set_result(f)
        elif t == "PING":
            self.c.send(b'{"type":"PONG","data":{}}')
        elif self.keep:
            self.frames.append(f)

    async def request(self, type: str, data: dict[str, Any]) -> Any:
        self.next_id += 1
        rid = str(self.next_id)
        fut = asyncio.get_running_loop().create_future()
        self.waiting[rid] = fut
        self.c.send(orjson.dumps({"type": type, "id": rid, "data": data}))
        f = await asyncio.wait_for(fut, 30)
        if f["type"] != "ACK":
            raise RuntimeError(f"{type} failed: {f.get('data')}")
        return f.get("data")

    def close(self) -> None:
        if self.c.transport is not None:
            self.c.transport.close()


Step = Callable[[], Awaitable[None]]


async def _rest_client(op: str, i: int, port: int, session: dict[int, str], conns: list[Http]) -> Step:
    """Set up client ``i`` for ``op`` over REST, on a keep-alive connection of its own
    (untimed), and return its timed step."""
    user = f"u{i}"
    http = await Http.open(port, {"Authorization": f"Bearer {user}:d{i}"})
    conns.append(http)
    ok = http.json

    if op == "noop":  # the stack's floor: Tether's and the peer's GET /livez (nothing behind it)
        async def step() -> None:
            await ok("GET", "/livez")
    elif op == "presence":
        async def step() -> None:
            await ok("POST", f"/api/presence/room{i % 8}", {"user_id": user})
    elif op == "lock":
        async def step() -> None:
            got = await ok("POST", f"/api/locks/rest-l{i}", {"ttl_seconds": 30})
            if not got.get("acquired"):
                raise RuntimeError(f"lock rest-l{i} not acquired: {got}")
            await ok("DELETE", f"/api/locks/rest-l{i}", {"token": got["token"]})
    elif op == "document":
        doc = await ok("POST", "/api/collections/bench/documents", {"id": f"rest-d{i}", "data": {"n": 0}})
        version = [doc["version"]]

        async def step() -> None:
            d = await ok("PUT", f"/api/collections/bench/documents/rest-d{i}",
                         {"data": {"n": version[0]}, "version": version[0]})
            version[0] = d["version"]
    else:  # chat: groups of 4 clients share a session (the first creates it, the others join)
        group = i // 4
        if group not in session:
            session[group] = (await ok("POST", "/api/sessions", {"title": f"bench {group}"}))["id"]
        else:
            await ok("POST", f"/api/sessions/{session[group]}/join", {})
        sid = session[group]

        async def step() -> None:
            await ok("POST", f"/api/sessions/{sid}/messages", {"message": "hello from the bench"})
    return step


async def _ws_client(op: str, i: int, port: int, session: dict[int, str], rpcs: list[Rpc]) -> Step:
    rpc = await Rpc.open(port, f"u{i}:d{i}")
    rpcs.append(rpc)
    if op == "presence":
        ch = f"presence.room{i % 8}"

        async def step() -> None:
            await rpc.request("SUBSCRIBE", {"channel": ch, "presence": True})
            await rpc.request("UNSUBSCRIBE", {"channel": ch})
    elif op == "lock":
        async def step() -> None:
            got = await rpc.request("LOCK_ACQUIRE", {"key": f"ws-l{i}", "ttl_seconds": 30})
            await rpc.request("LOCK_RELEASE", {"key": f"ws-l{i}", "token": got["token"]})
    elif op == "document":
        doc = await rpc.request("DOCUMENT_CREATE", {"collection": "bench", "id": f"ws-d{i}", "data": {"n": 0}})
        version = [doc["version"]]

        async def step() -> None:
            d = await rpc.request("DOCUMENT_UPDATE", {"collection": "bench", "id": f"ws-d{i}",
                                                      "data": {"n": version[0]}, "version": version[0]})
            version[0] = d["version"]
    else:
        group = i // 4
        if group not in session:
            session[group] = (await rpc.request("SESSION_CREATE", {"title": f"bench {group}"}))["id"]
        else:
            await rpc.request("SESSION_JOIN", {"session_id": session[group]})
        sid = session[group]

        async def step() -> None:
            await rpc.request("SESSION_MESSAGE", {"session_id": sid, "message": "hello from the bench"})
    return step


def op_worker(port: int, transport: str, op: str, ids: list[int], shared: Any) -> None:
    _loop()
    try:
        shared.results.put(asyncio.run(_op_worker(port, transport, op, ids, shared)))
    except BaseException as exc:  # the orchestrator reports it
        shared.results.put({"error": f"{type(exc).__name__}: {exc}"[:300]})


async def _op_worker(port: int, transport: str, op: str, ids: list[int], shared: Any) -> dict[str, Any]:
    session: dict[int, str] = {}
    rpcs: list[Rpc] = []
    conns: list[Http] = []
    try:
        steps = []
        for i in ids:  # set up one after another: chat groups need their creator first
            steps.append(await (_rest_client(op, i, port, session, conns) if transport == "rest"
                                else _ws_client(op, i, port, session, rpcs)))
        with shared.ready.get_lock():
            shared.ready.value += 1
        while shared.start.value == 0:
            await asyncio.sleep(0.005)
        start, end = shared.start.value, shared.start.value + shared.seconds.value
        lat = array("d")

        async def run(step: Step) -> None:
            while True:
                t0 = time.monotonic()
                if t0 >= end:
                    return
                await step()
                t1 = time.monotonic()
                if t0 >= start:
                    lat.append((t1 - t0) * 1000)

        await asyncio.gather(*(run(s) for s in steps))
    finally:
        for r in rpcs:
            r.close()
        for h in conns:
            h.close()
    return {"latencies": lat.tobytes()}


def run_op(port: int, transport: str, op: str, clients: int, procs: int, seconds: float, warmup: float,
           server_pids: list[int] | None = None) -> dict[str, Any]:

    procs = max(1, min(procs, clients))
    shared = type("Shared", (), {})()
    shared.ready, shared.results = ctx.Value("i", 0), ctx.Queue()
    shared.start, shared.seconds = ctx.Value("d", 0.0, lock=False), ctx.Value("d", seconds, lock=False)
    ps = [ctx.Process(target=op_worker, args=(port, transport, op, list(range(k, clients, procs)), shared), daemon=True)
          for k in range(procs)]
    for p in ps:
        p.start()
    deadline = time.monotonic() + 120
    while shared.ready.value < procs and time.monotonic() < deadline and all(p.is_alive() for p in ps):
        time.sleep(0.02)
        if not shared.results.empty():
            break  # a worker failed during set-up
    start = shared.start.value = time.monotonic() + warmup  # CLOCK_MONOTONIC is system-wide: same clock in every process
    # Where the CPU went over the measured window: is the server or the generator the limit?
    cpu: dict[str, float] = {}
    if all(p.is_alive() for p in ps) and shared.results.empty():
        time.sleep(max(0.0, start - time.monotonic()))
        s0, g0 = sum(map(cpu_seconds, server_pids or [])), sum(cpu_seconds(p.pid) for p in ps)
        time.sleep(seconds)
        s1, g1 = sum(map(cpu_seconds, server_pids or [])), sum(cpu_seconds(p.pid) for p in ps)
        cpu = {"server_cpu_pct": round(100 * (s1 - s0) / seconds), "loadgen_cpu_pct": round(100 * (g1 - g0) / seconds)}
    outs = [shared.results.get(timeout=seconds + warmup + 120) for _ in ps]
    for p in ps:
        p.join(10)
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        raise RuntimeError(f"{transport} {op}: {errors[0]}")
    lat = array("d")
    for o in outs:
        lat.frombytes(o["latencies"])
    values = list(lat)
    return {"ops_per_s": round(len(values) / seconds), "p50_ms": percentile(values, 0.5),
            "p99_ms": percentile(values, 0.99), "clients": clients, "ops": len(values), **cpu}


# What each system serves: Tether every op both ways; the REST peers the REST ops they implement.
# "noop" is GET /livez (the HTTP stack's floor); on http-noop, the load generator's ceiling.
SERVES: dict[str, list[tuple[str, str]]] = {
    "tether": [("rest", op) for op in OPS + ["noop"]] + [("ws", op) for op in OPS],
    "tether-redis": [("rest", op) for op in OPS + ["noop"]],  # REST only: the peer's comparison
    "seed-reference": [("rest", "presence"), ("rest", "lock"), ("rest", "noop")],
    "http-noop": [("rest", "noop")],
}
PEER = "seed-reference"  # the REST peer Tether's ratios are taken against


def ops(system: str, sizes: Any, status: Callable[[str], None]) -> dict[str, Any]:
    import uuid

    from bench.systems import drop_scaled, scaled_env

    tag = f"bench_ops_{uuid.uuid4().hex[:8]}" if system == "tether-redis" else None
    server = Server(system, env=scaled_env(tag) if tag else None)
    try:
        out: dict[str, Any] = {"clients": sizes.op_clients, "procs": max(1, min(sizes.procs, sizes.op_clients))}
        for transport, op in SERVES[system]:
            status(f"{transport} {op}")
            out[f"{transport}_{op}"] = run_op(server.port, transport, op, sizes.op_clients, sizes.procs,
                                              sizes.seconds, sizes.warmup, [server.pid])
        return out
    finally:
        server.stop()
        if tag:
            drop_scaled(tag)


def compare(results: dict[str, Any]) -> None:
    """Tether (each way it ran) over the REST peer, op by op, when both ran without error:
    ``ratio_to_<peer>`` in Tether's entry, ``{"ops_per_s": tether/peer, "p99_ms": tether/peer}`` per op."""
    p = results.get(PEER)
    if not p or "error" in p:
        return
    for variant in ("tether", "tether-redis"):
        t = results.get(variant)
        if not t or "error" in t:
            continue
        ratios: dict[str, Any] = {}
        for name, theirs in p.items():
            ours = t.get(name)
            if isinstance(theirs, dict) and isinstance(ours, dict) and theirs.get("ops_per_s") and theirs.get("p99_ms"):
                ratios[name] = {"ops_per_s": round(ours["ops_per_s"] / theirs["ops_per_s"], 2),
                                "p99_ms": round(ours["p99_ms"] / theirs["p99_ms"], 2) if ours.get("p99_ms") else None}
        t["ratio_to_" + PEER.replace("-", "_")] = ratios


# -- recovery of N clients after the server is SIGKILLed and restarted ---------------

CHANNEL = "public.recovery"


def recover_worker(port: int, ids: list[int], missed: int, shared: Any) -> None:
    _loop()
    try:
        shared.results.put(asyncio.run(_recover_worker(port, ids, missed, shared)))
    except BaseException as exc:
        shared.results.put({"error": f"{type(exc).__name__}: {exc}"[:300]})


async def _recover_worker(port: int, ids: list[int], missed: int, shared: Any) -> dict[str, Any]:
    gate = asyncio.Semaphore(64)  # a connect storm from one process; the server sees every process at once
    positions: dict[int, dict[str, Any]] = {}
    lost: list[asyncio.Future[None]] = []

    async def first(i: int) -> None:
        async with gate:
            rpc = await Rpc.open(port, f"r{i}")
            ack = await rpc.request("SUBSCRIBE", {"channel": CHANNEL})
            positions[i] = {"offset": ack["offset"], "epoch": ack["epoch"]}
            fut = asyncio.get_running_loop().create_future()
            lost.append(fut)
            base = rpc.c.connection_lost

            def on_lost(exc: Exception | None, base: Any = base, fut: Any = fut) -> None:
                base(exc)
                if not fut.done():
                    fut.set_result(None)
            rpc.c.connection_lost = on_lost  # type: ignore[method-assign]
            with shared.ready.get_lock():
                shared.ready.value += 1

    await asyncio.gather(*(first(i) for i in ids))
    await asyncio.gather(*lost)  # the server was killed: every connection dropped
    with shared.lost.get_lock():
        shared.lost.value += len(ids)
    while shared.go.value == 0:
        await asyncio.sleep(0.002)
    go = shared.go.value
    times = array("d")
    failures: list[str] = []

    async def again(i: int) -> None:
        for attempt in range(100):
            try:
                rpc = await Rpc.open(port, f"r{i}")
                break
            except (OSError, asyncio.TimeoutError):
                await asyncio.sleep(0.02 * (attempt + 1))
        else:
            failures.append(f"r{i}: cannot reconnect")
            with shared.done.get_lock():
                shared.done.value += 1
            return
        rpc.keep = True
        ack = await rpc.request("SUBSCRIBE", {"channel": CHANNEL, "since": positions[i]})
        got = len(ack.get("publications", []))
        deadline = time.monotonic() + 30  # events that did not come in the ACK arrive live after it
        while got + len(rpc.frames) < missed and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        got += len(rpc.frames)
        if ack.get("recovered") is not True or got < missed:
            failures.append(f"r{i}: recovered={ack.get('recovered')} with {got}/{missed} events")
        else:
            times.append((time.monotonic() - go) * 1000)
        with shared.done.get_lock():  # finished, either way (failures are reported at the end)
            shared.done.value += 1
        rpc.close()

    await asyncio.gather(*(again(i) for i in ids))
    return {"times": times.tobytes(), "failures": failures}


def recovery(system: str, sizes: Any, status: Callable[[str], None]) -> dict[str, Any]:
    import httpx


    n, missed = sizes.recover, sizes.missed
    procs = max(1, min(sizes.procs, n))
    server = Server(system)
    shared = type("Shared", (), {})()
    shared.ready, shared.lost, shared.done = ctx.Value("i", 0), ctx.Value("i", 0), ctx.Value("i", 0)
    shared.go, shared.results = ctx.Value("d", 0.0, lock=False), ctx.Queue()
    ps = [ctx.Process(target=recover_worker, args=(server.port, list(range(k, n, procs)), missed, shared), daemon=True)
          for k in range(procs)]
    for p in ps:
        p.start()

    def wait(what: str, value: Any, target: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while value.value < target:
            if time.monotonic() > deadline or not any(p.is_alive() for p in ps):
                raise RuntimeError(f"recovery: only {value.value}/{target} clients {what}")
            status(f"{what} {value.value}/{target}")
            time.sleep(0.01)

    try:
        wait("subscribed", shared.ready, n)
        t_kill = time.monotonic()
        server.kill()
        wait("saw the crash", shared.lost, n)
        server.restart()
        t_up = time.monotonic()
        # Events published while every client is away: each must come back in its recovery.
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}/api", headers={"X-API-Key": API_KEY}) as http:
            for k in range(missed):
                r = http.post(f"/channels/{CHANNEL}/publish", json={"type": "PUBLICATION", "data": {"k": k}})
                if r.status_code >= 300:
                    raise RuntimeError(f"publish failed: {r.status_code} {r.text[:200]}")
        go = shared.go.value = time.monotonic()
        wait("recovered", shared.done, n, timeout=300)
        t_all = time.monotonic()
        outs = [shared.results.get(timeout=60) for _ in ps]
        errors = [o["error"] for o in outs if "error" in o] + [f for o in outs for f in o.get("failures", [])]
        if errors:
            raise RuntimeError(f"recovery: {len(errors)} failed, e.g. {errors[0]}")
        times = array("d")
        for o in outs:
            times.frombytes(o["times"])
        return {"clients": n, "missed_events": missed, "recovered_clients": len(times),
                "all_recovered_s": round(t_all - go, 3), "p50_ms": percentile(list(times), 0.5),
                "p99_ms": percentile(list(times), 0.99), "restart_s": round(t_up - t_kill, 3),
                "kill_to_all_recovered_s": round(t_all - t_kill, 3)}
    finally:
        for p in ps:
            p.join(5)
            if p.is_alive():
                p.kill()
        server.stop()
