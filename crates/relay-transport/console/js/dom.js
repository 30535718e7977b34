// Small DOM helpers. Text is always set as text (never parsed as HTML), so nothing a
// key name, group or server says can inject markup.

/** An element: `h('td', {class: 'num'}, 'text', child)`. Attribute `on<event>` adds a listener. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table with `headers` ([label, className?]) and rows of cells; `empty` when no rows. */
export function table(headers, rows, empty, attrs = {}) {
  const head = h('thead', {}, h('tr', {}, headers.map(([label, cls]) => h('th', { class: cls }, label))));
  const body = h('tbody', {});
  if (rows.length === 0) body.append(h('tr', {}, h('td', { class: 'empty', colspan: headers.length }, empty)));
  for (const row of rows) body.append(row);
  return h('table', attrs, head, body);
}

export function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '–';
  if (Math.abs(n) >= 100 || Number.isInteger(n)) return Math.round(n).toLocaleString('en-US');
  return n.toFixed(Math.abs(n) >= 10 ? 1 : 2);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

export function fmtDuration(secs) {
  const s = Math.max(0, Math.floor(secs));
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  if (d > 0) return `${d}d ${hh}h`;
  if (hh > 0) return `${hh}h ${mm}m`;
  if (mm > 0) return `${mm}m ${s % 60}s`;
  return `${s}s`;
}

/** Unix seconds as a local date and time; 0 as `never`. */
export function fmtTime(unix) {
  if (!unix) return 'never';
  return new Date(unix * 1000).toLocaleString('en-GB', { dateStyle: 'short', timeStyle: 'medium' });
}

export function nowUnix() {
  return Math.floor(Date.now() / 1000);
}

/** Asks the operator to confirm `text` in the page's dialog; resolves to true on Confirm. */
export function confirmAction(text, okLabel = 'Confirm') {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-text').textContent = text;
  document.getElementById('confirm-ok').textContent = okLabel;
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.returnValue = '';
    dialog.showModal();
  });
}
