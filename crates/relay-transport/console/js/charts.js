// Line charts drawn as SVG by the console's own code: no library. A chart takes series
// of [unixSeconds, value] points and draws them on a shared time axis.

import { h } from './dom.js';

const SVG = 'http://www.w3.org/2000/svg';
const W = 560;
const H = 200;
const PAD = { left: 56, right: 12, top: 10, bottom: 24 };

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

/** A "nice" upper bound for an axis whose largest value is `max`. */
function niceMax(max) {
  if (!(max > 0)) return 1;
  const exp = 10 ** Math.floor(Math.log10(max));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * exp >= max) return m * exp;
  return 10 * exp;
}

function clock(t) {
  const d = new Date(t * 1000);
  return d.toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit', second: d.getSeconds() ? '2-digit' : undefined });
}

/**
 * A chart card: `title`, `series` [{name, points: [[t, v], ...]}], `format` for values.
 * The svg carries `data-points` (points drawn) so tests can tell an empty chart from
 * one with data.
 */
export function lineChart({ title, series, format = String, id }) {
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title });
  const all = series.flatMap((x) => x.points);
  svg.setAttribute('data-points', String(all.length));
  const plotW = W - PAD.left - PAD.right;
  const plotH = H - PAD.top - PAD.bottom;
  if (all.length === 0) {
    svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'nodata' }, 'no samples yet'));
  } else {
    let t0 = Math.min(...all.map((p) => p[0]));
    let t1 = Math.max(...all.map((p) => p[0]));
    if (t1 === t0) {
      t0 -= 30;
      t1 += 30;
    }
    const vmax = niceMax(Math.max(...all.map((p) => p[1])));
    const x = (t) => PAD.left + ((t - t0) / (t1 - t0)) * plotW;
    const y = (v) => PAD.top + plotH - (v / vmax) * plotH;
    for (let i = 0; i <= 4; i++) {
      const v = (vmax * i) / 4;
      svg.append(s('line', { x1: PAD.left, x2: W - PAD.right, y1: y(v), y2: y(v), class: i ? 'grid' : 'axis' }));
      svg.append(s('text', { x: PAD.left - 6, y: y(v) + 3, 'text-anchor': 'end' }, format(v)));
    }
    for (let i = 0; i <= 4; i++) {
      const t = t0 + ((t1 - t0) * i) / 4;
      svg.append(s('text', { x: x(t), y: H - 6, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle' }, clock(t)));
    }
    series.forEach((ser, i) => {
      if (ser.points.length === 0) return;
      const d = ser.points.map((p, j) => `${j ? 'L' : 'M'}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(' ');
      const path = s('path', { d, class: `line s${i % 8}` });
      const last = ser.points[ser.points.length - 1];
      path.append(s('title', {}, `${ser.name}: ${format(last[1])} at ${clock(last[0])}`));
      svg.append(path);
      if (ser.points.length === 1) {
        svg.append(s('circle', { cx: x(last[0]), cy: y(last[1]), r: 2.5, class: `line s${i % 8}` }));
      }
    });
  }
  const legend = h('div', { class: 'legend' }, series.map((ser, i) => h('span', { class: `s${i % 8}` }, ser.name)));
  return h('div', { class: 'chart', id }, h('h3', {}, title), svg, series.length > 1 ? legend : null);
}

/** Points of a gauge: `pick(sample)` at each sample's time. */
export function gauge(samples, pick) {
  return samples.map((x) => [x.t, pick(x)]);
}

/**
 * Points of a per-second rate from a counter: the difference of consecutive samples
 * over their time apart, at the later one's time (a counter reset reads as 0).
 */
export function rate(samples, pick) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = samples[i].t - samples[i - 1].t;
    if (dt <= 0) continue;
    out.push([samples[i].t, Math.max(0, pick(samples[i]) - pick(samples[i - 1])) / dt]);
  }
  return out;
}

/** The samples of `stats` for `range` ('fine' or 'coarse'), with the current counters last. */
export function samplesOf(stats, range) {
  const ring = stats[range].samples.slice();
  const last = ring[ring.length - 1];
  if (!last || stats.now.t > last.t) ring.push(stats.now);
  return ring;
}
