"""``python -m bench``: every workload on Tether and its peers, in one run.

Writes ``bench/results/latest.json`` (workload -> system -> numbers) and a
chart, and prints a table. ``--quick`` takes about a minute; ``--smoke`` is a
few seconds of tiny sizes (for the test suite: it proves the harness runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from bench import ops, run
from bench.systems import ROOT, SYSTEMS, Unavailable, check

METRICS = ["deliveries_per_s", "p50_ms", "p99_ms", "p999_ms", "bytes_per_connection"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes, about a minute")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes, seconds (proves the harness works)")
    ap.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated, from: " + ", ".join(SYSTEMS))
    ap.add_argument("--workloads", default=",".join(run.WORKLOADS), help="comma-separated, from: " + ", ".join(run.WORKLOADS))
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    ap.add_argument("--chart", default=str(ROOT / "docs" / "benchmarks.png"), help="PNG to write ('' for none)")
    about = {"repeat": "latency windows per system, reported as their median (quick 3, smoke 1)",
             "pin": "1: during latency windows, server on one CPU and load generator on the others; 0: no pinning",
             "nodes": "cluster workload: one node, then this many",
             "soak_seconds": "soak workload: how long (quick 60, smoke 3)",
             "soak_sample": "soak: seconds between samples (smoke 1)",
             "soak_conns": "soak: subscriber connections", "soak_churn": "soak: reconnects per second",
             "soak_rate": "soak: publishes per second", "soak_rooms": "soak: rooms the publishes go to",
             "soak_rest": "soak: REST calls per second (heartbeats, locks, document updates)"}
    for f in dataclasses.fields(run.Sizes):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=None,
                        help=f"{about.get(f.name, 'override size')} (full: {f.default})")
    args = ap.parse_args(argv)

    sizes = run.SMOKE if args.smoke else run.QUICK if args.quick else run.Sizes()
    sizes = dataclasses.replace(sizes, **{f.name: getattr(args, f.name) for f in dataclasses.fields(run.Sizes)
                                          if getattr(args, f.name) is not None})
    systems = [s for s in args.systems.split(",") if s]
    workloads = [w for w in args.workloads.split(",") if w]
    for name in systems:
        if name not in SYSTEMS:
            ap.error(f"unknown system {name!r}")
    for name in workloads:
        if name not in run.WORKLOADS:
            ap.error(f"unknown workload {name!r}")

    # Every connection is a file descriptor in the server and one in a client process.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if want < sizes.idle + 1000:
        sizes = dataclasses.replace(sizes, idle=max(10, want - 1000))

    console = Console(stderr=True)
    skipped: dict[str, str] = {}
    for name in list(systems):
        try:
            check(name)
        except Unavailable as exc:
            console.print(f"[yellow]skipping {name}: {exc}[/]")
            skipped[name] = str(exc)
            systems.remove(name)

    results: dict[str, Any] = {w: {} for w in workloads}
    started = time.time()
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console, transient=False) as progress:
        plan = [(w, s) for w in workloads for s in systems if run.runs_on(w, s)]
        overall = progress.add_task("all", total=len(plan))
        for w in workloads:
            for s in systems:
                if (w, s) not in plan:
                    continue
                step = progress.add_task(f"{w} · {s}", total=None)
                os.environ["BENCH_WORKLOAD"] = w  # names the profile file when BENCH_PROFILE is set

                def status(text: str, step: int = step, w: str = w, s: str = s) -> None:
                    progress.update(step, description=f"{w} · {s}: {text}")

                try:
                    results[w][s] = run.WORKLOADS[w](s, sizes, status)
                    progress.update(step, description=f"{w} · {s}: done", total=1, completed=1)
                except (Unavailable, RuntimeError, OSError) as exc:
                    results[w][s] = {"error": str(exc)[:300]}
                    progress.update(step, description=f"{w} · {s}: [red]failed[/] {str(exc)[:80]}", total=1, completed=1)
                    if not isinstance(exc, Unavailable):
                        traceback.print_exc(file=sys.stderr)
                progress.advance(overall)

    if "ops" in results:
        ops.compare(results["ops"])
    results["meta"] = {
        "command": "python -m bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "sizes": dataclasses.asdict(sizes),
        "machine": run.machine(),
        "skipped": skipped,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    Console(width=150).print(table(results, workloads, systems))
    soak = results.get("soak", {}).get("tether")
    if soak and "error" not in soak:
        Console(width=150).print(soak_table(soak))
    console.print(f"wrote {args.out}")
    if str(args.chart):
        try:
            chart(results, Path(args.chart))
            console.print(f"wrote {args.chart}")
        except ImportError:
            console.print("[yellow]no chart: matplotlib is not installed (pip install -e '.[bench]')[/]")
    return 0


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _lat(r: dict[str, Any], key: str) -> str:
    """A latency median, with the min–max over the windows when there were several."""
    runs = [v for v in r.get(key + "_runs") or [] if v is not None]
    if len(runs) < 2:
        return _fmt(r.get(key))
    return f"{_fmt(r.get(key))} ({min(runs):.1f}–{max(runs):.1f})"


def _row(r: dict[str, Any]) -> list[str]:
    return [_lat(r, k) if k in ("p50_ms", "p99_ms", "p999_ms") else _fmt(r.get(k))
            for k in METRICS + ["deliveries_per_server_cpu_s", "server_cpu_pct", "loadgen_cpu_pct"]]


def table(results: dict[str, Any], workloads: list[str], systems: list[str]) -> Table:
    t = Table(title="Tether vs peers (same machine, same run; latency: median (min–max) over the windows)")
    t.add_column("workload")
    t.add_column("system")
    for m in ["deliveries/s", "p50 ms", "p99 ms", "p99.9 ms", "bytes/conn", "per server CPU-s", "server CPU %", "loadgen CPU %"]:
        t.add_column(m, justify="right")
    for w in workloads:
        for s in systems:
            if s not in results[w]:
                continue  # a Tether-only workload
            r = results[w][s]
            if "error" in r:
                t.add_row(w, s, f"[red]{r['error'][:60]}[/]")
                continue
            if w == "ops":
                for name, o in r.items():
                    if isinstance(o, dict) and "ops_per_s" in o:
                        t.add_row(f"ops {name}", s, f"{o['ops_per_s']:,} ops/s", _fmt(o["p50_ms"]), _fmt(o["p99_ms"]), "", "",
                                  "", _fmt(o.get("server_cpu_pct")), _fmt(o.get("loadgen_cpu_pct")))
                for variant in ("tether", "tether-redis"):  # after the peer's own rows
                    ratios = results[w].get(variant, {}).get("ratio_to_" + s.replace("-", "_"), {})
                    for name, q in ratios.items():
                        t.add_row(f"ops {name}", f"{variant} / {s}", f"{q['ops_per_s']}× ops/s", "", f"{q['p99_ms']}× p99")
                continue
            if w == "recovery":
                t.add_row(w, s, f"{r['recovered_clients']}/{r['clients']} in {r['all_recovered_s']} s",
                          _fmt(r["p50_ms"]), _fmt(r["p99_ms"]))
                continue
            if w == "soak":
                ok = r["checks"].get("ok")
                t.add_row(w, s, f"{r['seconds']:.0f} s: {'stable' if ok else 'drift' if ok is False else 'not judged'}",
                          _fmt(r["p50_ms"]), _fmt(r["p99_ms"]), "", "", "", _fmt(r["server_cpu_pct"]))
                continue
            if w == "cluster":
                t.add_row("cluster (1 node)", s, *_row(r["nodes_1"]))
                t.add_row(f"cluster ({r.get('nodes', 2)} nodes)", s, *_row(r))
                continue
            t.add_row(w, s, *_row(r))
    return t


def soak_table(r: dict[str, Any]) -> Table:
    """The soak's samples, then each check: the last window against its reference."""
    t = Table(title=f"soak: {r['connections']} connections ({r['reconnects_per_s']:g} reconnects/s), "
                    f"{r['publishes_per_s']:g} publishes/s over {r['rooms']} rooms, {r['rest_per_s']:g} REST calls/s; "
                    f"history {r['history_size']} events a channel, passed after ~{r['history_fill_s']:g} s")
    for c in ["t s", "server CPU %", "loadgen CPU %", "machine busy %", "p50 ms", "p99 ms", "ACK p99 ms", "REST p99 ms", "RSS MiB", "storage KiB",
              "WAL KiB", "open fds", "deliveries", "errors"]:
        t.add_column(c, justify="right")
    for x in r["series"]:
        errors = x.get("publish_errors", 0) + x.get("rest_errors", 0) + x.get("reconnect_errors", 0)
        t.add_row(_fmt(x["t_s"]), _fmt(x["server_cpu_pct"]), _fmt(x.get("loadgen_cpu_pct")),
                  _fmt(x.get("machine_busy_pct")), _fmt(x["p50_ms"]), _fmt(x["p99_ms"]), _fmt(x["ack_p99_ms"]),
                  _fmt(x["rest_p99_ms"]), f"{x['rss_bytes'] / 2**20:.1f}", _fmt(x["storage_bytes"] // 1024),
                  _fmt(x["wal_bytes"] // 1024), _fmt(x["open_fds"]), _fmt(x.get("delivered")), _fmt(errors))
    checks = r["checks"]
    if not checks.get("evaluated"):
        t.caption = "checks: too few samples to judge"
        return t
    parts = []
    for key, c in checks.items():
        if isinstance(c, dict) and "ok" in c:
            parts.append(f"{key} {c['ratio']}× (≤ {1 + c['tolerance']:g}× of t={c['reference_t_s']:g} s): "
                         f"{'ok' if c['ok'] else 'DRIFT'}")
        elif isinstance(c, dict):
            parts.append(f"{key}: not judged")
    t.caption = "last window against reference: " + "; ".join(parts)
    return t


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("fanout", "deliveries_per_s", "fan-out deliveries/s (higher is better)"),
              ("fanout", "p99_ms", "fan-out p99 latency, ms (lower is better)"),
              ("many_channels", "deliveries_per_s", "many channels deliveries/s"),
              ("idle_connections", "bytes_per_connection", "memory per idle connection, KiB")]
    panels = [p for p in panels if p[0] in results]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    colors = {"tether": "#2b6cb0", "websockets-broadcast": "#718096", "python-socketio": "#dd6b20", "socket.io-node": "#38a169",
              "django-channels": "#805ad5"}
    for ax, (w, key, title) in zip(axes[0], panels):
        names = [s for s, r in results[w].items() if isinstance(r.get(key), (int, float))]
        vals = [results[w][s][key] / (1024 if key == "bytes_per_connection" else 1) for s in names]
        ax.bar(range(len(names)), vals, color=[colors.get(s, "#999") for s in names])
        ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
        ax.set_title(title, fontsize=9)
        for i, v in enumerate(vals):
            ax.text(i, v, f"{v:,.0f}" if v >= 10 else f"{v:.1f}", ha="center", va="bottom", fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
