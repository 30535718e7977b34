// Usage per key over time: messages, bytes and rooms of the most used keys, from the
// samples of GET /v1/admin/stats; the totals from GET /v1/admin/usage.

import { api } from '../api.js';
import { fill, fmtBytes, fmtNum, h, table } from '../dom.js';
import { lineChart, samplesOf } from '../charts.js';

/** Keys drawn per chart (the most used by messages). */
const MAX_SERIES = 8;

export async function render(root, ctx) {
  let range = 'fine';
  let mode = 'rate';
  const rangeSelect = h(
    'select',
    { id: 'usage-range', onchange: () => { range = rangeSelect.value; refresh(); } },
    h('option', { value: 'fine' }, 'Last 10 minutes (5 s steps)'),
    h('option', { value: 'coarse' }, 'Last 24 hours (1 min steps)'),
  );
  const modeSelect = h(
    'select',
    { id: 'usage-mode', onchange: () => { mode = modeSelect.value; refresh(); } },
    h('option', { value: 'rate' }, 'Per step'),
    h('option', { value: 'total' }, 'Running totals'),
  );
  const charts = h('div', { class: 'charts' });
  const totals = h('div', { class: 'card', id: 'usage-totals' });
  fill(root, h('h1', {}, 'Usage per key'), h('div', { class: 'toolbar' }, rangeSelect, modeSelect), charts, totals);

  async function refresh() {
    let stats;
    let usage;
    try {
      [stats, usage] = await Promise.all([api.stats(), api.usage()]);
    } catch (err) {
      return ctx.fail(err, charts);
    }
    const samples = samplesOf(stats, range);
    const names = [...(stats.now.keys || [])].sort((a, b) => b.messages - a.messages).slice(0, MAX_SERIES).map((k) => k.name);
    const series = (field) =>
      names.map((name) => {
        const points = [];
        let prev = null;
        for (const x of samples) {
          const k = (x.keys || []).find((k) => k.name === name);
          const v = k ? k[field] : 0;
          if (mode === 'total') points.push([x.t, v]);
          else if (prev !== null) points.push([x.t, Math.max(0, v - prev)]);
          prev = v;
        }
        return { name, points };
      });
    const step = mode === 'rate' ? ` per ${stats[range].step_secs} s step` : ' (running total)';
    fill(
      charts,
      lineChart({ id: 'chart-key-messages', title: `Messages${step}`, series: series('messages'), format: fmtNum }),
      lineChart({ id: 'chart-key-bytes', title: `Bytes${step}`, series: series('bytes'), format: fmtBytes }),
      lineChart({ id: 'chart-key-rooms', title: `Rooms created${step}`, series: series('rooms'), format: fmtNum }),
    );
    if (names.length === 0) charts.prepend(h('p', { class: 'muted' }, 'No keys yet.'));
    const rows = usage.keys.map((k) =>
      h('tr', {}, h('td', { class: 'mono' }, k.name), h('td', { class: 'mono' }, k.tenant),
        h('td', { class: 'num' }, fmtNum(k.messages)), h('td', { class: 'num' }, fmtBytes(k.bytes)), h('td', { class: 'num' }, fmtNum(k.rooms))),
    );
    rows.push(h('tr', {}, h('td', {}, h('strong', {}, 'Total')), h('td', {}),
      h('td', { class: 'num' }, fmtNum(usage.total.messages)), h('td', { class: 'num' }, fmtBytes(usage.total.bytes)), h('td', { class: 'num' }, fmtNum(usage.total.rooms))));
    fill(totals, h('h2', {}, 'Totals since each key was created'),
      table([['Key'], ['Tenant'], ['Messages', 'num'], ['Bytes', 'num'], ['Rooms', 'num']], rows, 'No keys.'));
  }

  await refresh();
  ctx.every(5000, refresh);
}
