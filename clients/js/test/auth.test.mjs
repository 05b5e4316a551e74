// Tokens that expire, operator disconnects and drains: what the server asks of a client.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { Client, Failed } from "../dist/index.js";
import { Server, WebSocket, until, clientPool } from "./server.mjs";

const SECRET = "js-client-test-secret-which-is-long-enough";
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
function jwt(sub, ttlSeconds, device = "web") {
  const head = b64({ alg: "HS256", typ: "JWT" });
  const body = b64({ sub, device_id: device, exp: Math.floor(Date.now() / 1000) + ttlSeconds });
  return `${head}.${body}.${createHmac("sha256", SECRET).update(`${head}.${body}`).digest("base64url")}`;
}

let server;
const pool = clientPool(Client, () => server);
const make = pool.make;

before(async () => {
  server = new Server(["--auth", "jwt"]);
  process.env.TETHER_JWT_SECRET = SECRET;
  await server.start();
});
after(async () => {
  await pool.closeAll();
  await server.stop();
});

/** Whether the server knows a request type / route (the features arrive separately). */
async function serverHas(type) {
  const ws = new WebSocket(server.url.replace("http", "ws") + "/ws?token=" + jwt("probe", 60));
  const reply = await new Promise((resolve) => {
    ws.on("message", (raw) => {
      const f = JSON.parse(raw.toString());
      if (f.type === "CONNECTED") ws.send(JSON.stringify({ type, id: "p", data: { token: "x" } }));
      else if (f.id === "p") resolve(f);
    });
  });
  ws.close();
  return !(reply.type === "ERROR" && /unknown/i.test(reply.data?.message ?? ""));
}

test("a JWT is refreshed on the open connection before it expires", async (t) => {
  if (!(await serverHas("REFRESH"))) return t.skip("this server has no REFRESH yet");
  let asked = 0;
  const c = make(jwt("uma", 3), { getToken: () => (asked++, jwt("uma", 3600)) });
  await c.connect();
  const states = [];
  c.onState((s) => states.push(s));
  const seen = [];
  await c.subscribe("public.jwt", (e) => seen.push(e.data.i));
  await until(() => asked >= 1, "getToken before the expiry");
  await new Promise((r) => setTimeout(r, 4000)); // past the first token's expiry
  await (await c.publish("public.jwt", { i: 1 })).acked;
  await until(() => seen.length === 1, "an event after the expiry");
  assert.deepEqual(states, []); // never dropped: the connection carried on with the new token
});

test("an expired token without a callback ends as failed", async (t) => {
  if (!(await serverHas("REFRESH"))) return t.skip("this server does not close expired connections yet");
  const c = make(jwt("vera", 2));
  await c.connect();
  await c.waitFor("failed", 15000);
  assert.match(c.error.message, /unauthorized|expired/);
});

test("an operator disconnect: back when allowed (nothing missed), failed with the reason when not", async (t) => {
  const probe = await fetch(server.url + "/api/admin/users/nobody/disconnect", {
    method: "POST", headers: { "X-API-Key": "test-api-key", "Content-Type": "application/json" }, body: JSON.stringify({ reason: "probe", reconnect: true }),
  });
  if (probe.status === 404 || probe.status === 405) return t.skip("this server has no operator disconnect yet");
  const c = make(jwt("walt", 3600), { backoff: { base: 1, cap: 1, random: () => 1, maxAttempts: Infinity } });
  const other = make(jwt("xena", 3600));
  await c.connect();
  await other.connect();
  const seen = [], states = [];
  c.onState((s) => states.push(s));
  await c.subscribe("public.ops", (e) => seen.push(e.data.i));
  const disconnect = (reconnect) => server.api("POST", "/api/admin/users/walt/disconnect", { reason: "maintenance", reconnect });
  assert.equal((await disconnect(true)).body.disconnected, 1);
  for (let i = 0; i < 5; i++) await (await other.publish("public.ops", { i })).acked; // while walt is away
  await until(() => states.includes("reconnecting"), "the drop");
  await c.waitFor("connected", 15000);
  await until(() => seen.length === 5, "the events missed meanwhile");
  assert.deepEqual(seen, [0, 1, 2, 3, 4]);
  await disconnect(false);
  await c.waitFor("failed", 15000);
  assert.equal(c.disconnectReason, "maintenance");
});

test("a backend connects with the API key (?api_key= on the WebSocket, X-API-Key on REST)", async (t) => {
  const probe = await new Promise((resolve) => {
    const ws = new WebSocket(server.url.replace("http", "ws") + "/ws?api_key=test-api-key");
    ws.on("message", (raw) => {
      resolve(JSON.parse(raw.toString()).type === "CONNECTED");
      ws.close();
    });
    ws.on("close", () => resolve(false));
    ws.on("error", () => resolve(false));
  });
  if (!probe) return t.skip("this server does not take ?api_key= on the WebSocket yet");
  const backend = make(undefined, { apiKey: "test-api-key" });
  await backend.connect();
  assert.equal(backend.state, "connected");
  const user = make(jwt("yuri", 3600));
  await user.connect();
  const seen = [];
  await user.subscribe("public.backend", (e) => seen.push(e.data.n));
  await (await backend.publish("public.backend", { n: 1 })).acked;
  await until(() => seen.length === 1, "the backend's event");
  assert.equal((await backend.rest("GET", "/api/users/yuri/devices")).devices.length, 1);
});
