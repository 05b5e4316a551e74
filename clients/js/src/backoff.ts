/** Exponential backoff with full jitter, and a token bucket pacing the outbox drain. */
import type { BackoffOptions } from "./types.js";

export class Backoff {
  base: number;
  cap: number;
  maxAttempts: number;
  random: () => number;
  attempt = 0;

  constructor(o: BackoffOptions = {}) {
    this.base = o.base ?? 1;
    this.cap = o.cap ?? 60;
    this.maxAttempts = o.maxAttempts ?? 10;
    this.random = o.random ?? Math.random;
  }

  /** Seconds before the next attempt (uniform in [0, min(cap, base*2^n)]), or null when used up. */
  next(): number | null {
    if (this.attempt >= this.maxAttempts) return null;
    const ceiling = Math.min(this.cap, this.base * 2 ** Math.min(this.attempt, 64));
    this.attempt++;
    return this.random() * ceiling;
  }

  reset(): void {
    this.attempt = 0;
  }
}

/** Keeps a drain under the server's per-connection request rate, so a batch is never half refused. */
export class Pacer {
  private tokens: number;
  private stamp = Date.now();
  constructor(readonly rate: number, readonly burst: number) {
    this.tokens = burst;
  }
  take(wanted: number): [number, number] {
    const now = Date.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.stamp) / 1000) * this.rate);
    this.stamp = now;
    if (this.tokens < 1) return [0, ((1 - this.tokens) / this.rate) * 1000];
    const granted = Math.min(wanted, Math.floor(this.tokens));
    this.tokens -= granted;
    return [granted, 0];
  }
  giveBack(n: number): void {
    this.tokens = Math.min(this.burst, this.tokens + n);
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
