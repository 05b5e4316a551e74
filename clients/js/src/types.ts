/** Public types of @tether/client. */

export type State = "disconnected" | "connecting" | "connected" | "reconnecting" | "failed";

/** A frame as the server sends it: every channel event carries `channel` and `offset`. */
export interface TetherEvent<D = any> {
  type: string;
  data: D;
  channel?: string;
  offset?: number;
  /** True on state the server re-sends right after connecting (retained SHOOT_PROGRESS, CREDIT_UPDATE, ...). */
  retained?: boolean;
}

export type Handler<D = any> = (event: TetherEvent<D>) => void | Promise<void>;

export interface BackoffOptions {
  /** First ceiling in seconds (default 1). */
  base?: number;
  /** Largest ceiling in seconds (default 60). */
  cap?: number;
  /** Failures in a row before the state becomes `failed` (default 10; `Infinity` for never). */
  maxAttempts?: number;
  /** Injectable for tests (default Math.random). */
  random?: () => number;
}

export interface ClientOptions {
  /** Dev auth: "user" or "user:device"; JWT auth: the JWT. */
  token?: string;
  /** Called for a fresh token: before a JWT expires, and when the server refuses or expires the current one. */
  getToken?: () => string | Promise<string>;
  /** Alias of getToken. */
  refreshToken?: () => string | Promise<string>;
  /** Server identity (backends, the console): sent as X-API-Key on REST and ?api_key= on the WebSocket. */
  apiKey?: string;
  /** IndexedDB database name for the outbox, positions and cache; ":memory:" (default) keeps nothing. */
  store?: string;
  /** A WebSocket constructor (Node 20 has none: pass `(await import("ws")).WebSocket`). */
  WebSocket?: any;
  backoff?: BackoffOptions;
  /** Seconds; default: what the server's CONNECTED frame says. */
  pingInterval?: number;
  /** Seconds a request waits for its ACK (default 10). */
  requestTimeout?: number;
  /** Outbox batch size (default 50) and drain rate per second (default 50). */
  batchSize?: number;
  sendRate?: number;
  /** Share one WebSocket between the tabs of this origin, token and store (default true where Web Locks exist). */
  shareConnection?: boolean;
  /** Resume subscriptions from stored positions after a reload (default true). */
  resume?: boolean;
}

/** One queued write, as kept in the outbox. */
export interface OutboxEntry {
  seq: number;
  kind: "publish" | "http" | "doc.create" | "doc.update" | "doc.patch" | "doc.delete";
  /** Channel, REST path, or "collection/id". */
  target: string;
  payload: any;
  key: string;
  createdAt: number;
}

export interface Write<T = any> {
  /** Outbox sequence number (the idempotency key is `${clientId}-${seq}`). */
  readonly seq: number;
  readonly entry: OutboxEntry;
  /** The server's answer; rejects with a ServerError when the server refuses the write (it was rolled back). */
  readonly acked: Promise<T>;
}

export interface SubscribeOptions {
  /** Called when the gap could not be recovered (`recovered: false`): reload this channel's state. */
  onReload?: (channel: string) => void | Promise<void>;
  /** Also mark this user present on the channel's presence key. */
  presence?: boolean;
}

export interface Position {
  offset: number;
  epoch: string;
}

export interface Document<D = any> {
  id: string;
  collection: string;
  version: number;
  data: D;
  created_at?: string;
  updated_at?: string;
  created_by?: string;
  updated_by?: string;
  /** True while a local write of it waits in the outbox. */
  pending?: boolean;
  deleted?: boolean;
}

export interface Session {
  id: string;
  title: string;
  description: string;
  category: string;
  tags: string[];
  max_participants: number;
  current_participants: number;
  is_private: boolean;
  host_id: string;
  is_active: boolean;
  created_at: string;
  updated_at: string;
  version: number;
}

export interface NewSession {
  title: string;
  description?: string;
  category?: string;
  max_participants?: number;
  tags?: string[];
  is_private?: boolean;
  user_name?: string;
}

export interface Participant {
  user_id: string;
  user_name: string;
  is_host: boolean;
  joined_at: string;
  left_at: string | null;
}

export interface ChatMessage {
  id: string;
  session_id: string;
  /** Position in the session's chat (page back with `before: seq`). */
  seq: number;
  user_id: string | null;
  user_name?: string;
  message: string;
  message_type: "text" | "prayer" | "scripture" | "system";
  created_at: string;
  stream_id?: string;
  /** True while it waits in the outbox (optimistic). */
  pending?: boolean;
  [k: string]: any;
}

export interface Device {
  device_id: string;
  connected_at: string;
  last_seen: string;
}

export interface ShootProgress {
  shootId: string;
  processedCount: number;
  totalCount: number;
  progress: number;
  currentImage?: string;
  eta?: number;
  provider?: string;
  status?: "queued" | "processing" | "completed" | "failed";
}

export interface CreditUpdate {
  [k: string]: any;
}

/** What a stream watcher sees: the text so far of each stream on a channel. */
export interface StreamView {
  streamId: string;
  channel: string;
  userId?: string;
  deviceId?: string;
  data: any;
  content: string;
  status: "streaming" | "completed" | "abandoned";
}
