// A real `tether serve` for the tests: started on a free port, killed (SIGKILL), restarted on the same data dir.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, openSync } from "node:fs";
import { createServer } from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { WebSocket } from "ws";

export const API_KEY = "test-api-key";
const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../..");

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
    s.on("error", reject);
  });
}

// A server started by a test dies with the test process, even when that process is killed.
const running = new Set();
process.on("exit", () => {
  for (const proc of running) if (proc.exitCode === null) proc.kill("SIGKILL");
});
for (const sig of ["SIGINT", "SIGTERM"]) process.once(sig, () => process.exit(1));

export class Server {
  constructor(args = []) {
    this.args = args;
    this.dataDir = mkdtempSync(path.join(os.tmpdir(), "tether-js-"));
    this.proc = null;
  }
  get url() {
    return `http://127.0.0.1:${this.port}`;
  }
  async start() {
    this.port ??= await freePort();
    const env = {
      ...process.env,
      PYTHONPATH: [path.join(repo, "src"), process.env.PYTHONPATH].filter(Boolean).join(path.delimiter),
      TETHER_API_KEY: API_KEY,
      TETHER_LOG_LEVEL: "warning",
    };
    const log = openSync(path.join(this.dataDir, "server.log"), "a");
    const python = process.env.PYTHON ?? "python";
    // PR_SET_PDEATHSIG (kept across exec): the server is killed when this test process dies, however it dies.
    const boot = "import ctypes, os, signal, sys; ctypes.CDLL('libc.so.6').prctl(1, signal.SIGKILL); os.execv(sys.executable, [sys.executable, '-m', 'tether', *sys.argv[1:]])";
    this.proc = spawn(python, ["-c", boot, "serve", "--port", String(this.port), "--data-dir", path.join(this.dataDir, "data"), ...this.args], { env, stdio: ["ignore", "ignore", log] });
    running.add(this.proc);
    const proc = this.proc;
    proc.once("exit", () => running.delete(proc));
    const exited = new Promise((r) => this.proc.once("exit", r));
    const deadline = Date.now() + 30000;
    while (Date.now() < deadline) {
      if (this.proc.exitCode !== null) throw new Error(`server exited ${this.proc.exitCode}`);
      try {
        if ((await fetch(this.url + "/healthz")).status === 200) return this;
      } catch {}
      await Promise.race([exited, new Promise((r) => setTimeout(r, 50))]);
    }
    throw new Error("server did not become healthy");
  }
  async kill() {
    if (this.proc && this.proc.exitCode === null) {
      const done = new Promise((r) => this.proc.once("exit", r));
      this.proc.kill("SIGKILL");
      await done;
    }
  }
  /** SIGTERM: the node drains (its clients are closed with 1012) and exits by itself. */
  async terminate() {
    if (this.proc && this.proc.exitCode === null) {
      const done = new Promise((r) => this.proc.once("exit", r));
      this.proc.kill("SIGTERM");
      return await done;
    }
  }
  async stop() {
    await this.kill();
    rmSync(this.dataDir, { recursive: true, force: true });
  }
  async api(method, p, body) {
    const r = await fetch(this.url + p, { method, headers: { "X-API-Key": API_KEY, "Content-Type": "application/json" }, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : null };
  }
}

export { WebSocket };

/** Polls until fn() is truthy (events arrive asynchronously; no timing is asserted). */
export async function until(fn, what = "condition", ms = 20000) {
  const end = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The clients of one test file, made with a fast backoff (tests wait on reconnects), closed by closeAll(). */
export function clientPool(Client, serverOf) {
  const clients = [];
  return {
    make(token, opts = {}) {
      const c = new Client(serverOf().url, { token, WebSocket, backoff: { base: 0.1, cap: 0.5, maxAttempts: Infinity }, ...opts });
      clients.push(c);
      return c;
    },
    async closeAll() {
      for (const c of clients) await c.close();
    },
  };
}
