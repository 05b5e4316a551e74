/**
 * Streamed content (an AI answer growing on a channel). A writer starts, appends, ends; a watcher
 * sees the text so far of every stream on the channel, a late one included (STREAM_STATE).
 * The server does not echo a stream to the connection writing it, and the tabs of a browser share
 * that connection, so the writer also tells the other tabs itself.
 */
import type { Client, Subscription } from "./client.js";
import type { StreamView, TetherEvent } from "./types.js";

export class Stream {
  length = 0;
  constructor(private client: Client, readonly id: string, readonly channel: string, private meta: any) {}

  async append(delta: string): Promise<void> {
    const start = this.length;
    const ack = await this.client.request("STREAM_DELTA", { stream_id: this.id, delta });
    this.length = ack.length ?? start + [...delta].length;
    this.local("STREAM_DELTA", { stream_id: this.id, start, delta });
  }

  async end(content?: string): Promise<any> {
    const ack = await this.client.request("STREAM_END", content === undefined ? { stream_id: this.id } : { stream_id: this.id, content });
    this.local("STREAM_ENDED", { stream_id: this.id, status: ack.status ?? "completed", content, length: ack.length });
    return ack;
  }

  /** @internal */
  local(type: string, data: any): void {
    this.client.post({ t: "frame", frame: { type, channel: this.channel, data: { ...data, local: true }, meta: this.meta } });
  }
}

export class StreamWatch {
  readonly streams = new Map<string, StreamView>();
  sub: Subscription | null = null;
  private closed = false;
  private handler = (e: TetherEvent) => {
    if (!this.closed && e.type.startsWith("STREAM_")) this.onEvent(e);
  };
  constructor(private client: Client, readonly channel: string, private fn: (views: StreamView[]) => void) {}

  /** @internal */
  async start(): Promise<this> {
    // The handler is in place before the SUBSCRIBE goes out: STREAM_STATE arrives just before its ACK.
    this.sub = await this.client.subscribe(this.channel, this.handler);
    return this;
  }

  private onEvent(e: TetherEvent): void {
    const d = e.data ?? {};
    const id = d.stream_id;
    if (!id) return;
    let v = this.streams.get(id);
    if (!v) {
      v = { streamId: id, channel: this.channel, userId: d.userId, deviceId: d.deviceId, data: d.data ?? (e as any).meta ?? {}, content: "", status: "streaming" };
      this.streams.set(id, v);
    }
    if (e.type === "STREAM_STATE") {
      if ([...d.content].length >= [...v.content].length) v.content = d.content ?? "";
    } else if (e.type === "STREAM_DELTA") {
      const have = [...v.content];
      const start = Number(d.start ?? have.length);
      if (start > have.length) return; // never happens on the wire: no gaps
      v.content = have.slice(0, start).join("") + d.delta; // skip what we held already
      if (start + [...d.delta].length < have.length) v.content = have.join("");
    } else if (e.type === "STREAM_ENDED") {
      v.status = d.status ?? "completed";
      if (typeof d.content === "string") v.content = d.content;
    } else if (e.type === "STREAM_STARTED") {
      v.userId = d.userId ?? v.userId;
      v.deviceId = d.deviceId ?? v.deviceId;
      v.data = d.data ?? v.data;
    }
    this.fn([...this.streams.values()]);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.sub?.off(this.handler); // the subscription itself stays: others may listen on the channel
  }
}

export class Streams {
  constructor(private client: Client) {}

  /** Starts a stream on a channel (e.g. "sessions.{id}" with {message_type}); needs a connection. */
  async start(channel: string, data: any = {}, opts: { streamId?: string } = {}): Promise<Stream> {
    const ack = await this.client.request("STREAM_START", { channel, data, ...(opts.streamId ? { stream_id: opts.streamId } : {}) });
    const s = new Stream(this.client, ack.stream_id, channel, data);
    s.local("STREAM_STARTED", { stream_id: s.id, userId: this.client.userId, deviceId: this.client.deviceId, data });
    return s;
  }

  /** fn(views) whenever a stream on the channel grows, starts or ends; a late watcher gets the text so far. */
  watch(channel: string, fn: (views: StreamView[]) => void): Promise<StreamWatch> {
    return new StreamWatch(this.client, channel, fn).start();
  }
}
