/**
 * End-to-end in headless Chromium (Debian's, through playwright-core; no browser
 * download): a page served on http://localhost:PORT loads the built dist/index.js and
 * talks to the real relay on http://127.0.0.1:RPORT, a different origin, so CORS and the
 * Origin check are real. The same page served as http://127.0.0.1:PORT is an origin the
 * relay does not list. Resume is checked exactly-once in both directions across a cut
 * TCP connection (frames in flight and frames sent while the link is down).
 */

import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, test } from "vitest";

import type { BrowserContext, Page } from "playwright-core";
import { PACKAGE_DIR, type Proxy, type Relay, relayMissing, skipWithout, startProxy, startRelay } from "./support.js";

const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const KEY = "ABEiM0RVZneImaq7zN3u/w==";
const DIST = path.join(PACKAGE_DIR, "dist");

function browserMissing(): string | undefined {
  if (!existsSync(CHROMIUM)) {
    return `chromium is not at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM_BIN)`;
  }
  if (!existsSync(path.join(DIST, "index.js"))) return "dist/index.js is not built (run `npm run build`)";
  return undefined;
}

const skip = skipWithout(relayMissing() ?? browserMissing());

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>relay client test page</title>
<script type="module">
  import * as Relay from "/dist/index.js";
  window.Relay = Relay;
  window.loaded = true;
</script>`;

/** Serves the test page at / and the built package under /dist/. */
async function serveStatic(): Promise<{ server: Server; port: number }> {
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
      return;
    }
    const rel = url.pathname.startsWith("/dist/") ? url.pathname.slice("/dist/".length) : undefined;
    const file = rel !== undefined ? path.join(DIST, path.normalize(rel)) : undefined;
    if (!file || !file.startsWith(DIST) || !existsSync(file)) {
      res.writeHead(404).end();
      return;
    }
    const type = file.endsWith(".js") ? "text/javascript" : "application/octet-stream";
    res.writeHead(200, { "content-type": type }).end(readFileSync(file));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  return { server, port: (server.address() as AddressInfo).port };
}

describe.skipIf(skip)("headless chromium", () => {
  let relay: Relay;
  let proxy: Proxy;
  let web: { server: Server; port: number };
  let context: BrowserContext;
  let profile: string;
  let page: Page;

  beforeAll(async () => {
    web = await serveStatic();
    relay = await startRelay(["--api-key", `${KEY},browser`, "--cors-allowed-origins", `http://localhost:${web.port}`]);
    proxy = await startProxy(relay.port);
    const { chromium } = await import("playwright-core");
    profile = mkdtempSync(path.join(tmpdir(), "relay-chromium-"));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    });
    page = await context.newPage();
    page.on("pageerror", (e) => console.error("page error:", e));
    await page.goto(`http://localhost:${web.port}/`);
    await page.waitForFunction(() => (window as unknown as { loaded?: boolean }).loaded === true);
  });

  afterAll(async () => {
    await context?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await proxy?.close();
    await relay?.stop();
    await new Promise((r) => web?.server.close(r));
  });

  test("a page on an allowed origin creates a room, joins it twice and exchanges messages", async () => {
    const result = await page.evaluate(
      async ({ url, key }) => {
        // biome-ignore lint: the module the page loaded
        const { RelayClient } = (window as any).Relay;
        const backend = new RelayClient({ url, apiKey: key });
        const room = await backend.createRoom({ size: 2, ttlSecs: 60 });
        const client = new RelayClient({ url });
        const a = await client.joinRoom(room.roomId);
        const b = await client.joinRoom(room.roomId);
        await Promise.all([a.ready(), b.ready()]);
        const enc = new TextEncoder();
        for (let i = 0; i < 50; i++) a.send(b.slot, enc.encode(`m${i}`));
        b.broadcast(enc.encode("hello a"));
        const atB: string[] = [];
        const seqs: number[] = [];
        for await (const m of b.messages()) {
          atB.push(new TextDecoder().decode(m.payload));
          seqs.push(m.seq);
          if (atB.length === 50) break;
        }
        let atA = "";
        for await (const m of a.messages()) {
          atA = `${new TextDecoder().decode(m.payload)} from ${m.from} broadcast ${m.broadcast}`;
          break;
        }
        // The mailbox, with the key offered as a subprotocol.
        const mb = await backend.mailbox();
        const id = new Uint8Array(32).fill(5);
        const asked = mb.ask(id, { ttlSecs: 10 });
        await mb.publish(id, enc.encode("share"), { ttlSecs: 30 });
        const share = new TextDecoder().decode(await asked);
        await mb.close();
        await Promise.all([a.close(), b.close()]);
        return { atB, seqs, atA, share, slots: [a.slot, b.slot] };
      },
      { url: relay.url, key: KEY },
    );
    expect(result.slots).toEqual([0, 1]);
    expect(result.atB).toEqual(Array.from({ length: 50 }, (_, i) => `m${i}`));
    expect(result.seqs).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
    expect(result.atA).toBe("hello a from 1 broadcast true");
    expect(result.share).toBe("share");
  });

  test("the page reads the relay's typed errors through CORS", async () => {
    const result = await page.evaluate(async (url) => {
      // biome-ignore lint: the module the page loaded
      const { RelayClient, RelayHttpError } = (window as any).Relay;
      const err = await new RelayClient({ url }).createRoom({ size: 2 }).catch((e: unknown) => e);
      return { isHttp: err instanceof RelayHttpError, code: err.code, status: err.status };
    }, relay.url);
    expect(result).toEqual({ isHttp: true, code: "missing_api_key", status: 401 });
  });

  test("a room in the page resumes after its TCP connection is cut: exactly-once, in order, both directions", async () => {
    const room = await fetch(`${relay.url}/v1/rooms`, {
      method: "POST",
      headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ room_size: 2 }),
    }).then((r) => r.json() as Promise<{ room_uuid: string }>);
    const total = 400;
    await page.evaluate(
      async ({ direct, proxied, roomId, total }) => {
        // biome-ignore lint: the module the page loaded
        const w = window as any;
        const sender = await new w.Relay.RelayClient({ url: direct }).joinRoom(roomId);
        const receiver = await new w.Relay.RelayClient({ url: proxied }).joinRoom(roomId, { ackEvery: 16 });
        await receiver.ready();
        w.resume = { got: [] as number[], texts: [] as string[], back: [] as number[], backTexts: [] as string[] };
        Object.assign(w.resume, { reconnects: 0, done: false, error: "", sent: [] as number[] });
        receiver.on("reconnected", () => w.resume.reconnects++);
        const reading = (async () => {
          for await (const m of receiver.messages()) {
            w.resume.got.push(m.seq);
            w.resume.texts.push(new TextDecoder().decode(m.payload));
            if (w.resume.got.length === total) break;
          }
        })();
        const readingBack = (async () => {
          for await (const m of sender.messages()) {
            w.resume.back.push(m.seq);
            w.resume.backTexts.push(new TextDecoder().decode(m.payload));
            if (w.resume.back.length === total) break;
          }
        })();
        (async () => {
          try {
            await Promise.all([reading, readingBack]);
            w.resume.sent = (await sender.status()).sent;
            w.resume.done = true;
            await receiver.close();
            await sender.close();
          } catch (e) {
            w.resume.error = String(e);
          }
        })();
        // Both directions: the proxied party's own frames are the ones cut in flight.
        w.sendBatch = (from: number, to: number) => {
          for (let i = from; i < to; i++) {
            sender.send(receiver.slot, new TextEncoder().encode(`m${i}`));
            receiver.send(sender.slot, new TextEncoder().encode(`r${i}`));
          }
        };
      },
      { direct: relay.url, proxied: proxy.url, roomId: room.room_uuid, total },
    );
    const sendBatch = (a: number, b: number) =>
      page.evaluate(([a, b]) => (window as unknown as { sendBatch: (a: number, b: number) => void }).sendBatch(a, b), [
        a,
        b,
      ] as const);
    await sendBatch(0, 150);
    await page.waitForFunction(() => (window as unknown as { resume: { got: number[] } }).resume.got.length >= 50);
    // Written by the page just now, then the link is reset: some of it is in flight.
    await sendBatch(150, 250);
    expect(proxy.cut()).toBeGreaterThan(0);
    // Sent while the link is down (or before the page has noticed the reset).
    await sendBatch(250, 400);
    await page.waitForFunction(
      () => {
        const r = (window as unknown as { resume: { done: boolean; error: string } }).resume;
        return r.done || r.error !== "";
      },
      undefined,
      { timeout: 30_000 },
    );
    const r = await page.evaluate(
      () =>
        (
          window as unknown as {
            resume: {
              got: number[];
              texts: string[];
              back: number[];
              backTexts: string[];
              sent: number[];
              reconnects: number;
              error: string;
            };
          }
        ).resume,
    );
    expect(r.error).toBe("");
    expect(r.reconnects).toBe(1);
    expect(r.got).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(r.texts).toEqual(Array.from({ length: total }, (_, i) => `m${i}`));
    expect(r.back).toEqual(Array.from({ length: total }, (_, i) => i + 1));
    expect(r.backTexts).toEqual(Array.from({ length: total }, (_, i) => `r${i}`));
    // The relay took each frame exactly once from each side.
    expect(r.sent).toEqual([total, total]);
  });

  test("party tokens, abort and status in the page", async () => {
    const result = await page.evaluate(
      async ({ url, key }) => {
        // biome-ignore lint: the module the page loaded
        const { RelayClient, RelayAbortedError } = (window as any).Relay;
        const room = await new RelayClient({ url, apiKey: key }).createRoom({ size: 2, partyTokens: true });
        const client = new RelayClient({ url });
        // The browser hides the 403 bad_party_token: a typed connect error.
        const without = await client
          .joinRoom(room.roomId)
          .then(() => "joined")
          .catch((e: Error) => e.name);
        const b = await client.joinRoom(room.roomId, { partyToken: room.partyTokens[1] });
        const a = await client.joinRoom(room.roomId, { partyToken: room.partyTokens[0] });
        await Promise.all([a.ready(), b.ready()]);
        a.send(1, new TextEncoder().encode("x"));
        const status = await a.status();
        const seen: unknown[] = [];
        b.on("aborted", (info: unknown) => seen.push(info));
        const atB = (async () => {
          try {
            for await (const _ of b.messages()) {
              // the one message from a
            }
            return "ended";
          } catch (e: any) {
            return e instanceof RelayAbortedError ? `aborted by ${e.slot}: ${e.reason}` : String(e);
          }
        })();
        await a.abort("caught slot 1 cheating");
        return { without, slots: [a.slot, b.slot], sent: status.sent, seen, atB: await atB };
      },
      { url: relay.url, key: KEY },
    );
    expect(result).toEqual({
      without: "RelayConnectError",
      slots: [0, 1],
      sent: [1, 0],
      seen: [{ slot: 0, reason: "caught slot 1 cheating" }],
      atB: "aborted by 0: caught slot 1 cheating",
    });
  });

  test("a page on an origin the relay does not list can neither call the API nor open a socket", async () => {
    const foreign = await context.newPage();
    try {
      await foreign.goto(`http://127.0.0.1:${web.port}/`);
      await foreign.waitForFunction(() => (window as unknown as { loaded?: boolean }).loaded === true);
      const room = await fetch(`${relay.url}/v1/rooms`, {
        method: "POST",
        headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
        body: JSON.stringify({ room_size: 2 }),
      }).then((r) => r.json() as Promise<{ room_uuid: string }>);
      const result = await foreign.evaluate(
        async ({ url, key, roomId }) => {
          // biome-ignore lint: the module the page loaded
          const { RelayClient } = (window as any).Relay;
          const api = await new RelayClient({ url, apiKey: key })
            .createRoom({ size: 2 })
            .then(() => "created")
            .catch((e: Error) => e.name);
          const join = await new RelayClient({ url })
            .joinRoom(roomId)
            .then(() => "joined")
            .catch((e: Error) => e.name);
          return { api, join };
        },
        { url: relay.url, key: KEY, roomId: room.room_uuid },
      );
      expect(result).toEqual({ api: "RelayConnectError", join: "RelayConnectError" });
      // The refusal was the relay's 403 origin_not_allowed before the upgrade: the slot is still free.
      const free = await page.evaluate(async ({ url, roomId }) => {
        // biome-ignore lint: the module the page loaded
        const party = await new (window as any).Relay.RelayClient({ url }).joinRoom(roomId);
        const slot = party.slot;
        await party.close();
        return slot;
      }, { url: relay.url, roomId: room.room_uuid });
      expect(free).toBe(0);
    } finally {
      await foreign.close();
    }
  });
});
