import { useEffect, useLayoutEffect, useRef, useState } from "preact/hooks";
import type { ChatMessage, Session, StreamView } from "@tether/client";
import { reasonOf, serially, useTether } from "./tether";
import type { SessionEvents } from "./SessionPage";
import { clock } from "../ui/format";

const TYPES = ["text", "prayer", "scripture"] as const;
const PAGE = 50;

interface Failed {
  key: number;
  text: string;
  type: string;
  why: string;
}

function bySeq(list: ChatMessage[]): ChatMessage[] {
  const seen = new Map<string, ChatMessage>();
  for (const m of list) seen.set(m.id, m);
  return [...seen.values()].sort((a, b) => (a.seq ?? 0) - (b.seq ?? 0));
}

/** The chat log (oldest first, older pages on scroll up, streams growing live) and the composer. */
export function Chat(props: { id: string; session: Session; canPost: boolean; sink: SessionEvents }) {
  const { id, canPost, sink } = props;
  const { client, me, syncTick, state } = useTether();
  const liveIds = useRef(new Set<string>()); // messages that arrived while this page was open
    const [messages, setMessages] = useState<ChatMessage[]>([]);
  const [hasMore, setHasMore] = useState(false);
  const [loading, setLoading] = useState(true);
  const [pending, setPending] = useState<ChatMessage[]>([]);
  const [failed, setFailed] = useState<Failed[]>([]);
  const [streams, setStreams] = useState<StreamView[]>([]);
  const log = useRef<HTMLDivElement>(null);
  const stick = useRef(true); // follow new messages while the reader is at the bottom
  const keepFromBottom = useRef<number | null>(null); // keep the view still while older ones load above
  const messagesLoadedOnce = useRef(false); // later reloads must not forget older pages already shown

  // live messages from the session channel (SessionPage feeds them here)
  useEffect(() => {
    sink.message = (m) => {
      liveIds.current.add(m.id);
      setMessages((cur) => bySeq([...cur, m]));
    };
    return () => {
      sink.message = undefined;
    };
  }, [sink]);

  // the newest page, again on Sync and after a reconnect (merged: nothing shown twice)
  useEffect(() => {
    let stale = false;
    client.sessions.messages(id, { limit: PAGE }).then(
      (r: { messages: ChatMessage[]; has_more: boolean }) => {
        if (stale) return;
        setMessages((cur) => bySeq([...cur, ...r.messages]));
        setHasMore((h) => (messagesLoadedOnce.current ? h : r.has_more));
        messagesLoadedOnce.current = true;
        setLoading(false);
      },
      () => !stale && setLoading(false),
    );
    return () => {
      stale = true;
    };
  }, [client, id, syncTick, state === "connected"]);

  // what this browser still has to send (kept in the outbox across reloads and restarts)
  useEffect(() => {
    const read = () => setPending(client.sessions.pendingMessages(id));
    read();
    return client.onChange((keys: Set<string>) => {
      if (keys.has("outbox")) read();
    });
  }, [client, id]);

  // streamed messages: the text so far, growing; the stored message replaces it when it lands
  useEffect(() => {
    let watch: { close(): Promise<void> } | null = null;
    let gone = false;
    serially(client, `sessions.${id}`, () => client.streams.watch(`sessions.${id}`, (views: StreamView[]) => setStreams([...views]))).then(
      (w) => (gone ? void w?.close() : (watch = w)),
      () => {},
    );
    return () => {
      gone = true;
      void watch?.close();
    };
  }, [client, id, syncTick]);

  async function older() {
    if (!hasMore || loading || !messages.length) return;
    setLoading(true);
    const el = log.current;
    keepFromBottom.current = el ? el.scrollHeight - el.scrollTop : null;
    try {
      const r = await client.sessions.messages(id, { before: messages[0].seq, limit: PAGE });
      setMessages((cur) => bySeq([...r.messages, ...cur]));
      setHasMore(r.has_more);
    } finally {
      setLoading(false);
    }
  }

  const stored = new Set(messages.map((m) => m.stream_id).filter(Boolean));
  // A sent message can arrive on the channel a moment before its write settles in the outbox:
  // hide the pending copy as soon as a message of ours with the same text arrived meanwhile.
  const arrived = messages.filter((m) => m.user_id === me.userId && liveIds.current.has(m.id)).map((m) => m.message);
  const refused = new Set(failed.map((f) => `pending-${f.key}`)); // shown as "Not sent" already
  const waiting = pending.filter((p) => {
    if (refused.has(p.id)) return false;
    const i = arrived.indexOf(p.message);
    if (i < 0) return true;
    arrived.splice(i, 1);
    return false;
  });
  const growing = streams.filter((s) => !stored.has(s.streamId) && (s.status === "streaming" || s.content));

  useLayoutEffect(() => {
    const el = log.current;
    if (!el) return;
    if (keepFromBottom.current != null) {
      el.scrollTop = el.scrollHeight - keepFromBottom.current;
      keepFromBottom.current = null;
    } else if (stick.current) el.scrollTop = el.scrollHeight;
    // Still at the top once a load is done (scrolled up while it ran, or too few to scroll):
    // no scroll event will come, so go on loading older ones.
    if (el.scrollTop < 60 && hasMore && !loading && messages.length) void older();
  });

  function onScroll() {
    const el = log.current!;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    if (el.scrollTop < 60) void older();
  }

  return (
    <section class="panel" aria-labelledby="chat-heading">
      <h2 id="chat-heading">Chat</h2>
      <div ref={log} class="log" role="log" aria-label="Messages" aria-busy={loading ? "true" : undefined}
        tabIndex={0} onScroll={onScroll}>
        {hasMore && (
          <button type="button" class="small" onClick={older} disabled={loading} style="align-self: center">
            {loading ? "Loading older messages…" : "Load older messages"}
          </button>
        )}
        {messages.map((m) => <Message key={m.id} m={m} />)}
        {growing.map((s) => (
          <article key={s.streamId} class="msg streaming" aria-busy={s.status === "streaming" ? "true" : undefined}>
            <header>
              <strong>{s.userId ?? "assistant"}</strong>
              <span>{s.data?.message_type ?? "text"}</span>
              <span>{s.status === "streaming" ? "writing…" : s.status}</span>
            </header>
            <p>{s.content}</p>
          </article>
        ))}
        {waiting.map((m) => (
          <article key={m.id} class="msg pending">
            <header>
              <strong>You</strong>
              <span>{m.message_type}</span>
              <span>Sending…</span>
            </header>
            <p>{m.message}</p>
          </article>
        ))}
        {failed.map((f) => (
          <article key={`f${f.key}`} class="msg failed">
            <header>
              <strong>You</strong>
              <span>{f.type}</span>
              <span style="color: var(--bad)">Not sent</span>
            </header>
            <p>{f.text}</p>
            <p class="small" style="color: var(--bad)">
              {f.why}{" "}
              <button type="button" class="small" onClick={() => setFailed((cur) => cur.filter((x) => x !== f))}>
                Dismiss
              </button>
            </p>
          </article>
        ))}
        {!loading && !messages.length && !waiting.length && !growing.length && (
          <p class="muted small" style="margin: auto">No messages yet. Say hello!</p>
        )}
      </div>
      {canPost && (
        <Composer
          id={id}
          onSent={() => setPending(client.sessions.pendingMessages(id))}
          onAcked={(m) => {
            liveIds.current.add(m.id);
            setMessages((cur) => bySeq([...cur, m]));
          }}
          onFailed={(f) => setFailed((cur) => [...cur, f])}
          stick={() => (stick.current = true)}
        />
      )}
    </section>
  );
}

function Message(props: { m: ChatMessage }) {
  const { m } = props;
  const author = m.message_type === "system" ? "System" : m.user_name || m.user_id || "someone";
  return (
    <article class={`msg ${m.message_type}`}>
      <header>
        <strong>{author}</strong>
        <span>{m.message_type}</span>
        <time dateTime={m.created_at}>{clock(m.created_at)}</time>
      </header>
      <p>{m.message}</p>
    </article>
  );
}

function Composer(props: {
  id: string;
  onSent: () => void;
  onAcked: (m: ChatMessage) => void;
  onFailed: (f: Failed) => void;
  stick: () => void;
}) {
  const { client } = useTether();
  const [text, setText] = useState("");
  const [type, setType] = useState<(typeof TYPES)[number]>("text");
  const [error, setError] = useState<string | null>(null);

  async function send(e?: Event) {
    e?.preventDefault();
    const body = text;
    if (!body.trim()) return setError("Write something first.");
    if (body.length > 4000) return setError("At most 4,000 characters.");
    setError(null);
    setText("");
    props.stick();
    try {
      const w = await client.sessions.send(props.id, body, type);
      props.onSent();
      w.acked.then(
        (m: ChatMessage) => m?.id && props.onAcked(m),
        (err: unknown) => props.onFailed({ key: w.seq, text: body, type, why: reasonOf(err) }),
      );
    } catch (err) {
      setText(body);
      setError(reasonOf(err));
    }
  }

  return (
    <form class="composer" onSubmit={send} noValidate>
      <div class="grow">
        <label for="message">Message</label>
        <textarea id="message" rows={2} value={text} maxLength={4000}
          aria-invalid={error ? "true" : undefined} aria-describedby="message-error"
          onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey) void send(e);
          }} />
      </div>
      <div>
        <label for="message-type">Message type</label>
        <select id="message-type" value={type} onChange={(e) => setType((e.target as HTMLSelectElement).value as typeof type)}>
          {TYPES.map((t) => <option key={t} value={t}>{t[0].toUpperCase() + t.slice(1)}</option>)}
        </select>
      </div>
      <button class="primary" type="submit">Send</button>
      <p id="message-error" class="small" style="grid-column: 1 / -1; margin: 0; min-height: 1.2em; color: var(--bad)">
        {error ?? ""}
      </p>
    </form>
  );
}
