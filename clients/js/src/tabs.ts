/**
 * Tabs of one origin, user and store share one WebSocket: they elect a leader with the
 * Web Locks API (the browser releases a tab's lock when the tab goes away, so the next
 * waiting tab takes over) and talk over a BroadcastChannel. Where either API is missing
 * (Node, old browsers) every client is its own leader on a private in-memory bus.
 */

export type Message = { t: string; [k: string]: any };

export interface Bus {
  /** Sends to every tab, this one included (each tab receives the messages of one sender in order). */
  post(msg: Message): void;
  onMessage(fn: (msg: Message) => void): void;
  close(): void;
}

class LocalBus implements Bus {
  private fn: (m: Message) => void = () => {};
  private closed = false;
  post(msg: Message) {
    // Not cloned: nothing mutates a message once posted (the other tabs get structured clones).
    if (!this.closed) queueMicrotask(() => this.fn(msg));
  }
  onMessage(fn: (m: Message) => void) {
    this.fn = fn;
  }
  close() {
    this.closed = true;
  }
}

class BroadcastBus implements Bus {
  private bc: BroadcastChannel;
  private fn: (m: Message) => void = () => {};
  private closed = false;
  constructor(name: string) {
    this.bc = new BroadcastChannel(name);
    this.bc.onmessage = (ev) => !this.closed && this.fn(ev.data);
  }
  post(msg: Message) {
    if (this.closed) return;
    this.bc.postMessage(msg);
    queueMicrotask(() => !this.closed && this.fn(msg));
  }
  onMessage(fn: (m: Message) => void) {
    this.fn = fn;
  }
  close() {
    this.closed = true;
    this.bc.close();
  }
}

export interface Election {
  bus: Bus;
  /** Resolves when this tab becomes the leader (at once when not shared). */
  leader: Promise<void>;
  /** Gives up leadership (or the place in the queue). */
  resign(): void;
  shared: boolean;
}

export function elect(name: string | null): Election {
  const locks = (globalThis as any).navigator?.locks;
  if (!name || !locks || typeof BroadcastChannel === "undefined") {
    return { bus: new LocalBus(), leader: Promise.resolve(), resign() {}, shared: false };
  }
  let release!: () => void;
  const held = new Promise<void>((r) => (release = r));
  const abort = new AbortController();
  const leader = new Promise<void>((resolve, reject) => {
    locks
      .request(name, { signal: abort.signal }, () => {
        resolve();
        return held; // kept until resign() or the tab goes away
      })
      .catch(reject);
  });
  leader.catch(() => {});
  return {
    bus: new BroadcastBus(name),
    leader,
    resign() {
      release();
      abort.abort();
    },
    shared: true,
  };
}
