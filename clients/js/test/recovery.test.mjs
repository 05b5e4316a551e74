// A gap the channel's history no longer covers: the server says recovered: false, the client
// never pretends (the reload callbacks run) and never stays silent about it.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { Client } from "../dist/index.js";
import { Server, until, clientPool } from "./server.mjs";

let server, dir;
const pool = clientPool(Client, () => server);
// Away for one backoff step (1 s) after an operator disconnect, then back.
const away = { backoff: { base: 1, cap: 1, random: () => 1, maxAttempts: Infinity } };

before(async () => {
  dir = mkdtempSync(path.join(os.tmpdir(), "tether-js-channels-"));
  const file = path.join(dir, "channels.json");
  writeFileSync(file, JSON.stringify([{ pattern: "tiny.*", history_size: 3 }]));
  server = await new Server(["--channels-file", file]).start();
});
after(async () => {
  await pool.closeAll();
  await server.stop();
  rmSync(dir, { recursive: true, force: true });
});

const publish = async (channel, i) => assert.ok((await server.api("POST", `/api/channels/${channel}/publish`, { type: "PUBLICATION", data: { i } })).status < 300);

/** Subscribed to `channel` (handler pushes into `seen`), then away while 6 events (twice the history) are published. */
async function missTooMuch(c, user, channel, seen, opts) {
  await c.connect();
  await c.subscribe(channel, (e) => seen.push(e.data.i), opts);
  await publish(channel, 0);
  await until(() => seen.length === 1, "the first event");
  const states = [];
  c.onState((s) => states.push(s));
  const r = await server.api("POST", `/api/admin/users/${user}/disconnect`, { reason: "test", reconnect: true });
  assert.equal(r.body.disconnected, 1);
  for (let i = 1; i <= 6; i++) await publish(channel, i);
  await until(() => states.includes("reconnecting"), "the drop");
  await c.waitFor("connected", 15000);
}

test("a gap beyond the channel's history: recovered false, the reload callbacks run, delivery goes on", async () => {
  const c = pool.make("rae:r", away);
  const seen = [], reloads = [], everywhere = [];
  c.onReload((channel) => everywhere.push(channel));
  await missTooMuch(c, "rae", "tiny.room", seen, { onReload: (channel) => reloads.push(channel) });
  await until(() => reloads.length && everywhere.length, "the reload callbacks");
  assert.deepEqual(reloads, ["tiny.room"]);
  assert.deepEqual(everywhere, ["tiny.room"]);
  assert.deepEqual(seen, [0]); // no partial replay passed off as the whole
  await publish("tiny.room", 7);
  await until(() => seen.length === 2, "the next event");
  assert.deepEqual(seen, [0, 7]);
});

test("recovered false with no reload listener is never silent: the client warns", async (t) => {
  const warn = t.mock.method(console, "warn", () => {});
  const c = pool.make("sid:s", away);
  const seen = [];
  await missTooMuch(c, "sid", "tiny.quiet", seen);
  await until(() => warn.mock.calls.some((call) => /tiny\.quiet/.test(String(call.arguments[0]))), "a warning");
  const said = warn.mock.calls.map((call) => String(call.arguments[0])).find((m) => /tiny\.quiet/.test(m));
  assert.match(said, /reload/i);
  assert.deepEqual(seen, [0]);
});
