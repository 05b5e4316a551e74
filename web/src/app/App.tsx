import { useEffect, useState } from "preact/hooks";
import { LocationProvider, Route, Router, useLocation } from "preact-iso";
import { jwtSignIn, loadSignIn, onSignInChange, saveSignIn, tokenFromHash, type SignIn } from "./auth";
import { SignInPage } from "./SignIn";
import { TetherProvider, useLive, useTether } from "./tether";
import { SessionsPage } from "./SessionsPage";
import { SessionPage } from "./SessionPage";
import { DevicesPage } from "./DevicesPage";
import { clock } from "../ui/format";

function initialSignIn(): { signIn: SignIn | null; error: string | null } {
  const hashed = tokenFromHash();
  if (hashed) {
    const s = jwtSignIn(hashed);
    if (s) {
      saveSignIn(s);
      return { signIn: s, error: null };
    }
    return { signIn: loadSignIn(), error: "The token in the link is not a valid JWT." };
  }
  return { signIn: loadSignIn(), error: null };
}

export function App() {
  const [{ signIn, error }, set] = useState(initialSignIn);
  useEffect(() => onSignInChange((s) => set({ signIn: s, error: null })), []);
  const change = (s: SignIn | null) => {
    saveSignIn(s);
    set({ signIn: s, error: null });
  };
  if (!signIn) return <SignInPage onSignIn={change} initialError={error} />;
  return (
    <TetherProvider key={signIn.token} me={signIn}>
      <LocationProvider>
        <Shell onSignOut={() => change(null)} />
      </LocationProvider>
    </TetherProvider>
  );
}

function Shell(props: { onSignOut: () => void }) {
  const t = useTether();
  const { path } = useLocation();
  const onDevices = path.startsWith("/devices");
  return (
    <>
      <a class="skip" href="#main">Skip to content</a>
      <header class="bar">
        <a class="brand" href="/sessions" aria-label="Tether home">◉ Tether</a>
        <nav aria-label="Main">
          <a href="/sessions" aria-current={!onDevices ? "page" : undefined}>Sessions</a>
          <a href="/devices" aria-current={onDevices ? "page" : undefined}>Devices</a>
        </nav>
        <span class="spacer" />
        <span role="status" aria-label="Connection" class="conn" data-state={t.label.toLowerCase()}>
          {t.label === "Reconnecting" ? "Reconnecting…" : t.label}
          {t.outbox > 0 ? ` · ${t.outbox} to send` : ""}
        </span>
        <span class="sync">
          <button type="button" onClick={() => t.sync()} disabled={t.syncing} aria-describedby="last-synced">
            Sync
          </button>
          <span id="last-synced">
            Last synced{" "}
            {t.lastSynced ? <time dateTime={t.lastSynced.toISOString()}>{clock(t.lastSynced)}</time> : "never"}
          </span>
        </span>
        <span class="who">
          Signed in as <strong>{t.me.userId}</strong>
        </span>
        <button type="button" onClick={props.onSignOut}>Sign out</button>
      </header>
      {t.state === "failed" && (
        <p class="notice bad" role="alert" style="margin: 1rem">
          The connection gave up: {String(t.client.disconnectReason ?? t.client.error?.message ?? "the server refused it")}.{" "}
          Sign out and in again, or reload the page.
        </p>
      )}
      <Invites />
      <Router>
        <Route path="/" component={SessionsPage} />
        <Route path="/sessions" component={SessionsPage} />
        <Route path="/sessions/:id" component={SessionPage} />
        <Route path="/devices" component={DevicesPage} />
        <Route default component={NotFound} />
      </Router>
    </>
  );
}

function Invites() {
  const live = useLive();
  if (!live.invites.length) return null;
  return (
    <aside aria-label="Invitations" class="panel" style="margin: 1rem auto 0; max-width: 70rem">
      {live.invites.map((i) => (
        <p key={i.sessionId} style="margin: 0">
          {i.by} invited you to <a href={`/sessions/${i.sessionId}`}>{i.title}</a>
          {" "}
          <button type="button" onClick={() => { live.invites = live.invites.filter((x) => x !== i); live.changed(); }}>
            Dismiss
          </button>
        </p>
      ))}
    </aside>
  );
}

function NotFound() {
  document.title = "Not found · Tether";
  return (
    <main id="main">
      <h1>Page not found</h1>
      <p>
        <a href="/sessions">Go to the list</a>
      </p>
    </main>
  );
}
