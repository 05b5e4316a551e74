import { useEffect, useMemo, useState } from "preact/hooks";
import type { ChatMessage, Participant, Session, TetherEvent } from "@tether/client";
import { follow, reasonOf, statusOf, useTether } from "./tether";
import { Chat } from "./Chat";
import { Notes, type NotesState } from "./Notes";

export interface SessionEvents {
  /** Chat events for the log (messages; the log keeps its own order and paging). */
  message?: (m: ChatMessage) => void;
  notes?: (n: NotesState) => void;
}

/** One live session at /sessions/<id>: join or leave, participants, chat, notes, host tools. */
export function SessionPage(props: { id?: string; params?: { id?: string } }) {
  const id = props.params?.id ?? props.id ?? "";
  const { client, me, syncTick, state } = useTether();
  const [session, setSession] = useState<Session | null>(null);
  const [missing, setMissing] = useState<string | null>(null);
  const [people, setPeople] = useState<Participant[]>([]);
  const [online, setOnline] = useState<Set<string>>(new Set());
  const [busy, setBusy] = useState(false);
  const [notice, setNotice] = useState<string | null>(null);
  const [sink] = useState<SessionEvents>({});
  // bumped when a subscription takes hold: what changed before it came as no event, so read again
  const [subscribed, setSubscribed] = useState(0);
  const reread = () => setSubscribed((n) => n + 1);
  document.title = `${session?.title ?? "Session"} · Tether`;

  const mine = people.find((p) => p.user_id === me.userId && !p.left_at);
  const present = !!mine && !!session?.is_active;
  const isHost = session?.host_id === me.userId;
  const full = !!session && session.current_participants >= session.max_participants;

  // the session and its participants, again on Sync and after reconnecting
  useEffect(() => {
    let stale = false;
    (async () => {
      try {
        const [s, ps] = await Promise.all([client.sessions.get(id), client.sessions.participants(id)]);
        if (stale) return;
        setSession(s);
        setPeople(Array.isArray(ps) ? ps : (ps as { participants: Participant[] }).participants);
        setMissing(null);
      } catch (err) {
        if (stale) return;
        if (statusOf(err) === 404 || (err as { code?: string }).code === "not_found") {
          setMissing("This session does not exist, or it is private and you are not invited.");
        } else if (!session) setMissing(`Could not load this session: ${reasonOf(err)}`);
      }
    })();
    return () => {
      stale = true;
    };
  }, [client, id, syncTick, state === "connected", subscribed]);

  // public sessions: seat counts and the end also arrive on the browse channel, for people not inside
  useEffect(() => {
    return follow(client, "sessions", (e: TetherEvent<Session>) => {
      if (e.data?.id === id) setSession((cur) => ({ ...(cur ?? {}), ...e.data }) as Session);
    }, { onReady: reread });
  }, [client, id]);

  // members follow the session's own channel: participants, messages, notes, the end
  useEffect(() => {
    if (!present) return;
    return follow(client, `sessions.${id}`, (e: TetherEvent) => {
        const d = e.data ?? {};
        switch (e.type) {
          case "PARTICIPANT_JOINED":
          case "PARTICIPANT_LEFT": {
            const p = d.participant as Participant;
            setPeople((cur) => [...cur.filter((x) => x.user_id !== p.user_id), p]);
            setSession((cur) => (cur ? { ...cur, current_participants: d.current_participants } : cur));
            break;
          }
          case "SESSION_UPDATED":
            setSession(d as Session);
            break;
          case "SESSION_ENDED": {
            // the end sets everyone's left_at: show the room empty
            const at = (d.ended_at as string) ?? new Date().toISOString();
            setSession(d as Session);
            setPeople((cur) => cur.map((p) => (p.left_at ? p : { ...p, left_at: at })));
            break;
          }
          case "MESSAGE_CREATED":
            sink.message?.(d as ChatMessage);
            break;
          case "NOTES_UPDATED":
            sink.notes?.(d as NotesState);
            break;
        }
    }, { onReady: reread });
  }, [client, id, present]);

  // who is here right now: presence on the session's key, held while this page is open
  useEffect(() => {
    if (!present) return;
    const key = `sessions.${id}`;
    let gone = false;
    const load = () =>
      client.rest("GET", `/api/presence/${encodeURIComponent(key)}`).then(
        (r: { users?: string[] }) => !gone && setOnline(new Set(r?.users ?? [])),
        () => {},
      );
    const stop = follow(
      client,
      `presence.${key}`,
      (e: TetherEvent) => {
        const u = e.data?.user_id as string;
        if (!u) return;
        setOnline((cur) => {
          const next = new Set(cur);
          if (e.type === "PRESENCE_LEFT") next.delete(u);
          else next.add(u);
          return next;
        });
      },
      { presence: true, onReload: () => void load(), onReady: () => void load() },
    );
    void load();
    return () => {
      gone = true;
      stop();
    };
  }, [client, id, present, syncTick]);

  async function act(what: "join" | "leave" | "end") {
    setBusy(true);
    setNotice(null);
    try {
      if (what === "join") {
        const r = await client.sessions.join(id, { userName: me.userId });
        if (r?.session) setSession(r.session);
        if (r?.participant) setPeople((cur) => [...cur.filter((x) => x.user_id !== me.userId), r.participant]);
      } else if (what === "leave") {
        const r = await client.sessions.leave(id);
        if (r?.session) setSession(r.session);
        if (r?.participant) setPeople((cur) => [...cur.filter((x) => x.user_id !== me.userId), r.participant]);
      } else {
        const s = (await client.sessions.end(id)) as Session | null;
        if (s?.id) setSession(s);
      }
    } catch (err) {
      if (what === "join" && statusOf(err) === 409 && /full/i.test(reasonOf(err))) {
        setSession((cur) => (cur ? { ...cur, current_participants: cur.max_participants } : cur));
      }
      setNotice(reasonOf(err));
    } finally {
      setBusy(false);
    }
  }

  const sorted = useMemo(
    () =>
      people
        .filter((p) => !p.left_at)
        .sort((a, b) => Number(b.is_host) - Number(a.is_host) || a.joined_at.localeCompare(b.joined_at)),
    [people],
  );

  if (missing && !session) {
    return (
      <main id="main">
        <h1>Session not found</h1>
        <p>{missing}</p>
        <p>
          <a href="/sessions">Back to the list</a>
        </p>
      </main>
    );
  }
  if (!session) {
    return (
      <main id="main" aria-busy="true">
        <h1>Loading session…</h1>
      </main>
    );
  }

  return (
    <main id="main" class="stack">
      <p class="small" style="margin: 0">
        <a href="/sessions">← Back to the list</a>
      </p>
      <div class="session">
        <div class="stack">
          {/* no accessible name on this panel: a title such as "Notes for Sunday" would make a second
              region matching "Notes" */}
          <div class="panel">
            <h1>{session.title}</h1>
            <p class="small muted" style="margin: 0 0 0.5rem">
              {session.category} · hosted by {session.host_id}
              {session.is_private ? " · private" : ""} ·{" "}
              <span class="seats">
                {session.current_participants}/{session.max_participants}
              </span>{" "}
              participants
            </p>
            {session.description && <p style="white-space: pre-wrap">{session.description}</p>}
            {session.tags?.length ? (
              <p class="row">{session.tags.map((t) => <span key={t} class="badge">#{t}</span>)}</p>
            ) : null}
            {!session.is_active ? (
              <p class="notice">This session has ended.</p>
            ) : (
              <div class="row">
                {/* one button that changes its label, so the keyboard focus stays on it */}
                <button class={present ? undefined : "primary"} type="button" onClick={() => act(present ? "leave" : "join")}
                  disabled={busy || (!present && full)}>
                  {present ? "Leave" : "Join"}
                </button>
                {!present && full && <strong>Session full</strong>}
                {isHost && (
                  <button class="danger" type="button" onClick={() => act("end")} disabled={busy}>End session</button>
                )}
              </div>
            )}
            {/* the slot keeps its space; the alert exists only while there is something to say */}
            <div style="min-height: 1.2em; margin: 0.4rem 0 0">
              {notice && <p class="small" role="alert" style="margin: 0; color: var(--bad)">{notice}</p>}
            </div>
            {isHost && session.is_private && session.is_active && <Invite id={id} />}
          </div>
          {present || (!session.is_active && people.some((p) => p.user_id === me.userId)) ? (
            <Chat id={id} session={session} canPost={present} sink={sink} />
          ) : (
            <p class="panel muted">
              {session.is_active
                ? "Join the session to read and write in its chat and notes."
                : "The chat of an ended session stays with the people who took part."}
            </p>
          )}
        </div>
        <div class="stack">
          <section class="panel" aria-labelledby="people-heading">
            <h2 id="people-heading">Participants</h2>
            <ul class="people" aria-label="Participants">
              {sorted.map((p) => {
                const on = online.has(p.user_id);
                return (
                  <li key={p.user_id}>
                    <span class={`dot${on ? " on" : ""}`} aria-hidden="true" />
                    <span class="grow">
                      {p.user_name || p.user_id}
                      {p.user_id === me.userId ? " (you)" : ""}
                    </span>
                    {p.is_host && <span class="badge accent">host</span>}
                    <span class="small muted">{on ? "online" : "away"}</span>
                  </li>
                );
              })}
            </ul>
          </section>
          {present && <Notes id={id} people={people} sink={sink} />}
        </div>
      </div>
    </main>
  );
}

function Invite(props: { id: string }) {
  const { client } = useTether();
  const [user, setUser] = useState("");
  const [result, setResult] = useState<{ ok: boolean; text: string } | null>(null);
  async function submit(e: Event) {
    e.preventDefault();
    const who = user.trim();
    if (!who) return setResult({ ok: false, text: "Enter the user id to invite." });
    try {
      await client.sessions.invite(props.id, who);
      setResult({ ok: true, text: `Invited ${who}.` });
      setUser("");
    } catch (err) {
      setResult({ ok: false, text: reasonOf(err) });
    }
  }
  return (
    <form class="row" onSubmit={submit} style="margin-top: 0.75rem" noValidate>
      <label for="invite-user" class="sr-only">Invite user</label>
      <input id="invite-user" class="grow" value={user} placeholder="user id"
        aria-invalid={result && !result.ok ? "true" : undefined} aria-describedby="invite-result"
        onInput={(e) => setUser((e.target as HTMLInputElement).value)} />
      <button type="submit">Invite</button>
      {/* a polite live region, not role=status: the page's one status is the connection */}
      <span id="invite-result" aria-live="polite" class="small" style={{ color: result?.ok ? "var(--ok)" : "var(--bad)" }}>
        {result?.text ?? ""}
      </span>
    </form>
  );
}
