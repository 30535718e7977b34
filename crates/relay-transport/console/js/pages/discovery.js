// Discovery: every live group (the admin token sees all of them on GET /v1/groups) and
// the relays in the registry (GET /v1/relays).

import { api } from '../api.js';
import { fill, fmtTime, h, table } from '../dom.js';

export async function render(root, ctx) {
  const groups = h('div', { class: 'card', id: 'groups' });
  const relays = h('div', { class: 'card', id: 'relays' });
  fill(root, h('h1', {}, 'Discovery'), groups, relays);

  async function refresh() {
    let g;
    let r;
    try {
      [g, r] = await Promise.all([api.groups(), api.relays()]);
    } catch (err) {
      return ctx.fail(err, groups);
    }
    const list = Object.values(g || {}).sort((a, b) => b.LastUpdated - a.LastUpdated);
    fill(
      groups,
      h('h2', {}, `Groups (${list.length})`),
      table(
        [['ID'], ['Name'], ['App'], ['Peers', 'num'], ['Initial peers', 'num'], ['Last updated'], ['TTL']],
        list.map((x) =>
          h('tr', {}, h('td', { class: 'mono' }, x.ID), h('td', {}, x.Name), h('td', { class: 'mono' }, x.AppID),
            h('td', { class: 'num', title: x.Peers.map((p) => p.Moniker || p.NetAddr).join(', ') }, x.Peers.length),
            h('td', { class: 'num' }, x.InitialPeers.length), h('td', {}, fmtTime(x.LastUpdated)),
            h('td', {}, x.TTL ? `${x.TTL} s` : 'default')),
        ),
        'No live groups.',
        { id: 'groups-table' },
      ),
    );
    fill(
      relays,
      h('h2', {}, `Registry relays (${r.relays.length})`),
      table(
        [['URL'], ['Room-ID prefix'], ['Registered'], ['Last announced'], ['Expires']],
        r.relays.map((x) =>
          h('tr', {}, h('td', { class: 'mono' }, x.url), h('td', { class: 'mono' }, x.room_id_prefix ?? '–'),
            h('td', {}, fmtTime(x.registered_at)), h('td', {}, fmtTime(x.last_announced_at)), h('td', {}, fmtTime(x.expires_at))),
        ),
        'No relay has announced itself here (the registry is filled by POST /v1/relays).',
        { id: 'relays-table' },
      ),
    );
  }

  await refresh();
  ctx.every(10000, refresh);
}
