/**
 * Client: what an app talks to, in every tab. It keeps the app's subscriptions (each
 * event handed over once, in order, deduplicated by offset), the outbox mirror and the
 * optimistic views. The tab elected leader also runs the Core (./core.ts): the one
 * WebSocket and the outbox sender, whose events reach every tab over the bus.
 */
import { Core } from "./core.js";
import { Collection } from "./documents.js";
import { ClientError, Disconnected, Failed, ServerError } from "./errors.js";
import { Lock, Presence, updateWithRetry, type LockOptions, type PresenceOptions } from "./helpers.js";
import { Devices } from "./devices.js";
import { Sessions } from "./sessions.js";
import { Streams } from "./streams.js";
import { openStorage, type Storage } from "./store.js";
import { elect, type Bus, type Election, type Message } from "./tabs.js";
import type {
  ClientOptions, CreditUpdate, Document, Handler, OutboxEntry, Position, ShootProgress, State, SubscribeOptions,
  TetherEvent, Write,
} from "./types.js";

const randomId = () => Math.random().toString(36).slice(2, 10) + Date.now().toString(36);

/** The user a token names, without checking it (the server does): a JWT's sub/device, or dev "user:device". */
export function tokenIdentity(token: string | undefined): { user: string; device?: string; exp?: number } {
  if (!token) return { user: "" };
  const parts = token.split(".");
  if (parts.length === 3) {
    try {
      const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
      const bytes = Uint8Array.from(atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4)), (ch) => ch.charCodeAt(0));
      const json = JSON.parse(new TextDecoder().decode(bytes));
      return { user: String(json.sub ?? ""), device: json.device_id, exp: typeof json.exp === "number" ? json.exp : undefined };
    } catch {
      return { user: "" };
    }
  }
  const [user, device] = token.split(":");
  return { user, device };
}

export function errorToWire(e: any): any {
  return { name: e?.name ?? "Error", code: e?.code, message: e?.reason ?? e?.message ?? String(e), status: e?.status, data: e?.data };
}

export function errorFromWire(w: any): Error {
  if (w?.name === "ServerError" || w?.code) return new ServerError(w.code ?? "bad_request", w.message, w.status, w.data ?? {});
  if (w?.name === "Failed") return new Failed(w.message);
  return new Disconnected(w?.message ?? "disconnected");
}

export class Subscription {
  position: Position | null = null;
  /** A first subscribe without a position is waiting for its ACK: earlier events are not ours. */
  awaitingFirst = true;
  recovering = false;
  /** The server judges this channel's events per subscriber (its ACK says `filtered`): offsets may skip. */
  filtered = false;
  /** Offsets caused by this connection that the server does not echo to it. */
  readonly skips = new Set<number>();
  readonly handlers = new Map<string | null, Handler[]>();
  readonly reloads: ((channel: string) => any)[] = [];
  presence = false;
  /** The last events delivered on this channel (at most `keep`), oldest first: a cache for views. */
  readonly events: TetherEvent[] = [];
  keep = 500;
  /** @internal the stored position has been read */
  loaded: Promise<void> = Promise.resolve();

  constructor(readonly channel: string, private client: Client) {}

  /** handler(event) for events of `type` on this channel (null: every event). Returns an unsubscribe function. */
  on(type: string | null, handler: Handler): () => void {
    const list = this.handlers.get(type) ?? [];
    list.push(handler);
    this.handlers.set(type, list);
    return () => list.splice(list.indexOf(handler) >>> 0, 1);
  }

  onReload(fn: (channel: string) => any): void {
    this.reloads.push(fn);
  }

  /** Removes a handler (given to subscribe() or on()); true when one was removed. */
  off(handler: Handler): boolean {
    for (const list of this.handlers.values()) {
      const i = list.indexOf(handler);
      if (i >= 0) {
        list.splice(i, 1);
        return true;
      }
    }
    return false;
  }

  /** Whether any handler still listens (a component may unsubscribe when none does). */
  get listened(): boolean {
    return [...this.handlers.values()].some((l) => l.length > 0);
  }

  unsubscribe(): Promise<void> {
    return this.client.unsubscribe(this.channel);
  }
}

interface WriteWaiter {
  resolve: (v: any) => void;
  reject: (e: Error) => void;
}

export class Client {
  readonly url: string;
  readonly options: ClientOptions;
  token: string | undefined;
  readonly apiKey: string | undefined;
  readonly tabId = randomId();
  userId: string | null = null;
  deviceId: string | null = null;
  error: Error | null = null;
  /** The reason an operator gave when disconnecting this client. */
  disconnectReason: string | null = null;
  lastSyncedAt: Date | null = null;
  clientId = "";
  storage!: Storage;

  readonly sessions: Sessions;
  readonly streams: Streams;
  readonly devices: Devices;

  private _state: State = "disconnected";
  private stateListeners: ((s: State) => void)[] = [];
  private errorListeners: ((e: ServerError, entry: OutboxEntry) => void)[] = [];
  private reloadListeners: ((channel: string) => void)[] = [];
  private changeListeners: ((keys: Set<string>) => void)[] = [];
  private subscribeErrorListeners: ((channel: string, e: ServerError) => void)[] = [];
  private handlers = new Map<string | null, Handler[]>();
  private subs = new Map<string, Subscription>();
  /** Mirror of the shared outbox, for outboxSize and the optimistic views. */
  private outbox = new Map<number, OutboxEntry>();
  private writes = new Map<number, WriteWaiter>();
  private answered = new Set<number>();
  /** The server's copy of every cached document. */
  private docs = new Map<string, Document>();
  private rpcs = new Map<string, { msg: Message; resolve: (v: any) => void; reject: (e: Error) => void }>();
  private inbox: Message[] = [];
  private dispatching = false;
  private inHandler = 0;
  private started?: Promise<void>;
  private election?: Election;
  private bus?: Bus;
  private core: Core | null = null;
  private settled = false;
  private settledWaiters: (() => void)[] = [];
  private closed = false;
  private pendingKeys = new Set<string>();
  private unsaved = new Map<string, Position>();
  private saveTimer: ReturnType<typeof setTimeout> | null = null;
  /** Presences left and locks released by close(). */
  readonly held = new Set<{ leave?: () => Promise<void>; release?: () => Promise<boolean> }>();
  private changeTimer: ReturnType<typeof setTimeout> | null = null;
  private onPageHide = () => {
    this.flushPositions();
    this.bus?.post({ t: "bye", tab: this.tabId });
  };

  constructor(url: string, options: ClientOptions = {}) {
    this.url = url.replace(/\/+$/, "");
    this.options = options;
    this.token = options.token;
    this.apiKey = options.apiKey;
    this.sessions = new Sessions(this);
    this.streams = new Streams(this);
    this.devices = new Devices(this);
  }

  // -- state ------------------------------------------------------------------------------

  get state(): State {
    return this._state;
  }

  /** True when this tab holds the WebSocket (always true in Node or without Web Locks). */
  get isLeader(): boolean {
    return this.core !== null;
  }

  get outboxSize(): number {
    return this.outbox.size;
  }

  onState(fn: (s: State) => void): () => void {
    return this.listen(this.stateListeners, fn);
  }

  /** fn(error, entry) when the server refuses a queued write (it was rolled back). */
  onError(fn: (e: ServerError, entry: OutboxEntry) => void): () => void {
    return this.listen(this.errorListeners, fn);
  }

  /** fn(channel) when a gap could not be recovered: reload that channel's state. */
  onReload(fn: (channel: string) => void): () => void {
    return this.listen(this.reloadListeners, fn);
  }

  /** fn(keys) after the local view changed (debounced): "channels/{ch}", "documents/{c}/{id}", "requests/{path}", "outbox". */
  onChange(fn: (keys: Set<string>) => void): () => void {
    return this.listen(this.changeListeners, fn);
  }

  /** fn(channel, error) when the server refuses to restore a subscription on a reconnect (it is dropped). */
  onSubscribeError(fn: (channel: string, e: ServerError) => void): () => void {
    return this.listen(this.subscribeErrorListeners, fn);
  }

  /** handler(event) for events of `type` on every channel this tab has, users.{me} included (null: all). */
  on<D = any>(type: string | null, handler: Handler<D>): () => void {
    const list = this.handlers.get(type) ?? [];
    list.push(handler);
    this.handlers.set(type, list);
    return () => list.splice(list.indexOf(handler) >>> 0, 1);
  }

  onShootProgress(fn: (p: ShootProgress, e: TetherEvent<ShootProgress>) => void): () => void {
    return this.on<ShootProgress>("SHOOT_PROGRESS", (e) => fn(e.data, e));
  }

  onCreditUpdate(fn: (c: CreditUpdate, e: TetherEvent<CreditUpdate>) => void): () => void {
    return this.on<CreditUpdate>("CREDIT_UPDATE", (e) => fn(e.data, e));
  }

  private listen<T>(list: T[], fn: T): () => void {
    list.push(fn);
    return () => {
      const i = list.indexOf(fn);
      if (i >= 0) list.splice(i, 1);
    };
  }

  private setState(s: State): void {
    if (s === this._state) return;
    this._state = s;
    for (const fn of [...this.stateListeners]) safe(() => fn(s));
  }

  /** Resolves when the state is one of `states` (rejects after `timeoutMs`). */
  waitFor(states: State | State[], timeoutMs = 30000): Promise<State> {
    const want = Array.isArray(states) ? states : [states];
    if (want.includes(this._state)) return Promise.resolve(this._state);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        off();
        reject(new ClientError(`still ${this._state} after ${timeoutMs} ms`));
      }, timeoutMs);
      const off = this.onState((s) => {
        if (want.includes(s)) {
          clearTimeout(timer);
          off();
          resolve(s);
        }
      });
    });
  }

  /** Marks local keys changed; listeners hear of a burst once. */
  changed(key: string): void {
    this.pendingKeys.add(key);
    if (this.changeTimer) return;
    this.changeTimer = setTimeout(() => {
      this.changeTimer = null;
      const keys = this.pendingKeys;
      this.pendingKeys = new Set();
      for (const fn of [...this.changeListeners]) safe(() => fn(keys));
    }, 20);
  }

  // -- life ---------------------------------------------------------------------------------

  /** Starts keeping connected; resolves once the first attempt has an outcome (offline is not an error). */
  async connect(): Promise<void> {
    await this.start();
    await new Promise<void>((r) => (this.settled ? r() : this.settledWaiters.push(r)));
    if (this._state === "failed") throw new Failed(this.error?.message ?? "failed");
  }

  private start(): Promise<void> {
    this.started ??= (async () => {
      this.storage = await openStorage(this.options.store ?? ":memory:");
      this.clientId = await this.storage.meta("client_id", randomId);
      for (const e of await this.storage.pending()) this.outbox.set(e.seq, e);
      for (const d of await this.storage.documents()) this.docs.set(`${d.collection}/${d.id}`, d);
      const id = tokenIdentity(this.token);
      // Tabs share a connection only through a shared durable outbox (IndexedDB).
      const shared = this.options.shareConnection !== false && this.storage.durable;
      const name = shared ? `tether:${this.url}:${this.options.store}:${id.user}:${id.device ?? ""}:${this.apiKey ? "key" : ""}` : null;
      this.election = elect(name);
      this.bus = this.election.bus;
      this.bus.onMessage((m) => this.receive(m));
      (globalThis as any).addEventListener?.("pagehide", this.onPageHide);
      this.election.leader.then(() => this.lead(), () => {});
      if (!this.election.shared) await this.election.leader;
      this.setState("connecting");
      this.post({ t: "hello", tab: this.tabId, subs: this.positions(), present: this.presentChannels(), presence: this.presenceHeld() });
    })();
    return this.started;
  }

  private lead(): void {
    if (this.closed) return;
    this.core = new Core(this, this.bus!);
    this.core.start();
    this.bus!.post({ t: "leader", tab: this.tabId });
  }

  /** Stops: the outbox keeps what was not sent (the next client on this store sends it). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    (globalThis as any).removeEventListener?.("pagehide", this.onPageHide);
    this.flushPositions();
    // Before the goodbye: the leader still counts this tab's presences (it may be the leader itself).
    await Promise.all([...this.held].map((h) => (h.leave ? h.leave() : h.release?.())?.catch(() => {})));
    this.bus?.post({ t: "bye", tab: this.tabId });
    await this.core?.stop();
    this.core = null;
    this.election?.resign();
    await new Promise((r) => setTimeout(r, 0));
    this.bus?.close();
    for (const w of this.writes.values()) w.reject(new Disconnected("client closed before the server answered; the write stays queued"));
    this.writes.clear();
    for (const r of this.rpcs.values()) r.reject(new Disconnected("client closed"));
    this.rpcs.clear();
    this.storage?.close();
    this.setState("disconnected");
  }

  // -- talking to the leader -------------------------------------------------------------------

  post(msg: Message): void {
    this.bus?.post(msg);
  }

  /** Asks the leader to do something with its connection; answered over the bus. */
  call<T = any>(op: string, args: any = {}): Promise<T> {
    if (this.closed) return Promise.reject(new Disconnected("client closed"));
    return this.ask(op, args);
  }

  private ask<T = any>(op: string, args: any): Promise<T> {
    const rid = randomId();
    const msg = { t: "req", tab: this.tabId, rid, op, args };
    return new Promise<T>((resolve, reject) => {
      this.rpcs.set(rid, { msg, resolve, reject });
      this.post(msg);
    });
  }

  private positions(): Record<string, Position | null> {
    const out: Record<string, Position | null> = {};
    for (const [ch, s] of this.subs) out[ch] = s.position && s.position.epoch ? s.position : null;
    return out;
  }

  /** Every bus message is handled one at a time, in arrival order: this is what keeps events in order. */
  private receive(m: Message): void {
    if (m.t === "req" || m.t === "hello" || m.t === "bye" || m.t === "kick") {
      this.core?.handle(m); // only the leader serves these
      return;
    }
    this.inbox.push(m);
    if (!this.dispatching) void this.drain();
  }

  private async drain(): Promise<void> {
    this.dispatching = true;
    try {
      while (this.inbox.length) {
        const m = this.inbox.shift()!;
        try {
          await this.handle(m);
        } catch (e) {
          console.warn("tether: dispatch failed", e);
        }
      }
    } finally {
      this.dispatching = false;
    }
  }

  private async handle(m: Message): Promise<void> {
    switch (m.t) {
      case "frame":
        if (m.to && m.to !== this.tabId) return; // state retained for a tab that opened later
        return this.onFrame(m.frame);
      case "ack":
        return this.onAck(m.channel, m.ack, m.since);
      case "state":
        this.userId = m.userId ?? this.userId;
        this.deviceId = m.deviceId ?? this.deviceId;
        if (m.userId) this.ensureUserSub();
        this.error = m.error ? errorFromWire(m.error) : null;
        this.disconnectReason = m.disconnectReason ?? this.disconnectReason;
        this.setState(m.state);
        if (m.state === "failed") {
          // The writes stay in the outbox (a later client sends them); their promises learn why now.
          for (const w of this.writes.values()) w.reject(new Failed(this.error?.message ?? "failed"));
          this.writes.clear();
        }
        if (m.settled && !this.settled) {
          this.settled = true;
          for (const w of this.settledWaiters.splice(0)) w();
        }
        return;
      case "res": {
        if (m.to !== this.tabId) return;
        const r = this.rpcs.get(m.rid);
        if (!r) return;
        this.rpcs.delete(m.rid);
        if (m.ok) r.resolve(m.value);
        else r.reject(errorFromWire(m.error));
        return;
      }
      case "leader":
        // A new leader: tell it what this tab follows, and ask again what was unanswered.
        this.post({ t: "hello", tab: this.tabId, subs: this.positions(), present: this.presentChannels(), presence: this.presenceHeld() });
        for (const [rid, r] of this.rpcs) {
          if (r.msg.op === "request") {
            this.rpcs.delete(rid);
            r.reject(new Disconnected("the connection moved to another tab before the answer came"));
          } else this.post(r.msg);
        }
        return;
      case "added":
        if (this.answered.has(m.entry.seq)) return; // its answer overtook it (another tab's message)
        this.outbox.set(m.entry.seq, m.entry);
        this.changed(keyOf(m.entry));
        this.changed("outbox");
        return;
      case "rebased": {
        const e = this.outbox.get(m.seq);
        if (e) e.payload = m.payload;
        return;
      }
      case "settled":
        return this.onSettled(m);
      case "skip":
        this.noteSkip(m.channel, m.offset);
        return;
      case "synced":
        this.lastSyncedAt = new Date(m.at);
        this.changed("synced");
        return;
      case "doc":
        if (m.drop) this.docs.delete(`${m.collection}/${m.id}`);
        else this.docs.set(`${m.doc.collection}/${m.doc.id}`, m.doc);
        this.changed(`documents/${m.collection ?? m.doc.collection}/${m.id ?? m.doc.id}`);
        return;
      case "subscribe-error": {
        const sub = this.subs.get(m.channel);
        if (!sub) return;
        this.subs.delete(m.channel);
        const err = errorFromWire(m.error) as ServerError;
        if (!this.subscribeErrorListeners.length) console.warn(`tether: subscription to ${m.channel} refused: ${err.message}`);
        for (const fn of [...this.subscribeErrorListeners]) safe(() => fn(m.channel, err));
        return;
      }
    }
  }

  // -- subscriptions: exactly once, in order ------------------------------------------------

  /**
   * Keeps `channel` subscribed; handler(event) gets each event once, in order. A channel this
   * store followed before continues from its last delivered offset (events published while the
   * page was closed arrive). Offline, it is made as soon as the client connects.
   */
  async subscribe(channel: string, handler?: Handler, opts: SubscribeOptions = {}): Promise<Subscription> {
    await this.start();
    let sub = this.subs.get(channel);
    const fresh = !sub;
    if (!sub) {
      // Registered at once, so that concurrent subscribes of one channel share it (and its handlers).
      const s = (sub = new Subscription(channel, this));
      this.subs.set(channel, s);
      s.loaded = this.options.resume === false ? Promise.resolve() : this.storage.position(channel).then((pos) => {
        if (pos && !s.position) {
          s.position = pos;
          s.awaitingFirst = false;
        }
      }, () => {});
    }
    if (handler) sub.on(null, handler);
    if (opts.onReload) sub.onReload(opts.onReload);
    if (opts.presence) sub.presence = true;
    await sub.loaded;
    const ask = this.call("subscribe", { channel, since: sub.position?.epoch ? sub.position : null, presence: sub.presence });
    if (this.inHandler) {
      // From inside a handler the replay can only be delivered after that handler returns.
      ask.catch((e) => this.refusedSubscribe(channel, sub!, e));
      return sub;
    }
    try {
      await ask;
    } catch (e) {
      if (e instanceof ServerError && e.action === "reject") {
        if (fresh && this.subs.get(channel) === sub) this.subs.delete(channel);
        throw e;
      }
      // Offline or the link dropped: the leader subscribes again on the next connection.
    }
    return sub;
  }

  private refusedSubscribe(channel: string, sub: Subscription, e: any): void {
    if (e instanceof ServerError && e.action === "reject" && this.subs.get(channel) === sub) {
      this.subs.delete(channel);
      for (const fn of [...this.subscribeErrorListeners]) safe(() => fn(channel, e));
    }
  }

  async unsubscribe(channel: string): Promise<void> {
    if (!this.subs.delete(channel)) return;
    await this.call("unsubscribe", { channel }).catch(() => {});
  }

  subscription(channel: string): Subscription | undefined {
    return this.subs.get(channel);
  }

  /** Every connection is subscribed to its own user channel: this tab follows it too. */
  private ensureUserSub(): void {
    const ch = `users.${this.userId}`;
    if (this.subs.has(ch)) return;
    const sub = new Subscription(ch, this);
    sub.awaitingFirst = false; // the server sends its events from the first frame on
    this.subs.set(ch, sub);
    void this.storage.position(ch).then((pos) => {
      if (pos && !sub.position) sub.position = pos;
      this.call("subscribe", { channel: ch, since: sub.position?.epoch ? sub.position : null }).catch(() => {});
    });
  }

  /** `replayed`: from an ACK's publications, which hold exactly the missed events: no hole check. */
  private async onFrame(frame: TetherEvent, replayed = false): Promise<void> {
    const { channel, offset } = frame;
    const sub = channel ? this.subs.get(channel) : undefined;
    if (typeof offset !== "number") {
      // A direct frame (retained state, STREAM_STATE, a device already online): no offset to dedupe by.
      if (!channel || sub) await this.deliver(sub, frame);
      return;
    }
    if (!sub) return; // another tab's channel
    // Events this connection caused and the server does not echo to it (its own progress,
    // its stream's start and end): step over their offsets instead of taking them for holes.
    while (sub.position?.epoch && sub.skips.has(sub.position.offset + 1)) {
      sub.skips.delete(sub.position.offset + 1);
      sub.position = { ...sub.position, offset: sub.position.offset + 1 };
    }
    if (sub.skips.delete(offset)) return;
    const pos = sub.position;
    if (!pos) {
      if (sub.awaitingFirst) return; // before our first ACK: not part of our subscription yet
    } else if (offset <= pos.offset) {
      return; // delivered already (a replay overlapping live delivery)
    } else if (offset > pos.offset + 1 && pos.epoch && !replayed && !sub.filtered) {
      // A hole (an event lost between tabs, or a missed frame): recover it, never skip ahead.
      if (!sub.recovering) {
        sub.recovering = true;
        this.call("subscribe", { channel, since: pos, resub: true }).catch(() => (sub.recovering = false));
      }
      return;
    }
    await this.deliver(sub, frame);
    sub.position = { offset, epoch: pos?.epoch ?? "" };
    if (sub.position.epoch) this.savePosition(sub.channel, sub.position);
  }

  /** Positions are written after the handler returned, one IndexedDB transaction per burst of events. */
  private savePosition(channel: string, pos: Position): void {
    this.unsaved.set(channel, pos);
    this.saveTimer ??= setTimeout(() => {
      this.saveTimer = null;
      const batch = [...this.unsaved];
      this.unsaved.clear();
      for (const [ch, p] of batch) void this.storage.setPosition(ch, p).catch(() => {});
    }, 0);
  }

  private flushPositions(): void {
    if (this.saveTimer) clearTimeout(this.saveTimer);
    this.saveTimer = null;
    for (const [ch, p] of this.unsaved) void this.storage?.setPosition(ch, p).catch(() => {});
    this.unsaved.clear();
  }

  private async onAck(channel: string, ack: any, since: Position | null): Promise<void> {
    const sub = this.subs.get(channel);
    if (!sub) return;
    const top: Position = { offset: Number(ack.offset), epoch: String(ack.epoch) };
    sub.recovering = false;
    sub.filtered = ack.filtered === true;
    const pos = sub.position;
    if (!pos || (!pos.epoch && pos.offset <= top.offset)) {
      // Our first answer: we start at the channel's top.
      sub.position = { offset: Math.max(pos?.offset ?? 0, top.offset), epoch: top.epoch };
    } else if (!pos.epoch) {
      sub.position = { offset: pos.offset, epoch: top.epoch };
    } else if (pos.epoch !== top.epoch || (since && !ack.recovered && pos.offset < top.offset)) {
      // History cannot fill the gap: never pretend; the app reloads.
      sub.position = top;
      sub.events.length = 0;
      await this.storage.setPosition(channel, top, true).catch(() => {});
      const reloads = [...sub.reloads, ...this.reloadListeners];
      if (!reloads.length) console.warn(`tether: ${channel}: events were missed beyond the channel's history and nothing listens with onReload: reload its state`);
      for (const fn of reloads) {
        try {
          await fn(channel);
        } catch (e) {
          console.warn("tether: reload callback failed", e);
        }
      }
      this.changed(`channels/${channel}`);
      return;
    } else if (since && ack.recovered) {
      for (const ev of ack.publications ?? []) await this.onFrame(ev, true);
    } else if (!since && pos.offset < top.offset) {
      // Someone subscribed without a position while we were behind: catch up from ours.
      sub.recovering = true;
      this.call("subscribe", { channel, since: pos, resub: true }).catch(() => (sub.recovering = false));
      return;
    }
    sub.awaitingFirst = false;
    if (sub.position?.epoch) await this.storage.setPosition(channel, sub.position).catch(() => {});
  }

  /**
   * The optimistic view of a channel: the events delivered (cached, last 500), then this
   * store's publishes still in the outbox, marked `pending: true`.
   */
  messages(channel: string): (TetherEvent & { pending?: boolean; seq?: number })[] {
    const sent = this.subs.get(channel)?.events ?? [];
    const queued = this.pending(channel)
      .filter((e) => e.kind === "publish")
      .map((e) => ({ type: "PUBLICATION", channel, data: e.payload.data, pending: true, seq: e.seq }));
    return [...sent, ...queued];
  }

  private async deliver(sub: Subscription | undefined, ev: TetherEvent): Promise<void> {
    if (sub && typeof ev.offset === "number") {
      sub.events.push(ev);
      if (sub.events.length > sub.keep) sub.events.splice(0, sub.events.length - sub.keep);
    }
    const list: Handler[] = [];
    if (sub) list.push(...(sub.handlers.get(ev.type) ?? []), ...(sub.handlers.get(null) ?? []));
    list.push(...(this.handlers.get(ev.type) ?? []), ...(this.handlers.get(null) ?? []));
    this.inHandler++;
    try {
      for (const h of list) {
        try {
          await h(ev);
        } catch (e) {
          console.error(`tether: handler for ${ev.type} failed`, e);
        }
      }
    } finally {
      this.inHandler--;
    }
    if (sub) this.changed(`channels/${sub.channel}`);
  }

  // -- writes ------------------------------------------------------------------------------------

  /** Puts a write in the outbox (on disk when this resolves) and wakes the sender. */
  async queue(kind: OutboxEntry["kind"], target: string, payload: any): Promise<Write> {
    await this.start();
    const entry = await this.storage.add({ kind, target, payload, createdAt: Date.now(), tab: this.tabId } as any, this.clientId);
    this.outbox.set(entry.seq, entry);
    let waiter!: WriteWaiter;
    const acked = new Promise<any>((resolve, reject) => (waiter = { resolve, reject }));
    acked.catch(() => {}); // awaiting it is optional
    this.writes.set(entry.seq, waiter);
    this.changed(keyOf(entry));
    this.changed("outbox");
    this.post({ t: "added", entry });
    this.post({ t: "kick" });
    return { seq: entry.seq, entry, acked };
  }

  /** Publishes on a channel through the outbox; durable once this resolves. */
  publish(channel: string, data: any): Promise<Write> {
    return this.queue("publish", channel, { data });
  }

  /** Any REST write (e.g. POST /api/sessions/{id}/messages) through the outbox, with an Idempotency-Key. */
  enqueue(method: string, path: string, body?: any): Promise<Write> {
    return this.queue("http", path, { method: method.toUpperCase(), json: body });
  }

  private onSettled(m: Message): void {
    const entry = this.outbox.get(m.seq) ?? m.entry;
    this.outbox.delete(m.seq);
    this.answered.add(m.seq);
    if (this.answered.size > 10000) this.answered.delete(this.answered.values().next().value!);
    if (entry) this.changed(keyOf(entry));
    this.changed("outbox");
    const w = this.writes.get(m.seq);
    this.writes.delete(m.seq);
    if (m.ok) {
      w?.resolve(m.result);
      return;
    }
    const err = errorFromWire(m.error) as ServerError;
    w?.reject(err);
    // The tab that made the write hears why it was rolled back (the leader, when that tab is gone).
    if (m.notify === this.tabId) {
      if (!this.errorListeners.length) console.warn(`tether: write to ${entry?.target} refused: ${err.message}`);
      for (const fn of [...this.errorListeners]) safe(() => fn(err, entry));
    }
  }

  /** Writes not yet acknowledged, oldest first; for one target (channel, path, "collection/id") if given. */
  pending(target?: string): OutboxEntry[] {
    return [...this.outbox.values()].filter((e) => target === undefined || e.target === target).sort((a, b) => a.seq - b.seq);
  }

  /** Resolves when every queued write has been answered (sent, or refused and rolled back). */
  async flush(timeoutMs = 30000): Promise<void> {
    await this.start();
    const until = Date.now() + timeoutMs;
    while (this.outbox.size) {
      if (Date.now() > until) throw new ClientError(`outbox still holds ${this.outbox.size} writes`);
      this.post({ t: "kick" });
      await new Promise((r) => setTimeout(r, 25));
    }
  }

  /** A manual sync: send the outbox, catch up every subscription, refetch cached documents. */
  async refresh(timeoutMs = 30000): Promise<void> {
    await this.start();
    if (this._state !== "connected") throw new Disconnected("offline: refresh needs a connection");
    await this.flush(timeoutMs);
    for (const sub of [...this.subs.values()]) {
      await this.call("subscribe", { channel: sub.channel, since: sub.position?.epoch ? sub.position : null });
    }
    for (const d of [...this.docs.values()]) await this.documents(d.collection).fetch(d.id).catch(() => {});
    this.post({ t: "synced", at: Date.now() });
    this.lastSyncedAt = new Date();
  }

  /** One WebSocket request (UPDATE_PROGRESS, STREAM_*, ...), online only. */
  async request<T = any>(type: string, data: Record<string, any> = {}): Promise<T> {
    if (this._state !== "connected") throw new Disconnected("offline");
    return this.call("request", { type, data });
  }

  /** The offset of an event the shared connection caused and will not receive (see onFrame). */
  noteSkip(channel: string, offset: number): void {
    const sub = this.subs.get(channel);
    if (sub && (!sub.position || offset > sub.position.offset)) sub.skips.add(offset);
  }

  // -- documents cache ------------------------------------------------------------------------

  serverDocument(collection: string, id: string): Document | undefined {
    return this.docs.get(`${collection}/${id}`);
  }

  cachedDocuments(collection: string): Document[] {
    return [...this.docs.values()].filter((d) => d.collection === collection);
  }

  /** Stores the server's copy of a document, in this tab and the others. */
  putDocument(doc: Document): void {
    this.docs.set(`${doc.collection}/${doc.id}`, doc);
    void this.storage.putDocument(doc).catch(() => {});
    this.changed(`documents/${doc.collection}/${doc.id}`);
    this.post({ t: "doc", doc });
  }

  dropDocument(collection: string, id: string): void {
    this.docs.delete(`${collection}/${id}`);
    void this.storage.dropDocument(collection, id).catch(() => {});
    this.changed(`documents/${collection}/${id}`);
    this.post({ t: "doc", drop: true, collection, id });
  }

  documents<D = any>(collection: string): Collection<D> {
    return new Collection<D>(this, collection);
  }

  updateWithRetry<D = any>(collection: string, id: string, fn: (data: D) => D | Promise<D>, opts: { maxRetries?: number } = {}): Promise<Document<D>> {
    return updateWithRetry(this, collection, id, fn, opts.maxRetries ?? 5);
  }

  // -- REST ---------------------------------------------------------------------------------------

  /** One REST call with the current credentials; errors are thrown as classified ServerErrors. */
  async rest<T = any>(method: string, path: string, body?: any, opts: { headers?: Record<string, string>; allow?: number[]; keepalive?: boolean } = {}): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const headers: Record<string, string> = { ...(opts.headers ?? {}) };
      if (this.apiKey) headers["X-API-Key"] = this.apiKey;
      else if (this.token) headers["Authorization"] = `Bearer ${this.token}`;
      if (body !== undefined) headers["Content-Type"] = "application/json";
      let r: Response;
      try {
        r = await fetch(this.url + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body), keepalive: opts.keepalive });
      } catch (e: any) {
        throw new Disconnected(`${method} ${path}: ${e?.message ?? e}`);
      }
      const text = await r.text().catch(() => "");
      let json: any = null;
      try {
        json = text ? JSON.parse(text) : null;
      } catch {
        json = null;
      }
      if (r.status === 401 && attempt === 0 && (await this.reauth())) continue;
      if (r.status >= 400 && !(opts.allow ?? []).includes(r.status)) {
        const err = json && typeof json.error === "object" && json.error ? json.error : {};
        const code = err.code ?? (r.status >= 500 ? "unavailable" : "bad_request");
        throw new ServerError(code, err.message ?? text.slice(0, 200), r.status, err);
      }
      return (json ?? {}) as T;
    }
  }

  /** Asks the app's getToken callback for a fresh token. */
  async reauth(): Promise<boolean> {
    const get = this.options.getToken ?? this.options.refreshToken;
    if (!get) return false;
    try {
      this.token = await get();
      return true;
    } catch (e) {
      console.warn("tether: token refresh failed", e);
      return false;
    }
  }

  /** The user this client acts as (known before the first connection from a dev token or a JWT's sub). */
  get me(): string {
    return this.userId ?? tokenIdentity(this.token).user;
  }

  // -- helpers ---------------------------------------------------------------------------------

  /** Present in `key` now and until leave() (heartbeat every `interval` s; left on close and pagehide). */
  async presence(key: string, opts: PresenceOptions = {}): Promise<Presence> {
    await this.start();
    const p = new Presence(this, key, opts);
    await p.enter();
    this.held.add(p);
    return p;
  }

  /** Acquires a lock and keeps extending it at half its TTL until release(). */
  async lock(key: string, opts: LockOptions = {}): Promise<Lock> {
    const l = new Lock(this, key, opts);
    await l.acquire();
    this.held.add(l);
    return l;
  }

  /**
   * The tabs share one device, so one presence per key on the server: the leader counts the
   * tabs' holds and ends the presence (DELETE) only when the last one is let go. `unloading`:
   * the page is going, nobody waits for the answer.
   */
  async holdPresence(key: string, holder: string, on: boolean, unloading = false): Promise<void> {
    const args = { key, holder, on };
    if (unloading) {
      this.post({ t: "req", tab: this.tabId, rid: randomId(), op: "presence", args });
      return;
    }
    // Never stuck on a leader that does not answer (a frozen tab): the server's TTL ends it then.
    const wait = (this.options.requestTimeout ?? 10) * 1000;
    let timer: ReturnType<typeof setTimeout> | undefined;
    await Promise.race([this.ask("presence", args), new Promise((r) => (timer = setTimeout(r, wait)))]).finally(() => clearTimeout(timer));
  }

  private presenceHeld(): [string, string][] {
    return [...this.held].filter((h): h is Presence => h instanceof Presence && !h.left).map((p) => [p.key, p.holder]);
  }

  // -- for the Core (leader) -----------------------------------------------------------------

  /** The tabs' subscriptions as this tab knows them (the leader's own part of the registry). */
  subscriptionsOf(): Record<string, Position | null> {
    return this.positions();
  }

  /** The channels this tab holds with `presence: true`. */
  presentChannels(): string[] {
    return [...this.subs.values()].filter((s) => s.presence).map((s) => s.channel);
  }
}

export function keyOf(e: OutboxEntry): string {
  if (e.kind === "publish") return `channels/${e.target}`;
  if (e.kind === "http") return `requests/${e.target}`;
  return `documents/${e.target}`;
}

function safe(fn: () => void): void {
  try {
    fn();
  } catch (e) {
    console.error("tether: listener failed", e);
  }
}
