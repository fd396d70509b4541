// voi-server operator console. Plain script, no build step.
//
// Authority: the API's Bearer token, asked for once and kept in this tab's
// sessionStorage; it goes in the Authorization header of every request,
// the live event stream included (read with fetch, since EventSource
// cannot send headers). No cookies.
//
// Everything a terminal reports is untrusted: it reaches the page only as
// text nodes and attribute values (el() below), never as markup.
'use strict';

(() => {
  const S = {
    token: sessionStorage.getItem('voi-token') || '',
    terminals: new Map(),
    groups: [],
    images: { images: [], uploads: [], progress: {} },
    selected: new Set(),
    sort: { key: 'mac', desc: false },
    view: 'terminals',
    detail: null,
    events: [],
  };
  // For the browser test: when each bar moved, against the server's clock.
  window.__barUpdates = [];

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'dataset') Object.assign(e.dataset, v);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const kid of kids.flat()) {
      if (kid === null || kid === undefined) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
    return node;
  }

  async function api(method, path, body) {
    const opts = { method, headers: { Authorization: 'Bearer ' + S.token } };
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    let r;
    try {
      r = await fetch(path, opts);
    } catch (e) {
      return { code: -1, msg: 'server unreachable: ' + e.message };
    }
    if (r.status === 401) {
      logout('The server refused the token.');
      return { code: 60022, msg: 'token refused' };
    }
    try {
      return await r.json();
    } catch (e) {
      return { code: -1, msg: 'HTTP ' + r.status };
    }
  }

  // ---- login ---------------------------------------------------------

  function logout(why) {
    S.token = '';
    sessionStorage.removeItem('voi-token');
    $('nav').hidden = true;
    $('logout').hidden = true;
    for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== 'login';
    $('login-error').textContent = why || '';
  }

  async function login(token) {
    S.token = token.trim();
    const r = await api('GET', '/api/v1/terminals');
    if (r.code !== 0) {
      logout(r.msg || 'The server refused the token.');
      return;
    }
    sessionStorage.setItem('voi-token', S.token);
    $('login').hidden = true;
    $('nav').hidden = false;
    $('logout').hidden = false;
    setTerminals(r.data.terminals);
    route();
    stream();
    refreshAll();
  }

  // ---- live events -----------------------------------------------------

  function setLive(on) {
    const l = $('live');
    l.className = 'live ' + (on ? 'on' : 'off');
    l.textContent = on ? 'live' : 'offline';
  }

  let streaming = false;
  async function stream() {
    if (streaming) return;
    streaming = true;
    while (S.token) {
      try {
        const r = await fetch('/api/v1/events', {
          headers: { Authorization: 'Bearer ' + S.token },
        });
        if (r.status === 401) {
          logout('The server refused the token.');
          break;
        }
        if (!r.ok || !r.body) throw new Error('HTTP ' + r.status);
        setLive(true);
        refreshAll();
        const reader = r.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const chunk = buf.slice(0, i);
            buf = buf.slice(i + 2);
            const data = chunk
              .split('\n')
              .filter((l) => l.startsWith('data:'))
              .map((l) => l.slice(5).trimStart())
              .join('\n');
            if (!data) continue;
            try {
              onEvent(JSON.parse(data));
            } catch (e) {
              console.warn('event', e);
            }
          }
        }
      } catch (e) {
        console.warn('event stream', e);
      }
      setLive(false);
      await new Promise((res) => setTimeout(res, 2000));
    }
    streaming = false;
  }

  let refreshTimer = null;
  function scheduleRefresh() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      refreshAll();
    }, 300);
  }

  const CONFIG_REQUESTS = new Set([
    'update_config_info', 'get_config_version_id', 'order_confirm', 'put_desktop_group_list',
  ]);

  function onEvent(ev) {
    addEvent(ev);
    const t = ev.mac ? S.terminals.get(ev.mac) : null;
    switch (ev.event) {
      case 'heartbeat':
        if (t) {
          t.online = true;
          t.connected = true;
          t.last_heartbeat_secs = 0;
          updateRow(t);
        } else scheduleRefresh();
        break;
      case 'login': case 'offline': case 'disconnected': case 'admission': case 'refused':
        scheduleRefresh();
        if (S.detail === ev.mac) loadDetail();
        break;
      case 'report':
        onReport(ev);
        break;
      case 'command_sent': case 'command_reply':
        if (S.detail === ev.mac) scheduleDetail();
        break;
      case 'request':
        if (CONFIG_REQUESTS.has(ev.service)) scheduleRefresh();
        break;
      case 'order':
        if (S.view === 'numbering') loadOrder();
    if (S.view === 'schedule') loadSchedule();
    if (S.view === 'audit') loadAudit();
        scheduleRefresh();
        break;
      case 'lagged':
        refreshAll();
        break;
      default:
        break;
    }
  }

  function onReport(ev) {
    const t = S.terminals.get(ev.mac);
    const [kind, layer] = splitKey(ev.key);
    if (kind === 'bt_task' || kind === 'task_result') {
      if (t) {
        t.transfers = t.transfers || [];
        let x = t.transfers.find((x) => x.layer === layer);
        if (!x) {
          x = { layer, progress: 0, state: '', result: null };
          t.transfers.push(x);
        }
        if (kind === 'bt_task') {
          x.progress = ev.value.progress;
          x.state = ev.value.state;
        } else {
          x.result = ev.value.result;
        }
        updateRow(t);
        window.__barUpdates.push({
          mac: ev.mac, layer, progress: x.progress, at_ms: ev.at_ms, shown_ms: Date.now(),
        });
      }
      if (kind === 'bt_task') {
        const p = (S.images.progress[ev.mac] = S.images.progress[ev.mac] || {});
        p[layer] = ev.value;
        if (S.view === 'images') renderImages();
      }
      if (S.detail === ev.mac) renderDetailTransfers();
    } else if (kind === 'desktop_groups') {
      scheduleRefresh();
    }
  }

  function splitKey(key) {
    const i = key.indexOf(':');
    return i < 0 ? [key, ''] : [key.slice(0, i), key.slice(i + 1)];
  }

  function addEvent(ev) {
    S.events.push({ at: new Date(), ev });
    if (S.events.length > 500) S.events.shift();
    if (S.view === 'events') {
      const list = $('events');
      list.prepend(eventItem(S.events[S.events.length - 1]));
      while (list.childNodes.length > 500) list.removeChild(list.lastChild);
    }
  }

  function eventItem({ at, ev }) {
    const rest = Object.assign({}, ev);
    delete rest.event;
    return el('li', {}, at.toLocaleTimeString(), ' ', el('strong', {}, ev.event), ' ', JSON.stringify(rest));
  }

  // ---- data ------------------------------------------------------------

  function setTerminals(list) {
    const seen = new Set();
    for (const t of list) {
      seen.add(t.mac);
      S.terminals.set(t.mac, t);
    }
    for (const mac of [...S.terminals.keys()]) if (!seen.has(mac)) S.terminals.delete(mac);
    for (const mac of [...S.selected]) if (!seen.has(mac)) S.selected.delete(mac);
    renderTerminals();
  }

  async function refreshAll() {
    const [t, g] = await Promise.all([api('GET', '/api/v1/terminals'), api('GET', '/api/v1/desktop_groups')]);
    if (t.code === 0) setTerminals(t.data.terminals);
    if (g.code === 0) {
      S.groups = g.data.desktop_group_list || [];
      S.undeliverable = g.data.undeliverable || {};
      renderGroupChoices();
      if (S.view === 'groups') renderGroups();
    }
    if (S.view === 'images' || S.view === 'groups') await loadImages();
    if (S.view === 'numbering') await loadOrder();
    if (S.view === 'terminal') await loadDetail();
  }

  // Heartbeat ages tick locally; the stream resets them.
  setInterval(() => {
    for (const t of S.terminals.values()) {
      if (typeof t.last_heartbeat_secs === 'number') {
        t.last_heartbeat_secs += 1;
        const cell = document.querySelector(`tr[data-mac="${CSS.escape(t.mac)}"] td.hb`);
        if (cell) cell.textContent = heartbeatText(t);
      }
    }
  }, 1000);

  // ---- terminals view --------------------------------------------------

  function standing(t) {
    if (t.admission === 'pending') return 'pending';
    if (t.admission === 'rejected') return 'rejected';
    return t.online ? 'online' : 'offline';
  }

  function heartbeatText(t) {
    return typeof t.last_heartbeat_secs === 'number' ? t.last_heartbeat_secs + ' s ago' : '—';
  }

  const CLIENT_TYPES = { 1: 'Windows', 2: 'Linux', 3: 'Android', 5: 'maintenance' };

  function bar(mac, x) {
    const p = Math.max(0, Math.min(100, Number(x.progress) || 0));
    const cls = x.result === 2 ? 'bar failed' : (x.result === 1 || p === 100 ? 'bar done' : 'bar');
    const fill = el('span');
    fill.style.width = p + '%';
    const label = x.result === 2 ? 'failed' + (x.msg ? ': ' + x.msg : '') : p + '%';
    return el('div', { title: x.msg || '' },
      el('div', { class: 'bar-label' }, x.layer),
      el('div', { class: cls, dataset: { mac, layer: x.layer, progress: String(p) } }, fill, el('em', {}, label)));
  }

  function transfersCell(t) {
    return (t.transfers || []).map((x) => bar(t.mac, x));
  }

  // What the desktop does, as the terminal last said: never "running" for
  // a terminal that is offline (then "last seen … at …").
  function desktopsText(t) {
    const held = desktopsHeld(t);
    const d = t.desktop || {};
    const at = (ms) => (ms ? new Date(ms).toLocaleTimeString() : '');
    const name = d.desktop_group_name || '';
    let now = '';
    if (d.state === 'unknown' && d.last_state && d.last_state !== 'off') {
      now = `last seen ${d.last_state}${name ? ' ' + name : ''}${d.last_seen_ms ? ' at ' + at(d.last_seen_ms) : ''}`;
    } else if (d.state === 'running') {
      now = `running ${name}${d.accelerator ? ' on ' + d.accelerator : ''}${d.since_ms ? ' since ' + at(d.since_ms) : ''}${d.reason ? ' (' + d.reason + ')' : ''}`;
    } else if (d.state === 'failed') {
      now = `failed ${name}${d.reason ? ': ' + d.reason : ''}`;
    } else if (d.state && d.state !== 'off' && d.state !== 'unknown') {
      now = `${d.state} ${name}${d.since_ms ? ' since ' + at(d.since_ms) : ''}`;
    }
    if (!now) return held;
    return now + (held ? ' — ' + held : '');
  }

  function desktopsHeld(t) {
    if (t.desktop_group_names && t.desktop_group_names.length) return t.desktop_group_names.join(', ');
    if (!t.desktops) return '';
    return typeof t.desktops === 'string' ? t.desktops : JSON.stringify(t.desktops);
  }

  function row(t) {
    const box = el('input', {
      type: 'checkbox', class: 'pick', checked: S.selected.has(t.mac),
      onchange: (e) => {
        if (e.target.checked) S.selected.add(t.mac); else S.selected.delete(t.mac);
        $('selected-count').textContent = S.selected.size;
      },
    });
    const st = standing(t);
    return el('tr', { dataset: { mac: t.mac } },
      el('td', {}, box),
      el('td', {}, el('span', { class: 'state ' + st }, st),
        t.conflict ? el('div', { class: 'error conflict', title: 'two terminals use this MAC' },
          `MAC conflict: ${t.conflict.ip} and ${t.conflict.other_ip}`) : ''),
      el('td', { class: 'name' }, el('a', { href: '#terminal/' + encodeURIComponent(t.mac) }, t.name || '(no name)')),
      el('td', {}, t.terminal_id >= 0 ? t.terminal_id : ''),
      el('td', { class: 'mac' }, t.mac),
      el('td', {}, t.ip),
      el('td', { class: 'room' }, t.room || ''),
      el('td', {}, (CLIENT_TYPES[t.client_type] || t.client_type) + ' / ' + (t.soft_version || '?')),
      el('td', {}, t.conf_version),
      el('td', { class: 'desktops' }, desktopsText(t)),
      el('td', { class: 'hb' }, heartbeatText(t)),
      el('td', { class: 'transfers' }, transfersCell(t)),
    );
  }

  function matches(t, f) {
    if (!f) return true;
    return [t.name, t.mac, t.ip, t.soft_version, standing(t)].some((v) => String(v || '').toLowerCase().includes(f));
  }

  function sorted() {
    const f = $('filter').value.trim().toLowerCase();
    const k = S.sort.key;
    const list = [...S.terminals.values()].filter((t) => matches(t, f));
    list.sort((a, b) => {
      const va = k === 'state' ? standing(a) : a[k];
      const vb = k === 'state' ? standing(b) : b[k];
      const c = (typeof va === 'number' && typeof vb === 'number') ? va - vb : String(va ?? '').localeCompare(String(vb ?? ''));
      return S.sort.desc ? -c : c;
    });
    return list;
  }

  function renderTerminals() {
    const body = clear(document.querySelector('#terminals tbody'));
    const list = sorted();
    for (const t of list) body.append(row(t));
    const online = [...S.terminals.values()].filter((t) => t.online).length;
    $('counts').textContent = `${online} online of ${S.terminals.size}; ${list.length} shown`;
    $('selected-count').textContent = S.selected.size;
    for (const th of document.querySelectorAll('#terminals th[data-sort]')) {
      th.classList.toggle('sorted', th.dataset.sort === S.sort.key);
      th.classList.toggle('desc', th.dataset.sort === S.sort.key && S.sort.desc);
    }
  }

  function updateRow(t) {
    const old = document.querySelector(`#terminals tr[data-mac="${CSS.escape(t.mac)}"]`);
    if (old) old.replaceWith(row(t));
    else renderTerminals();
  }

  function renderGroupChoices() {
    for (const id of ['room-group', 't-group']) {
      const sel = clear($(id));
      for (const g of S.groups) sel.append(el('option', { value: g.desktop_group_uuid }, g.desktop_group_name || g.desktop_group_uuid));
    }
  }

  // Room-wide actions: one request per terminal, each result as it lands.
  function resultLine(list, mac) {
    const li = el('li', {}, `${mac}: sent…`);
    list.append(li);
    return li;
  }

  function showOutcome(li, mac, r) {
    if (r.code === 0 && r.data && r.data.results) {
      const w = r.data.results[0] || { state: 'failed', text: 'no result' };
      li.className = w.state === 'failed' ? 'fail' : 'ok';
      li.textContent = `${mac}: wake ${w.text}`;
    } else if (r.code === 0 && r.data && r.data.no_reply) {
      li.className = 'note';
      li.textContent = `${mac}: ${r.data.no_reply}`;
    } else if (r.code === 0 && r.data && r.data.reply) {
      const ok = r.data.reply.code === 0;
      li.className = ok ? 'ok' : 'fail';
      li.textContent = `${mac}: ${r.data.command} → ${r.data.reply.code} ${r.data.reply.msg || ''}`;
    } else if (r.code === 0 && r.data && r.data.sent) {
      const bad = r.data.sent.filter((s) => s.code !== 0);
      li.className = bad.length ? 'fail' : 'ok';
      li.textContent = `${mac}: ${r.data.sent.length} layer(s) sent` + (bad.length ? `, ${bad.length} refused: ${bad.map((s) => s.msg).join('; ')}` : '');
    } else {
      li.className = r.code === 0 ? 'ok' : 'fail';
      li.textContent = `${mac}: ${r.code} ${r.msg || ''}`;
    }
  }

  function roomAction(label, request) {
    const macs = [...S.selected];
    const list = clear($('room-results'));
    if (!macs.length) {
      list.append(el('li', { class: 'fail' }, 'Select terminals first.'));
      return;
    }
    list.append(el('li', {}, `${label} → ${macs.length} terminal(s)`));
    for (const mac of macs) {
      const li = resultLine(list, mac);
      request(mac).then((r) => showOutcome(li, mac, r));
    }
  }

  function push(mac, command, params) {
    return api('POST', `/api/v1/terminals/${encodeURIComponent(mac)}/commands`, { command, params: params || {} });
  }

  function wake(mac) {
    return api('POST', '/api/v1/wake', { macs: [mac] });
  }

  function setRoom(mac, room) {
    return api('PUT', `/api/v1/terminals/${encodeURIComponent(mac)}/room`, { room });
  }

  function sendDesktop(mac, group) {
    return api('POST', `/api/v1/terminals/${encodeURIComponent(mac)}/download_desktop`, { group_uuid: group });
  }

  // ---- one terminal ----------------------------------------------------

  let detailTimer = null;
  function scheduleDetail() {
    if (detailTimer) return;
    detailTimer = setTimeout(() => { detailTimer = null; loadDetail(); }, 200);
  }

  async function loadDetail() {
    if (!S.detail) return;
    const r = await api('GET', `/api/v1/terminals/${encodeURIComponent(S.detail)}`);
    if (r.code !== 0) {
      $('t-title').textContent = `${S.detail}: ${r.msg}`;
      return;
    }
    const t = r.data;
    S.terminals.set(t.mac, Object.assign(S.terminals.get(t.mac) || {}, t));
    $('t-title').textContent = `${t.name || '(no name)'} — ${t.mac} — ${standing(t)}`;
    const adm = clear($('t-admission'));
    if (t.admission !== 'accepted') {
      adm.append(el('span', {}, `admission: ${t.admission}`),
        el('button', { type: 'button', onclick: () => admit(t.mac, 'accepted') }, 'Accept'));
    }
    if (t.admission !== 'rejected') {
      adm.append(el('button', { type: 'button', onclick: () => admit(t.mac, 'rejected') }, 'Reject'));
    }
    const fields = clear(document.querySelector('#t-fields tbody'));
    for (const [k, v] of Object.entries(t)) {
      if (k === 'reports' || k === 'recent_commands' || k === 'transfers') continue;
      fields.append(el('tr', {}, el('td', {}, k), el('td', {}, typeof v === 'string' ? v : JSON.stringify(v))));
    }
    for (const [k, v] of Object.entries(t.reports || {})) {
      fields.append(el('tr', {}, el('td', {}, 'report ' + k), el('td', {}, JSON.stringify(v, null, 1))));
    }
    const cmds = clear(document.querySelector('#t-commands tbody'));
    for (const c of [...(t.recent_commands || [])].reverse()) {
      const res = c.code === null || c.code === undefined ? 'waiting' : `${c.code} ${c.msg || ''}`;
      cmds.append(el('tr', {}, el('td', {}, c.sent), el('td', {}, c.command), el('td', {}, JSON.stringify(c.batch_no)), el('td', {}, res)));
    }
    renderDetailTransfers();
  }

  function renderDetailTransfers() {
    const t = S.terminals.get(S.detail);
    const box = clear($('t-transfers'));
    if (t) box.append(...transfersCell(t));
  }

  async function admit(mac, admission) {
    const r = await api('PUT', `/api/v1/terminals/${encodeURIComponent(mac)}/admission`, { admission });
    $('t-result').textContent = r.code === 0 ? `admission: ${r.data.admission}` : `${r.code} ${r.msg}`;
    loadDetail();
  }

  async function detailCommand(command, params) {
    const out = $('t-result');
    out.textContent = `${command}: sent…`;
    const r = await push(S.detail, command, params);
    const li = el('li');
    showOutcome(li, S.detail, r);
    out.textContent = li.textContent;
    out.className = 'result ' + li.className;
    loadDetail();
  }

  // The agent's checks on a name (update_name) and a static address
  // (update_ip); the server runs the agent's own code on the address too.
  function nameError(name) {
    if (!name) return 'a name is needed';
    if (new TextEncoder().encode(name).length > 13) return 'at most 13 bytes';
    if (/[\u0000-\u001f\u007f]/.test(name)) return 'no control characters';
    return '';
  }

  function ipv4(s) {
    const m = /^\s*(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\s*$/.exec(s || '');
    if (!m) return null;
    const parts = m.slice(1).map(Number);
    if (parts.some((p) => p > 255)) return null;
    return ((parts[0] << 24) | (parts[1] << 16) | (parts[2] << 8) | parts[3]) >>> 0;
  }

  function prefixOf(mask) {
    const m = ipv4(mask);
    if (m === null || m === 0) return null;
    let ones = 0;
    while (ones < 32 && (m & (0x80000000 >>> ones)) !== 0) ones += 1;
    const contiguous = ones === 32 ? m === 0xffffffff : (m & ((0xffffffff >>> ones) >>> 0)) === 0;
    return contiguous ? ones : null;
  }

  function maskBits(prefix) {
    return prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  }

  function isHost(ip, prefix) {
    if (ip === 0 || ip === 0xffffffff || (ip >>> 24) === 127 || (ip >>> 28) === 0xe) return false;
    if (prefix >= 31) return true;
    const host = (ip & ~maskBits(prefix)) >>> 0;
    return host !== 0 && host !== (~maskBits(prefix) >>> 0);
  }

  function networkError(f) {
    const prefix = prefixOf(f.mask);
    if (prefix === null || prefix > 30) return `mask ${f.mask} is not a contiguous /1–/30 mask`;
    const ip = ipv4(f.ip);
    if (ip === null || !isHost(ip, prefix)) return `ip ${f.ip} is not a host address in a /${prefix}`;
    const gw = ipv4(f.gateway);
    const m = maskBits(prefix);
    if (gw === null || !isHost(gw, prefix) || ((gw & m) >>> 0) !== ((ip & m) >>> 0) || gw === ip) {
      return `gateway ${f.gateway} is not another host of ${f.ip}/${prefix}`;
    }
    const resolver = (s) => { const d = ipv4(s); return d !== null && d !== 0 && (d >>> 28) !== 0xe; };
    if (!resolver(f.dns1)) return `dns1 ${f.dns1}`;
    if (f.dns2.trim() && !resolver(f.dns2)) return `dns2 ${f.dns2}`;
    return '';
  }

  // ---- desktop groups --------------------------------------------------

  const LAYER = /^(.+)_(\d+)_([0-9a-fA-F-]{36})$/;
  let editing = null;

  function renderGroups() {
    const body = clear(document.querySelector('#groups tbody'));
    for (const g of S.groups) {
      const layers = (g.disks || []).map((d) => `${d.prefix}_${d.dif_level}_${d.uuid}`).join('\n');
      const problems = (S.undeliverable || {})[g.desktop_group_uuid];
      const mode = `${Number(g.desktop_group_restore) === 1 ? 'restore' : 'persistent'}, diff mode ${Number(g.diff_mode) || 0}, ` +
        (Number(g.desktop_is_dhcp) === 0 && g.desktop_ip ? `IP ${g.desktop_ip}` : 'DHCP');
      body.append(el('tr', { dataset: { group: g.desktop_group_uuid } },
        el('td', {}, g.desktop_group_name),
        el('td', {}, g.desktop_group_uuid),
        el('td', { class: 'bar-label' }, layers),
        el('td', { class: 'mode' }, mode),
        el('td', { class: problems ? 'error undeliverable' : 'deliverable' },
          problems ? 'cannot be delivered: ' + problems.join('; ') : 'ok'),
        el('td', {},
          el('button', { type: 'button', onclick: () => editGroup(g) }, 'Edit'),
          el('button', { type: 'button', onclick: () => deleteGroup(g) }, 'Delete'))));
    }
    renderGroupLayers();
  }

  function renderGroupLayers() {
    const box = clear($('g-layers'));
    const chosen = new Set(((editing && editing.disks) || []).map((d) => `${d.prefix}_${d.dif_level}_${d.uuid}`));
    for (const img of S.images.images || []) {
      box.append(el('label', { class: 'inline' },
        el('input', { type: 'checkbox', class: 'g-layer', value: img.layer, checked: chosen.has(img.layer) }),
        `${img.layer} (${size(img.length)}${img.parent ? ', on ' + img.parent : ''})`), el('br'));
    }
  }

  function newUuid() {
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  function editGroup(g) {
    editing = g;
    $('group-legend').textContent = g ? `Edit ${g.desktop_group_name}` : 'New desktop group';
    $('g-name').value = g ? g.desktop_group_name : '';
    $('g-uuid').value = g ? g.desktop_group_uuid : newUuid();
    $('g-uuid').readOnly = !!g;
    $('g-default').checked = g ? !!g.default_desktop_group : false;
    $('g-restore').checked = g ? Number(g.desktop_group_restore) === 1 : false;
    $('g-diff-mode').value = String(g ? Number(g.diff_mode) || 0 : 0);
    $('g-os').value = String(g ? Number(g.os_sys_type) || 0 : 3);
    const fixed = g && Number(g.desktop_is_dhcp) === 0 && g.desktop_ip;
    $('g-dhcp').checked = !fixed;
    $('g-ip').value = fixed ? g.desktop_ip : '';
    $('g-mask').value = (fixed && g.desktop_mask) || '255.255.255.0';
    $('g-gateway').value = fixed ? g.desktop_gateway || '' : '';
    $('g-dns1').value = fixed ? g.desktop_dns1 || '' : '';
    $('g-dns2').value = fixed ? g.desktop_dns2 || '' : '';
    $('g-error').textContent = '';
    renderGroupLayers();
  }

  async function saveGroup() {
    const picked = [...document.querySelectorAll('.g-layer:checked')].map((b) => b.value);
    const disks = [];
    for (const name of picked) {
      const m = LAYER.exec(name);
      if (!m) continue;
      const [, prefix, level, uuid] = m;
      const old = editing && (editing.disks || []).find((d) => d.uuid === uuid && d.dif_level === Number(level));
      const img = (S.images.images || []).find((i) => i.layer === name);
      disks.push(Object.assign({}, old || {
        type: 0, max_dif: 2, operate_id: 0, reserve_size: 0,
      }, {
        uuid, prefix, dif_level: Number(level),
        // The disk the guest sees: the image's virtual size, in sectors
        // (not the file's length, which grows with what is written).
        real_size: Math.ceil(((img && (img.virtual_size || img.length)) || 0) / 512),
      }));
    }
    if (!disks.length) {
      $('g-error').textContent = 'pick at least one layer';
      return;
    }
    const dhcp = $('g-dhcp').checked;
    const net = {
      ip: $('g-ip').value.trim(), mask: $('g-mask').value.trim(), gateway: $('g-gateway').value.trim(),
      dns1: $('g-dns1').value.trim(), dns2: $('g-dns2').value.trim(),
    };
    if (!dhcp) {
      const bad = networkError(net);
      if (bad) {
        $('g-error').textContent = 'desktop address: ' + bad;
        return;
      }
    }
    const group = Object.assign({}, editing || {}, {
      os_sys_type: Number($('g-os').value),
      desktop_group_name: $('g-name').value.trim(),
      desktop_group_uuid: $('g-uuid').value.trim(),
      default_desktop_group: $('g-default').checked,
      desktop_group_restore: $('g-restore').checked ? 1 : 0,
      diff_mode: Number($('g-diff-mode').value),
      desktop_is_dhcp: dhcp ? 1 : 0,
      desktop_ip: dhcp ? '' : net.ip,
      desktop_mask: dhcp ? '' : net.mask,
      desktop_gateway: dhcp ? '' : net.gateway,
      desktop_dns1: dhcp ? '' : net.dns1,
      desktop_dns2: dhcp ? '' : net.dns2,
      disks,
    });
    const r = await api('PUT', '/api/v1/desktop_groups', group);
    $('g-error').textContent = r.code === 0 ? 'saved' : `${r.code} ${r.msg}`;
    if (r.code === 0) {
      editGroup(null);
      refreshAll();
    }
  }

  async function deleteGroup(g) {
    if (!confirm(`Delete desktop group ${g.desktop_group_name}?`)) return;
    await api('DELETE', `/api/v1/desktop_groups/${encodeURIComponent(g.desktop_group_uuid)}`);
    refreshAll();
  }

  // ---- image library ---------------------------------------------------

  function size(n) {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    let v = Number(n) || 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i += 1; }
    return `${v.toFixed(i ? 1 : 0)} ${u[i]}`;
  }

  async function loadImages() {
    const r = await api('GET', '/api/v1/images');
    if (r.code !== 0) return;
    S.images = r.data;
    if (S.view === 'images') { renderImages(); loadUpgrades(); }
    if (S.view === 'groups') renderGroups();
  }

  async function loadUpgrades() {
    const r = await api('GET', '/api/v1/upgrades');
    if (r.code !== 0) return;
    const body = clear(document.querySelector('#packages tbody'));
    for (const p of r.data.packages) {
      body.append(el('tr', {}, el('td', {}, p.platform), el('td', {}, p.version), el('td', {}, size(p.size)),
        el('td', { class: 'mac' }, p.sha256.slice(0, 16) + '…')));
    }
    const byVersion = new Map();
    for (const t of r.data.terminals) {
      const v = t.version || '?';
      if (!byVersion.has(v)) byVersion.set(v, []);
      byVersion.get(v).push(t);
    }
    const vb = clear(document.querySelector('#agent-versions tbody'));
    for (const [v, ts] of [...byVersion.entries()].sort()) {
      const last = ts.map((t) => t.upgrade ? `${t.mac}: ${t.upgrade.state} ${t.upgrade.version}${t.upgrade.reason ? ' (' + t.upgrade.reason + ')' : ''}` : '').filter((x) => x);
      vb.append(el('tr', { dataset: { version: v } }, el('td', {}, v), el('td', {}, String(ts.length)),
        el('td', {}, ts.map((t) => t.name || t.mac).join(', ')), el('td', {}, last.join('; '))));
    }
  }

  function renderImages() {
    const body = clear(document.querySelector('#images tbody'));
    for (const img of S.images.images || []) {
      const bars = [];
      for (const [mac, tasks] of Object.entries(S.images.progress || {})) {
        const task = tasks[img.layer];
        if (!task) continue;
        const t = S.terminals.get(mac);
        bars.push(el('div', { class: 'bar-label' }, `${mac} ${t && t.name ? t.name : ''}`),
          bar(mac, { layer: img.layer, progress: task.progress, result: null }));
      }
      body.append(el('tr', {},
        el('td', {}, img.layer), el('td', {}, size(img.length)), el('td', {}, img.parent || ''),
        el('td', {}, img.state), el('td', {}, size(img.uploaded_bytes)), el('td', {}, bars)));
    }
    const refused = clear(document.querySelector('#refused tbody'));
    for (const r of S.images.refused || []) {
      refused.append(el('tr', { dataset: { file: r.file } }, el('td', {}, r.file), el('td', { class: 'error' }, r.reason)));
    }
    const up = clear(document.querySelector('#uploads tbody'));
    for (const u of S.images.uploads || []) {
      // An upload waits for an operator before it is signed, seeded or
      // offered to any group (issue 38.2).
      const verdict = el('td', {});
      if (u.state === 'review') {
        const decide = async (v) => {
          const r = await api('POST', `/api/v1/uploads/${encodeURIComponent(u.torrent_id)}/${v}`);
          if (r.code !== 0) alert(r.msg);
          loadImages();
        };
        verdict.append(
          el('button', { type: 'button', onclick: () => decide('accept') }, 'Accept into the library'), ' ',
          el('button', { type: 'button', onclick: () => decide('reject') }, 'Reject'));
      }
      up.append(el('tr', { dataset: { upload: u.torrent_id || '' } }, el('td', {}, u.layer || ''), el('td', {}, u.mac || ''),
        el('td', {}, u.state === 'review' ? 'awaiting review' : (u.state || JSON.stringify(u))), verdict));
    }
    $('bt-port').textContent = S.images.bt_port ? `seeder on BitTorrent port ${S.images.bt_port}` : '';
  }

  // ---- numbering -------------------------------------------------------

  async function loadOrder() {
    const r = await api('GET', '/api/v1/order');
    const body = clear(document.querySelector('#order tbody'));
    const o = r.code === 0 ? r.data.order : null;
    if (!o) {
      $('o-status').textContent = 'No numbering session.';
      return;
    }
    $('o-status').textContent = `Numbering from ${o.start_id}; next proposal ${o.current_id}; ${Object.keys(o.confirmed).length} of ${o.macs.length} confirmed.`;
    for (const mac of o.macs) {
      const t = S.terminals.get(mac);
      const n = o.confirmed[mac];
      body.append(el('tr', {}, el('td', {}, mac), el('td', {}, t ? t.name : ''), el('td', {}, n === undefined ? 'waiting' : n)));
    }
  }

  // ---- class schedule ----------------------------------------------------

  async function loadSchedule() {
    const r = await api('GET', '/api/v1/schedule');
    if (r.code !== 0) { $('s-error').textContent = `${r.code} ${r.msg}`; return; }
    S.schedule = r.data.entries;
    $('s-clock').textContent = `Server clock: ${r.data.now}. Times are the server's local time; what falls while it is down is not replayed.`;
    const body = clear(document.querySelector('#schedule tbody'));
    for (const e of S.schedule) {
      const rm = el('button', { type: 'button', onclick: () => saveSchedule(S.schedule.filter((x) => x.id !== e.id)) }, 'Remove');
      body.append(el('tr', { dataset: { id: e.id } },
        el('td', {}, e.room), el('td', {}, e.days.length ? e.days.join(', ') : 'every day'), el('td', {}, e.at),
        el('td', {}, e.action === 'shutdown' ? 'shut down' : 'wake'), el('td', {}, (e.unless || []).join(', ')),
        el('td', {}, e.action === 'shutdown' ? `${e.warn_secs} s before` : ''), el('td', {}, rm)));
    }
    const runs = clear($('s-runs'));
    for (const run of [...r.data.runs].reverse()) {
      const who = (m) => { const t = S.terminals.get(m); return t && t.name ? `${t.name} (${m})` : m; };
      runs.append(el('li', {}, `${run.at} ${run.room} ${run.what}: ` + run.terminals.map(([m, t]) => `${who(m)} ${t}`).join('; ')));
    }
  }

  async function saveSchedule(entries) {
    const r = await api('PUT', '/api/v1/schedule', entries);
    $('s-error').textContent = r.code === 0 ? '' : r.msg;
    if (r.code === 0) loadSchedule();
    return r.code === 0;
  }

  async function loadAudit() {
    const r = await api('GET', '/api/v1/audit?limit=200');
    if (r.code !== 0) return;
    const body = clear(document.querySelector('#audit tbody'));
    for (const a of r.data.entries) {
      body.append(el('tr', { class: a.status < 400 ? '' : 'fail' },
        el('td', {}, a.at.slice(0, 19).replace('T', ' ')), el('td', {}, a.who), el('td', {}, a.from),
        el('td', {}, a.action), el('td', { class: 'mac' }, a.terminals.join(', ')),
        el('td', {}, `${a.status} ${a.result}`)));
    }
  }

  // ---- views -----------------------------------------------------------

  function route() {
    if (!S.token) return;
    const hash = decodeURIComponent(location.hash.slice(1)) || 'terminals';
    const [view, arg] = hash.split('/');
    S.view = view === 'terminal' && arg ? 'terminal' : (['terminals', 'groups', 'images', 'numbering', 'schedule', 'audit', 'events'].includes(view) ? view : 'terminals');
    S.detail = S.view === 'terminal' ? arg : null;
    for (const v of document.querySelectorAll('.view')) v.hidden = v.id !== 'view-' + S.view;
    for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.view === (S.view === 'terminal' ? 'terminals' : S.view));
    if (S.view === 'terminals') renderTerminals();
    if (S.view === 'terminal') {
      $('t-result').textContent = '';
      loadDetail();
    }
    if (S.view === 'groups') { editGroup(null); loadImages(); renderGroups(); }
    if (S.view === 'images') loadImages();
    if (S.view === 'numbering') loadOrder();
    if (S.view === 'schedule') loadSchedule();
    if (S.view === 'audit') loadAudit();
    if (S.view === 'events') {
      const list = clear($('events'));
      for (const e of [...S.events].reverse()) list.append(eventItem(e));
    }
  }

  function wire() {
    $('login-form').addEventListener('submit', (e) => { e.preventDefault(); login($('token').value); });
    $('logout').addEventListener('click', () => logout(''));
    window.addEventListener('hashchange', route);
    $('filter').addEventListener('input', renderTerminals);
    for (const th of document.querySelectorAll('#terminals th[data-sort]')) {
      th.addEventListener('click', () => {
        const k = th.dataset.sort;
        S.sort = { key: k, desc: S.sort.key === k ? !S.sort.desc : false };
        renderTerminals();
      });
    }
    $('select-all').addEventListener('change', (e) => {
      for (const t of sorted()) {
        if (e.target.checked) S.selected.add(t.mac); else S.selected.delete(t.mac);
      }
      renderTerminals();
    });
    $('room-send').addEventListener('click', () => {
      const g = $('room-group').value;
      if (!g) { clear($('room-results')).append(el('li', { class: 'fail' }, 'No desktop group exists yet.')); return; }
      roomAction('send desktop', (mac) => sendDesktop(mac, g));
    });
    $('room-restart').addEventListener('click', () => {
      if (confirm(`Restart ${S.selected.size} terminal(s)?`)) roomAction('restart', (mac) => push(mac, 'restart'));
    });
    $('room-watermark-on').addEventListener('click', () => roomAction('watermark on', (mac) => push(mac, 'watermark_switch', { switch: 1 })));
    $('room-watermark-off').addEventListener('click', () => roomAction('watermark off', (mac) => push(mac, 'watermark_switch', { switch: 0 })));
    $('room-wake').addEventListener('click', () => roomAction('wake', wake));
    $('room-set').addEventListener('click', () => {
      const room = $('room-name').value.trim();
      roomAction(`room ${room || '(none)'}`, (mac) => setRoom(mac, room).then((r) => { refreshAll(); return r; }));
    });
    $('t-wake').addEventListener('click', async () => {
      $('t-result').textContent = 'wake: sent…';
      const li = el('li');
      showOutcome(li, S.detail, await wake(S.detail));
      $('t-result').textContent = li.textContent;
    });
    $('schedule-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const days = $('s-days').value.split(',').map((d) => d.trim()).filter((d) => d);
      const entry = {
        room: $('s-room').value.trim(), days, at: $('s-at').value.trim(), action: $('s-action').value,
        unless: $('s-unless').checked ? ['downloading'] : [],
        warn_secs: Number($('s-warn').value || 0),
      };
      if (await saveSchedule([...(S.schedule || []), entry])) $('schedule-form').reset();
    });
    $('t-rename-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const name = $('t-name').value.trim();
      const bad = nameError(name);
      if (bad) { $('t-result').textContent = `name: ${bad}`; return; }
      detailCommand('update_name', { name });
    });
    for (const b of document.querySelectorAll('#view-terminal button[data-cmd]')) {
      b.addEventListener('click', () => {
        const cmd = b.dataset.cmd;
        if ((cmd === 'shutdown' || cmd === 'restart' || cmd === 'pxe_start') && !confirm(`${b.textContent}: are you sure?`)) return;
        detailCommand(cmd, b.dataset.params ? JSON.parse(b.dataset.params) : {});
      });
    }
    $('t-forget').addEventListener('click', async () => {
      const mac = S.detail;
      if (!mac || !confirm(`Forget ${mac}? Its record, name and reports are dropped; the terminal is not told.`)) return;
      const r = await api('DELETE', `/api/v1/terminals/${encodeURIComponent(mac)}`);
      $('t-result').textContent = r.code === 0 ? `${mac} forgotten` : `${r.code} ${r.msg}`;
      if (r.code === 0) {
        S.terminals.delete(mac);
        location.hash = '#terminals';
        refreshAll();
      }
    });
    $('t-send').addEventListener('click', async () => {
      const g = $('t-group').value;
      $('t-result').textContent = 'send desktop: sent…';
      const r = await sendDesktop(S.detail, g);
      const li = el('li');
      showOutcome(li, S.detail, r);
      $('t-result').textContent = li.textContent;
    });
    $('t-net-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const f = {
        ip: $('n-ip').value.trim(), mask: $('n-mask').value.trim(), gateway: $('n-gateway').value.trim(),
        dns1: $('n-dns1').value.trim(), dns2: $('n-dns2').value.trim(),
      };
      const bad = networkError(f);
      $('n-error').textContent = bad;
      if (!bad) detailCommand('update_ip', f);
    });
    $('group-form').addEventListener('submit', (e) => { e.preventDefault(); saveGroup(); });
    $('g-new').addEventListener('click', () => editGroup(null));
    $('rescan').addEventListener('click', async () => {
      await api('POST', '/api/v1/images', {});
      loadImages();
    });
    $('order-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const r = await api('POST', '/api/v1/order', { start_id: Number($('o-start').value), macs: [] });
      $('o-status').textContent = r.code === 0 ? '' : `${r.code} ${r.msg}`;
      if (r.code === 0) loadOrder();
    });
    $('o-cancel').addEventListener('click', async () => {
      await api('DELETE', '/api/v1/order');
      loadOrder();
    });
  }

  wire();
  if (S.token) login(S.token); else logout('');
})();
