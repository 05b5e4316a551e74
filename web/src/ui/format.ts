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
