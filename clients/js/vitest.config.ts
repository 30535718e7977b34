import { defineConfig } from "vitest/config";

// Node 20 has the platform WebSocket only behind a flag; Node 22+ has it on.
const nodeMajor = Number(process.versions.node.split(".")[0]);
const execArgv = nodeMajor < 22 ? ["--experimental-websocket"] : [];

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    pool: "forks",
    poolOptions: { forks: { execArgv } },
    testTimeout: 60_000,
    hookTimeout: 60_000,
  },
});
