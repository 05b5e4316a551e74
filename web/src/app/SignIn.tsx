import { useState } from "preact/hooks";
import { checkToken, devSignIn, jwtSignIn, serverAuth, validUserName, type SignIn } from "./auth";

/** Dev auth: a user name (the token is `<name>:<this browser's device id>`).
 * JWT auth: paste a token (or open the app with `#token=…`). The server says which it takes;
 * a page that does not know (Vite's dev server) offers both. */
export function SignInPage(props: { onSignIn: (s: SignIn) => void; initialError?: string | null }) {
  const [known] = useState(serverAuth);
  const [mode, setMode] = useState<"name" | "token">(known === "jwt" ? "token" : "name");
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | null>(props.initialError ?? null);
  const [busy, setBusy] = useState(false);
  document.title = "Sign in · Tether";

  async function submit(e: Event) {
    e.preventDefault();
    let s: SignIn | null;
    if (mode === "name") {
      const bad = validUserName(value);
      if (bad) return setError(bad);
      s = devSignIn(value);
    } else {
      s = jwtSignIn(value);
      if (!s) return setError("This is not a token: paste the whole JWT (three parts separated by dots).");
    }
    setBusy(true);
    const refused = await checkToken(s.token, s.userId);
    setBusy(false);
    if (refused) {
      if (mode === "name" && !known) {
        setMode("token");
        setValue("");
        return setError(`${refused}. This server may need a token: paste one below.`);
      }
      return setError(refused);
    }
    props.onSignIn(s);
  }

  const id = mode === "name" ? "signin-name" : "signin-token";
  return (
    <main id="main" class="signin">
      <form class="panel stack" onSubmit={submit} noValidate>
        <h1>Sign in to Tether</h1>
        <p class="muted small">
          {mode === "name"
            ? "Pick a name: everyone in your sessions sees it. Your browser remembers it in every tab."
            : "Paste the sign-in token you were given, or open the sign-in link you were sent."}
        </p>
        <div class="field">
          <label for={id}>{mode === "name" ? "User name" : "Token"}</label>
          <input
            id={id}
            key={id}
            value={value}
            onInput={(e) => setValue((e.target as HTMLInputElement).value)}
            autoComplete={mode === "name" ? "username" : "off"}
            autoFocus
            aria-invalid={error ? "true" : undefined}
            aria-describedby="signin-error"
          />
          <p id="signin-error" class="error" role={error ? "alert" : undefined}>{error ?? ""}</p>
        </div>
        <div class="row">
          <button class="primary" type="submit" disabled={busy}>Sign in</button>
          {!known && (
            <button type="button" onClick={() => { setMode(mode === "name" ? "token" : "name"); setError(null); setValue(""); }}>
              {mode === "name" ? "Use a token instead" : "Use a user name instead"}
            </button>
          )}
        </div>
      </form>
    </main>
  );
}
