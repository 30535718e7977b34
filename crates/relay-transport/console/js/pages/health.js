// Health: version, uptime, open connections, and live charts of messages and bytes per
// second, auth failures and rate limiting, from GET /v1/admin/stats.

import { api, call } from '../api.js';
import { fill, fmtBytes, fmtDuration, fmtNum, h } from '../dom.js';
import { gauge, lineChart, rate, samplesOf } from '../charts.js';

export async function render(root, ctx) {
  let range = 'fine';
  const select = h(
    'select',
    { id: 'range', onchange: () => { range = select.value; refresh(); } },
    h('option', { value: 'fine' }, 'Last 10 minutes (5 s steps)'),
    h('option', { value: 'coarse' }, 'Last 24 hours (1 min steps)'),
  );
  const status = h('span', { class: 'muted' });
  const cards = h('div', { class: 'cards' });
  const charts = h('div', { class: 'charts' });
  fill(root, h('h1', {}, 'Health'), h('div', { class: 'toolbar' }, select, status), cards, charts);

  async function refresh() {
    let stats;
    let ready = '?';
    try {
      stats = await api.stats();
      ready = await call('GET', '/readyz', undefined, null).then((r) => r.status, (e) => (e.status === 503 ? 'draining' : 'unreachable'));
    } catch (err) {
      ctx.fail(err, status);
      return;
    }
    const n = stats.now;
    const server = document.getElementById('server');
    if (server) server.textContent = `v${stats.version} · up ${fmtDuration(stats.uptime_secs)}`;
    const stat = (label, value, id) => h('div', { class: 'stat', id }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));
    fill(
      cards,
      stat('Version', stats.version, 'stat-version'),
      stat('Uptime', fmtDuration(stats.uptime_secs), 'stat-uptime'),
      stat('Readiness', ready, 'stat-ready'),
      stat('Open connections', fmtNum(n.connections_open), 'stat-connections'),
      stat('Open WebSockets', fmtNum(n.websockets_open), 'stat-websockets'),
      stat('Live rooms', fmtNum(n.rooms_open), 'stat-rooms'),
      stat('Messages relayed', fmtNum(n.messages), 'stat-messages'),
      stat('Auth failures', fmtNum(n.auth_failures), 'stat-auth'),
    );
    const samples = samplesOf(stats, range);
    const perSec = (f) => (v) => `${f(v)}/s`;
    fill(
      charts,
      lineChart({
        id: 'chart-connections',
        title: 'Open connections',
        series: [
          { name: 'TCP connections', points: gauge(samples, (x) => x.connections_open) },
          { name: 'WebSockets', points: gauge(samples, (x) => x.websockets_open) },
          { name: 'rooms', points: gauge(samples, (x) => x.rooms_open) },
        ],
        format: fmtNum,
      }),
      lineChart({
        id: 'chart-messages',
        title: 'Messages per second',
        series: [{ name: 'messages', points: rate(samples, (x) => x.messages) }],
        format: perSec(fmtNum),
      }),
      lineChart({
        id: 'chart-bytes',
        title: 'Bytes per second',
        series: [{ name: 'payload bytes', points: rate(samples, (x) => x.bytes) }],
        format: perSec(fmtBytes),
      }),
      lineChart({
        id: 'chart-refusals',
        title: 'Auth failures and rate limiting per second',
        series: [
          { name: 'auth failures', points: rate(samples, (x) => x.auth_failures) },
          { name: 'rate limited', points: rate(samples, (x) => x.rate_limited) },
        ],
        format: perSec(fmtNum),
      }),
    );
    status.textContent = `${samples.length} samples, every ${stats[range].step_secs} s · updated ${new Date().toLocaleTimeString('en-GB')}`;
  }

  await refresh();
  ctx.every(5000, refresh);
}
