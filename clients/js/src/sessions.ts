/** Live sessions: browse, create, join, leave, chat with history paging (chat writes go through the outbox). */
import type { Client, Subscription } from "./client.js";
import type { ChatMessage, Handler, NewSession, Participant, Session, Write } from "./types.js";

const enc = encodeURIComponent;
const query = (q: Record<string, any>) => {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== null && v !== "") p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : "";
};

export class Sessions {
  constructor(private client: Client) {}

  list(q: { q?: string; category?: string; tag?: string; limit?: number; after?: string } = {}): Promise<{ sessions: Session[]; next: string | null }> {
    return this.client.rest("GET", `/api/sessions${query(q)}`);
  }
  create(s: NewSession): Promise<Session> {
    return this.client.rest("POST", "/api/sessions", s);
  }
  get(id: string): Promise<Session> {
    return this.client.rest("GET", `/api/sessions/${enc(id)}`);
  }
  update(id: string, patch: Partial<NewSession> & { version?: number }): Promise<Session> {
    return this.client.rest("PATCH", `/api/sessions/${enc(id)}`, patch);
  }
  /** Ends the session (host only). */
  end(id: string): Promise<unknown> {
    return this.client.rest("DELETE", `/api/sessions/${enc(id)}`);
  }
  join(id: string, opts: { userName?: string } = {}): Promise<{ joined: boolean; session: Session; participant: Participant }> {
    return this.client.rest("POST", `/api/sessions/${enc(id)}/join`, opts.userName ? { user_name: opts.userName } : {});
  }
  leave(id: string): Promise<{ left: boolean; session: Session; participant: Participant }> {
    return this.client.rest("POST", `/api/sessions/${enc(id)}/leave`, {});
  }
  invite(id: string, userId: string): Promise<unknown> {
    return this.client.rest("POST", `/api/sessions/${enc(id)}/invite`, { user_id: userId });
  }
  async participants(id: string): Promise<Participant[]> {
    return (await this.client.rest("GET", `/api/sessions/${enc(id)}/participants`)).participants ?? [];
  }
  /** One page of chat history; page back with `before` = the oldest message's `seq`. */
  messages(id: string, page: { before?: number; after?: number; limit?: number } = {}): Promise<{ messages: ChatMessage[]; has_more: boolean }> {
    return this.client.rest("GET", `/api/sessions/${enc(id)}/messages${query(page)}`);
  }
  /** Sends a chat message through the outbox: kept across reloads while offline, applied once. */
  send(id: string, message: string, messageType: "text" | "prayer" | "scripture" = "text"): Promise<Write<ChatMessage>> {
    return this.client.enqueue("POST", `/api/sessions/${enc(id)}/messages`, { message, message_type: messageType });
  }
  /** Chat messages of this session still waiting in the outbox (show them as pending). */
  pendingMessages(id: string): ChatMessage[] {
    return this.client.pending(`/api/sessions/${enc(id)}/messages`).map((e) => ({
      id: `pending-${e.seq}`, seq: Number.MAX_SAFE_INTEGER, session_id: id, user_id: this.client.me, message: e.payload.json.message,
      message_type: e.payload.json.message_type, created_at: new Date(e.createdAt).toISOString(), pending: true,
    }));
  }
  /** The session's events (MESSAGE_CREATED, PARTICIPANT_JOINED/LEFT, SESSION_UPDATED/ENDED, STREAM_*). */
  watch(id: string, handler: Handler, opts: { onReload?: (channel: string) => void } = {}): Promise<Subscription> {
    return this.client.subscribe(`sessions.${id}`, handler, opts);
  }
  /** The browse list's events (SESSION_CREATED/UPDATED/ENDED). */
  watchList(handler: Handler, opts: { onReload?: (channel: string) => void } = {}): Promise<Subscription> {
    return this.client.subscribe("sessions", handler, opts);
  }
}
