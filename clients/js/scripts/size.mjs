// Size of the served client bundle: raw, minified (as served) and gzipped (what a browser downloads).
import { readFileSync } from "node:fs";
import { gzipSync, brotliCompressSync } from "node:zlib";
import path from "node:path";
import { fileURLToPath } from "node:url";

const file = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../../../src/tether/server/static/tether-client.js");
const min = readFileSync(file);
const kb = (n) => `${(n / 1024).toFixed(1)} KiB (${n} B)`;
console.log("| bundle | size |\n|---|---|");
console.log(`| minified (src/tether/server/static/tether-client.js) | ${kb(min.length)} |`);
console.log(`| minified + gzip -9 | ${kb(gzipSync(min, { level: 9 }).length)} |`);
console.log(`| minified + brotli | ${kb(brotliCompressSync(min).length)} |`);
