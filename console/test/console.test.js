// The operator console in a real browser (Debian's chromium through playwright-core)
// against the real relay-server binary: sign in, keys, live rooms, usage, discovery and
// health charts. Each page's screenshot goes to console/screenshots/ (git-ignored).

import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';

import { chromium } from 'playwright-core';

import { chromiumArgs, chromiumBin, joinRoom, missing, rest, root, sendData, startRelay } from './support.js';

const TOKEN = 'console-browser-token-5d1X-0123456789abcdef';
const shots = join(root, 'screenshots');
const skip = missing();
if (skip) console.log(`SKIPPED: console browser tests: ${skip}; RELAY_REQUIRE_SERVICES=1 makes this a failure`);

describe('operator console', { skip: skip || false }, () => {
  let relay;
  let context;
  let page;
  let profile;
  const pageErrors = [];

  before(async () => {
    mkdirSync(shots, { recursive: true });
    // A 1 s reconnect grace: a room whose only party disconnected closes quickly.
    relay = await startRelay(TOKEN, ['--reconnect-grace-secs', '1']);
    profile = mkdtempSync(join(tmpdir(), 'relay-console-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: chromiumBin,
      headless: true,
      args: chromiumArgs,
      viewport: { width: 1280, height: 900 },
    });
    page = context.pages()[0] || (await context.newPage());
    page.on('pageerror', (err) => pageErrors.push(String(err)));
    page.on('console', (msg) => {
      if (msg.type() === 'error') pageErrors.push(msg.text());
    });
  });

  after(async () => {
    await context?.close();
    await relay?.stop();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  async function shot(name) {
    await page.screenshot({ path: join(shots, `${name}.png`), fullPage: true });
  }

  test('sign in with the admin token, kept in sessionStorage and never in a URL', async () => {
    await page.goto(`${relay.base}/console`);
    await page.locator('#login').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#nav').isVisible(), false, 'no navigation before signing in');
    await shot('01-login');
    await page.fill('#token', 'not-the-token');
    await page.click('#login-form button[type=submit]');
    await page.locator('#login-error', { hasText: 'not the admin token' }).waitFor();
    await page.fill('#token', TOKEN);
    await page.click('#login-form button[type=submit]');
    await page.locator('#nav').waitFor({ state: 'visible' });
    await page.locator('#page h1', { hasText: 'Health' }).waitFor();
    assert.equal(await page.evaluate(() => sessionStorage.getItem('relay.console.adminToken')), TOKEN);
    assert.ok(!page.url().includes(TOKEN), page.url());
    assert.match(await page.textContent('#server'), /^v\d+\.\d+\.\d+/);
  });

  test('create a key (shown once, with a copy button), see it listed, revoke it', async () => {
    await page.click('#nav a[data-page=keys]');
    await page.locator('#keys-table').waitFor();
    await page.fill('#key-name', 'browser-app');
    await page.fill('#key-tenant', 'acme');
    await page.click('#create-key button[type=submit]');
    const key = (await page.locator('#new-key-value').textContent()).trim();
    assert.match(key, /^[A-Za-z0-9+/]{22}==$/);
    assert.ok(await page.locator('#copy-key').isVisible());
    const row = page.locator('#keys-table tr[data-key="browser-app"]');
    await row.waitFor();
    assert.equal((await row.locator('.badge').textContent()).trim(), 'active');
    assert.match(await row.textContent(), /acme/);
    await shot('02-keys-created');

    // The key works, and the relay counts its use.
    const created = await rest(relay, 'POST', '/v1/rooms', key, { room_size: 2 });
    assert.equal(created.status, 201, JSON.stringify(created.json));

    await row.locator('button', { hasText: 'Revoke' }).click();
    await page.locator('#confirm[open]').waitFor();
    await shot('03-keys-revoke-confirm');
    await page.click('#confirm-ok');
    await page.locator('#keys-table tr[data-key="browser-app"] .badge', { hasText: 'revoked' }).waitFor();
    assert.equal(await page.locator('#keys-table tr[data-key="browser-app"] button').count(), 0);
    await shot('04-keys-revoked');
    const whoami = await rest(relay, 'GET', '/v1/key', key);
    assert.equal(whoami.status, 403);
  });

  test('a live room appears while a client holds it and disappears when it closes', async () => {
    const key = (await rest(relay, 'POST', '/v1/admin/keys', TOKEN, { name: 'room-app' })).json.key;
    const room = (await rest(relay, 'POST', '/v1/rooms', key, { room_size: 2 })).json.room_uuid;
    await page.click('#nav a[data-page=rooms]');
    await page.locator('#rooms-table').waitFor();

    const a = await joinRoom(relay, room);
    const b = await joinRoom(relay, room);
    for (let i = 0; i < 20; i++) sendData(a, 1, new TextEncoder().encode(`message ${i}`));
    const row = page.locator(`#rooms-table tr[data-room="${room}"]`);
    await row.waitFor({ timeout: 10000 });
    await page.locator(`#rooms-table tr[data-room="${room}"] td`, { hasText: '2 / 2' }).waitFor({ timeout: 10000 });
    assert.match(await row.textContent(), /room-app/);
    await shot('05-rooms-live');

    a.ws.close();
    b.ws.close();
    await Promise.all([a.closed, b.closed]);
    await row.waitFor({ state: 'detached', timeout: 15000 });
    await shot('06-rooms-gone');

    // Closing a room from the console: its party gets 1008.
    const other = (await rest(relay, 'POST', '/v1/rooms', key, { room_size: 2 })).json.room_uuid;
    const c = await joinRoom(relay, other);
    const otherRow = page.locator(`#rooms-table tr[data-room="${other}"]`);
    await otherRow.waitFor({ timeout: 10000 });
    await otherRow.locator('button', { hasText: 'Close' }).click();
    await page.click('#confirm-ok');
    const closed = await c.closed;
    assert.deepEqual(closed, { code: 1008, reason: 'room closed by the operator' });
    await otherRow.waitFor({ state: 'detached', timeout: 10000 });
  });

  test('usage per key is charted', async () => {
    await page.click('#nav a[data-page=usage]');
    const svg = page.locator('#chart-key-messages svg');
    await svg.waitFor();
    await page.waitForFunction(() => Number(document.querySelector('#chart-key-messages svg')?.dataset.points) > 0, null, { timeout: 15000 });
    assert.ok((await page.locator('#chart-key-messages path.line').count()) > 0);
    await page.locator('#usage-totals td', { hasText: 'room-app' }).first().waitFor();
    await shot('07-usage');
  });

  test('discovery groups (all of them, with the admin token) and registry relays', async () => {
    const key = (await rest(relay, 'POST', '/v1/admin/keys', TOKEN, { name: 'disco-app' })).json.key;
    const group = await rest(relay, 'POST', '/v1/group', key, {
      Name: 'signers', AppID: 'wallet', PubKey: 'pk',
      Peers: [{ NetAddr: '10.0.0.1:1337', PubKeyHex: '0xAB', Moniker: 'alice' }],
    });
    assert.equal(group.status, 201, JSON.stringify(group.json));
    await page.click('#nav a[data-page=discovery]');
    await page.locator('#groups-table td', { hasText: 'signers' }).waitFor();
    await page.locator('#relays-table').waitFor();
    await shot('08-discovery');
  });

  test('health shows version, uptime and live charts with data', async () => {
    await page.click('#nav a[data-page=health]');
    await page.locator('#stat-version').waitFor();
    // The rates need two samples apart in time: the sampler's and the counters now.
    await page.waitForFunction(
      () => ['chart-connections', 'chart-messages', 'chart-bytes', 'chart-refusals']
        .every((id) => Number(document.querySelector(`#${id} svg`)?.dataset.points) > 0),
      null,
      { timeout: 20000, polling: 500 },
    );
    assert.ok((await page.locator('#chart-messages path.line').count()) > 0);
    assert.match(await page.textContent('#stat-uptime'), /\d+s|\d+m/);
    await shot('09-health');
    assert.deepEqual(pageErrors.filter((e) => !/401|403|Failed to load resource/.test(e)), []);
  });

  test('the console sets its security headers', async () => {
    const resp = await fetch(`${relay.base}/console`);
    assert.equal(resp.headers.get('x-frame-options'), 'DENY');
    assert.equal(resp.headers.get('x-content-type-options'), 'nosniff');
    assert.match(resp.headers.get('content-security-policy'), /script-src 'self';/);
  });
});
