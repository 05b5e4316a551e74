// The built pages are committed into the Python package (so `tether serve` needs no Node).
// This rebuilds into a temporary directory and fails when the committed files differ.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const web = fileURLToPath(new URL("..", import.meta.url));
const committed = join(web, "..", "src", "tether", "server", "static", "web");

function files(dir) {
  const out = new Map();
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name);
      if (statSync(p).isDirectory()) walk(p);
      else out.set(relative(dir, p), readFileSync(p));
    }
  };
  walk(dir);
  return out;
}

test("the committed build in src/tether/server/static/web is what `npm run build` makes", () => {
  const out = mkdtempSync(join(tmpdir(), "tether-web-"));
  try {
    execFileSync(process.execPath, [join(web, "node_modules", "vite", "bin", "vite.js"), "build", "--logLevel", "error"], {
      cwd: web,
      env: { ...process.env, TETHER_WEB_OUT: out },
      stdio: ["ignore", "inherit", "inherit"],
    });
    const fresh = files(out);
    const have = files(committed);
    assert.deepEqual([...have.keys()].sort(), [...fresh.keys()].sort(), "run `npm run build` in web/ and commit the result");
    for (const [name, body] of fresh) {
      assert.ok(have.get(name).equals(body), `${name} is stale: run \`npm run build\` in web/ and commit the result`);
    }
  } finally {
    rmSync(out, { recursive: true, force: true });
  }
});

test("both pages are built with their titles and assets", () => {
  const index = readFileSync(join(committed, "index.html"), "utf8");
  const console_ = readFileSync(join(committed, "console.html"), "utf8");
  assert.match(index, /<title>Tether<\/title>/);
  assert.match(console_, /<title>Tether console<\/title>/);
  for (const html of [index, console_]) {
    for (const [, src] of html.matchAll(/(?:src|href)="(\/assets\/[^"]+)"/g)) {
      statSync(join(committed, src));
    }
  }
});
