import type { State } from "@tether/client";

/** Times for people: the clock time today, the date otherwise. */
export function clock(d: Date | string | null | undefined): string {
  if (!d) return "";
  const t = typeof d === "string" ? new Date(d) : d;
  if (Number.isNaN(t.getTime())) return "";
  const today = new Date().toDateString() === t.toDateString();
  return today
    ? t.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" })
    : t.toLocaleString([], { dateStyle: "medium", timeStyle: "short" });
}

export function useTitle(title: string): void {
  if (typeof document !== "undefined") document.title = title ? `${title} · Tether` : "Tether";
}

/** What the status "Connection" says: connected, on the way there, or not trying (really offline). */
export type ConnLabel = "Connected" | "Reconnecting" | "Offline";

/** "Reconnecting" while the client is on its way to a connection: before the first one too (a fresh tab
 * shows it until it is in), since the page is working towards being connected, not offline. "Offline"
 * only when it is not: the browser has no network, or the client gave up (refused token, operator,
 * retries exhausted; a banner says why). The state before the client starts ("disconnected") is the
 * first moment of a page, not a lost connection. */
export function connectionLabel(state: State): ConnLabel {
  if (state === "connected") return "Connected";
  if (state === "failed") return "Offline";
  if (typeof navigator !== "undefined" && navigator.onLine === false) return "Offline";
  return "Reconnecting";
}
