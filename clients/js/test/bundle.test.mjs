import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

test("the committed /tether-client.js is the build of these sources", () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), "tether-bundle-"));
  try {
    const fresh = path.join(dir, "tether-client.js");
    execFileSync(process.execPath, [path.join(here, "../build.mjs"), "--static-out", fresh]);
    const committed = readFileSync(path.join(here, "../../../src/tether/server/static/tether-client.js"), "utf8");
    assert.ok(readFileSync(fresh, "utf8") === committed, "src/tether/server/static/tether-client.js is stale: run `npm run build` in clients/js and commit it");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("the bundle has no runtime dependency", () => {
  const pkg = JSON.parse(readFileSync(path.join(here, "../package.json"), "utf8"));
  assert.equal(pkg.dependencies, undefined);
  const bundle = readFileSync(path.join(here, "../../../src/tether/server/static/tether-client.js"), "utf8");
  assert.ok(!/\bfrom\s*["'](?!\.)/.test(bundle) && !/\brequire\(/.test(bundle), "the bundle imports nothing");
});
