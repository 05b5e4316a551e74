import { useEffect, useRef, useState } from "preact/hooks";
import type { Lock, Participant, TetherEvent } from "@tether/client";
import { follow, reasonOf, useTether } from "./tether";
import type { SessionEvents } from "./SessionPage";
import { clock } from "../ui/format";

export interface NotesState {
  session_id: string;
  text: string;
  version: number;
  updated_by: string | null;
  updated_at: string | null;
}

interface Holder {
  holder: string;
  expires_at: string | null;
}

const LOCK_TTL = 30;

/** Shared notes of a session: read-only until "Edit" takes the session's notes lock;
 * "Save" is a versioned write (a conflict shows the current text); "Cancel" releases. */
export function Notes(props: { id: string; people: Participant[]; sink: SessionEvents }) {
  const { id, sink } = props;
  const { client, me, syncTick } = useTether();
  const key = `sessions.${id}.notes`;
  const [notes, setNotes] = useState<NotesState | null>(null);
  const [draft, setDraft] = useState("");
  const [base, setBase] = useState(0); // the version the draft started from
  const [lock, setLock] = useState<Lock | null>(null);
  const [holder, setHolder] = useState<Holder | null>(null);
  const [conflict, setConflict] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const lockRef = useRef<Lock | null>(null);
  lockRef.current = lock;
  const editing = !!lock;

  const nameOf = (user: string) => props.people.find((p) => p.user_id === user)?.user_name || user;

  useEffect(() => {
    let stale = false;
    client.rest("GET", `/api/sessions/${id}/notes`).then(
      (n: NotesState) => {
        if (stale) return;
        setNotes(n);
        if (!lockRef.current) {
          setDraft(n.text);
          setBase(n.version);
        }
      },
      (err: unknown) => !stale && setError(`Could not load the notes: ${reasonOf(err)}`),
    );
    return () => {
      stale = true;
    };
  }, [client, id, syncTick]);

  // saves by others arrive live; while editing, the draft is kept (Save will report the conflict)
  useEffect(() => {
    sink.notes = (n) => {
      setNotes((cur) => (cur && cur.version >= n.version ? cur : n));
      if (!lockRef.current) {
        setDraft(n.text);
        setBase(n.version);
      }
    };
    return () => {
      sink.notes = undefined;
    };
  }, [sink]);

  // who holds the lock: asked once, then followed live on the lock's own channel
  useEffect(() => {
    let stop = false;
    const ask = () =>
      client.rest("GET", `/api/locks/${key}`).then(
        (r: { locked: boolean; holder: string | null; expires_at: string | null }) =>
          !stop && setHolder(r.locked && r.holder ? { holder: r.holder, expires_at: r.expires_at } : null),
        () => {},
      );
    void ask();
    const unfollow = follow(
      client,
      `locks.${key}`,
      (e: TetherEvent) => {
        const d = e.data ?? {};
        if (e.type === "LOCK_ACQUIRED" || e.type === "LOCK_EXTENDED") setHolder({ holder: d.holder, expires_at: d.expires_at });
        else if (e.type === "LOCK_RELEASED" || e.type === "LOCK_EXPIRED") setHolder(null);
      },
      { onReload: () => void ask(), onReady: () => void ask() },
    );
    return () => {
      stop = true;
      unfollow();
    };
  }, [client, key, syncTick]);

  // leaving the page lets go of the lock
  useEffect(() => () => void lockRef.current?.release().catch(() => {}), []);

  async function edit() {
    setBusy(true);
    setError(null);
    setConflict(null);
    try {
      const l = await client.lock(key, {
        ttl: LOCK_TTL,
        timeout: 0,
        onLost: () => {
          setLock(null);
          setError("Your edit lock expired (the connection was lost too long). Edit again to continue.");
        },
      });
      setLock(l);
      setHolder(null);
      setDraft(notes?.text ?? "");
      setBase(notes?.version ?? 0);
    } catch (err) {
      const r = await client.rest("GET", `/api/locks/${key}`).catch(() => null);
      if (r?.locked && r.holder) setHolder({ holder: r.holder, expires_at: r.expires_at });
      else setError(`Could not start editing: ${reasonOf(err)}`);
    } finally {
      setBusy(false);
    }
  }

  async function release() {
    const l = lockRef.current;
    setLock(null);
    await l?.release().catch(() => {});
  }

  async function save() {
    setBusy(true);
    setError(null);
    try {
      const saved: NotesState = await client.rest("PUT", `/api/sessions/${id}/notes`, { text: draft, version: base });
      setNotes(saved);
      setBase(saved.version);
      setConflict(null);
      await release();
    } catch (err) {
      const current = (err as { data?: { notes?: NotesState } }).data?.notes;
      if (current) {
        setNotes(current);
        setBase(current.version);
        setConflict(
          `${nameOf(current.updated_by ?? "someone")} saved these notes while you were editing. ` +
            `Their text is below; your text was:\n${draft}`,
        );
        setDraft(current.text);
      } else setError(`Not saved: ${reasonOf(err)}`);
    } finally {
      setBusy(false);
    }
  }

  async function cancel() {
    setDraft(notes?.text ?? "");
    setBase(notes?.version ?? 0);
    setConflict(null);
    await release();
  }

  const othersEditing = !editing && holder && holder.holder !== me.userId ? holder : null;
  return (
    <section class="panel" aria-labelledby="notes-heading">
      <h2 id="notes-heading">Notes</h2>
      <label for="notes-text" class="small muted" style="font-weight: normal">Notes text</label>
      <textarea id="notes-text" rows={8} value={editing ? draft : notes?.text ?? ""} readOnly={!editing}
        aria-describedby="notes-meta"
        onInput={(e) => setDraft((e.target as HTMLTextAreaElement).value)} />
      <p id="notes-meta" class="small muted" style="min-height: 1.2em; margin: 0.3rem 0">
        {othersEditing
          ? `Being edited by ${nameOf(othersEditing.holder)}`
          : editing
            ? "You are editing: others see the notes as locked."
            : notes?.updated_at
              ? `Version ${notes.version}, saved by ${nameOf(notes.updated_by ?? "")} at ${clock(notes.updated_at)}`
              : "No notes yet."}
      </p>
      {conflict && <p class="notice bad" role="alert" style="white-space: pre-wrap">{conflict}</p>}
      {error && <p class="notice bad" role="alert">{error}</p>}
      <div class="row">
        {editing ? (
          <>
            <button class="primary" type="button" onClick={save} disabled={busy}>Save</button>
            <button type="button" onClick={cancel} disabled={busy}>Cancel</button>
          </>
        ) : (
          <button type="button" onClick={edit} disabled={busy || !!othersEditing || !notes}>Edit</button>
        )}
      </div>
    </section>
  );
}
