"""The benchmark harness runs end to end and writes valid results (no numbers asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)  # every workload starts its servers: slow on a busy machine
def test_bench_smoke_writes_valid_json(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    # The two systems that need nothing beyond Tether's own dependencies, and the REST peers.
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--systems", "tether,websockets-broadcast,seed-reference,http-noop",
         "--repeat", "2", "--nodes", "3", "--out", str(out), "--chart", ""],
        cwd=ROOT, capture_output=True, text=True, timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert set(results) == {"rooms", "fanout", "many_channels", "idle_connections", "ops", "recovery", "cluster", "soak",
                            "meta"}
    for system in ("tether", "websockets-broadcast"):
        rooms = results["rooms"][system]
        assert "error" not in rooms, rooms
        assert rooms["deliveries_per_s"] > 0 and rooms["dropped_connections"] == 0
        assert rooms["latency_samples"] > 0 and 0 <= rooms["p50_ms"] <= rooms["p99_ms"] <= rooms["p999_ms"]
        fan = results["fanout"][system]
        assert "error" not in fan, fan
        assert fan["deliveries_per_s"] > 0 and fan["dropped_connections"] == 0
        assert 0 <= fan["p50_ms"] <= fan["p99_ms"] <= fan["p999_ms"]
        # Two latency windows, each with its own percentiles; the reported one is their median.
        for key in ("p50_ms", "p99_ms"):
            assert len(fan[key + "_runs"]) == len(rooms[key + "_runs"]) == fan["latency_windows"] == 2
            assert min(fan[key + "_runs"]) <= fan[key] <= max(fan[key + "_runs"])
        assert fan["pinned"] is None or set(fan["pinned"]) == {"server_cpus", "loadgen_cpus"}
        assert results["many_channels"][system]["deliveries_per_s"] > 0
        assert results["idle_connections"][system]["connections"] == results["meta"]["sizes"]["idle"]
        assert isinstance(results["idle_connections"][system]["bytes_per_connection"], int)
    # Tether-only workloads: no peer rows.
    ops = results["ops"]["tether"]
    assert "error" not in ops, ops
    for transport in ("rest", "ws"):
        for op in ("presence", "lock", "document", "chat"):
            assert ops[f"{transport}_{op}"]["ops_per_s"] > 0
    assert ops["rest_noop"]["ops_per_s"] > 0 and results["ops"]["http-noop"]["rest_noop"]["ops_per_s"] > 0
    peer = results["ops"]["seed-reference"]  # an error only when Redis is not reachable
    if "error" not in peer:
        assert peer["rest_presence"]["ops_per_s"] > 0 and peer["rest_lock"]["ops_per_s"] > 0
        assert set(ops["ratio_to_seed_reference"]) == {"rest_presence", "rest_lock", "rest_noop"}
    rec = results["recovery"]["tether"]
    assert "error" not in rec, rec
    assert rec["recovered_clients"] == rec["clients"] == results["meta"]["sizes"]["recover"]
    soak = results["soak"]["tether"]
    assert "error" not in soak, soak
    assert len(soak["series"]) == 3 and soak["errors"] == 0  # smoke: 3 s sampled every second
    for sample in soak["series"]:
        assert sample["published"] > 0 and sample["delivered"] > 0 and sample["rest_calls"] > 0
        assert sample["rss_bytes"] > 0 and sample["storage_bytes"] > 0 and sample["open_fds"] > 0
        assert 0 < sample["p50_ms"] <= sample["p99_ms"]
    assert sum(s.get("reconnects", 0) for s in soak["series"]) > 0
    assert soak["checks"]["evaluated"] and isinstance(soak["checks"]["ok"], bool)
    assert set(results["recovery"]) == set(results["cluster"]) == set(results["soak"]) == {"tether"}
    assert set(results["ops"]) == {"tether", "seed-reference", "http-noop"}
    assert set(results["fanout"]) == {"tether", "websockets-broadcast"}  # the REST peers serve ops only
    cluster = results["cluster"]["tether"]  # an error only when PostgreSQL/Redis are not reachable
    assert "error" in cluster or (cluster["nodes"] == 3 and cluster["nodes_3"]["dropped_connections"] == 0
                                  and len(cluster["nodes_3"]["server_cpu_pct_each"]) == 3)
    assert results["meta"]["command"].startswith("python -m bench")


@pytest.mark.timeout(120)
def test_bench_smoke_django_channels_rooms(tmp_path: Path) -> None:
    """The Django Channels peer joins rooms, fans out through Redis groups and acks publishes."""
    pytest.importorskip("channels_redis")
    from bench.systems import Unavailable, check

    try:
        check("django-channels")
    except Unavailable as exc:
        pytest.skip(str(exc))
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--systems", "django-channels", "--workloads", "rooms",
         "--out", str(out), "--chart", ""],
        cwd=ROOT, capture_output=True, text=True, timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rooms = json.loads(out.read_text())["rooms"]["django-channels"]
    assert "error" not in rooms, rooms
    assert rooms["deliveries_per_s"] > 0 and rooms["dropped_connections"] == 0
    assert rooms["latency_samples"] > 0 and 0 <= rooms["p50_ms"] <= rooms["p99_ms"]


async def test_counting_mode_counts_exactly_however_the_stream_is_cut() -> None:
    """The load generator's counting mode: every delivery once, whatever the chunk boundaries,
    and the keepalive ping answered."""
    from bench.wire import DIALECTS, Client, payload

    def server_frame(text: bytes) -> bytes:
        n = len(text)
        return (bytes((0x81, n)) if n < 126 else b"\x81\x7e" + n.to_bytes(2, "big")) + text

    stream = b"".join(server_frame(b'{"type":"PUBLICATION","data":%s}' % payload()) for _ in range(50))
    stream += server_frame(b'{"type":"PING","data":{}}') + server_frame(b'{"type":"ACK","id":"1"}')
    stream += b"".join(server_frame(payload()) for _ in range(7))

    class Sink:
        def __init__(self) -> None:
            self.out: list[bytes] = []

        def write(self, data: bytes) -> None:
            self.out.append(data)

    for size in (1, 2, 3, 4, 5, 7, 64, 1000, len(stream)):
        c = Client(DIALECTS["tether"], "/", 1)
        c.transport = Sink()  # type: ignore[assignment]
        c.count_only()
        for i in range(0, len(stream), size):
            c.data_received(stream[i:i + size])
        assert c.delivered == 57, size
        assert any(b'"PONG"' in w for w in c.transport.out), size  # type: ignore[attr-defined]
