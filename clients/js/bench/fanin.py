"""Fan-in: how many events per second one browser tab takes in through @tether/client.

Starts `tether serve` (request rate limits lifted so publishers are not throttled), opens
headless Chromium with two tabs of one user at the server's origin: tab 1 holds the WebSocket
(the leader) and also opens a raw WebSocket to the same channel (the ceiling: what the server
and the browser's socket deliver); tab 2 is a follower fed by the leader over BroadcastChannel.
Publishers pipeline N events over 8 channels; each receiver records when its first and
last event arrived. Prints a Markdown table.

    PYTHONPATH=src python clients/js/bench/fanin.py [--events 20000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import sync_playwright  # noqa: E402
from websockets.sync.client import connect  # noqa: E402

from tests.browser.conftest import CHROMIUM_ARGS, client_page  # noqa: E402
from tests.helpers import ServerProcess  # noqa: E402

CHANNELS = 8  # one channel keeps offsets in order (one commit stream): several spread the load

RECEIVE = """async ([url, n, raw, channels]) => {
  window.stats = {};
  const mark = (name) => { const s = (stats[name] = {count: 0, first: 0, last: 0});
    return () => { const t = performance.now(); if (!s.count++) s.first = t; s.last = t; }; };
  window.c = new T.Client(url, {token: "bench:web", store: "fanin"});
  await c.connect();
  const hit = mark(raw ? "client (leader tab)" : "client (follower tab)");
  for (let k = 0; k < channels; k++) await c.subscribe("public.fanin." + k, hit);
  if (raw) {
    const hitRaw = mark("raw WebSocket (same tab)");
    const ws = new WebSocket(url.replace("http", "ws") + "/ws?token=raw");
    await new Promise((r) => (ws.onopen = r));
    ws.onmessage = (ev) => { const f = JSON.parse(ev.data); if (f.channel?.startsWith("public.fanin.") && f.offset) hitRaw(); };
    for (let k = 0; k < channels; k++) ws.send(JSON.stringify({type: "SUBSCRIBE", id: "s" + k, data: {channel: "public.fanin." + k}}));
    await new Promise((r) => setTimeout(r, 300));
  }
  return c.isLeader;
}"""


def publish(url: str, user: str, channel: str, n: int) -> None:
    with connect(url.replace("http", "ws") + f"/ws?token={user}", max_size=None) as ws:
        ws.recv()  # CONNECTED
        for i in range(n):
            ws.send(json.dumps({"type": "PUBLISH", "id": str(i), "data": {"channel": channel, "data": {"i": i}}}))
        acks = 0
        while acks < n:
            if json.loads(ws.recv()).get("type") in ("ACK", "ERROR"):
                acks += 1


REPLAY_SETUP = """async ([url]) => {
  const c = new T.Client(url, {token: "bench:replay", store: "replay"});
  await c.connect();
  await c.subscribe("bench.replay");  // remembers the position (offset 0) in IndexedDB
  await c.close();
}"""

REPLAY = """async ([url, n]) => {
  // The page comes back: one SUBSCRIBE from the stored position, n events in its ACK.
  let count = 0, last = 0;
  const t0 = performance.now();
  window.c = new T.Client(url, {token: "bench:replay", store: "replay"});
  await c.connect();
  await c.subscribe("bench.replay", () => { count++; last = performance.now(); });
  while (count < n) await new Promise((r) => setTimeout(r, 20));
  return {count, first: t0, last};
}"""


def replay_row(ctx, url: str, n: int) -> dict:
    page = client_page(ctx, url)
    page.evaluate(REPLAY_SETUP, [url])
    per = 500
    with connect(url.replace("http", "ws") + "/ws?token=pubr", max_size=None) as ws:
        ws.recv()
        for start in range(0, n, per):  # in windows, under the server's per-connection send queue
            for i in range(start, min(n, start + per)):
                ws.send(json.dumps({"type": "PUBLISH", "id": str(i), "data": {"channel": "bench.replay", "data": {"i": i}}}))
            acks = 0
            while acks < min(per, n - start):
                if json.loads(ws.recv()).get("type") in ("ACK", "ERROR"):
                    acks += 1
    return page.evaluate(REPLAY, [url, n])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=20000)
    ap.add_argument("--replay", type=int, default=10000, help="events replayed to a page coming back")
    ap.add_argument("--publishers", type=int, default=CHANNELS, help="one per channel")
    args = ap.parse_args()
    n = args.events - args.events % args.publishers
    with tempfile.TemporaryDirectory() as tmp:
        channels = Path(tmp) / "channels.json"
        channels.write_text(json.dumps([{"pattern": "bench.*", "subscribe": "any", "publish": "any",
                                         "history_size": args.replay, "history_ttl": 3600}]))
        server = ServerProcess(Path(tmp) / "data", "--channels-file", str(channels), "--rate-per-connection", "1000000", "--rate-burst", "1000000",
                               "--rate-per-user", "1000000", "--send-queue-frames", "1000000").start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS, headless=True)
                ctx = browser.new_context()
                leader = client_page(ctx, server.url)
                assert leader.evaluate(RECEIVE, [server.url, n, True, args.publishers])
                follower = client_page(ctx, server.url)
                assert not follower.evaluate(RECEIVE, [server.url, n, False, args.publishers])
                threads = [threading.Thread(target=publish, args=(server.url, f"pub{k}", f"public.fanin.{k}", n // args.publishers))
                           for k in range(args.publishers)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                for page in (leader, follower):
                    page.wait_for_function(f"Object.values(stats).every((s) => s.count >= {n})", timeout=300_000)
                rows = {**leader.evaluate("stats"), **follower.evaluate("stats")}
                ctx.close()
                rows["client, catching up (one ACK replays the missed events)"] = replay_row(browser.new_context(), server.url, args.replay)
                browser.close()
        finally:
            server.kill()
    print(f"{n} events on {args.publishers} channels, one publisher each, headless Chromium, one machine\n")
    print("| receiver | events | seconds | events/s |\n|---|---:|---:|---:|")
    for name, s in rows.items():
        secs = (s["last"] - s["first"]) / 1000
        print(f"| {name} | {s['count']} | {secs:.2f} | {s['count'] / secs:,.0f} |")


if __name__ == "__main__":
    main()
