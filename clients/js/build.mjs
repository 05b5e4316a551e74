// Builds dist/ (ESM + .d.ts) and the minified bundle every Tether node serves at /tether-client.js.
// `node build.mjs --static-out <file>` writes the served bundle elsewhere (the staleness test);
// `--dist-only` leaves the committed bundle alone (npm test, so that test can see it stale).
import { build } from "esbuild";
import { execFileSync } from "node:child_process";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const arg = process.argv.indexOf("--static-out");
const staticOut = arg > 0 ? path.resolve(process.argv[arg + 1]) : path.resolve(here, "../../src/tether/server/static/tether-client.js");
const onlyStatic = arg > 0;
const distOnly = process.argv.includes("--dist-only");

const common = { entryPoints: [path.join(here, "src/index.ts")], bundle: true, format: "esm", target: "es2020", platform: "neutral", legalComments: "none", logLevel: "warning" };
if (!distOnly) await build({ ...common, outfile: staticOut, minify: true, banner: { js: "/* @tether/client - served by tether at /tether-client.js; built from clients/js */" } });
if (!onlyStatic) {
  await build({ ...common, outfile: path.join(here, "dist/index.js"), sourcemap: true });
  execFileSync(process.execPath, [path.join(here, "node_modules/typescript/bin/tsc"), "-p", path.join(here, "tsconfig.json")], { stdio: "inherit" });
}
