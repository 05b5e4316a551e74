/** The user's devices online now, and progress reports fanned out to the other devices. */
import type { Client } from "./client.js";
import type { Device, ShootProgress } from "./types.js";

export class Devices {
  constructor(private client: Client) {}

  async list(): Promise<Device[]> {
    return (await this.client.rest("GET", `/api/users/${encodeURIComponent(this.client.me)}/devices`)).devices ?? [];
  }

  /** fn(devices) after each DEVICE_CONNECTED / DEVICE_DISCONNECTED (re-read from the server). */
  onChange(fn: (devices: Device[]) => void): () => void {
    const h = async () => fn(await this.list().catch(() => []));
    const a = this.client.on("DEVICE_CONNECTED", h);
    const b = this.client.on("DEVICE_DISCONNECTED", h);
    return () => (a(), b());
  }

  /** UPDATE_PROGRESS: the user's other connections get SHOOT_PROGRESS. */
  updateProgress(p: Omit<ShootProgress, "progress">): Promise<{ shootId: string; progress: number; offset: number }> {
    return this.client.request("UPDATE_PROGRESS", p);
  }
}
