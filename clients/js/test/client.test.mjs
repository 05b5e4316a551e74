import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { Client, ServerError, Conflict, Disconnected, LockTimeout } from "../dist/index.js";
import { Server, WebSocket, until, API_KEY, clientPool } from "./server.mjs";

let server;
const pool = clientPool(Client, () => server);
const make = pool.make;

before(async () => {
  server = await new Server().start();
});
after(async () => {
  await pool.closeAll();
  await server.stop();
});

test("two clients see each other's events, in order, exactly once", async () => {
  const a = make("alice:a"), b = make("bob:b");
  await a.connect();
  await b.connect();
  assert.equal(a.state, "connected");
  const seenA = [], seenB = [];
  await a.subscribe("public.pair", (e) => seenA.push(e.data));
  await b.subscribe("public.pair", (e) => seenB.push(e.data));
  const writes = [];
  for (let i = 0; i < 20; i++) writes.push(await (i % 2 ? b : a).publish("public.pair", { from: i % 2 ? "b" : "a", i }));
  await Promise.all(writes.map((w) => w.acked));
  await until(() => seenA.length >= 20 && seenB.length >= 20, "both to see 20");
  // Each client's own writes in its order; every event once.
  for (const seen of [seenA, seenB]) {
    assert.equal(seen.length, 20);
    assert.deepEqual(seen.filter((d) => d.from === "a").map((d) => d.i), [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]);
    assert.deepEqual(seen.filter((d) => d.from === "b").map((d) => d.i), [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]);
  }
  assert.deepEqual(seenA, seenB);
  assert.equal(a.outboxSize, 0);
  // The manual sync: catches up and stamps lastSyncedAt.
  const before = Date.now();
  await a.refresh();
  assert.ok(a.lastSyncedAt instanceof Date && a.lastSyncedAt.getTime() >= before);
  assert.equal(seenA.length, 20); // nothing delivered twice by the catch-up
});

test("a refused write rolls back and says why", async () => {
  const c = make("carol:c");
  await c.connect();
  const errors = [];
  c.onError((e, entry) => errors.push([e.code, entry.target]));
  const w = await c.publish("users.somebody-else", { x: 1 });
  assert.equal(c.pending("users.somebody-else").length, 1); // optimistic: visible at once
  await assert.rejects(w.acked, (e) => e instanceof ServerError && e.code === "forbidden");
  assert.equal(c.pending("users.somebody-else").length, 0); // rolled back
  await until(() => errors.length === 1, "onError");
  assert.deepEqual(errors[0], ["forbidden", "users.somebody-else"]);
  // The channel's optimistic view: delivered events, then pending publishes.
  await c.subscribe("public.view");
  await (await c.publish("public.view", { n: 1 })).acked;
  await until(() => c.messages("public.view").length === 1 && !c.messages("public.view")[0].pending, "the delivered event");
  await server.kill();
  await c.waitFor("reconnecting");
  await assert.rejects(c.refresh(), Disconnected);
  await c.publish("public.view", { n: 2 });
  assert.deepEqual(c.messages("public.view").map((m) => [m.data.n, !!m.pending]), [[1, false], [2, true]]);
  await server.start();
  await c.flush();
  await until(() => c.messages("public.view").length === 2 && !c.messages("public.view")[1].pending, "the sent event");
  // Later writes still go through.
  const ok = await c.publish("public.after", { y: 1 });
  assert.ok((await ok.acked).offset >= 1);
});

test("documents: a stale version conflicts and rolls back; updateWithRetry wins", async () => {
  const a = make("dana:a"), b = make("dana:b");
  await a.connect();
  await b.connect();
  const notes = a.documents("notes-" + Date.now());
  const created = await (await notes.create({ n: 0 }, { id: "n1" })).acked;
  assert.equal(created.version, 1);
  assert.deepEqual(notes.local("n1").data, { n: 0 });
  const other = b.documents(notes.name);
  await (await other.update("n1", { n: 10 }, { version: 1 })).acked;
  const stale = await notes.update("n1", { n: 1 }, { version: 1 });
  assert.deepEqual(notes.local("n1").data, { n: 1 }); // optimistic
  await assert.rejects(stale.acked, (e) => e.code === "conflict" && e.status === 409);
  assert.deepEqual(notes.local("n1").data, { n: 10 }); // rolled back to the server's truth
  // Two writers racing through updateWithRetry: no increment lost.
  await Promise.all(Array.from({ length: 6 }, (_, i) => (i % 2 ? a : b).updateWithRetry(notes.name, "n1", (d) => ({ n: d.n + 1 }), { maxRetries: 20 })));
  assert.equal((await notes.fetch("n1")).data.n, 16);
  // maxRetries 0 against a moving document gives Conflict.
  let flips = 0;
  await assert.rejects(a.updateWithRetry(notes.name, "n1", async (d) => {
    if (flips++ < 3) await (await other.update("n1", { n: d.n + 100 })).acked;
    return { n: d.n + 1 };
  }, { maxRetries: 0 }), Conflict);
});

test("presence: present while held, gone after leave", async () => {
  const a = make("erin:a"), b = make("frank:b");
  await a.connect();
  await b.connect();
  const here = await a.presence("room-p", { interval: 1 });
  assert.deepEqual(await here.members(), ["erin"]);
  const there = await b.presence("room-p");
  assert.deepEqual((await there.members()).sort(), ["erin", "frank"]);
  await here.leave();
  assert.deepEqual(await there.members(), ["frank"]);
  await there.leave();
});

test("a lock is held and extended across 3x its TTL; the fencing token rises on re-acquire", async () => {
  const a = make("gina:a"), b = make("hank:b");
  await a.connect();
  await b.connect();
  let lost = false;
  const lock = await a.lock("doc-l", { ttl: 1, onLost: () => (lost = true) });
  const first = lock.fencingToken;
  assert.ok(first >= 1);
  const until3 = Date.now() + 3000;
  while (Date.now() < until3) {
    // The refusal says who holds it and until when.
    await assert.rejects(b.lock("doc-l", { ttl: 1 }), (err) =>
      err instanceof LockTimeout && err.holder === "gina" && /Z$/.test(err.expiresAt) && /held by gina until/.test(err.message));
    await new Promise((r) => setTimeout(r, 300));
  }
  assert.equal(lost, false);
  assert.equal(await lock.release(), true);
  const again = await b.lock("doc-l", { ttl: 5 });
  assert.ok(again.fencingToken > first, `${again.fencingToken} > ${first}`);
  await again.release();
});

test("server killed and restarted mid-stream: nothing lost, nothing doubled", async () => {
  // The subscriber comes back later than the publisher, so it has events to recover by offset.
  const pub = make("ivan:p"), sub = make("judy:s", { backoff: { base: 1.5, cap: 1.5, random: () => 1, maxAttempts: Infinity } });
  await pub.connect();
  await sub.connect();
  const seen = [], states = [];
  sub.onState((s) => states.push(s));
  await sub.subscribe("public.crash", (e) => seen.push(e.data.i));
  const acks = [];
  for (let i = 0; i < 100; i++) acks.push((await pub.publish("public.crash", { i })).acked);
  await until(() => seen.length >= 30, "some events before the crash");
  await server.kill(); // mid-stream: some writes acknowledged, some in flight, some queued
  for (let i = 100; i < 150; i++) acks.push((await pub.publish("public.crash", { i })).acked);
  await server.start();
  await Promise.all(acks);
  await until(() => seen.length >= 150, "150 events", 60000);
  await (await pub.publish("public.crash", { i: 150 })).acked;
  await until(() => seen.length >= 151, "the last event");
  assert.deepEqual(seen, Array.from({ length: 151 }, (_, i) => i));
  assert.ok(states.includes("reconnecting"));
  assert.equal(pub.outboxSize, 0);
});

test("pushed events reach typed handlers on the user channel", async () => {
  const c = make("kim:k");
  await c.connect();
  const progress = [], credit = [];
  c.onShootProgress((p) => progress.push(p.progress));
  c.onCreditUpdate((d) => credit.push(d.balance));
  await until(() => c.subscription("users.kim")?.position?.epoch, "user channel position");
  const r1 = await server.api("POST", "/api/users/kim/events", { type: "SHOOT_PROGRESS", data: { shootId: "s1", processedCount: 1, totalCount: 4 } });
  assert.equal(r1.status, 202);
  await server.api("POST", "/api/users/kim/events", { type: "CREDIT_UPDATE", data: { balance: 7 } });
  await until(() => progress.length >= 1 && credit.length >= 1, "pushed events");
  assert.deepEqual(progress, [0.25]);
  assert.deepEqual(credit, [7]);
});

test("a replay overlapping what was delivered (a tab far behind joining) reaches the app once", async () => {
  const a = make("olga:a");
  await a.connect();
  const seen = [];
  const sub = await a.subscribe("public.overlap", (e) => seen.push(e.data.i));
  for (let i = 0; i < 10; i++) await (await a.publish("public.overlap", { i })).acked;
  await until(() => seen.length === 10, "10 events");
  // What the leader does for a tab whose position is older: SUBSCRIBE from it; every tab gets the replay.
  await a.call("subscribe", { channel: "public.overlap", since: { offset: 2, epoch: sub.position.epoch } });
  await (await a.publish("public.overlap", { i: 10 })).acked;
  await until(() => seen.length >= 11, "the next event");
  assert.deepEqual(seen, Array.from({ length: 11 }, (_, i) => i));
});

test("own progress is not echoed back, and its offset is not taken for a hole", async () => {
  const phone = make("pat:phone"), laptop = make("pat:laptop");
  await phone.connect();
  await laptop.connect();
  const onPhone = [], onLaptop = [];
  phone.on(null, (e) => e.offset && onPhone.push(e.type));
  laptop.onShootProgress((p) => onLaptop.push(p.progress));
  await until(() => phone.subscription("users.pat")?.position?.epoch, "the user channel");
  await phone.devices.updateProgress({ shootId: "s1", processedCount: 1, totalCount: 2 });
  await server.api("POST", "/api/users/pat/events", { type: "CREDIT_UPDATE", data: { balance: 3 } });
  await until(() => onPhone.includes("CREDIT_UPDATE") && onLaptop.length === 1, "the events");
  assert.deepEqual(onLaptop, [0.5]);
  assert.ok(!onPhone.includes("SHOOT_PROGRESS"), onPhone.join());
});

test("concurrent subscribes of one channel keep every handler", async () => {
  const c = make("quin:q");
  await c.connect();
  const a = [], b = [];
  await Promise.all([c.subscribe("public.twice", (e) => a.push(e.data.i)), c.subscribe("public.twice", (e) => b.push(e.data.i))]);
  await (await c.publish("public.twice", { i: 1 })).acked;
  await until(() => a.length === 1 && b.length === 1, "both handlers");
});

test("a subscription the server drops (document deleted) is dropped and reported, not restored", async () => {
  const c = make("rex:r");
  await c.connect();
  const notes = c.documents("drop-" + Date.now());
  await (await notes.create({ a: 1 }, { id: "d1" })).acked;
  const dropped = [];
  c.onSubscribeError((channel, error) => dropped.push([channel, error.code]));
  const channel = `collections.${notes.name}.documents.d1`;
  await c.subscribe(channel);
  await (await notes.delete("d1")).acked;
  await until(() => dropped.length === 1, "the report");
  assert.deepEqual(dropped[0], [channel, "forbidden"]);
  assert.equal(c.subscription(channel), undefined);
});

test("a filtered channel's offset gaps are taken as they are: every readable change, no recovery", async () => {
  const sent = [];
  class Counting extends WebSocket {
    send(data) {
      sent.push(JSON.parse(data));
      return super.send(data);
    }
  }
  const col = `gaps${Date.now()}`;
  const bob = make("bob:gaps", { WebSocket: Counting });
  await bob.connect();
  const seen = [];
  await bob.subscribe(`collections.${col}`, (e) => seen.push(`${e.type}:${e.data.id}`));
  const alice = { Authorization: "Bearer alice:web", "Content-Type": "application/json" };
  for (const [id, access] of [["x", "private"], ["y", "public"], ["z", "private"], ["w", "public"]]) {
    const r = await fetch(`${server.url}/api/collections/${col}/documents`, {
      method: "POST", headers: alice, body: JSON.stringify({ id, data: {}, access }) });
    assert.equal(r.status, 201);
  }
  await until(() => seen.length >= 2, "bob to see the two public documents");
  assert.deepEqual(seen, ["DOCUMENT_CREATED:y", "DOCUMENT_CREATED:w"]);
  const subscribes = sent.filter((f) => f.type === "SUBSCRIBE" && f.data.channel === `collections.${col}`);
  assert.equal(subscribes.length, 1, "no resubscribe to recover a gap");
});
