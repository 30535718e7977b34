// Live rooms: size, parties present, age, owner key; close one after a confirmation.

import { api } from '../api.js';
import { confirmAction, fill, fmtDuration, fmtTime, h, nowUnix, table } from '../dom.js';

export async function render(root, ctx) {
  const list = h('div', { class: 'card', id: 'room-list' });
  fill(root, h('h1', {}, 'Live rooms'), list);

  async function close(id) {
    if (!(await confirmAction(`Close room ${id}? Its parties are disconnected with close code 1008.`, 'Close room'))) return;
    try {
      await api.closeRoom(id);
    } catch (err) {
      if (err.code !== 'room_not_found') return ctx.fail(err, list);
    }
    await refresh();
  }

  async function refresh() {
    let rooms;
    try {
      ({ rooms } = await api.rooms());
    } catch (err) {
      return ctx.fail(err, list);
    }
    const now = nowUnix();
    const rows = rooms.map((r) =>
      h(
        'tr',
        { 'data-room': r.room_uuid },
        h('td', { class: 'mono' }, r.room_uuid),
        h('td', { class: 'num' }, r.room_size),
        h('td', { class: 'num', title: `slots ${r.present.join(', ') || 'none'}` }, `${r.present.length} / ${r.room_size}`),
        h('td', {}, h('span', { class: `badge ${r.ready ? 'ready' : 'waiting'}` }, r.ready ? 'all joined' : 'waiting')),
        h('td', {}, r.created_at ? fmtDuration(now - r.created_at) : '–'),
        h('td', {}, fmtTime(r.expires_at)),
        h('td', { class: 'mono' }, r.key ?? '–'),
        h('td', {}, h('button', { type: 'button', class: 'danger small', onclick: () => close(r.room_uuid) }, 'Close')),
      ),
    );
    fill(
      list,
      h('h2', {}, `Rooms (${rooms.length})`),
      table(
        [['Room ID'], ['Size', 'num'], ['Present', 'num'], ['State'], ['Age'], ['Expires'], ['Owner key'], ['']],
        rows,
        'No live rooms.',
        { id: 'rooms-table' },
      ),
      h('p', { class: 'muted' }, 'Refreshed every 2 seconds.'),
    );
  }

  await refresh();
  ctx.every(2000, refresh);
}
