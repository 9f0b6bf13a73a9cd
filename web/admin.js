// The admin page (/admin): live counts from GET /admin/api/overview every 1.5 s, a live
// tail over the WebSocket /admin/tail, and the server API's methods through
// POST /admin/api/METHOD with the session's CSRF token (docs/admin.md). Everything from
// the server is shown as text (textContent), never as HTML.
'use strict';

const REFRESH_MS = 1500;
const RATE_WINDOW_MS = 10_000;
const TAIL_LINES = 300;

const $ = (id) => document.getElementById(id);
let csrf = '';
let csrfHeader = 'x-tidewire-csrf';
/** channel -> [{t, offset, epoch}], the samples of the last RATE_WINDOW_MS. */
const samples = new Map();

class SessionEnded extends Error {}

/** A JSON answer, or an Error with the server's message. */
async function answer(r) {
  if (r.status === 401) {
    location.reload(); // the login form
    throw new SessionEnded('the session has ended');
  }
  const body = await r.json().catch(() => null);
  if (!r.ok) throw new Error(body?.error?.message || `HTTP ${r.status}`);
  return body;
}

async function getJson(path) {
  return answer(await fetch(path, { cache: 'no-store', credentials: 'same-origin' }));
}

/** A server API method (docs/api.md); `body` is the JSON text of its parameters. */
async function call(method, body) {
  const r = await fetch(`/admin/api/${method}`, {
    method: 'POST',
    credentials: 'same-origin',
    headers: { 'content-type': 'application/json', [csrfHeader]: csrf },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return answer(r);
}

function el(tag, { text, cls, title } = {}, children = []) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = String(text);
  if (cls) e.className = cls;
  if (title) e.title = title;
  for (const c of children) e.append(c);
  return e;
}

function button(text, onClick, cls = 'small') {
  const b = el('button', { text, cls });
  b.type = 'button';
  b.addEventListener('click', onClick);
  return b;
}

const fmt = (n) => Number(n).toLocaleString('en-US');
const clock = (secs) => new Date(secs * 1000).toLocaleTimeString([], { hour12: false });
function when(secs) {
  const d = new Date(secs * 1000);
  return `${d.toLocaleDateString('en-CA')} ${d.toLocaleTimeString([], { hour12: false })}`;
}

function banner(text) {
  const b = $('banner');
  b.textContent = text || '';
  b.classList.toggle('show', Boolean(text));
}

function result(id, ok, text) {
  const r = $(id);
  r.textContent = text;
  r.className = `result ${ok ? 'ok' : 'bad'}`;
}

// ------------------------------------------------------------------ the counts

function renderNodes(nodes, now) {
  const body = $('nodes').tBodies[0];
  body.replaceChildren();
  for (const n of nodes) {
    const seen = Math.max(0, Math.round(now / 1000 - n.updated));
    body.append(el('tr', {}, [
      el('td', { text: n.name, cls: 'name' }),
      el('td', { text: fmt(n.connections), cls: 'num' }),
      el('td', { text: fmt(n.subscriptions), cls: 'num' }),
      el('td', { text: fmt(n.channels), cls: 'num' }),
      el('td', { text: when(n.started) }),
      el('td', { text: n.version }),
      el('td', { text: seen <= 1 ? 'now' : `${seen} s ago` }),
    ]));
  }
  const sum = (k) => nodes.reduce((s, n) => s + n[k], 0);
  $('total-connections').textContent = fmt(sum('connections'));
  $('total-subscriptions').textContent = fmt(sum('subscriptions'));
  $('total-nodes').textContent = fmt(nodes.length);
}

/** Publications per second over the samples of the window, or null without two. */
function rate(name, c, now) {
  let s = samples.get(name) || [];
  s.push({ t: now, offset: c.offset, epoch: c.epoch });
  s = s.filter((x) => x.epoch === c.epoch && now - x.t <= RATE_WINDOW_MS + REFRESH_MS);
  while (s.length > 2 && now - s[1].t >= RATE_WINDOW_MS) s.shift();
  samples.set(name, s);
  if (s.length < 2) return null;
  const first = s[0], last = s[s.length - 1];
  return (last.offset - first.offset) / ((last.t - first.t) / 1000);
}

function renderChannels(o) {
  const body = $('channels').tBodies[0];
  body.replaceChildren();
  const seen = new Set();
  for (const c of o.channels) {
    seen.add(c.name);
    const r = c.error ? null : rate(c.name, c, o.time_ms);
    const row = el('tr', {}, [
      el('td', { text: c.name, cls: 'name', title: c.name }),
      el('td', { text: fmt(c.subscribers), cls: 'num' }),
      el('td', { text: c.error ? '–' : fmt(c.offset), cls: 'num', title: c.error || `epoch ${c.epoch}` }),
      el('td', { text: r === null ? '–' : r.toFixed(1), cls: 'num rate' }),
      el('td', {}, [button('Tail', () => { $('tail-channel').value = c.name; openTail(c.name); })]),
    ]);
    row.dataset.channel = c.name;
    if (tail && tail.channel === c.name) row.classList.add('tailed');
    body.append(row);
  }
  for (const name of samples.keys()) if (!seen.has(name)) samples.delete(name);
  if (o.channels.length === 0) {
    body.append(el('tr', {}, [Object.assign(el('td', { text: 'no channel has subscribers', cls: 'empty' }), { colSpan: 5 })]));
  }
  $('total-channels').textContent = fmt(o.channels_total);
  $('channels-note').textContent = (o.channels_total > o.channels.length
    ? `The ${o.channels.length} of ${fmt(o.channels_total)} channels with the most subscribers. `
    : 'Channels with subscribers on any node. ')
    + 'Pub/s is the change of each channel\u2019s offset over the last 10 s, sampled by this page.';
}

function renderBlocked(blocked) {
  const list = $('blocked');
  list.replaceChildren();
  if (blocked.length === 0) list.append(el('li', { text: 'nobody', cls: 'muted' }));
  for (const b of blocked) {
    const until = b.until ? `until ${when(b.until)}` : 'until unblocked';
    list.append(el('li', {}, [
      el('span', { text: b.user, cls: 'who' }),
      el('span', { text: until, cls: 'muted small' }),
      button('Unblock', () => userAction('unblock_user', b.user)),
    ]));
  }
}

async function refresh() {
  try {
    const o = await getJson('/admin/api/overview');
    renderNodes(o.nodes, o.time_ms);
    renderChannels(o);
    renderBlocked(o.blocked);
    const engine = $('engine');
    engine.textContent = `${o.engine} ${o.up ? 'up' : 'down'}`;
    engine.className = `state ${o.up ? 'up' : 'down'}`;
    $('where').textContent = `node ${o.node}`;
    $('updated').textContent = `updated ${new Date(o.time_ms).toLocaleTimeString([], { hour12: false })}`;
    banner('');
    if (tail && tail.presence) await refreshPresence();
  } catch (e) {
    if (!(e instanceof SessionEnded)) banner(`Cannot read the server: ${e.message}. Trying again…`);
  }
}

// ------------------------------------------------------------------ the live tail

/** The open tail: { ws, channel, last: {offset, epoch} | null, stopped, retry, presence }. */
let tail = null;

function setTailState(text, cls) {
  const s = $('tail-state');
  s.textContent = text;
  s.className = `state ${cls || ''}`;
}

function tailLine(kind, off, text) {
  const log = $('tail-log');
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 30;
  const now = new Date().toLocaleTimeString([], { hour12: false });
  log.append(el('div', { cls: `line ${kind}` }, [
    el('span', { text: off, cls: 'off' }),
    el('span', { text: now, cls: 'time' }),
    el('span', { text, cls: kind === 'sys' ? 'sys data' : 'data' }),
  ]));
  while (log.childElementCount > TAIL_LINES) log.firstElementChild.remove();
  if (atBottom) log.scrollTop = log.scrollHeight;
}

function who(c) {
  return c.user ? `${c.user} (${c.client})` : `anonymous (${c.client})`;
}

function onTailMessage(t, text) {
  let m;
  try { m = JSON.parse(text); } catch { return; }
  if (m.tail) {
    t.retry = 0;
    setTailState('live', 'live');
    const from = `from offset ${fmt(m.tail.offset)} (epoch ${m.tail.epoch})`;
    if (m.tail.recovered === false) tailLine('sys', '', `reopened ${from}: publications since offset ${fmt(t.last.offset)} are no longer in history`);
    else if (m.tail.recovered === true) tailLine('sys', '', `reopened: nothing missed since offset ${fmt(t.last.offset)}`);
    else tailLine('sys', '', `tailing ${m.tail.channel} ${from}`);
    t.last = { offset: m.tail.offset, epoch: m.tail.epoch };
  } else if (m.error) {
    tailLine('sys', '', m.error);
  } else if (m.join) {
    tailLine('join', '+', `joined: ${who(m.join)}`);
    t.presence = true;
  } else if (m.leave) {
    tailLine('leave', '−', `left: ${who(m.leave)}`);
    t.presence = true;
  } else if ('offset' in m) {
    tailLine('pub', `#${m.offset}`, JSON.stringify(m.data));
    t.last = { offset: m.offset, epoch: m.epoch };
  }
}

/** Opens a tail of `channel`; with `reopen`, the same tail again from its last offset. */
function openTail(channel, reopen = false) {
  channel = channel.trim();
  if (!channel) return;
  let t;
  if (reopen && tail && tail.channel === channel) {
    t = tail;
  } else {
    stopTail(false);
    $('tail-log').replaceChildren();
    $('tail-presence-channel').textContent = channel;
    $('tail-presence').replaceChildren();
    if (!$('pub-channel').value) $('pub-channel').value = channel;
    t = { channel, last: null, stopped: false, retry: 0, presence: true };
    tail = t;
  }
  const q = new URLSearchParams({ channel });
  if (t.last) { q.set('offset', t.last.offset); q.set('epoch', t.last.epoch); }
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const ws = new WebSocket(`${scheme}://${location.host}/admin/tail?${q}`);
  t.ws = ws;
  setTailState(reopen ? 'reconnecting' : 'connecting', reopen ? 'reconnecting' : 'connecting');
  $('tail-stop').disabled = false;
  for (const row of $('channels').tBodies[0].rows) row.classList.toggle('tailed', row.dataset.channel === channel);
  ws.onmessage = (e) => onTailMessage(t, e.data);
  ws.onclose = (e) => {
    if (tail !== t || t.stopped || t.ws !== ws) return;
    if (e.code === 4001) { location.reload(); return; }
    if (e.code === 1011) { setTailState('failed', 'failed'); return; }
    // Fell behind (4000), the server restarted or the network failed: reopen from the
    // last offset seen, so that nothing is missed while history reaches back to it.
    t.retry += 1;
    const wait = Math.min(5000, 500 * t.retry);
    setTailState('reconnecting', 'reconnecting');
    tailLine('sys', '', `closed (${e.code}${e.reason ? `: ${e.reason}` : ''}); reopening in ${(wait / 1000).toFixed(1)} s`);
    setTimeout(() => { if (tail === t && !t.stopped) openTail(channel, true); }, wait);
  };
  if (!reopen) refreshPresence();
}

function stopTail(say = true) {
  if (!tail) return;
  tail.stopped = true;
  tail.ws.close(1000);
  if (say) tailLine('sys', '', 'stopped');
  tail = null;
  setTailState('closed');
  $('tail-stop').disabled = true;
  for (const row of $('channels').tBodies[0].rows) row.classList.remove('tailed');
}

async function refreshPresence() {
  const t = tail;
  if (!t) return;
  const list = $('tail-presence');
  let clients;
  try {
    clients = (await call('presence', { channel: t.channel })).clients;
  } catch (e) {
    if (tail !== t) return;
    t.presence = false; // not asked again until a join or leave shows there is presence
    list.replaceChildren(el('li', { text: e.message, cls: 'muted small' }));
    return;
  }
  if (tail !== t) return;
  list.replaceChildren();
  if (clients.length === 0) list.append(el('li', { text: 'nobody', cls: 'muted' }));
  for (const c of clients) {
    const li = el('li', {}, [el('span', { text: who(c), cls: 'who' })]);
    if (c.user) {
      li.append(button('Disconnect', () => userAction('disconnect', c.user)));
      li.append(button('Block', () => userAction('block_user', c.user)));
    }
    list.append(li);
  }
}

// ------------------------------------------------------------------ actions

async function publish(ev) {
  ev.preventDefault();
  const channel = $('pub-channel').value.trim();
  const raw = $('pub-data').value.trim();
  try { JSON.parse(raw); } catch (e) {
    result('pub-result', false, `Data must be JSON: ${e.message}`);
    return;
  }
  try {
    // The data as typed (checked above), not re-encoded.
    const p = await call('publish', `{"channel":${JSON.stringify(channel)},"data":${raw}}`);
    result('pub-result', true, `Published on ${channel} at offset ${fmt(p.offset)}`);
  } catch (e) {
    if (!(e instanceof SessionEnded)) result('pub-result', false, e.message);
  }
}

async function userAction(method, user = $('user-id').value.trim()) {
  if (!user) { result('user-result', false, 'Give a user'); return; }
  let params = { user };
  let done = '';
  if (method === 'disconnect') {
    const code = Number($('user-code').value);
    params = { user, code, reason: 'disconnected by an admin' };
    done = `Disconnected ${user}'s connections (${code})`;
  } else if (method === 'block_user') {
    const secs = Number($('block-for').value);
    if (secs) params.until = Math.floor(Date.now() / 1000) + secs;
    done = `Blocked ${user} ${secs ? `until ${when(params.until)}` : 'until unblocked'}; their connections were closed (4501)`;
  } else {
    done = `Unblocked ${user}`;
  }
  try {
    await call(method, params);
    result('user-result', true, done);
    refresh();
  } catch (e) {
    if (!(e instanceof SessionEnded)) result('user-result', false, e.message);
  }
}

async function logout() {
  stopTail(false);
  try {
    await fetch('/admin/logout', { method: 'POST', credentials: 'same-origin', headers: { [csrfHeader]: csrf } });
  } finally {
    location.href = '/admin';
  }
}

async function start() {
  $('tail-form').addEventListener('submit', (e) => { e.preventDefault(); openTail($('tail-channel').value); });
  $('tail-stop').addEventListener('click', () => stopTail());
  $('publish-form').addEventListener('submit', publish);
  $('user-form').addEventListener('submit', (e) => e.preventDefault());
  $('user-disconnect').addEventListener('click', () => userAction('disconnect'));
  $('user-block').addEventListener('click', () => userAction('block_user'));
  $('user-unblock').addEventListener('click', () => userAction('unblock_user'));
  $('logout').addEventListener('click', logout);
  try {
    const s = await getJson('/admin/api/session');
    csrf = s.csrf;
    csrfHeader = s.csrf_header;
    $('where').textContent = `node ${s.node}`;
    $('session').textContent = `session until ${clock(s.expires)}`;
  } catch (e) {
    if (!(e instanceof SessionEnded)) banner(`Cannot read the session: ${e.message}`);
    return;
  }
  // The next refresh is due REFRESH_MS after the last one ended: a slow engine must not
  // pile calls up.
  for (;;) {
    await refresh();
    await new Promise((ok) => setTimeout(ok, REFRESH_MS));
  }
}

start();
