// Helpers for the console's browser tests: find the relay-server binary and Debian's
// chromium, start the relay on 127.0.0.1 port 0 (as tests/e2e/support does) and call
// its REST API from Node.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
/** The console/ folder. */
export const root = resolve(here, '..');

/** The binary: RELAY_SERVER_BIN, else ../target/debug/relay-server from console/. */
export const relayBin = process.env.RELAY_SERVER_BIN
  ? resolve(process.env.RELAY_SERVER_BIN)
  : resolve(root, '..', 'target', 'debug', 'relay-server');
/** Debian's chromium: CHROMIUM_BIN, else /usr/bin/chromium. */
export const chromiumBin = process.env.CHROMIUM_BIN || '/usr/bin/chromium';

/**
 * Why the browser tests cannot run here (a missing binary or browser), or null. With
 * RELAY_REQUIRE_SERVICES=1 a missing one is a failure, not a skip.
 */
export function missing() {
  const why = [];
  if (!existsSync(relayBin)) why.push(`relay-server binary ${relayBin} (cargo build -p relay-server, or set RELAY_SERVER_BIN)`);
  if (!existsSync(chromiumBin)) why.push(`chromium ${chromiumBin} (apt-get install chromium, or set CHROMIUM_BIN)`);
  if (typeof WebSocket === 'undefined') why.push('a WebSocket client in Node (run with --experimental-websocket, as npm test does)');
  if (why.length === 0) return null;
  const message = `missing ${why.join('; ')}`;
  if (process.env.RELAY_REQUIRE_SERVICES === '1') throw new Error(`${message}, and RELAY_REQUIRE_SERVICES=1 forbids skipping`);
  return message;
}

/** The flags the console's chromium runs with (headless, no network of its own). */
export const chromiumArgs = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-dev-shm-usage',
];

/** A running relay-server: `base` is its http://host:port. Call stop() at the end. */
export async function startRelay(token, extraArgs = []) {
  const dataDir = mkdtempSync(join(tmpdir(), 'relay-console-'));
  const child = spawn(
    relayBin,
    ['--listen', '127.0.0.1:0', '--secret-auth', token, '--data-dir', dataDir, ...extraArgs],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LISTEN: '', RUST_LOG: process.env.RUST_LOG || 'warn' } },
  );
  const output = [];
  const addr = await new Promise((resolvePromise, reject) => {
    const timer = setTimeout(() => reject(new Error(`relay-server did not report its address: ${output.join('')}`)), 10000);
    let buffered = '';
    child.stderr.on('data', (chunk) => {
      const text = chunk.toString();
      output.push(text);
      buffered += text;
      const m = buffered.match(/listening on ([^,\s]+)/);
      if (m) {
        clearTimeout(timer);
        resolvePromise(m[1]);
      }
    });
    child.stdout.on('data', (chunk) => output.push(chunk.toString()));
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`relay-server exited with ${code}: ${output.join('')}`));
    });
  });
  return {
    base: `http://${addr}`,
    ws: `ws://${addr}`,
    output: () => output.join(''),
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((r) => child.once('exit', r));
        child.kill('SIGTERM');
        await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
        if (child.exitCode === null) child.kill('SIGKILL');
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** `method path` on the relay with `Authorization: Bearer bearer`; the parsed JSON and status. */
export async function rest(relay, method, path, bearer, body) {
  const headers = {};
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(relay.base + path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await resp.text();
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: resp.status, json };
}

/** A room party: a WebSocket joined to `room`, resolved once the welcome came. */
export function joinRoom(relay, room) {
  const ws = new WebSocket(`${relay.ws}/v1/rooms/${room}`);
  ws.binaryType = 'arraybuffer';
  const events = [];
  ws.addEventListener('message', (ev) => events.push(ev.data));
  const closed = new Promise((r) => ws.addEventListener('close', (ev) => r({ code: ev.code, reason: ev.reason })));
  const welcome = new Promise((resolvePromise, reject) => {
    ws.addEventListener('message', (ev) => {
      if (typeof ev.data === 'string' && JSON.parse(ev.data).type === 'welcome') resolvePromise(JSON.parse(ev.data));
    });
    ws.addEventListener('error', () => reject(new Error(`cannot join room ${room}`)));
  });
  return welcome.then((w) => ({ ws, welcome: w, events, closed }));
}

/** Sends `payload` (bytes) to slot `to` of the party's room. */
export function sendData(party, to, payload) {
  const frame = new Uint8Array(2 + payload.length);
  frame[0] = to & 0xff;
  frame[1] = to >> 8;
  frame.set(payload, 2);
  party.ws.send(frame);
}
