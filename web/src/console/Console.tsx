import { useEffect, useRef, useState } from "preact/hooks";
import { Client, type State, type TetherEvent } from "@tether/client";
import { Chart } from "./Chart";
import { clock, connectionLabel } from "../ui/format";

/** How the operator signed in: the server API key, or a JWT with the admin role. */
type Cred = { apiKey: string } | { token: string };

const KEY = "tether.console";
const SAMPLE_MS = 2000;
const WINDOW = 150; // samples: 5 minutes at one every 2 s
const MAX_EVENTS = 200;
const MAX_ROWS = 200;

interface Stats {
  connections: number;
  deliveries_total: number;
  publishes_total?: number;
  time?: string;
}
interface ChannelRow {
  channel: string;
  subscribers: number;
  offset: number;
  epoch?: string;
}
interface NodeRow {
  id: string;
  version?: string;
  connections?: number;
  healthy: boolean;
  draining?: boolean;
}

function headersOf(c: Cred): Record<string, string> {
  return "apiKey" in c ? { "X-API-Key": c.apiKey } : { Authorization: `Bearer ${c.token}` };
}

/** Ask before showing anything: only the API key or an admin token gets past this. */
async function verify(c: Cred): Promise<string | null> {
  try {
    const r = await fetch("/api/admin/stats", { headers: headersOf(c) });
    if (r.ok) return null;
    const body = await r.json().catch(() => null);
    const why: string = body?.error?.message ?? `HTTP ${r.status}`;
    if (r.status === 401 || r.status === 403) return `Not an operator: ${why}`;
    return `The server refused: ${why}`;
  } catch {
    return "The server cannot be reached.";
  }
}

function initialCred(): Cred | null {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (m) {
    history.replaceState(null, "", location.pathname);
    return { token: decodeURIComponent(m[1]) };
  }
  try {
    const raw = sessionStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as Cred) : null;
  } catch {
    return null;
  }
}

export function Console() {
  const [cred, setCred] = useState<Cred | null>(null);
  const [pending] = useState(initialCred);
  const [error, setError] = useState<string | null>(null);
  const [checking, setChecking] = useState(!!pending);

  async function signIn(c: Cred) {
    setChecking(true);
    const refused = await verify(c);
    setChecking(false);
    if (refused) {
      sessionStorage.removeItem(KEY);
      setCred(null);
      return setError(refused);
    }
    sessionStorage.setItem(KEY, JSON.stringify(c));
    setError(null);
    setCred(c);
  }
  useEffect(() => {
    if (pending) void signIn(pending);
  }, []);

  if (!cred) return <SignIn error={error} checking={checking} onSignIn={signIn} />;
  return (
    <Dashboard
      cred={cred}
      onSignOut={(why) => {
        sessionStorage.removeItem(KEY);
        setCred(null);
        setError(why);
      }}
    />
  );
}

function SignIn(props: { error: string | null; checking: boolean; onSignIn: (c: Cred) => void }) {
  const [key, setKey] = useState("");
  document.title = "Sign in · Tether console";
  return (
    <main id="main" class="signin">
      <form class="panel stack" noValidate onSubmit={(e) => {
        e.preventDefault();
        if (key.trim()) props.onSignIn({ apiKey: key.trim() });
      }}>
        <h1>Tether console</h1>
        <p class="muted small">
          Operators only: sign in with the server API key, or open this page with an admin token as
          <code> /console#token=…</code>.
        </p>
        <div class="field">
          <label for="api-key">API key</label>
          <input id="api-key" type="password" autoComplete="off" value={key} autoFocus
            aria-invalid={props.error ? "true" : undefined} aria-describedby="api-key-error"
            onInput={(e) => setKey((e.target as HTMLInputElement).value)} />
          <p id="api-key-error" class="error" role={props.error ? "alert" : undefined}>{props.error ?? ""}</p>
        </div>
        <button class="primary" type="submit" disabled={props.checking}>Sign in</button>
      </form>
    </main>
  );
}

function Dashboard(props: { cred: Cred; onSignOut: (why: string | null) => void }) {
  const { cred } = props;
  const [client] = useState(
    () =>
      new Client(location.origin, {
        ...("apiKey" in cred ? { apiKey: cred.apiKey } : { token: cred.token }),
        store: ":memory:",
        shareConnection: false,
      }),
  );
  const [state, setState] = useState<State>(client.state);
  const [stats, setStats] = useState<Stats | null>(null);
  const [connSeries, setConnSeries] = useState<number[]>([]);
  const [rateSeries, setRateSeries] = useState<number[]>([]);
  const [channels, setChannels] = useState<ChannelRow[]>([]);
  const [nodes, setNodes] = useState<NodeRow[]>([]);
  const [pattern, setPattern] = useState("");
  const [problem, setProblem] = useState<string | null>(null);
  const [sampled, setSampled] = useState<Date | null>(null);
  const prev = useRef<{ at: number; total: number } | null>(null);
  const patternRef = useRef(pattern);
  patternRef.current = pattern;
  document.title = "Tether console";

  useEffect(() => {
    const off = client.onState(setState);
    client.connect().catch(() => {});
    return () => {
      off();
      void client.close();
    };
  }, [client]);

  useEffect(() => {
    let stop = false;
    const get = (path: string) => client.rest("GET", path);
    async function sample() {
      try {
        const [s, ch, nd] = await Promise.all([
          get("/api/admin/stats") as Promise<Stats>,
          get(`/api/admin/channels${patternRef.current ? `?pattern=${encodeURIComponent(patternRef.current)}` : ""}`),
          get("/api/admin/nodes").catch(() => ({ nodes: [] })),
        ]);
        if (stop) return;
        const now = Date.now();
        const p = prev.current;
        const rate = p && now > p.at ? Math.max(0, (s.deliveries_total - p.total) / ((now - p.at) / 1000)) : 0;
        prev.current = { at: now, total: s.deliveries_total };
        setStats(s);
        setConnSeries((cur) => [...cur, s.connections].slice(-WINDOW));
        if (p) setRateSeries((cur) => [...cur, Math.round(rate * 10) / 10].slice(-WINDOW));
        setChannels(((ch as { channels: ChannelRow[] }).channels ?? []).slice().sort((a, b) => a.channel.localeCompare(b.channel)));
        setNodes((nd as { nodes: NodeRow[] }).nodes ?? []);
        setProblem(null);
        setSampled(new Date());
      } catch (err) {
        if (stop) return;
        const status = (err as { status?: number }).status;
        if (status === 401 || status === 403) return props.onSignOut("Your sign-in is no longer accepted.");
        setProblem(`Cannot reach the server API: ${(err as Error).message ?? err}`);
      }
    }
    void sample();
    const t = setInterval(sample, SAMPLE_MS);
    return () => {
      stop = true;
      clearInterval(t);
    };
  }, [client]);

  const label = connectionLabel(state);
  return (
    <>
      <header class="bar">
        <span class="brand">◉ Tether console</span>
        <span class="spacer" />
        <span role="status" aria-label="Connection" class="conn" data-state={label.toLowerCase()}>
          {label === "Reconnecting" ? "Reconnecting…" : label}
        </span>
        <span class="small muted">
          Sampled {sampled ? <time dateTime={sampled.toISOString()}>{clock(sampled)}</time> : "—"}
        </span>
        <button type="button" onClick={() => props.onSignOut(null)}>Sign out</button>
      </header>
      <main id="main" class="stack">
        <h1 class="sr-only">Tether console</h1>
        {problem && <p class="notice bad" role="alert">{problem}</p>}
        <div class="grid2">
          <section class="panel" aria-labelledby="conn-heading">
            <h2 id="conn-heading">Connections</h2>
            <p class="big" style="margin: 0" aria-describedby="conn-heading">{stats ? stats.connections : "—"}</p>
            <p class="small muted" style="margin: 0">
              {stats?.publishes_total != null ? `${stats.publishes_total} publishes, ` : ""}
              {stats ? `${stats.deliveries_total} deliveries since start` : ""}
            </p>
          </section>
          <Chart title="Connections" unit="" values={connSeries} span="5 minutes" />
          <Chart title="Deliveries per second" unit="/s" values={rateSeries} span="5 minutes" />
        </div>
        <section class="panel" aria-labelledby="nodes-heading">
          <h2 id="nodes-heading">Nodes</h2>
          <ul class="people" aria-label="Nodes">
            {nodes.map((n) => (
              <li key={n.id}>
                <span class={`dot${n.healthy && !n.draining ? " on" : ""}`} aria-hidden="true" />
                <span class="grow">
                  <strong>{n.id}</strong> {n.version ? <span class="small muted">v{n.version}</span> : null}
                </span>
                <span class="small">
                  {n.draining ? "draining" : n.healthy ? "healthy" : "unhealthy"}
                  {n.connections != null ? ` · ${n.connections} connections` : ""}
                </span>
              </li>
            ))}
          </ul>
          {!nodes.length && <p class="small muted">No node reported yet.</p>}
        </section>
        <div class="grid2">
          <section class="panel" aria-labelledby="channels-heading">
            <h2 id="channels-heading">Channels</h2>
            <div class="field">
              <label for="pattern">Filter channels</label>
              <input id="pattern" type="search" value={pattern} placeholder="e.g. sessions.*"
                onInput={(e) => setPattern((e.target as HTMLInputElement).value)} />
            </div>
            <div style="max-height: 22rem; overflow: auto">
              <table aria-label="Channels">
                <thead>
                  <tr>
                    <th scope="col">Channel</th>
                    <th scope="col" class="num">Subscribers</th>
                    <th scope="col" class="num">Last offset</th>
                  </tr>
                </thead>
                <tbody>
                  {channels.slice(0, MAX_ROWS).map((c) => (
                    <tr key={c.channel}>
                      <td>{c.channel}</td>
                      <td class="num">{c.subscribers}</td>
                      <td class="num">{c.offset}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
            {channels.length > MAX_ROWS && (
              <p class="small muted">
                Showing {MAX_ROWS} of {channels.length} channels: narrow them with a filter.
              </p>
            )}
          </section>
          <div class="stack">
            <Publish client={client} />
            <Tail client={client} />
          </div>
        </div>
      </main>
    </>
  );
}

function Publish(props: { client: Client }) {
  const [channel, setChannel] = useState("");
  const [type, setType] = useState("PUBLICATION");
  const [data, setData] = useState('{"text": "hello"}');
  const [errors, setErrors] = useState<{ channel?: string; type?: string; data?: string }>({});
  const [result, setResult] = useState<string | null>(null);

  async function submit(e: Event) {
    e.preventDefault();
    const errs: typeof errors = {};
    let parsed: unknown;
    if (!channel.trim()) errs.channel = "Name a channel.";
    if (!/^[A-Z][A-Z0-9_]{0,63}$/.test(type.trim())) errs.type = "UPPER_SNAKE_CASE, e.g. PUBLICATION.";
    try {
      parsed = JSON.parse(data);
      if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) errs.data = "A JSON object, e.g. {\"text\": \"hi\"}.";
    } catch (err) {
      errs.data = `Not JSON: ${(err as Error).message}`;
    }
    setErrors(errs);
    setResult(null);
    if (Object.keys(errs).length) return;
    try {
      const r = await props.client.rest("POST", `/api/channels/${encodeURIComponent(channel.trim())}/publish`, {
        type: type.trim(),
        data: parsed,
      });
      setResult(`Published on ${channel.trim()}${r?.offset != null ? ` at offset ${r.offset}` : ""}.`);
    } catch (err) {
      const field = (err as { data?: { field?: string } }).data?.field;
      const why = (err as { reason?: string }).reason ?? String(err);
      if (field === "data" || field === "type") setErrors({ [field]: why });
      else setResult(`Refused: ${why}`);
    }
  }

  const invalid = (k: keyof typeof errors) => (errors[k] ? ("true" as const) : undefined);
  return (
    <form class="panel" aria-labelledby="publish-heading" onSubmit={submit} noValidate>
      <h2 id="publish-heading">Publish</h2>
      <div class="field">
        <label for="pub-channel">Channel</label>
        <input id="pub-channel" value={channel} placeholder="public.news" aria-invalid={invalid("channel")}
          aria-describedby="pub-channel-error" onInput={(e) => setChannel((e.target as HTMLInputElement).value)} />
        <p id="pub-channel-error" class="error">{errors.channel ?? ""}</p>
      </div>
      <div class="field">
        <label for="pub-type">Event type</label>
        <input id="pub-type" value={type} aria-invalid={invalid("type")} aria-describedby="pub-type-error"
          onInput={(e) => setType((e.target as HTMLInputElement).value)} />
        <p id="pub-type-error" class="error">{errors.type ?? ""}</p>
      </div>
      <div class="field">
        <label for="pub-data">Data</label>
        <textarea id="pub-data" rows={3} value={data} spellcheck={false} aria-invalid={invalid("data")}
          aria-describedby="pub-data-error" onInput={(e) => setData((e.target as HTMLTextAreaElement).value)} />
        <p id="pub-data-error" class="error">{errors.data ?? ""}</p>
      </div>
      <div class="row">
        <button class="primary" type="submit">Publish</button>
        <span role="status" aria-label="Publish result" class="small">{result ?? ""}</span>
      </div>
    </form>
  );
}

interface Line {
  n: number;
  text: string;
}

function Tail(props: { client: Client }) {
  const { client } = props;
  const [channel, setChannel] = useState("");
  const [tailing, setTailing] = useState<string | null>(null);
  const [lines, setLines] = useState<Line[]>([]);
  const [error, setError] = useState<string | null>(null);
  const sub = useRef<{ unsubscribe(): Promise<void> } | null>(null);
  const count = useRef(0);
  const log = useRef<HTMLDivElement>(null);

  async function stop() {
    const s = sub.current;
    sub.current = null;
    setTailing(null);
    await s?.unsubscribe().catch(() => {});
  }
  useEffect(() => () => void stop(), []);
  useEffect(() => {
    if (log.current) log.current.scrollTop = log.current.scrollHeight;
  }, [lines]);

  async function start(e: Event) {
    e.preventDefault();
    const ch = channel.trim();
    if (!ch) return setError("Name a channel to tail.");
    await stop();
    setError(null);
    setLines([]);
    try {
      sub.current = await client.subscribe(ch, (ev: TetherEvent) => {
        const n = ++count.current;
        const text = `${ev.offset != null ? `#${ev.offset} ` : ""}${ev.type} ${JSON.stringify(ev.data)}`;
        setLines((cur) => [...cur, { n, text }].slice(-MAX_EVENTS));
      });
      setTailing(ch);
    } catch (err) {
      setError((err as { reason?: string }).reason ?? String(err));
    }
  }

  return (
    <section class="panel" aria-labelledby="tail-heading">
      <h2 id="tail-heading">Live tail</h2>
      <form class="row" onSubmit={start} noValidate>
        <div class="grow">
          <label for="tail-channel">Tail channel</label>
          <input id="tail-channel" value={channel} placeholder="public.news" aria-invalid={error ? "true" : undefined}
            aria-describedby="tail-error" onInput={(e) => setChannel((e.target as HTMLInputElement).value)} />
        </div>
        <button type="submit" style="align-self: end">Tail</button>
        {tailing && <button type="button" style="align-self: end" onClick={() => void stop()}>Stop</button>}
      </form>
      <p id="tail-error" class="small" style={{ minHeight: "1.2em", margin: "0.3rem 0", color: error ? "var(--bad)" : "var(--muted)" }}>
        {error ?? (tailing ? `Following ${tailing}: new events appear below.` : "")}
      </p>
      <div ref={log} class="events" role="log" aria-label="Events" tabIndex={0}>
        {lines.map((l) => <div key={l.n} class="line">{l.text}</div>)}
      </div>
    </section>
  );
}
