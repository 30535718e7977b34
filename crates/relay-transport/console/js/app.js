// The console's shell: sign-in, navigation between pages (#health, #keys, ...) and the
// refresh timers of the page shown.

import { ApiError, call, clearToken, setToken, token } from './api.js';
import { fill, fmtDuration, h } from './dom.js';
import * as health from './pages/health.js';
import * as keys from './pages/keys.js';
import * as rooms from './pages/rooms.js';
import * as usage from './pages/usage.js';
import * as discovery from './pages/discovery.js';

const PAGES = { health, keys, rooms, usage, discovery };

const $ = (id) => document.getElementById(id);
let cleanup = null;

function showLogin(message) {
  stopPage();
  $('nav').hidden = true;
  $('logout').hidden = true;
  $('page').hidden = true;
  $('server').textContent = '';
  $('login').hidden = false;
  $('login-error').textContent = message || '';
  $('token').focus();
}

function stopPage() {
  if (cleanup) cleanup();
  cleanup = null;
}

/** What every page gets: a way to report errors (a 401 signs out). */
const ctx = {
  fail(err, where) {
    if (err instanceof ApiError && err.status === 401) {
      clearToken();
      showLogin('The admin token was refused; sign in again.');
      return;
    }
    const msg = err instanceof ApiError ? `${err.message} (${err.code})` : String(err && err.message ? err.message : err);
    if (where) fill(where, h('p', { class: 'error', role: 'alert' }, msg));
    else console.error(msg);
  },
  every(ms, fn) {
    const id = setInterval(fn, ms);
    const prev = cleanup;
    cleanup = () => {
      clearInterval(id);
      if (prev) prev();
    };
  },
};

async function show() {
  stopPage();
  const name = (location.hash || '#health').slice(1);
  const page = PAGES[name] || health;
  for (const a of document.querySelectorAll('#nav a')) a.classList.toggle('active', a.dataset.page === name);
  const root = $('page');
  root.hidden = false;
  root.dataset.page = name;
  fill(root, h('p', { class: 'muted' }, 'Loading…'));
  try {
    await page.render(root, ctx);
  } catch (err) {
    ctx.fail(err, root);
  }
}

async function enter() {
  $('login').hidden = true;
  $('nav').hidden = false;
  $('logout').hidden = false;
  try {
    const stats = await call('GET', '/v1/admin/stats');
    $('server').textContent = `v${stats.version} · up ${fmtDuration(stats.uptime_secs)}`;
  } catch (err) {
    ctx.fail(err);
    return;
  }
  await show();
}

$('login-form').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const value = $('token').value.trim();
  if (!value) return;
  try {
    await call('GET', '/v1/admin/stats', undefined, value);
  } catch (err) {
    $('login-error').textContent =
      err instanceof ApiError && err.status === 401 ? 'That is not the admin token.' : `Cannot reach the relay: ${err.message}`;
    return;
  }
  setToken(value);
  $('token').value = '';
  await enter();
});

$('logout').addEventListener('click', () => {
  clearToken();
  showLogin('Signed out.');
});

window.addEventListener('hashchange', () => {
  if (token()) show();
});

if (token()) enter();
else showLogin();
