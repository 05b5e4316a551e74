/** Sign-in kept by the browser: localStorage, so every tab of this origin is signed in too. */

const KEY = "tether.signin";
const DEVICE = "tether.device";

export interface SignIn {
  token: string;
  userId: string;
  /** "dev" tokens are `<name>:<device>`; "jwt" tokens come from `#token=` or the Token field. */
  kind: "dev" | "jwt";
}

const USER_ID = /^[A-Za-z0-9_.@+-]{1,64}$/;

export function validUserName(name: string): string | null {
  if (!name.trim()) return "Enter a user name.";
  if (!USER_ID.test(name.trim())) return "Use 1–64 letters, digits or _ . @ + - (no spaces).";
  return null;
}

/** A device id for this browser, made once and kept, so all its tabs are one device. */
export function deviceId(): string {
  let id = localStorage.getItem(DEVICE);
  if (!id) {
    id = "web-" + crypto.randomUUID().slice(0, 8);
    localStorage.setItem(DEVICE, id);
  }
  return id;
}

export function devSignIn(name: string): SignIn {
  const userId = name.trim();
  return { token: `${userId}:${deviceId()}`, userId, kind: "dev" };
}

/** The `sub` of a JWT (no verification: the server does that). */
export function jwtSignIn(token: string): SignIn | null {
  const parts = token.trim().split(".");
  if (parts.length !== 3) return null;
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    const claims = JSON.parse(json) as { sub?: unknown };
    if (typeof claims.sub !== "string" || !claims.sub) return null;
    return { token: token.trim(), userId: claims.sub, kind: "jwt" };
  } catch {
    return null;
  }
}

/** How the server that served this page signs people in ("dev": a user name, "jwt": a token),
 * from the meta tag it adds to the page; null when the page did not come from a node (Vite's dev server). */
export function serverAuth(): "dev" | "jwt" | null {
  const mode = document.querySelector<HTMLMetaElement>('meta[name="tether-auth"]')?.content;
  return mode === "dev" || mode === "jwt" ? mode : null;
}

/** A token handed over in the URL fragment (`#token=…`) wins, then is removed from the address bar. */
export function tokenFromHash(): string | null {
  const m = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (!m) return null;
  history.replaceState(null, "", location.pathname + location.search);
  return decodeURIComponent(m[1]);
}

export function loadSignIn(): SignIn | null {
  try {
    const raw = localStorage.getItem(KEY);
    return raw ? (JSON.parse(raw) as SignIn) : null;
  } catch {
    return null;
  }
}

export function saveSignIn(s: SignIn | null): void {
  if (s) localStorage.setItem(KEY, JSON.stringify(s));
  else localStorage.removeItem(KEY);
}

/** Another tab signed in or out: follow it. */
export function onSignInChange(fn: (s: SignIn | null) => void): () => void {
  const h = (e: StorageEvent) => {
    if (e.key === KEY) fn(loadSignIn());
  };
  addEventListener("storage", h);
  return () => removeEventListener("storage", h);
}

/** Ask the server whether a token is good: 401 means no (wrong mode, expired, malformed). */
export async function checkToken(token: string, userId: string): Promise<string | null> {
  try {
    const r = await fetch(`/api/users/${encodeURIComponent(userId)}/devices`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    if (r.ok) return null;
    const body = await r.json().catch(() => null);
    const msg: string = body?.error?.message ?? `HTTP ${r.status}`;
    return r.status === 401 ? `The server refused this sign-in: ${msg}` : msg;
  } catch {
    return "The server cannot be reached. Check your connection and try again.";
  }
}
