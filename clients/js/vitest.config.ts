import { defineConfig } from "vitest/config";

// Node 20 has a WHATWG WebSocket (the same API as browsers) behind --experimental-websocket;
// Node 22 and later have it by default. The tests use it, so no `ws` package is needed.
const needsFlag = typeof (globalThis as any).WebSocket === "undefined";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 20_000,
    execArgv: needsFlag ? ["--experimental-websocket", "--no-warnings=ExperimentalWarning"] : [],
  },
});
