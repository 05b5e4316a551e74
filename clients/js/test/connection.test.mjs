import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Backoff, Client, Failed } from "../dist/index.js";
import { Server, WebSocket, until, clientPool } from "./server.mjs";

let server;
const pool = clientPool(Client, () => server);
const make = pool.make;

before(async () => {
  server = await new Server().start();
});
after(async () => {
  await pool.closeAll();
  if (server.proc?.exitCode === null) server.proc.kill("SIGCONT");
  await server.stop();
});

test("backoff: full jitter doubling from 1 s to a 60 s cap, then gives up", () => {
  const b = new Backoff({ random: () => 1, maxAttempts: 9 });
  const delays = [];
  for (let d = b.next(); d !== null; d = b.next()) delays.push(d);
  assert.deepEqual(delays, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
  const half = new Backoff({ random: () => 0.5 });
  assert.equal(half.next(), 0.5);
});

test("a frozen server is noticed by the keepalive, and the client comes back", async () => {
  const c = make("lena:k", { pingInterval: 0.3 });
  await c.connect();
  const states = [];
  c.onState((s) => states.push(s));
  const seen = [];
  await c.subscribe("public.frozen", (e) => seen.push(e.data.i));
  server.proc.kill("SIGSTOP"); // the TCP link stays up; only the keepalive can tell
  try {
    await until(() => states.includes("reconnecting"), "the dead link to be noticed", 15000);
  } finally {
    server.proc.kill("SIGCONT");
  }
  await c.waitFor("connected", 20000);
  await (await c.publish("public.frozen", { i: 1 })).acked;
  await until(() => seen.length === 1, "the event after coming back");
});

test("a refused token asks getToken once, then connects", async () => {
  let asked = 0;
  const c = make("not a valid token!", { getToken: () => (asked++, "mona:m") });
  await c.connect();
  assert.equal(c.state, "connected");
  assert.equal(c.userId, "mona");
  assert.equal(asked, 1);
});

test("a refused token without getToken is failed, with the reason", async () => {
  const c = make("not a valid token!");
  await assert.rejects(c.connect(), Failed);
  assert.equal(c.state, "failed");
  assert.match(c.error.message, /unauthorized/);
});

test("attempts used up: failed", async (t) => {
  const c = new Client("http://127.0.0.1:9", { token: "x", WebSocket, backoff: { base: 0.01, cap: 0.02, maxAttempts: 2 } });
  t.after(() => c.close());
  await c.connect(); // offline is not an error
  await c.waitFor("failed", 10000);
  assert.match(c.error.message, /gave up after 2 attempts/);
});

test("sessions: create, join, chat through the outbox with history paging, stream a message", async () => {
  const host = make("nina:h"), guest = make("omar:g");
  await host.connect();
  await guest.connect();
  const s = await host.sessions.create({ title: "Evening", category: "study", max_participants: 5, tags: ["a"] });
  assert.equal(s.current_participants, 1);
  const joined = await guest.sessions.join(s.id, { userName: "Omar" });
  assert.equal(joined.session.current_participants, 2);
  const events = [];
  await guest.sessions.watch(s.id, (e) => events.push(e.type));
  for (let i = 0; i < 5; i++) await host.sessions.send(s.id, `m${i}`);
  await host.flush();
  const page1 = await guest.sessions.messages(s.id, { limit: 3 });
  assert.equal(page1.messages.length, 3);
  assert.equal(page1.has_more, true);
  const oldest = page1.messages[0];
  const page2 = await guest.sessions.messages(s.id, { before: oldest.seq, limit: 50 });
  const texts = [...page2.messages, ...page1.messages].map((m) => m.message).filter((t) => /^m\d$/.test(t));
  assert.deepEqual(texts, ["m0", "m1", "m2", "m3", "m4"]);
  assert.deepEqual((await guest.sessions.participants(s.id)).map((p) => p.user_id).sort(), ["nina", "omar"]);

  // Streams: the guest sees the text grow; a late watcher gets the text so far.
  const streamChannel = `sessions.${s.id}`;
  let guestText = "";
  await guest.streams.watch(streamChannel, (views) => (guestText = views[0]?.content ?? ""));
  let hostText = ""; // the writer's own connection is not echoed: its tabs still see the text grow
  await host.streams.watch(streamChannel, (views) => (hostText = views[0]?.content ?? ""));
  const stream = await host.streams.start(streamChannel, { message_type: "text" });
  await stream.append("Hello, ");
  await until(() => guestText === "Hello, ", "the first delta");
  const late = make("omar:late");
  await late.connect();
  let lateText = "";
  await late.streams.watch(streamChannel, (views) => (lateText = views[0]?.content ?? ""));
  await until(() => lateText === "Hello, ", "the late watcher's text so far");
  await stream.append("world");
  await stream.end();
  await until(() => guestText === "Hello, world" && lateText === "Hello, world" && hostText === "Hello, world", "the whole text");
  // Stored once, as a chat message that names its stream.
  await until(async () => (await guest.sessions.messages(s.id, { limit: 50 })).messages.some((m) => m.message === "Hello, world" && m.stream_id === stream.id), "the stored message");
  await until(() => events.includes("MESSAGE_CREATED") && events.includes("MESSAGE_CREATED"), "session events");
  await host.sessions.end(s.id);
});
