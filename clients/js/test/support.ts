/**
 * Test helpers: find and start the real relay-server binary on 127.0.0.1 port 0 (with a
 * fresh data dir), a TCP proxy that a test can cut, and the skip rule shared with the
 * Rust e2e tests: a missing binary or browser skips with a message naming it, unless
 * RELAY_REQUIRE_SERVICES=1 makes it a failure.
 */

import { type ChildProcess, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import net from "node:net";
import { createInterface } from "node:readline";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "vitest";

/** clients/js. */
export const PACKAGE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
/** The repository root. */
export const REPO_DIR = path.resolve(PACKAGE_DIR, "../..");

/** The relay binary: RELAY_SERVER_BIN, else ../../target/debug/relay-server from clients/js. */
export function relayBinary(): string {
  return process.env.RELAY_SERVER_BIN ?? path.join(REPO_DIR, "target/debug/relay-server");
}

/** Whether nothing may be skipped. */
export const REQUIRED = process.env.RELAY_REQUIRE_SERVICES === "1";

/**
 * When `missing` is set (what is missing and how to get it), registers one test that
 * fails under RELAY_REQUIRE_SERVICES=1 and otherwise logs the skip; returns whether the
 * caller's tests should be skipped.
 */
export function skipWithout(missing: string | undefined): boolean {
  if (!missing) return false;
  if (REQUIRED) {
    test(`required service is present: ${missing}`, () => {
      throw new Error(`${missing}, and RELAY_REQUIRE_SERVICES=1 forbids skipping`);
    });
  } else {
    console.warn(`SKIPPED: ${missing}; RELAY_REQUIRE_SERVICES=1 makes this a failure`);
  }
  return true;
}

/** Why the relay binary cannot be used, or undefined. */
export function relayMissing(): string | undefined {
  const bin = relayBinary();
  return existsSync(bin)
    ? undefined
    : `the relay-server binary is not at ${bin} (run \`cargo build -p relay-server\`, or set RELAY_SERVER_BIN)`;
}

/** A running relay-server. */
export interface Relay {
  /** `http://127.0.0.1:PORT`. */
  url: string;
  port: number;
  /** Everything it wrote so far. */
  output: string[];
  stop(): Promise<void>;
}

/** Starts the binary with `args` (plus --listen 127.0.0.1:0 and a fresh --data-dir). */
export async function startRelay(args: string[]): Promise<Relay> {
  const dataDir = mkdtempSync(path.join(tmpdir(), "relay-js-"));
  const child: ChildProcess = spawn(relayBinary(), ["--listen", "127.0.0.1:0", "--data-dir", dataDir, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, LISTEN: undefined, RUST_LOG: process.env.RUST_LOG ?? "warn,relay=info" },
  });
  const output: string[] = [];
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`relay-server did not report its address: ${output.join("\n")}`)), 15_000);
    const onLine = (line: string) => {
      if (!line) return;
      output.push(line);
      const rest = line.split("listening on ")[1];
      if (rest) {
        const addr = rest.split(/[, ]/)[0]!;
        clearTimeout(timer);
        resolve(Number(addr.slice(addr.lastIndexOf(":") + 1)));
      }
    };
    createInterface({ input: child.stderr! }).on("line", onLine);
    createInterface({ input: child.stdout! }).on("line", onLine);
    child.on("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`relay-server exited with ${code}: ${output.join("\n")}`));
    });
  });
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    output,
    stop: async () => {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once("exit", r));
        child.kill("SIGKILL");
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** A TCP proxy to `targetPort` whose connections a test can cut at once. */
export interface Proxy {
  port: number;
  url: string;
  /** Destroys every connection through the proxy (both sides), as a dropped link would. */
  cut(): number;
  /** Connections made so far. */
  connections(): number;
  close(): Promise<void>;
}

export async function startProxy(targetPort: number): Promise<Proxy> {
  const live = new Set<net.Socket>();
  let count = 0;
  const server = net.createServer((client) => {
    count++;
    const upstream = net.connect(targetPort, "127.0.0.1");
    live.add(client);
    live.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      live.delete(client);
      live.delete(upstream);
    };
    client.on("error", drop).on("close", drop);
    upstream.on("error", drop).on("close", drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const port = (server.address() as net.AddressInfo).port;
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    cut: () => {
      const n = live.size;
      for (const s of live) s.resetAndDestroy?.() ?? s.destroy();
      live.clear();
      return n;
    },
    connections: () => count,
    close: () =>
      new Promise<void>((r) => {
        for (const s of live) s.destroy();
        server.close(() => r());
      }),
  };
}

/** Resolves when `cond()` holds, polling; rejects after `timeoutMs`. */
export async function until(cond: () => boolean, timeoutMs = 10_000, what = "condition"): Promise<void> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** `n` bytes of `fill`. */
export function bytes(...values: number[]): Uint8Array {
  return new Uint8Array(values);
}

/** A payload saying `text`. */
export function utf8(text: string): Uint8Array {
  return new TextEncoder().encode(text);
}

/** The text of a payload. */
export function text(payload: Uint8Array): string {
  return new TextDecoder().decode(payload);
}
