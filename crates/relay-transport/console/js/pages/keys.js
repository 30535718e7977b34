// Keys: create (name, tenant, expiry; the key shown once with a copy button), list with
// status and usage, revoke after a confirmation.

import { api } from '../api.js';
import { confirmAction, fill, fmtBytes, fmtNum, fmtTime, h, table } from '../dom.js';

export async function render(root, ctx) {
  const created = h('div', { id: 'created-key' });
  const formError = h('p', { class: 'error', role: 'alert', id: 'create-error' });
  const name = h('input', { id: 'key-name', name: 'name', required: true, placeholder: 'backend-eu' });
  const tenant = h('input', { id: 'key-tenant', name: 'tenant', placeholder: 'defaults to the name' });
  const expiry = h('input', { id: 'key-expiry', name: 'expiry', type: 'datetime-local' });
  const form = h(
    'form',
    { id: 'create-key', class: 'card', autocomplete: 'off', onsubmit: (ev) => { ev.preventDefault(); create(); } },
    h('h2', {}, 'Create a key'),
    h(
      'div',
      { class: 'row' },
      h('div', {}, h('label', { for: 'key-name' }, 'Name'), name),
      h('div', {}, h('label', { for: 'key-tenant' }, 'Tenant (mailbox namespace)'), tenant),
      h('div', {}, h('label', { for: 'key-expiry' }, 'Expires (empty: never)'), expiry),
      h('div', {}, h('button', { type: 'submit' }, 'Create key')),
    ),
    formError,
    created,
  );
  const list = h('div', { class: 'card', id: 'key-list' });
  fill(root, h('h1', {}, 'API keys'), form, list);

  async function create() {
    formError.textContent = '';
    const req = { name: name.value.trim() };
    if (tenant.value.trim()) req.tenant = tenant.value.trim();
    if (expiry.value) req.expires_at = Math.floor(new Date(expiry.value).getTime() / 1000);
    let key;
    try {
      key = await api.createKey(req);
    } catch (err) {
      if (err.status === 401) return ctx.fail(err);
      formError.textContent = `${err.message} (${err.code})`;
      return;
    }
    name.value = '';
    tenant.value = '';
    expiry.value = '';
    const value = h('code', { id: 'new-key-value' }, key.key);
    const copied = h('span', { class: 'muted' });
    const copy = h('button', {
      type: 'button',
      class: 'small',
      id: 'copy-key',
      onclick: async () => {
        try {
          await navigator.clipboard.writeText(key.key);
          copied.textContent = 'Copied.';
        } catch {
          const range = document.createRange();
          range.selectNodeContents(value);
          getSelection().removeAllRanges();
          getSelection().addRange(range);
          copied.textContent = 'Selected: press Ctrl+C.';
        }
      },
    }, 'Copy');
    fill(
      created,
      h(
        'div',
        { class: 'notice' },
        h('strong', {}, `Key “${key.name}” created. `),
        'This is the only time it is shown: copy it now and hand it to the backend that will use it.',
        h('div', { class: 'key' }, value, copy, copied),
        h('button', { type: 'button', class: 'secondary small', onclick: () => fill(created) }, 'Done, hide it'),
      ),
    );
    await refresh();
  }

  async function revoke(keyName) {
    if (!(await confirmAction(`Revoke the key “${keyName}”? Its live connections end within seconds, and it cannot be restored.`, 'Revoke'))) return;
    try {
      await api.revokeKey(keyName);
    } catch (err) {
      return ctx.fail(err, list);
    }
    await refresh();
  }

  async function refresh() {
    let keys;
    try {
      ({ keys } = await api.keys());
    } catch (err) {
      return ctx.fail(err, list);
    }
    const rows = keys.map((k) =>
      h(
        'tr',
        { 'data-key': k.name },
        h('td', { class: 'mono' }, k.name),
        h('td', { class: 'mono' }, k.tenant),
        h('td', {}, h('span', { class: `badge ${k.status}` }, k.status.replace('_', ' '))),
        h('td', {}, k.origin),
        h('td', {}, fmtTime(k.created_at)),
        h('td', {}, fmtTime(k.expires_at)),
        h('td', { class: 'num' }, fmtNum(k.usage.messages)),
        h('td', { class: 'num' }, fmtBytes(k.usage.bytes)),
        h('td', { class: 'num' }, fmtNum(k.usage.rooms)),
        h('td', {}, k.revoked ? '' : h('button', { type: 'button', class: 'danger small', onclick: () => revoke(k.name) }, 'Revoke')),
      ),
    );
    fill(
      list,
      h('h2', {}, `Keys (${keys.length})`),
      table(
        [['Name'], ['Tenant'], ['Status'], ['Origin'], ['Created'], ['Expires'], ['Messages', 'num'], ['Bytes', 'num'], ['Rooms', 'num'], ['']],
        rows,
        'No keys yet: create one above.',
        { id: 'keys-table' },
      ),
    );
  }

  await refresh();
  ctx.every(10000, refresh);
}
