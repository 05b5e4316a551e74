/** One WebSocket to one server: requests and their replies, keepalive, close codes. */
import { Disconnected, ServerError } from "./errors.js";
import type { TetherEvent } from "./types.js";

export const CLOSE_UNAUTHORIZED = 4001;
export const CLOSE_TOKEN_EXPIRED = 4003;
export const CLOSE_OPERATOR = 4100;
export const CLOSE_SERVICE_RESTART = 1012;

interface Pending {
  resolve: (v: any) => void;
  reject: (e: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export interface LinkOptions {
  WebSocket: any;
  timeoutMs: number;
  pingIntervalMs?: number;
  onFrame: (frame: TetherEvent) => void;
}

function wsUrl(base: string, token?: string, apiKey?: string): string {
  const u = new URL(base.replace(/^http/, "ws").replace(/\/+$/, "") + "/ws");
  if (token) u.searchParams.set("token", token);
  if (apiKey) u.searchParams.set("api_key", apiKey);
  return u.toString();
}

export class Link {
  hello: Record<string, any> = {};
  closed = false;
  closeCode = 0;
  closeReason = "";
  /** The DISCONNECT frame an operator sent before closing with 4100. */
  disconnect: { reason: string; reconnect: boolean } | null = null;
  private ws: any;
  private nextId = 1;
  private pending = new Map<string, Pending>();
  private lastHeard = Date.now();
  private keepalive?: ReturnType<typeof setInterval>;
  private deadline?: ReturnType<typeof setTimeout>;
  private closedWaiters: (() => void)[] = [];

  private constructor(private opts: LinkOptions) {}

  /** Opens the socket; resolves once CONNECTED arrived. A refused token rejects with ServerError. */
  static open(url: string, token: string | undefined, apiKey: string | undefined, opts: LinkOptions): Promise<Link> {
    const link = new Link(opts);
    return new Promise<Link>((resolve, reject) => {
      let settled = false;
      const fail = (err: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        link.shut(link.closeCode || 4000, String(err.message));
        reject(err);
      };
      const timer = setTimeout(() => fail(new Disconnected("no CONNECTED frame in time")), opts.timeoutMs);
      let ws: any;
      try {
        ws = new opts.WebSocket(wsUrl(url, token, apiKey));
      } catch (e: any) {
        fail(new Disconnected(`cannot open WebSocket: ${e?.message ?? e}`));
        return;
      }
      link.ws = ws;
      ws.onmessage = (ev: any) => {
        link.lastHeard = Date.now();
        let frame: any;
        try {
          frame = JSON.parse(typeof ev.data === "string" ? ev.data : new TextDecoder().decode(ev.data));
        } catch {
          return;
        }
        if (!settled && frame?.type === "CONNECTED") {
          settled = true;
          clearTimeout(timer);
          link.hello = frame.data ?? {};
          link.startKeepalive();
          resolve(link);
          return;
        }
        link.onFrame(frame);
      };
      ws.onerror = () => {};
      ws.onclose = (ev: any) => {
        link.closeCode = ev?.code ?? 1006;
        link.closeReason = ev?.reason ?? "";
        if (!settled) {
          if (link.closeCode === CLOSE_UNAUTHORIZED || link.closeCode === CLOSE_TOKEN_EXPIRED)
            fail(new ServerError("unauthorized", link.closeReason || "token refused", 401));
          else fail(new Disconnected(`closed ${link.closeCode} ${link.closeReason}`.trim()));
        }
        link.shut(link.closeCode, link.closeReason);
      };
    });
  }

  private startKeepalive(): void {
    const ms = this.opts.pingIntervalMs ?? (Number(this.hello.pingInterval) || 25) * 1000;
    this.keepalive = setInterval(() => this.send({ type: "PING", data: { timestamp: Date.now() } }), ms);
    // A link on which nothing arrived for two intervals is dead: the timer is moved lazily
    // (not on every frame), and fires exactly two intervals after the last frame heard.
    const check = () => {
      const idle = Date.now() - this.lastHeard;
      if (idle >= 2 * ms) this.shut(4011, "no frame for two ping intervals: the link looks dead");
      else this.deadline = setTimeout(check, 2 * ms - idle);
    };
    this.deadline = setTimeout(check, 2 * ms);
  }

  private onFrame(frame: any): void {
    if (!frame || typeof frame.type !== "string") return;
    const id = frame.id != null ? String(frame.id) : null;
    if (id !== null && (frame.type === "ACK" || frame.type === "ERROR")) {
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      clearTimeout(p.timer);
      if (frame.type === "ACK") p.resolve(frame.data ?? {});
      else p.reject(new ServerError(frame.data?.code ?? "bad_request", frame.data?.message ?? "refused", undefined, frame.data ?? {}));
      return;
    }
    if (frame.type === "PING") {
      this.send({ type: "PONG", data: { timestamp: frame.data?.timestamp } });
      return;
    }
    if (frame.type === "PONG") return;
    if (frame.type === "DISCONNECT") {
      this.disconnect = { reason: String(frame.data?.reason ?? ""), reconnect: !!frame.data?.reconnect };
    }
    this.opts.onFrame(frame);
  }

  send(frame: object): boolean {
    if (this.closed || !this.ws || this.ws.readyState !== 1) return false;
    try {
      this.ws.send(JSON.stringify(frame));
      return true;
    } catch {
      return false;
    }
  }

  /** One request; resolves with the ACK's data, rejects with ServerError or Disconnected. */
  request(type: string, data: object, onAck?: (d: any) => void): Promise<any> {
    const id = String(this.nextId++);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Disconnected(`${type}: no answer in time`));
        // A link that answers nothing in time is not trusted any longer.
        this.shut(4000, "request timed out");
      }, this.opts.timeoutMs);
      this.pending.set(id, {
        resolve: (v) => {
          onAck?.(v);
          resolve(v);
        },
        reject,
        timer,
      });
      if (!this.send({ type, data, id })) {
        this.pending.delete(id);
        clearTimeout(timer);
        reject(new Disconnected(`${type}: not connected`));
      }
    });
  }

  /** Several requests pipelined; each result is the ACK data or the Error. */
  requests(items: [string, object][]): Promise<any[]> {
    return Promise.all(items.map(([t, d]) => this.request(t, d).catch((e: Error) => e)));
  }

  waitClosed(): Promise<void> {
    if (this.closed) return Promise.resolve();
    return new Promise((r) => this.closedWaiters.push(r));
  }

  /** Drops the link now (the close handshake with a dead peer may never end). */
  shut(code = 1000, reason = ""): void {
    if (this.closed) return;
    this.closed = true;
    if (!this.closeCode) {
      this.closeCode = code;
      this.closeReason = reason;
    }
    clearInterval(this.keepalive);
    clearTimeout(this.deadline);
    try {
      this.ws?.close(code === 1000 || (code >= 3000 && code < 5000) ? code : 1000, reason.slice(0, 100));
    } catch {
      /* already closing */
    }
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(new Disconnected(`link closed (${this.closeCode} ${this.closeReason})`.trim()));
    }
    this.pending.clear();
    for (const w of this.closedWaiters.splice(0)) w();
  }
}
