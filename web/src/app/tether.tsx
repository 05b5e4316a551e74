/** The one @tether/client of the app, its connection state, and the live per-user state
 * (job progress, credits, invitations) that arrives before any page asks for it. */
import { createContext, type ComponentChildren } from "preact";
import { useContext, useEffect, useMemo, useState } from "preact/hooks";
import { Client, type ShootProgress, type State, type TetherEvent } from "@tether/client";
import type { SignIn } from "./auth";
import { type ConnLabel, connectionLabel } from "../ui/format";

/** Small observable: pages re-render when it changes. */
export class Live {
  progress = new Map<string, ShootProgress>();
  credits: number | null = null;
  invites: { sessionId: string; title: string; by: string }[] = [];
  private listeners = new Set<() => void>();

  changed(): void {
    for (const l of this.listeners) l();
  }
  listen(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }
}

export interface Tether {
  client: Client;
  me: SignIn;
  live: Live;
  state: State;
  label: ConnLabel;
  outbox: number;
  lastSynced: Date | null;
  /** Bumped by "Sync": pages reload what they show from the server. */
  syncTick: number;
  syncing: boolean;
  sync(): Promise<void>;
}

const Ctx = createContext<Tether | null>(null);

export function useTether(): Tether {
  const t = useContext(Ctx);
  if (!t) throw new Error("useTether outside TetherProvider");
  return t;
}

export function useLive(): Live {
  const { live } = useTether();
  const [, bump] = useState(0);
  useEffect(() => live.listen(() => bump((n) => n + 1)), [live]);
  return live;
}

/** A job's progress in whole percent, 0–100. */
export function percent(p: ShootProgress): number {
  const raw = typeof p.progress === "number" ? p.progress : p.totalCount ? p.processedCount / p.totalCount : 0;
  return Math.max(0, Math.min(100, Math.round(raw * 100)));
}

export function TetherProvider(props: { me: SignIn; children: ComponentChildren }) {
  const { me } = props;
  const { client, live } = useMemo(() => {
    const client = new Client(location.origin, {
      token: me.token,
      // a JWT cannot be renewed by the page: hand back the one we have (a refused one ends in "failed")
      getToken: me.kind === "jwt" ? () => me.token : undefined,
      store: `tether-web.${me.userId}`,
    });
    const live = new Live();
    client.onShootProgress((p: ShootProgress) => {
      live.progress.set(p.shootId, p);
      live.changed();
    });
    client.onCreditUpdate((c: { balance?: unknown }) => {
      if (typeof c.balance === "number") {
        live.credits = c.balance;
        live.changed();
      }
    });
    // refused writes are shown where they were made (e.g. the chat); this keeps the client quiet about them
    client.onError(() => {});
    client.on("SESSION_INVITED", (e: TetherEvent) => {
      const s = e.data?.session;
      if (s?.id && !live.invites.some((i) => i.sessionId === s.id)) {
        live.invites = [...live.invites, { sessionId: s.id, title: s.title, by: e.data.invited_by }];
        live.changed();
      }
    });
    return { client, live };
  }, [me.token]);

  const [state, setState] = useState<State>(client.state);
  const [outbox, setOutbox] = useState(0);
  const [lastSynced, setLastSynced] = useState<Date | null>(null);
  const [syncTick, setSyncTick] = useState(0);
  const [syncing, setSyncing] = useState(false);

  useEffect(() => {
    const offState = client.onState((s: State) => setState(s));
    const offChange = client.onChange((keys: Set<string>) => {
      if (keys.has("outbox")) setOutbox(client.outboxSize);
    });
    // lastSyncedAt moves with every answer and event; reading it once a second is plenty for a clock
    const tick = setInterval(() => {
      // a tab on another tab's shared connection may not hear of syncs: its own connect counts
      setLastSynced((cur) => client.lastSyncedAt ?? (client.state === "connected" ? (cur ?? new Date()) : cur));
      setOutbox(client.outboxSize);
      setState(client.state);
    }, 1000);
    const online = () => setState(client.state);
    addEventListener("online", online);
    addEventListener("offline", online);
    client.connect().catch(() => setState(client.state));
    return () => {
      offState();
      offChange();
      clearInterval(tick);
      removeEventListener("online", online);
      removeEventListener("offline", online);
      void client.close();
    };
  }, [client]);

  const value: Tether = {
    client,
    me,
    live,
    state,
    label: connectionLabel(state),
    outbox,
    lastSynced,
    syncTick,
    syncing,
    async sync() {
      setSyncing(true);
      try {
        await client.refresh();
      } catch {
        /* offline: the pages still reload what they can; the status says why */
      } finally {
        setSyncTick((n) => n + 1);
        setLastSynced(client.lastSyncedAt ?? new Date());
        setSyncing(false);
      }
    },
  };
  return <Ctx.Provider value={value}>{props.children}</Ctx.Provider>;
}

/** An error as a sentence for people: the server's message when it gave one. */
export function reasonOf(err: unknown): string {
  if (err && typeof err === "object") {
    const e = err as { reason?: unknown; message?: unknown; code?: unknown };
    if (typeof e.reason === "string" && e.reason) return e.reason;
    if (typeof e.message === "string" && e.message) return e.message;
  }
  return String(err);
}

/** The field a server refusal names (`error.field`), if any. */
export function fieldOf(err: unknown): string | null {
  const data = (err as { data?: { field?: unknown } } | null)?.data;
  return typeof data?.field === "string" ? data.field : null;
}

export function statusOf(err: unknown): number | undefined {
  return (err as { status?: number } | null)?.status;
}

/**
 * Follow a channel while a component is mounted. The client keeps one subscription per
 * channel for the whole page, so leaving removes only this handler, and unsubscribes
 * only when nobody else (e.g. a stream watcher) still listens on that channel.
 */
export function follow(
  client: Client,
  channel: string,
  handler: (e: TetherEvent) => void,
  opts: { presence?: boolean; onReload?: (channel: string) => void; onReady?: () => void } = {},
): () => void {
  const { onReady, ...subscribeOpts } = opts;
  const made = serially(client, channel, () => client.subscribe(channel, handler, subscribeOpts)).catch(() => null);
  // Whatever changed before the subscription took hold came as no event: onReady lets the caller read it now.
  if (onReady) void made.then((sub) => sub && onReady());
  const drop = () => {
    const sub = client.subscription(channel);
    if (!sub) return;
    const list = sub.handlers.get(null);
    const i = list ? list.indexOf(handler) : -1;
    if (list && i >= 0) list.splice(i, 1);
    if (![...sub.handlers.values()].some((l) => l.length)) void sub.unsubscribe();
  };
  return () => {
    if (client.subscription(channel)) drop();
    else void made.then(drop);
  };
}

const queues = new WeakMap<Client, Map<string, Promise<unknown>>>();

/**
 * Run subscribe-like calls for one channel of one client one after the other: two subscribe()
 * calls for the same channel racing each other would each make a subscription, and the
 * handlers of the first would never hear anything. Other channels do not wait.
 */
export function serially<T>(client: Client, channel: string, fn: () => Promise<T>): Promise<T> {
  let perChannel = queues.get(client);
  if (!perChannel) queues.set(client, (perChannel = new Map()));
  const run = (perChannel.get(channel) ?? Promise.resolve()).then(fn, fn);
  perChannel.set(channel, run.catch(() => undefined));
  return run;
}
