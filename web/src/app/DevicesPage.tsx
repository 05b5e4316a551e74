import { useEffect, useState } from "preact/hooks";
import type { Device, ShootProgress } from "@tether/client";
import { percent, reasonOf, useLive, useTether } from "./tether";
import { clock } from "../ui/format";

/** This user's devices online now, live job progress and the credit balance
 * (pushed by a backend, or sent by another device of the same user). */
export function DevicesPage() {
  const { client, me, syncTick, state } = useTether();
  const live = useLive();
  const [devices, setDevices] = useState<Device[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  document.title = "Devices · Tether";

  useEffect(() => {
    let stale = false;
    client.devices.list().then(
      (d: Device[]) => {
        if (!stale) {
          setDevices(d);
          setError(null);
        }
      },
      (err: unknown) => !stale && setError(reasonOf(err)),
    );
    const off = client.devices.onChange((d: Device[]) => setDevices([...d]));
    return () => {
      stale = true;
      off();
    };
  }, [client, syncTick, state === "connected"]);

  const thisDevice = me.kind === "dev" ? me.token.split(":")[1] : client.deviceId;
  const jobs = [...live.progress.values()].sort((a, b) => a.shootId.localeCompare(b.shootId));

  return (
    <main id="main" class="stack">
      <h1>Devices</h1>
      <div class="grid2">
        <section class="panel" aria-labelledby="devices-heading">
          <h2 id="devices-heading">Online now</h2>
          {error && <p class="notice bad" role="alert">Could not load your devices: {error}</p>}
          <ul class="people" aria-label="My devices" aria-busy={devices === null ? "true" : undefined}>
            {(devices ?? []).map((d) => (
              <li key={d.device_id}>
                <span class="dot on" aria-hidden="true" />
                <span class="grow">
                  {d.device_id}
                  {d.device_id === thisDevice ? " (this browser)" : ""}
                </span>
                <span class="small muted">since {clock(d.connected_at)}</span>
              </li>
            ))}
          </ul>
          {devices?.length === 0 && <p class="muted small">No device online.</p>}
        </section>
        <section class="panel" aria-labelledby="credits-heading">
          <h2 id="credits-heading">Balance</h2>
          <p class="credits" style="margin: 0">Credits: {live.credits ?? "—"}</p>
          <p class="small muted">Updated live when your account is charged or topped up.</p>
        </section>
      </div>
      <section class="panel" aria-labelledby="jobs-heading">
        <h2 id="jobs-heading">Jobs</h2>
        {jobs.length === 0 ? (
          <p class="muted small">No job is running. Progress appears here as soon as one starts, on every device.</p>
        ) : (
          <div class="jobs">
            {jobs.map((p) => <Job key={p.shootId} p={p} />)}
          </div>
        )}
      </section>
    </main>
  );
}

function Job(props: { p: ShootProgress }) {
  const { p } = props;
  const pct = percent(p);
  const id = `job-${p.shootId.replace(/[^A-Za-z0-9_-]/g, "_")}`;
  return (
    <div>
      <div class="row small">
        <strong id={id} class="grow">{p.shootId}</strong>
        <span>{pct}% · {p.status ?? "processing"}</span>
        <span class="muted">
          {p.processedCount}/{p.totalCount}
          {p.currentImage ? ` · ${p.currentImage}` : ""}
          {typeof p.eta === "number" && p.status !== "completed" ? ` · about ${Math.ceil(p.eta)} s left` : ""}
        </span>
      </div>
      <div class="meter" role="progressbar" aria-labelledby={id} aria-valuemin={0} aria-valuemax={100}
        aria-valuenow={pct} aria-valuetext={`${pct}%`}>
        <span style={{ width: `${pct}%` }} />
      </div>
    </div>
  );
}
