import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createServer, connect } from "node:net";
import { Client } from "../dist/index.js";
import { Server, WebSocket, freePort } from "./server.mjs";

/** A TCP balancer in front of the nodes: new connections go to `target`. */
async function balancer(target) {
  const b = { target, sockets: new Set() };
  b.server = createServer((down) => {
    const up = connect(b.target, "127.0.0.1");
    for (const s of [down, up]) {
      b.sockets.add(s);
      s.on("error", () => {});
      s.on("close", () => { b.sockets.delete(s); down.destroy(); up.destroy(); });
    }
    down.pipe(up).pipe(down);
  });
  b.port = await freePort();
  await new Promise((r) => b.server.listen(b.port, "127.0.0.1", r));
  b.close = () => {
    for (const s of b.sockets) s.destroy();
    return new Promise((r) => b.server.close(r));
  };
  return b;
}

const servers = [];
after(async () => {
  for (const s of servers) await s.stop();
});

test("a draining node's 1012 brings the client back at once, not after its backoff", async (t) => {
  const a = await new Server().start();
  const b = await new Server().start();
  servers.push(a, b);
  const lb = await balancer(a.port);
  // The backoff would wait 29.7 s before a retry; after 1012 the client waits random() * 2 s.
  const c = new Client(`http://127.0.0.1:${lb.port}`, {
    token: "nia:n", WebSocket, backoff: { base: 30, cap: 60, random: () => 0.99, maxAttempts: Infinity },
  });
  t.after(async () => {
    await c.close();
    await lb.close();
  });
  await c.connect();
  const states = [];
  c.onState((s) => states.push(s));
  lb.target = b.port; // the balancer sends new connections to the other node
  const exited = a.terminate();
  const started = Date.now();
  await c.waitFor("reconnecting", 15000);
  assert.equal(await exited, 0, "the drained node exits 0");
  await c.waitFor("connected", 10000);
  const took = (Date.now() - started) / 1000;
  assert.ok(took < 10, `back after ${took} s`);
  assert.deepEqual(states.slice(0, 2), ["reconnecting", "connected"]);
  const r = await (await c.publish("public.after-drain", { ok: true })).acked;
  assert.equal(r.offset, 1);
});
