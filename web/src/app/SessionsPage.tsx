import { useEffect, useRef, useState } from "preact/hooks";
import { useLocation } from "preact-iso";
import type { Session, TetherEvent } from "@tether/client";
import { fieldOf, follow, reasonOf, useTether } from "./tether";

export const CATEGORIES = ["General", "Prayer", "Scripture", "Worship", "Study", "Music"];

function matches(s: Session, q: string, category: string): boolean {
  if (!s.is_active) return false;
  if (category && s.category.toLowerCase() !== category.toLowerCase()) return false;
  const needle = q.trim().toLowerCase();
  if (!needle) return true;
  return [s.title, s.description, ...(s.tags ?? [])].some((x) => (x ?? "").toLowerCase().includes(needle));
}

function listOf(r: unknown): Session[] {
  if (Array.isArray(r)) return r as Session[];
  return ((r as { sessions?: Session[] })?.sessions ?? []) as Session[];
}

/** Browse live sessions: search, category, live counts; create one. */
export function SessionsPage() {
  const { client, syncTick, state } = useTether();
  const [q, setQ] = useState("");
  const [category, setCategory] = useState("");
  const [sessions, setSessions] = useState<Session[] | null>(null);
  const [loadError, setLoadError] = useState<string | null>(null);
  const [creating, setCreating] = useState(false);
  const [live, setLive] = useState(0); // bumped once the browse channel is followed: the list is read again
  const newButton = useRef<HTMLButtonElement>(null);
  const filters = useRef({ q, category });
  filters.current = { q, category };
  document.title = "Live sessions · Tether";

  // the list from the server for the current filters (debounced while typing)
  useEffect(() => {
    let stale = false;
    const timer = setTimeout(async () => {
      try {
        const r = await client.sessions.list({ q: q.trim() || undefined, category: category || undefined });
        if (!stale) {
          setSessions(listOf(r));
          setLoadError(null);
        }
      } catch (err) {
        if (!stale) setLoadError(reasonOf(err));
      }
    }, q ? 200 : 0);
    return () => {
      stale = true;
      clearTimeout(timer);
    };
  }, [client, q, category, syncTick, state === "connected", live]);

  // live: sessions created, updated (seat counts) and ended, and private ones we are invited to
  useEffect(() => {
    const apply = (e: TetherEvent<Session>) => {
      const s = e.data;
      if (!s?.id) return;
      setSessions((cur) => {
        if (!cur) return cur;
        const rest = cur.filter((x) => x.id !== s.id);
        const { q, category } = filters.current;
        if (e.type === "SESSION_ENDED" || !matches(s, q, category)) return rest;
        const i = cur.findIndex((x) => x.id === s.id);
        if (i < 0) return [s, ...cur];
        const next = cur.slice();
        next[i] = s;
        return next;
      });
    };
    const stop = follow(client, "sessions", apply as (e: TetherEvent) => void, { onReady: () => setLive((n) => n + 1) });
    const offInvite = client.on("SESSION_INVITED", (e: TetherEvent) =>
      apply({ ...e, type: "SESSION_UPDATED", data: e.data?.session }),
    );
    return () => {
      stop();
      offInvite();
    };
  }, [client]);

  return (
    <main id="main" class="stack">
      <div class="row">
        <h1 class="grow" style="margin: 0">Live sessions</h1>
        {!creating && (
          <button ref={newButton} class="primary" type="button" onClick={() => setCreating(true)}>New session</button>
        )}
      </div>
      {creating ? (
        <NewSessionForm
          onDone={() => {
            setCreating(false);
            setTimeout(() => newButton.current?.focus());
          }}
        />
      ) : (
        <div class="toolbar panel" role="search">
          <div>
            <label for="q">Search sessions</label>
            <input id="q" type="search" value={q} placeholder="Title, description or tag"
              onInput={(e) => setQ((e.target as HTMLInputElement).value)} />
          </div>
          <div>
            <label for="cat">Category</label>
            <select id="cat" value={category} onChange={(e) => setCategory((e.target as HTMLSelectElement).value)}>
              <option value="">All categories</option>
              {CATEGORIES.map((c) => <option key={c} value={c}>{c}</option>)}
            </select>
          </div>
        </div>
      )}
      {loadError && <p class="notice bad" role="alert">Could not load the sessions: {loadError}</p>}
      <ul class="cards" aria-label="Sessions" aria-busy={sessions === null ? "true" : undefined}>
        {sessions?.map((s) => (
          <li key={s.id}>
            <a href={`/sessions/${s.id}`}>{s.title}</a>
            <span class="small muted">
              <span class="seats" aria-label={`${s.current_participants} of ${s.max_participants} participants`}>
                {s.current_participants}/{s.max_participants}
              </span>
              {" · "}
              {s.category}
              {s.is_private ? " · private" : ""}
            </span>
            {s.description && <span class="small">{s.description}</span>}
            {s.tags?.length ? (
              <span class="row">{s.tags.map((t) => <span key={t} class="badge">#{t}</span>)}</span>
            ) : null}
          </li>
        ))}
      </ul>
      {sessions !== null && sessions.length === 0 && (
        <p class="muted">No live sessions {q || category ? "match" : "yet"}. Start one with “New session”.</p>
      )}
    </main>
  );
}

type Errors = Partial<Record<"title" | "description" | "category" | "tags" | "max_participants" | "form", string>>;

function NewSessionForm(props: { onDone: () => void }) {
  const { client, me } = useTether();
  const { route } = useLocation();
  const [title, setTitle] = useState("");
  const [description, setDescription] = useState("");
  const [category, setCategory] = useState("General");
  const [tags, setTags] = useState("");
  const [max, setMax] = useState("10");
  const [isPrivate, setPrivate] = useState(false);
  const [errors, setErrors] = useState<Errors>({});
  const [busy, setBusy] = useState(false);
  const form = useRef<HTMLFormElement>(null);

  function check(): Errors {
    const e: Errors = {};
    if (!title.trim()) e.title = "Give the session a title.";
    else if (title.length > 200) e.title = "At most 200 characters.";
    if (description.length > 2000) e.description = "At most 2,000 characters.";
    const list = tags.split(",").map((t) => t.trim()).filter(Boolean);
    if (list.length > 10) e.tags = "At most 10 tags.";
    else if (list.some((t) => t.length > 32)) e.tags = "Each tag has at most 32 characters.";
    const n = Number(max);
    if (!Number.isInteger(n) || n < 2 || n > 50) e.max_participants = "From 2 to 50 participants.";
    return e;
  }

  function focusFirst(e: Errors) {
    const first = Object.keys(e)[0];
    if (first && first !== "form") form.current?.querySelector<HTMLElement>(`[name="${first}"]`)?.focus();
  }

  async function submit(ev: Event) {
    ev.preventDefault();
    const e = check();
    setErrors(e);
    if (Object.keys(e).length) return focusFirst(e);
    setBusy(true);
    try {
      const s = await client.sessions.create({
        title: title.trim(),
        description: description.trim(),
        category,
        tags: tags.split(",").map((t) => t.trim()).filter(Boolean),
        max_participants: Number(max),
        is_private: isPrivate,
        user_name: me.userId,
      });
      props.onDone();
      route(`/sessions/${s.id}`);
    } catch (err) {
      const field = (fieldOf(err) ?? "").split(".")[0];
      const known = ["title", "description", "category", "tags", "max_participants"].includes(field);
      const e2: Errors = known ? { [field]: reasonOf(err).replace(/^[\w.]+: /, "") } : { form: reasonOf(err) };
      setErrors(e2);
      focusFirst(e2);
    } finally {
      setBusy(false);
    }
  }

  const field = (name: keyof Errors, label: string, control: preact.JSX.Element, wide = false) => (
    <div class={`field${wide ? " wide" : ""}`}>
      <label for={`new-${name}`}>{label}</label>
      {control}
      <p id={`new-${name}-error`} class="error">{errors[name] ?? ""}</p>
    </div>
  );
  const aria = (name: keyof Errors) => ({
    id: `new-${name}`,
    name,
    "aria-invalid": errors[name] ? ("true" as const) : undefined,
    "aria-describedby": `new-${name}-error`,
  });

  return (
    <form ref={form} class="panel" onSubmit={submit} noValidate aria-labelledby="new-heading">
      <h2 id="new-heading">New session</h2>
      <div class="form-grid">
        {field("title", "Title",
          <input {...aria("title")} value={title} maxLength={400} autoFocus
            onInput={(e) => setTitle((e.target as HTMLInputElement).value)} />, true)}
        {field("description", "Description",
          <textarea {...aria("description")} rows={3} value={description}
            onInput={(e) => setDescription((e.target as HTMLTextAreaElement).value)} />, true)}
        {field("category", "Category",
          <select {...aria("category")} value={category} onChange={(e) => setCategory((e.target as HTMLSelectElement).value)}>
            {CATEGORIES.map((c) => <option key={c} value={c}>{c}</option>)}
          </select>)}
        {field("max_participants", "Max participants",
          <input {...aria("max_participants")} type="number" min={2} max={50} step={1} value={max}
            onInput={(e) => setMax((e.target as HTMLInputElement).value)} />)}
        {field("tags", "Tags",
          <input {...aria("tags")} value={tags} placeholder="comma, separated"
            onInput={(e) => setTags((e.target as HTMLInputElement).value)} />, true)}
        <div class="field wide">
          <label class="check">
            <input type="checkbox" checked={isPrivate} onChange={(e) => setPrivate((e.target as HTMLInputElement).checked)} />
            Private
          </label>
          <p class="muted small" style="margin: 0">Only people you invite can find a private session.</p>
        </div>
      </div>
      {errors.form && <p class="notice bad" role="alert">{errors.form}</p>}
      <div class="row">
        <button class="primary" type="submit" disabled={busy}>Create</button>
        <button type="button" onClick={props.onDone}>Cancel</button>
      </div>
    </form>
  );
}
