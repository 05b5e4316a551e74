/** Presence (heartbeat, leave on close and pagehide), locks (extend at half the TTL, fencing), retried updates. */
import { Backoff, sleep } from "./backoff.js";
import type { Client } from "./client.js";
import { conflictDocument, docPath } from "./documents.js";
import { ClientError, Conflict, LockTimeout, ServerError } from "./errors.js";
import type { Document } from "./types.js";

export interface PresenceOptions {
  /** Seconds between heartbeats (default 10; keep it under the server's presence TTL, 30 s by default). */
  interval?: number;
}

const enc = encodeURIComponent;
const onPageHide = (fn: () => void) => {
  (globalThis as any).addEventListener?.("pagehide", fn);
  return () => (globalThis as any).removeEventListener?.("pagehide", fn);
};

let holders = 0;

export class Presence {
  readonly path: string;
  /** This hold's name among the tabs' (the leader counts them per key). */
  readonly holder = `${Date.now().toString(36)}.${++holders}.${Math.random().toString(36).slice(2, 8)}`;
  private timer: ReturnType<typeof setInterval> | null = null;
  private offPageHide: () => void = () => {};
  left = false;

  constructor(private client: Client, readonly key: string, private opts: PresenceOptions) {
    this.path = `/api/presence/${enc(key)}`;
  }

  async enter(): Promise<void> {
    await this.client.holdPresence(this.key, this.holder, true);
    try {
      await this.beat();
    } catch (e) {
      this.left = true;
      await this.client.holdPresence(this.key, this.holder, false).catch(() => {});
      throw e;
    }
    this.timer = setInterval(() => this.beat().catch(() => {}), (this.opts.interval ?? 10) * 1000);
    // A tab that goes away says goodbye (keepalive lets the request outlive the page).
    this.offPageHide = onPageHide(() => void this.leave(true));
  }

  beat(): Promise<unknown> {
    return this.client.rest("POST", this.path, { user_id: this.client.me });
  }

  async members(): Promise<string[]> {
    return (await this.client.rest("GET", this.path)).users ?? [];
  }

  /** Watches joins and leaves: fn(users) after each change. */
  watch(fn: (users: string[]) => void) {
    return this.client.subscribe(`presence.${this.key}`, async () => fn(await this.members()));
  }

  async leave(unloading = false): Promise<void> {
    if (this.left) return;
    this.left = true;
    this.client.held.delete(this);
    if (this.timer) clearInterval(this.timer);
    this.offPageHide();
    // The other tabs of this browser may hold the same key: the leader ends it with the last one.
    await this.client.holdPresence(this.key, this.holder, false, unloading).catch(() => {});
  }
}

export interface LockOptions {
  /** Seconds (1-3600, default 30). */
  ttl?: number;
  /** Seconds to wait for it: 0 tries once (default), Infinity waits forever. */
  timeout?: number;
  /** Called at once when the lock is lost (an extension refused, or the TTL ran out unconfirmed). */
  onLost?: () => void;
}

export class Lock {
  readonly path: string;
  readonly ttl: number;
  token: string | null = null;
  fencingToken: number | null = null;
  expiresAt: string | null = null;
  lost = false;
  released = false;
  private deadline = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private offPageHide: () => void = () => {};

  constructor(private client: Client, readonly key: string, private opts: LockOptions) {
    this.path = `/api/locks/${enc(key)}`;
    this.ttl = opts.ttl ?? 30;
  }

  async acquire(): Promise<void> {
    const timeout = this.opts.timeout ?? 0;
    const giveUp = Date.now() + timeout * 1000;
    const wait = new Backoff({ base: 0.05, cap: 1, maxAttempts: Infinity });
    for (;;) {
      const started = Date.now();
      const got = await this.client.rest("POST", this.path, { ttl_seconds: this.ttl });
      if (got.acquired) {
        this.token = got.token;
        this.fencingToken = got.fencing_token ?? null;
        this.expiresAt = got.expires_at ?? null;
        this.deadline = started + this.ttl * 1000;
        this.schedule();
        this.offPageHide = onPageHide(() => void this.release(true));
        return;
      }
      const now = Date.now();
      if (now >= giveUp) throw new LockTimeout(
          `lock ${this.key} is held by ${got.holder ?? "someone else"}${got.expires_at ? ` until ${got.expires_at}` : ""}`,
          got.holder ?? null, got.expires_at ?? null);
      await sleep(Math.min((wait.next() ?? 0.05) * 1000, giveUp - now));
    }
  }

  private schedule(): void {
    this.timer = setTimeout(() => void this.extend(), (this.ttl * 1000) / 2);
  }

  /** The lock counts as lost the moment its TTL runs out without a confirmed extension. */
  private async extend(): Promise<void> {
    while (!this.released && !this.lost) {
      const started = Date.now();
      const remaining = this.deadline - started;
      let acquired = false;
      try {
        if (remaining <= 0) throw new ServerError("conflict", "expired");
        const got = await Promise.race([
          this.client.rest("POST", `${this.path}/extend`, { token: this.token, ttl_seconds: this.ttl }),
          sleep(remaining).then(() => ({ acquired: false })),
        ]);
        acquired = !!got.acquired;
        if (acquired) this.expiresAt = got.expires_at ?? this.expiresAt;
      } catch (e) {
        if (!(e instanceof ServerError && e.action === "reject") && remaining > 0) {
          await sleep(Math.min(200, remaining)); // unreachable for a moment: try again while the TTL lasts
          continue;
        }
      }
      if (this.released) return;
      if (!acquired) {
        this.lost = true;
        this.offPageHide();
        try {
          this.opts.onLost?.();
        } catch (e) {
          console.error("tether: onLost failed", e);
        }
        return;
      }
      this.deadline = started + this.ttl * 1000;
      this.schedule();
      return;
    }
  }

  /** Releases it (false when it was lost already or the server could not be told: it expires at its TTL). */
  async release(unloading = false): Promise<boolean> {
    if (this.released) return false;
    this.released = true;
    this.client.held.delete(this);
    if (this.timer) clearTimeout(this.timer);
    this.offPageHide();
    if (this.lost || !this.token) return false;
    try {
      return !!(await this.client.rest("DELETE", this.path, { token: this.token }, { keepalive: unloading })).released;
    } catch (e) {
      if (e instanceof ClientError) return false;
      throw e;
    }
  }
}

/**
 * Reads the document, writes fn(data) with the version read; on a 409 re-applies fn to the
 * current document after a jittered backoff; gives up with Conflict after maxRetries retries.
 */
export async function updateWithRetry<D>(client: Client, collection: string, id: string, fn: (data: D) => D | Promise<D>, maxRetries: number): Promise<Document<D>> {
  if (client.state === "connected") await client.flush(10000).catch(() => {}); // our own queued writes first
  const wait = new Backoff({ base: 0.05, cap: 2, maxAttempts: Infinity });
  let doc: Document<D> = await client.rest("GET", docPath(collection, id));
  for (let attempt = 0; ; attempt++) {
    const data = await fn(structuredClone(doc.data));
    try {
      doc = await client.rest("PUT", docPath(collection, id), { data, version: doc.version });
      client.putDocument({ ...doc, collection });
      return doc;
    } catch (e) {
      if (!(e instanceof ServerError) || e.status !== 409) throw e;
      doc = (conflictDocument(e) as Document<D>) ?? (await client.rest("GET", docPath(collection, id)));
      client.putDocument({ ...doc, collection });
      if (attempt >= maxRetries) throw new Conflict(`${collection}/${id}: still conflicting after ${maxRetries} retries`);
      await sleep((wait.next() ?? 0.05) * 1000);
    }
  }
}
