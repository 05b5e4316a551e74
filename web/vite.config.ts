import { defineConfig } from "vite";
import preact from "@preact/preset-vite";
import { fileURLToPath } from "node:url";

const here = (p: string) => fileURLToPath(new URL(p, import.meta.url));

// Two pages, one build: the app (index.html, served at /, /sessions, /devices)
// and the console (console.html, served at /console). Output goes into the Python
// package so `tether serve` needs no Node; asset names are content hashes, so the
// same sources always give the same files (the staleness test relies on it).
export default defineConfig(({ mode }) => ({
  plugins: [preact()],
  resolve: {
    alias: { "@tether/client": here("../clients/js/src/index.ts") },
  },
  build: {
    outDir: process.env.TETHER_WEB_OUT ?? here("../src/tether/server/static/web"),
    emptyOutDir: true,
    target: "es2022",
    sourcemap: false,
    reportCompressedSize: false,
    rollupOptions: {
      input: { index: here("index.html"), console: here("console.html") },
      output: {
        entryFileNames: "assets/[name]-[hash].js",
        chunkFileNames: "assets/shared-[hash].js",
        assetFileNames: "assets/tether-[hash][extname]",
      },
    },
  },
  server: {
    // `npm run dev`: the UI from Vite, everything else from a `tether serve` on :8080
    proxy: {
      "/api": "http://127.0.0.1:8080",
      "/ws": { target: "ws://127.0.0.1:8080", ws: true },
    },
  },
}));
