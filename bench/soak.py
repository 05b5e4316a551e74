"""The soak workload: a fixed, churning load on one Tether server, sampled over minutes.

What it catches is drift, not speed: CPU, latency, memory, storage or file
descriptors that keep climbing under a load that does not. For ``soak_seconds``:

- ``soak_conns`` subscriber connections (``DEVICES`` per user), each on one of
  ``soak_rooms`` rooms (``public.soak{k}``); ``soak_churn`` times a second the oldest
  one closes and a new one (same user and device, same room) connects and
  subscribes: a client reconnecting;
- one publisher sending ``soak_rate`` PUBLISHes a second round-robin over the rooms;
- ``soak_rest`` REST calls a second, a third each: presence heartbeats, lock
  acquire + release, and versioned updates of two documents.

Every ``soak_sample`` seconds the orchestrator samples the server: CPU % over the
window, RSS, open file descriptors, the data directory's bytes (SQLite + WAL), and
the load generator reports the window's publish → delivery latencies (p50/p99),
PUBLISH ACK round trips, REST round trips and counts. The server keeps
``HISTORY_SIZE`` events per channel, so the busiest kinds of channel, the rooms and
the users' (each device's going off- and online), pass their history window early
(``history_fill_s``, the later of the two) and from then on storage should stay flat.
"""

from __future__ import annotations

import asyncio
import collections
import os
import queue
import time
from array import array
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

from bench.http import Http
from bench.ops import Rpc
from bench.stats import ctx, percentile
from bench.systems import Server, cpu_seconds, machine_busy, rss
from bench.wire import DIALECTS, PAD, Client, connect, now_us
from bench.workers import _loop

HISTORY_SIZE = 20  # events a channel keeps (Tether's default is 1,000): every channel passes it early
DEVICES = 5  # connections per user: a user's channel gets a notice per device going off- and online
DOCS = 2  # documents updated in turn: few, so their channels pass the history window early too
# Drift tolerated from the second window (the first has the warm-up in it) to the last.
TOLERANCE = {"server_cpu_pct": 0.10, "p99_ms": 0.10, "rss_bytes": 0.05, "storage_bytes": 0.10}


def _window_stats(values: array) -> dict[str, Any]:
    v = list(values)
    return {"p50_ms": percentile(v, 0.5), "p99_ms": percentile(v, 0.99), "n": len(v)}


def worker(port: int, sizes: Any, shared: Any) -> None:
    _loop()
    try:
        asyncio.run(_worker(port, sizes, shared))
    except BaseException as exc:  # the orchestrator reports it
        shared.results.put({"error": f"{type(exc).__name__}: {exc}"[:300]})


async def _worker(port: int, sizes: Any, shared: Any) -> None:
    dialect = DIALECTS["tether"]
    rooms = max(1, sizes.soak_rooms)
    lat, acks, rest = array("d"), array("d"), array("d")  # this window's, in ms
    count = collections.Counter()
    first_error: dict[str, str] = {}  # this window's first failure, to say what failed
    retired: list[Client] = []  # closed this window: their deliveries still count
    gate = asyncio.Semaphore(32)

    async def subscribe(slot: int) -> Client:
        async with gate:
            c = await connect(dialect, port, f"k{slot // DEVICES}:d{slot}")
            deadline = time.monotonic() + 30
            while not c.ready and not c.closed and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            c.latencies = lat_sink
            c.send(dialect.subscribe(f"soak{slot % rooms}", 1))
            return c

    lat_sink: list[float] = []  # every client appends here; drained into ``lat`` at each report
    slots = list(await asyncio.gather(*(subscribe(i) for i in range(sizes.soak_conns))))
    pub = await Rpc.open(port, "soakpub:d0")
    https = [await Http.open(port, {"Authorization": f"Bearer rest{k}:d{k}"}) for k in range(3)]
    docs = [await https[2].json("POST", "/api/collections/soak/documents", {"id": f"soak-d{d}", "data": {"n": 0}})
            for d in range(DOCS)]
    versions = [d["version"] for d in docs]
    with shared.ready.get_lock():
        shared.ready.value = 1
    while not shared.go.value:
        await asyncio.sleep(0.005)
    stop = asyncio.Event()

    async def paced(rate: float, step: Callable[[int], Any]) -> None:
        """``step(n)`` ``rate`` times a second on a fixed schedule (started as tasks: a slow
        one does not hold the next back)."""
        if rate <= 0:
            return
        start, n = time.monotonic(), 0
        while not stop.is_set():
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            asyncio.ensure_future(step(n))
            n += 1

    async def publish(n: int) -> None:
        t0 = time.monotonic()
        try:
            await pub.request("PUBLISH", {"channel": f"public.soak{n % rooms}", "data": {"t": now_us(), "p": PAD}})
            acks.append((time.monotonic() - t0) * 1000)
            count["published"] += 1
        except Exception as exc:  # noqa: BLE001 - a soak reports failures, it does not stop on them
            count["publish_errors"] += 1
            first_error.setdefault("error_sample", f"PUBLISH: {exc}"[:200])

    async def churn(n: int) -> None:
        slot = n % len(slots)
        old = slots[slot]
        if old.transport is not None:
            old.transport.close()
        retired.append(old)
        try:
            slots[slot] = await subscribe(slot)
            count["reconnects"] += 1
        except (OSError, ConnectionError) as exc:
            count["reconnect_errors"] += 1
            first_error.setdefault("error_sample", f"reconnect: {exc}"[:200])

    async def call(n: int) -> None:
        kind = n % 3
        http = https[kind]
        t0 = time.monotonic()
        try:
            if kind == 0:
                await http.json("POST", f"/api/presence/soak{n % rooms}", {"user_id": "rest0"})
            elif kind == 1:
                got = await http.json("POST", f"/api/locks/soak-l{n % 4}", {"ttl_seconds": 30})
                await http.json("DELETE", f"/api/locks/soak-l{n % 4}", {"token": got["token"]})
            else:
                d = (n // 3) % DOCS
                doc = await http.json("PUT", f"/api/collections/soak/documents/soak-d{d}",
                                      {"data": {"n": n}, "version": versions[d]})
                versions[d] = doc["version"]
            rest.append((time.monotonic() - t0) * 1000)
            count["rest_calls"] += 1
        except Exception as exc:  # noqa: BLE001
            count["rest_errors"] += 1
            first_error.setdefault("error_sample", f"REST: {exc}"[:200])

    # One keep-alive connection per REST kind, one request at a time on each: a call that
    # comes due while its connection is busy waits for it.
    locks = [asyncio.Lock() for _ in range(3)]

    async def rest_call(n: int) -> None:
        async with locks[n % 3]:
            await call(n)

    tasks = [asyncio.ensure_future(paced(sizes.soak_rate, publish)),
             asyncio.ensure_future(paced(sizes.soak_churn, churn)),
             asyncio.ensure_future(paced(sizes.soak_rest, rest_call))]
    window = 0
    while True:
        await asyncio.sleep(0.02)
        if shared.window.value == window:
            continue
        window = shared.window.value
        lat.extend(lat_sink)
        lat_sink.clear()
        seen = {id(c): c for c in slots + retired}  # a slot mid-reconnect is in both
        delivered = sum(c.delivered for c in seen.values())
        for c in seen.values():
            c.delivered = 0
        retired.clear()
        shared.results.put({"latencies": lat.tobytes(), "acks": acks.tobytes(), "rest": rest.tobytes(),
                            "delivered": delivered, "open": sum(not c.closed for c in slots), **count, **first_error})
        lat, acks, rest = array("d"), array("d"), array("d")
        count.clear()
        first_error.clear()
        if shared.stop.value:
            break
    stop.set()
    for t in tasks:
        t.cancel()
    for c in slots:
        if c.transport is not None:
            c.transport.close()
    pub.close()
    for h in https:
        h.close()


def storage(path: Path) -> dict[str, int]:
    """Bytes on disk of the server's data directory (its own log left out), and the WAL's."""
    total = wal = 0
    for f in path.iterdir():
        if f.name == "server.log" or not f.is_file():
            continue
        size = f.stat().st_size
        total += size
        if f.name.endswith("-wal"):
            wal += size
    return {"storage_bytes": total, "wal_bytes": wal}


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


def checks(series: list[dict[str, Any]], fill_s: float) -> dict[str, Any]:
    """Last window against the second (the first holds the warm-up): each metric may grow by
    at most its ``TOLERANCE`` (falling is fine). Storage is compared from the first sample
    a whole window after every channel passed its history window."""
    out: dict[str, Any] = {}
    if len(series) < 3:
        return {"evaluated": False}
    second, last = series[1], series[-1]
    for key, tol in TOLERANCE.items():
        ref = second
        if key == "storage_bytes":
            settled = [s for s in series if s["t_s"] >= fill_s + (series[1]["t_s"] - series[0]["t_s"])]
            if len(settled) < 2:
                out[key] = {"evaluated": False}
                continue
            ref = settled[0]
        a, b = ref.get(key), last.get(key)
        if not a or b is None:
            out[key] = {"evaluated": False}
            continue
        out[key] = {"reference": a, "last": b, "ratio": round(b / a, 3), "ok": b <= a * (1 + tol),
                    "tolerance": tol, "reference_t_s": ref["t_s"]}
    out["evaluated"] = True
    out["ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict) and "ok" in v)
    return out


def soak(system: str, sizes: Any, status: Callable[[str], None]) -> dict[str, Any]:
    server = Server(system, env={"TETHER_HISTORY_SIZE": str(HISTORY_SIZE)})
    shared = SimpleNamespace(ready=ctx.Value("i", 0), go=ctx.Value("i", 0, lock=False),
                             window=ctx.Value("i", 0, lock=False), stop=ctx.Value("i", 0, lock=False),
                             results=ctx.Queue())
    proc = ctx.Process(target=worker, args=(server.port, sizes, shared), daemon=True)
    proc.start()
    try:
        deadline = time.monotonic() + 120
        while not shared.ready.value:
            if time.monotonic() > deadline or not proc.is_alive() or not shared.results.empty():
                got = shared.results.get(timeout=1) if not shared.results.empty() else {}
                raise RuntimeError(f"soak: load did not start: {got.get('error', 'timeout')}")
            status("connecting")
            time.sleep(0.05)
        every = max(0.2, sizes.soak_sample)
        n = max(1, round(sizes.soak_seconds / every))
        series: list[dict[str, Any]] = []
        t0 = time.monotonic()
        shared.go.value = 1
        cpu0, gen0, mark, busy0 = cpu_seconds(server.pid), cpu_seconds(proc.pid), t0, machine_busy()
        for k in range(1, n + 1):
            time.sleep(max(0.0, t0 + k * every - time.monotonic()))
            now, cpu, gen, busy = time.monotonic(), cpu_seconds(server.pid), cpu_seconds(proc.pid), machine_busy()
            sample = {"t_s": round(now - t0, 1), "server_cpu_pct": round(100 * (cpu - cpu0) / (now - mark), 1),
                      "loadgen_cpu_pct": round(100 * (gen - gen0) / (now - mark), 1),
                      # all cores, whoever used them: a p99 spike with the machine full is contention
                      "machine_busy_pct": round(100 * (busy[0] - busy0[0]) / (busy[1] - busy0[1])) if busy[1] > busy0[1] else None,
                      "rss_bytes": rss(server.pid), "open_fds": open_fds(server.pid), **storage(server.dir)}
            cpu0, gen0, mark, busy0 = cpu, gen, now, busy
            if k == n:
                shared.stop.value = 1
            shared.window.value = k
            try:
                got = shared.results.get(timeout=60)
            except queue.Empty:
                raise RuntimeError("soak: the load generator stopped answering") from None
            if "error" in got:
                raise RuntimeError(f"soak: {got['error']}")
            w = _window_stats(array("d", got.pop("latencies")))
            a = _window_stats(array("d", got.pop("acks")))
            r = _window_stats(array("d", got.pop("rest")))
            sample.update({"p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
                           "ack_p99_ms": a["p99_ms"], "rest_p99_ms": r["p99_ms"], **got})
            series.append(sample)
            status(f"{sample['t_s']:.0f}/{sizes.soak_seconds:.0f} s: CPU {sample['server_cpu_pct']}%, "
                   f"p99 {sample['p99_ms']} ms, RSS {sample['rss_bytes'] >> 20} MiB")
        users = -(-sizes.soak_conns // DEVICES)
        fill_s = max(HISTORY_SIZE * max(1, sizes.soak_rooms) / max(1e-9, sizes.soak_rate),
                     HISTORY_SIZE * users / max(1e-9, 2 * sizes.soak_churn))  # a reconnect: offline + online
        last = series[-1]
        return {"seconds": sizes.soak_seconds, "sample_s": every, "connections": sizes.soak_conns,
                "reconnects_per_s": sizes.soak_churn, "publishes_per_s": sizes.soak_rate, "rooms": sizes.soak_rooms,
                "rest_per_s": sizes.soak_rest, "history_size": HISTORY_SIZE, "history_fill_s": round(fill_s, 1),
                "series": series, "checks": checks(series, fill_s),
                # the last window's figures, for the summary table
                "p50_ms": last["p50_ms"], "p99_ms": last["p99_ms"], "server_cpu_pct": last["server_cpu_pct"],
                "rss_bytes": last["rss_bytes"], "storage_bytes": last["storage_bytes"], "open_fds": last["open_fds"],
                "errors": sum(s.get("publish_errors", 0) + s.get("rest_errors", 0) + s.get("reconnect_errors", 0)
                              for s in series)}
    finally:
        shared.stop.value = 1
        shared.window.value = -1
        proc.join(10)
        if proc.is_alive():
            proc.kill()
        server.stop()
