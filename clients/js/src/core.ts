/**
 * The leader's part: the one WebSocket (connect, resubscribe, keepalive, back off, reconnect
 * or give up) and the outbox sender. It serves every tab of its store over the bus: their
 * subscriptions are one registry, every frame is broadcast, every write is sent once.
 */
import { Backoff, Pacer, sleep } from "./backoff.js";
import type { Client } from "./client.js";
import { errorToWire, keyOf, tokenIdentity } from "./client.js";
import { sendDocumentWrite } from "./documents.js";
import { ClientError, Disconnected, Failed, ServerError, actionOf } from "./errors.js";
import {
  CLOSE_OPERATOR, CLOSE_SERVICE_RESTART, CLOSE_TOKEN_EXPIRED, CLOSE_UNAUTHORIZED, Link,
} from "./link.js";
import type { Bus, Message } from "./tabs.js";
import type { OutboxEntry, Position, State } from "./types.js";

/** Requests whose event the server sends to everyone but the connection that made it. */
const NOT_ECHOED = new Set(["UPDATE_PROGRESS", "STREAM_START", "STREAM_END"]);

interface Channel {
  tabs: Set<string>;
  /** Where the next resubscribe starts: the last offset broadcast (or the furthest-behind tab's). */
  wire: Position | null;
  /** The tabs that hold it with `presence: true`: the user is present through it while one does. */
  present: Set<string>;
  /** The server's subscription has presence on (there is no turning it off but UNSUBSCRIBE). */
  presentOnWire: boolean;
}

/** A promise-based wake-up flag. */
class Signal {
  private waiters: (() => void)[] = [];
  private set = false;
  fire() {
    this.set = true;
    for (const w of this.waiters.splice(0)) w();
  }
  wait(ms?: number): Promise<void> {
    if (this.set) {
      this.set = false;
      return Promise.resolve();
    }
    return new Promise((r) => {
      const done = () => {
        clearTimeout(t);
        this.set = false;
        r();
      };
      const t = ms === undefined ? undefined : setTimeout(() => {
        const i = this.waiters.indexOf(done);
        if (i >= 0) this.waiters.splice(i, 1);
        r();
      }, ms);
      this.waiters.push(done);
    });
  }
}

export class Core {
  private link: Link | null = null;
  private channels = new Map<string, Channel>();
  private inflight = new Map<string, Position | null>();
  private liveTabs = new Set<string>();
  /** stream id -> channel, for streams written through this connection. */
  private streams = new Map<string, string>();
  private retained = new Map<string, { frame: any; at: number }>();
  private backoff: Backoff;
  private pacer: Pacer;
  private window: number;
  private kick = new Signal();
  private online = new Signal();
  private closing = false;
  private state: State = "connecting";
  private settled = false;
  private error: Error | null = null;
  private disconnectReason: string | null = null;
  private userId: string | null = null;
  private deviceId: string | null = null;
  private refreshTimer: ReturnType<typeof setTimeout> | null = null;
  private everConnected = false;
  /**
   * Presence keys held by the tabs: key -> holder id -> its tab. The tabs share one device,
   * hence one presence on the server: it is ended (DELETE) only when the last holder goes.
   */
  private presence = new Map<string, Map<string, string>>();
  /** Per key, the DELETE in flight: an enter waits for it, so its first heartbeat comes after. */
  private presenceDrops = new Map<string, Promise<void>>();
  /** A new leader hears the tabs' hellos (and what they hold) before it decides anyone left. */
  private startedAt = Date.now();

  constructor(private client: Client, private bus: Bus) {
    const o = client.options;
    this.backoff = new Backoff(o.backoff);
    const batch = o.batchSize ?? 50;
    this.pacer = new Pacer(o.sendRate ?? 50, batch);
    this.window = batch;
  }

  private get timeoutMs(): number {
    return (this.client.options.requestTimeout ?? 10) * 1000;
  }

  start(): void {
    this.startedAt = Date.now();
    this.liveTabs.add(this.client.tabId);
    const present = new Set(this.client.presentChannels());
    for (const [ch, pos] of Object.entries(this.client.subscriptionsOf())) this.track(ch, this.client.tabId, pos, present.has(ch));
    void this.supervise();
    void this.flusher();
  }

  async stop(): Promise<void> {
    this.closing = true;
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    this.link?.shut(1000, "client closed");
    this.kick.fire();
    this.online.fire();
  }

  // -- tabs ------------------------------------------------------------------------------

  handle(m: Message): void {
    if (this.closing) return;
    switch (m.t) {
      case "hello":
        if (!this.liveTabs.has(m.tab) && m.tab !== this.client.tabId) this.sendRetained(m.tab);
        this.liveTabs.add(m.tab);
        for (const [ch, pos] of Object.entries(m.subs ?? {})) {
          const present = (m.present ?? []).includes(ch);
          const c = this.track(ch, m.tab, pos as Position | null, present);
          const behind = pos && (!c.wire || c.wire.epoch !== (pos as Position).epoch || (pos as Position).offset < c.wire.offset);
          if (this.connected && (behind || (present && !c.presentOnWire)))
            void this.subscribeWire(ch, pos as Position | null).catch(() => {});
        }
        for (const [key, holder] of m.presence ?? []) this.holdPresence(key, holder, m.tab);
        this.announce();
        return;
      case "bye":
        this.liveTabs.delete(m.tab);
        for (const ch of [...this.channels.keys()]) void this.letGo(ch, m.tab);
        for (const [key, holders] of this.presence) {
          let dropped = false;
          for (const [holder, tab] of holders) if (tab === m.tab) dropped = holders.delete(holder);
          if (dropped) void this.releasePresence(key);
        }
        return;
      case "kick":
        this.kick.fire();
        return;
      case "req":
        void this.serve(m);
        return;
    }
  }

  private get connected(): boolean {
    return this.state === "connected" && !!this.link && !this.link.closed;
  }

  private isUserChannel(ch: string): boolean {
    return this.userId !== null && ch === `users.${this.userId}`;
  }

  private track(channel: string, tab: string, pos: Position | null, presence = false): Channel {
    let c = this.channels.get(channel);
    if (!c) this.channels.set(channel, (c = { tabs: new Set(), wire: null, present: new Set(), presentOnWire: false }));
    c.tabs.add(tab);
    if (presence) c.present.add(tab);
    // Never resubscribe without a position once any tab had one; before connecting, start from the furthest behind.
    if (pos?.epoch && (!c.wire || (!this.connected && pos.offset < c.wire.offset))) c.wire = pos;
    return c;
  }

  private async serve(m: Message): Promise<void> {
    const reply = (ok: boolean, value?: any, error?: any) =>
      this.bus.post({ t: "res", to: m.tab, rid: m.rid, ok, value, error: error ? errorToWire(error) : undefined });
    const a = m.args ?? {};
    try {
      switch (m.op) {
        case "subscribe": {
          this.track(a.channel, m.tab, a.since, !!a.presence);
          if (!this.connected) return reply(true, { queued: true });
          const busy = this.inflight.get(a.channel);
          if (a.resub && busy !== undefined && (!busy || !a.since || busy.offset <= a.since.offset)) return reply(true, {});
          try {
            await this.subscribeWire(a.channel, a.since);
          } catch (e) {
            if (e instanceof ServerError && e.action === "reject") {
              const c = this.channels.get(a.channel);
              c?.tabs.delete(m.tab);
              c?.present.delete(m.tab);
              throw e;
            }
            return reply(true, { queued: true }); // the next connection subscribes it
          }
          return reply(true, {});
        }
        case "unsubscribe":
          await this.letGo(a.channel, m.tab);
          return reply(true, {});
        case "presence": {
          if (a.on) {
            this.holdPresence(a.key, a.holder, m.tab);
            await this.presenceDrops.get(a.key); // a goodbye still in flight goes first
          } else {
            this.presence.get(a.key)?.delete(a.holder);
            await this.releasePresence(a.key);
          }
          return reply(true, {});
        }
        case "request": {
          if (!this.connected) throw new Disconnected("offline");
          const ack = await this.link!.request(a.type, a.data ?? {});
          this.noteOwnEvent(a.type, a.data ?? {}, ack);
          return reply(true, ack);
        }
        default:
          throw new ClientError(`unknown operation ${m.op}`);
      }
    } catch (e) {
      reply(false, undefined, e);
    }
  }

  /**
   * A tab no longer holds `channel` (it unsubscribed or went away). The last one's going ends
   * the subscription; the last presence holder's going, while other tabs still follow it, ends
   * the presence: there is no "presence off" on a live subscription, so UNSUBSCRIBE, then
   * SUBSCRIBE again from the last offset broadcast (the replay fills the gap; the tabs drop by
   * offset what they already had, so nothing is lost or doubled).
   */
  private async letGo(channel: string, tab: string): Promise<void> {
    const c = this.channels.get(channel);
    if (!c || !c.tabs.delete(tab)) return;
    c.present.delete(tab);
    if (this.isUserChannel(channel)) return;
    if (!c.tabs.size) {
      this.channels.delete(channel);
      if (this.connected) await this.link!.request("UNSUBSCRIBE", { channel }).catch(() => {});
    } else if (c.presentOnWire && !c.present.size && this.connected) {
      c.presentOnWire = false;
      const link = this.link!;
      await link.request("UNSUBSCRIBE", { channel }).catch(() => {});
      if (this.channels.get(channel) === c && this.link === link) await this.subscribeWire(channel, c.wire).catch(() => {});
    }
  }

  private holdPresence(key: string, holder: string, tab: string): void {
    let holders = this.presence.get(key);
    if (!holders) this.presence.set(key, (holders = new Map()));
    holders.set(holder, tab);
  }

  /**
   * Ends this device's presence in `key` once no tab holds it any more. Runs at once when it
   * can (a closing tab's goodbye must start before the page is gone, hence keepalive).
   */
  private releasePresence(key: string): Promise<void> {
    if (this.presence.get(key)?.size) return Promise.resolve();
    this.presence.delete(key);
    const drop = (async () => {
      await this.presenceDrops.get(key);
      // Just elected: the other tabs' hellos (what they hold) may still be on their way.
      const settle = this.startedAt + 500 - Date.now();
      if (settle > 0) await sleep(settle);
      if (this.presence.get(key)?.size || this.closing) return; // held again meanwhile
      const me = encodeURIComponent(this.client.me);
      await this.client.rest("DELETE", `/api/presence/${encodeURIComponent(key)}/${me}`, undefined, { keepalive: true }).catch(() => {});
    })();
    this.presenceDrops.set(key, drop);
    void drop.finally(() => this.presenceDrops.get(key) === drop && this.presenceDrops.delete(key));
    return drop;
  }

  /**
   * The server does not echo to a connection the events it caused (its progress report, its
   * stream's start and end). Runs before any later frame is broadcast (the ACK's continuation
   * is a microtask), so the tabs step over that offset instead of taking it for a hole.
   */
  private noteOwnEvent(type: string, data: any, ack: any): void {
    if (type === "STREAM_START" && ack?.stream_id) this.streams.set(ack.stream_id, ack.channel ?? data.channel);
    if (typeof ack?.offset !== "number" || !NOT_ECHOED.has(type)) return;
    const channel = ack.channel ?? data.channel ?? (type === "UPDATE_PROGRESS" ? `users.${this.userId}` : this.streams.get(data.stream_id));
    if (type === "STREAM_END") this.streams.delete(data.stream_id);
    if (typeof channel === "string") this.bus.post({ t: "skip", channel, offset: ack.offset });
  }

  /** SUBSCRIBE on the wire; the ACK (with its replay) reaches every tab before any later frame. */
  private async subscribeWire(channel: string, since: Position | null): Promise<void> {
    const link = this.link;
    if (!link) throw new Disconnected("offline");
    const c = this.channels.get(channel);
    // Never go back to "no position" once there is one: start from the furthest behind.
    let from = since?.epoch ? since : null;
    if (c?.wire?.epoch && (!from || (from.epoch === c.wire.epoch && c.wire.offset < from.offset))) from = c.wire;
    const data: any = { channel };
    if (from) data.since = { offset: from.offset, epoch: from.epoch };
    if (c?.present.size) {
      data.presence = true;
      c.presentOnWire = true;
    }
    this.inflight.set(channel, from);
    try {
      await link.request("SUBSCRIBE", data, (ack) => {
        const top = { offset: Number(ack.offset), epoch: String(ack.epoch) };
        const ch = this.channels.get(channel);
        if (ch) {
          if (!ch.wire || ch.wire.epoch !== top.epoch || (from && !ack.recovered) || ch.wire.offset < top.offset) ch.wire = top;
        }
        this.bus.post({ t: "ack", channel, ack, since: from });
      });
    } finally {
      if (this.inflight.get(channel) === from) this.inflight.delete(channel);
    }
  }

  private onFrame(frame: any): void {
    this.retain(frame);
    if (frame.type === "UNSUBSCRIBED" && typeof frame.data?.channel === "string") {
      // The server dropped a subscription (access revoked, document deleted): never resubscribe it.
      this.channels.delete(frame.data.channel);
      this.bus.post({ t: "subscribe-error", channel: frame.data.channel,
        error: { name: "ServerError", code: "forbidden", message: String(frame.data.reason ?? "unsubscribed by the server") } });
    }
    if (typeof frame.channel === "string" && typeof frame.offset === "number") {
      const c = this.channels.get(frame.channel);
      if (c?.wire && frame.offset > c.wire.offset) c.wire = { offset: frame.offset, epoch: c.wire.epoch };
    }
    this.bus.post({ t: "frame", frame });
  }

  /**
   * The state the server re-sends to each new connection (latest progress per shoot, latest
   * credit, other retained pushes) goes to the connection, not to tabs opened later: keep it
   * for them, updated by the live events of the same kind.
   */
  private retain(frame: any): void {
    const live = frame.channel === `users.${this.userId}` && (frame.type === "SHOOT_PROGRESS" || frame.type === "CREDIT_UPDATE");
    if (!frame.retained && !live) return;
    const key = `${frame.type}\n${frame.type === "SHOOT_PROGRESS" ? frame.data?.shootId ?? "" : ""}`;
    this.retained.set(key, { frame: { type: frame.type, data: frame.data, retained: true }, at: Date.now() });
  }

  private sendRetained(tab: string): void {
    for (const [key, r] of this.retained) {
      const ended = r.frame.type === "SHOOT_PROGRESS" && ["completed", "failed"].includes(r.frame.data?.status);
      if (ended && Date.now() - r.at > 5000) this.retained.delete(key);
      else this.bus.post({ t: "frame", frame: r.frame, to: tab });
    }
  }

  private setState(state: State, settled = this.settled): void {
    this.state = state;
    this.settled = settled;
    this.announce();
  }

  private announce(): void {
    this.bus.post({
      t: "state", state: this.state, settled: this.settled, userId: this.userId, deviceId: this.deviceId,
      error: this.error ? errorToWire(this.error) : null, disconnectReason: this.disconnectReason,
    });
  }

  private fail(err: Error): void {
    this.error = err;
    this.setState("failed", true);
  }

  // -- the connection ----------------------------------------------------------------------

  private async supervise(): Promise<void> {
    const WS = this.client.options.WebSocket ?? (globalThis as any).WebSocket;
    if (!WS) return this.fail(new Failed("no WebSocket here: pass the `WebSocket` option (Node: the ws package)"));
    let reauths = 0;
    while (!this.closing) {
      this.setState(this.everConnected ? "reconnecting" : "connecting");
      let link: Link;
      try {
        link = await Link.open(this.client.url, this.client.apiKey ? undefined : this.client.token, this.client.apiKey, {
          WebSocket: WS,
          timeoutMs: this.timeoutMs,
          pingIntervalMs: this.client.options.pingInterval ? this.client.options.pingInterval * 1000 : undefined,
          onFrame: (f) => this.onFrame(f),
        });
      } catch (e: any) {
        if (this.closing) return;
        if (e instanceof ServerError) {
          if (reauths < 1 && (await this.client.reauth())) {
            reauths++;
            continue;
          }
          return this.fail(e);
        }
        this.settled = true;
        if (!(await this.pause(e))) return;
        continue;
      }
      if (this.closing) return link.shut(1000, "client closed");
      this.link = link;
      this.userId = link.hello.userId ?? null;
      this.deviceId = link.hello.deviceId ?? null;
      for (const c of this.channels.values()) c.presentOnWire = false; // a new connection: nothing on it yet
      const userCh = `users.${this.userId}`;
      const uc = this.channels.get(userCh) ?? this.track(userCh, this.client.tabId, null);
      if (!uc.wire) uc.wire = await this.client.storage.position(userCh).catch(() => null);
      try {
        const results = await Promise.all([...this.channels.keys()].map((ch) =>
          this.subscribeWire(ch, null).then(() => null, (e) => [ch, e] as const)));
        for (const r of results) {
          if (!r) continue;
          const [ch, e] = r;
          if (e instanceof ServerError && e.action === "reject") {
            // Refused for good (made offline, or no longer allowed): drop that one, say so.
            this.channels.delete(ch);
            this.bus.post({ t: "subscribe-error", channel: ch, error: errorToWire(e) });
          } else throw e;
        }
      } catch {
        link.shut(4000, "resubscribe failed");
      }
      if (!link.closed) {
        this.backoff.reset();
        reauths = 0;
        this.everConnected = true;
        this.error = null;
        this.setState("connected", true);
        this.scheduleTokenRefresh(link.hello.expiresAt);
        this.online.fire();
        this.kick.fire();
        await link.waitClosed();
      }
      this.link = null;
      if (this.refreshTimer) clearTimeout(this.refreshTimer);
      if (this.closing) return;
      const code = link.closeCode;
      if (code === CLOSE_OPERATOR && link.disconnect && !link.disconnect.reconnect) {
        this.disconnectReason = link.disconnect.reason;
        return this.fail(new Failed(`disconnected by the operator: ${link.disconnect.reason}`));
      }
      if (code === CLOSE_OPERATOR) this.disconnectReason = link.disconnect?.reason ?? link.closeReason;
      if (code === CLOSE_TOKEN_EXPIRED || code === CLOSE_UNAUTHORIZED) {
        if (!(await this.client.reauth())) return this.fail(new ServerError("unauthorized", link.closeReason || "token expired", 401));
        continue; // a fresh token: reconnect now
      }
      this.setState("reconnecting");
      if (code === CLOSE_SERVICE_RESTART) {
        // The node is draining: come back at once (spread over 0-2 s), the balancer picks another node.
        await sleep((this.client.options.backoff?.random ?? Math.random)() * 2000);
        continue;
      }
      if (!(await this.pause(new Disconnected(`closed ${code} ${link.closeReason}`)))) return;
    }
  }

  private async pause(why: Error): Promise<boolean> {
    const delay = this.backoff.next();
    if (delay === null) {
      this.fail(new Failed(`gave up after ${this.backoff.attempt} attempts: ${why.message}`));
      return false;
    }
    this.setState(this.everConnected ? "reconnecting" : "connecting", true);
    await sleep(delay * 1000);
    return !this.closing;
  }

  /** Before the token runs out (CONNECTED's or REFRESH's expiresAt, else the JWT's exp), hand the server a fresh one. */
  private scheduleTokenRefresh(expiresAt?: string | null): void {
    if (this.refreshTimer) clearTimeout(this.refreshTimer);
    const get = this.client.options.getToken ?? this.client.options.refreshToken;
    const exp = expiresAt ? Date.parse(expiresAt) : (tokenIdentity(this.client.token).exp ?? 0) * 1000;
    if (!exp || !get) return;
    const left = exp - Date.now();
    const at = Math.max(1000, left - Math.min(60000, left / 5));
    this.refreshTimer = setTimeout(async () => {
      const link = this.link;
      if (!link || link.closed || !(await this.client.reauth())) return;
      let ack: any = null;
      try {
        ack = await link.request("REFRESH", { token: this.client.token });
      } catch {
        /* refused (or an older server): the 4003 close makes us reconnect with a fresh token */
      }
      if (this.link === link) this.scheduleTokenRefresh(ack?.expiresAt);
    }, at);
  }

  // -- the outbox sender ----------------------------------------------------------------------

  private async flusher(): Promise<void> {
    const retry = new Backoff({ base: 0.2, cap: 10, maxAttempts: Infinity });
    while (!this.closing) {
      await this.kick.wait();
      while (!this.closing) {
        if (!this.connected) {
          if (this.state === "failed") return;
          await this.online.wait(1000);
          continue;
        }
        const [granted, wait] = this.pacer.take(this.window);
        if (!granted) {
          await sleep(wait);
          continue;
        }
        const batch = await this.client.storage.pending(granted).catch(() => [] as OutboxEntry[]);
        this.pacer.giveBack(granted - batch.length);
        if (!batch.length) {
          this.window = this.client.options.batchSize ?? 50;
          this.bus.post({ t: "synced", at: Date.now() });
          break;
        }
        if (await this.send(batch)) {
          await this.kick.wait((retry.next() ?? 1) * 1000);
        } else retry.reset();
      }
    }
  }

  /** Sends the leading run of same-transport writes; true when some must be retried. */
  private async send(batch: OutboxEntry[]): Promise<boolean> {
    let run: OutboxEntry[];
    let results: any[];
    if (batch[0].kind === "publish") {
      run = [];
      for (const e of batch) {
        if (e.kind !== "publish") break;
        run.push(e);
      }
      const link = this.link;
      if (!link) return true;
      results = await link.requests(run.map((e) => ["PUBLISH", { channel: e.target, data: e.payload.data, idempotency_key: e.key }]));
    } else {
      run = [batch[0]];
      const e = batch[0];
      try {
        results = [
          e.kind === "http"
            ? await this.client.rest(e.payload.method, e.target, e.payload.json, { headers: { "Idempotency-Key": e.key } })
            : await sendDocumentWrite(this.client, e),
        ];
      } catch (err) {
        results = [err];
      }
    }
    let again = false;
    for (let i = 0; i < run.length; i++) {
      const entry = run[i];
      const result = results[i];
      if (!(result instanceof Error)) {
        await this.settle(entry, true, result);
        continue;
      }
      const action = actionOf(result);
      if (action === "reject") {
        await this.settle(entry, false, result);
      } else if (action === "reauth") {
        again = true;
        if (!(await this.client.reauth())) this.fail(result);
        else this.link?.shut(4000, "reconnecting with a fresh token");
        break;
      } else {
        again = true;
        // Refused for now (rate limit, 5xx): a later write of the batch could overtake it; go one by one.
        if (result instanceof ServerError) this.window = 1;
        break;
      }
    }
    return again;
  }

  private async settle(entry: OutboxEntry, ok: boolean, result: any): Promise<void> {
    await this.client.storage.remove(entry.seq);
    const tab = (entry as any).tab;
    this.bus.post({
      t: "settled", seq: entry.seq, ok, entry,
      result: ok ? result : undefined,
      error: ok ? undefined : errorToWire(result),
      notify: tab && this.liveTabs.has(tab) ? tab : this.client.tabId,
      key: keyOf(entry),
    });
  }
}
