// The server API acting on a user who has the chat page open in Chromium, as that user
// would see it: `POST /api/disconnect` closes both tabs of the user with 4500 and the
// reason, the page says so and neither tab reconnects (watched for 7 s, longer than any
// first reconnect delay, counting WebSockets in the page and on the server's /metrics);
// `POST /api/block_user` closes the tab with 4501, and a reload is refused with the reason
// on the page until `unblock_user`. The tabs get their token the way a person would: from
// `tidewire gentoken`, in the page's `?token=`. Run through interop/browser/run.sh.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, evaluate, screenshot, startServe, waitFor, withTimeout, runCapture, tidewireBin, STEP_TIMEOUT_MS,
} from './lib.mjs';

const SECRET = 'browser-api-test-secret-0123456789-abcdef';
const API_KEY = 'browser-api-test-key-0123456789';
/** The client retries at most 0.5 s after a close, then within 1 s and 2 s more (initialDelay 500 ms, full jitter): 7 s would see several attempts. */
const WATCH_MS = 7_000;

let browser;
before(async () => { browser = await launch(); });
after(async () => { await withTimeout(browser.close(), STEP_TIMEOUT_MS, 'closing Chromium').catch(() => {}); });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** `tidewire serve` with auth (HS256) and the server API on. */
const serve = () => startServe(['--auth-hmac-secret', SECRET, '--api-key', API_KEY]);

/** A token for `user`, made with the command the pages name. */
async function gentoken(user) {
  const r = await runCapture(tidewireBin(), ['gentoken', '--user', user, '--auth-hmac-secret', SECRET]);
  assert.equal(r.code, 0, `tidewire gentoken: ${r.stderr}`);
  return r.stdout.trim();
}

/** POST /api/METHOD with the API key. */
async function api(srv, method, params) {
  const r = await withTimeout(fetch(`${srv.base}/api/${method}`, {
    method: 'POST',
    headers: { authorization: `apikey ${API_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(params),
  }), STEP_TIMEOUT_MS, `POST /api/${method}`);
  const body = await r.text();
  assert.equal(r.status, 200, `POST /api/${method} ${JSON.stringify(params)}: ${r.status} ${body}`);
  return JSON.parse(body);
}

/** WebSocket connections the server accepted since it started, and those open on /ws. */
async function wsMetrics(srv) {
  const text = await withTimeout(fetch(`${srv.base}/metrics`).then((r) => r.text()), STEP_TIMEOUT_MS, 'GET /metrics');
  const num = (re) => {
    const m = text.match(re);
    assert.ok(m, `/metrics has ${re}`);
    return Number(m[1]);
  };
  return { total: num(/^tidewire_connections_total (\d+)$/m), open: num(/^tidewire_connections\{endpoint="ws"\} (\d+)$/m) };
}

/**
 * A browser context (one person's browser: its tabs share it) whose pages count the
 * WebSockets they open and record how each one closed, in `window.sockets`.
 */
async function personBrowser() {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  await context.addInitScript(() => {
    const Native = window.WebSocket;
    window.sockets = [];
    window.WebSocket = class extends Native {
      constructor(url, protocols) {
        super(url, protocols);
        const rec = { url: String(url), at: Date.now(), close: null };
        window.sockets.push(rec);
        this.addEventListener('close', (e) => { rec.close = { code: e.code, reason: e.reason, at: Date.now() }; });
      }
    };
  });
  return context;
}

/** Opens `url` in a new tab of `context`. */
async function tab(context, url) {
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  if (process.env.BROWSER_VERBOSE) page.on('console', (m) => console.log(`[page] ${m.text()}`));
  const resp = await page.goto(url, { waitUntil: 'load' });
  assert.ok(resp.ok(), `GET ${url}: ${resp.status()}`);
  return { page, errors };
}

const stateIs = (page, want, what, timeout) => waitFor(page, (w) => document.getElementById('state').textContent === w, want, { what, timeout })
  .catch(async (e) => { throw new Error(`${e.message}: the page shows "${await evaluate(page, () => document.getElementById('state').textContent)}"`); });
const banner = (page) => evaluate(page, () => {
  const b = document.getElementById('banner');
  return { shown: b.classList.contains('show'), text: b.textContent };
});
const sockets = (page) => evaluate(page, () => window.sockets);
const text = (page, sel) => evaluate(page, (s) => document.querySelector(s)?.textContent ?? null, sel);

test('POST /api/disconnect: both tabs of the user show the close (4500 and the reason) and do not reconnect', async () => {
  const srv = await serve();
  const ann = await personBrowser();
  const bob = await personBrowser();
  try {
    const annToken = await gentoken('ann');
    const url = `${srv.base}/chat?room=signout&nick=ann&token=${encodeURIComponent(annToken)}`;
    const t1 = await tab(ann, url);
    const t2 = await tab(ann, url);
    const b = await tab(bob, `${srv.base}/chat?room=signout&nick=bob&token=${encodeURIComponent(await gentoken('bob'))}`);
    for (const [x, who] of [[t1, 'tab 1'], [t2, 'tab 2'], [b, 'bob']]) await stateIs(x.page, 'connected', `${who} connected`);
    // The connections are listed for the API once connect is answered; presence shows all three.
    await waitFor(t1.page, () => document.querySelectorAll('#people li').length === 3, null, { what: 'three here' });
    const before = await wsMetrics(srv);
    assert.equal(before.open, 3, `open WebSockets: ${JSON.stringify(before)}`);

    const reason = 'signed out by the admin';
    assert.deepEqual(await api(srv, 'disconnect', { user: 'ann', reason }), {});
    for (const [x, who] of [[t1, 'tab 1'], [t2, 'tab 2']]) {
      await stateIs(x.page, 'disconnected by the server', `${who}: disconnected by the server`, 10_000);
      const shown = await banner(x.page);
      assert.ok(shown.shown, `${who}: the banner is shown`);
      assert.match(shown.text, /^Disconnected by the server: signed out by the admin \(close code 4500\)\. Not reconnecting: reload the page to connect again\.$/, `${who}: ${shown.text}`);
      const [ws] = await sockets(x.page);
      assert.deepEqual({ code: ws.close?.code, reason: ws.close?.reason }, { code: 4500, reason }, `${who}: the WebSocket's close event`);
      assert.equal(await evaluate(x.page, () => document.querySelectorAll('#people li').length), 0, `${who}: nobody is shown as here`);
    }
    await screenshot(t1.page, 'hub-api-disconnected');
    const closedAt = Date.now();

    // Watched for longer than any reconnect delay: no tab of ann's opens a WebSocket again.
    await sleep(WATCH_MS);
    for (const [x, who] of [[t1, 'tab 1'], [t2, 'tab 2']]) {
      const ws = await sockets(x.page);
      assert.equal(ws.length, 1, `${who} opened ${ws.length} WebSockets: ${JSON.stringify(ws)}`);
      assert.equal(await evaluate(x.page, () => window.tidewireClient.state), 'disconnected');
      assert.equal(await text(x.page, '#state'), 'disconnected by the server', `${who} still says so`);
    }
    const later = await wsMetrics(srv);
    assert.deepEqual(later, { total: before.total, open: 1 }, `the server saw no new connection in ${Date.now() - closedAt} ms; bob's is open`);
    // Bob, another user, was not touched.
    assert.equal(await text(b.page, '#state'), 'connected');
    assert.equal((await sockets(b.page)).length, 1);
    assert.equal((await banner(b.page)).shown, false);
    assert.deepEqual([...t1.errors, ...t2.errors, ...b.errors], [], 'page errors');
  } finally {
    await ann.close().catch(() => {});
    await bob.close().catch(() => {});
    await srv.stop();
  }
});

test('POST /api/block_user: the tab is closed with 4501, a reload is refused with the reason shown, unblock lets it back', async () => {
  const srv = await serve();
  const mal = await personBrowser();
  try {
    const url = `${srv.base}/chat?room=blocked&nick=mal&token=${encodeURIComponent(await gentoken('mal'))}`;
    const t = await tab(mal, url);
    await stateIs(t.page, 'connected', 'connected');
    assert.deepEqual(await api(srv, 'block_user', { user: 'mal' }), {});
    await stateIs(t.page, 'blocked', 'the page says blocked', 10_000);
    let shown = await banner(t.page);
    assert.ok(shown.shown, 'banner shown');
    assert.match(shown.text, /^Blocked by the server: blocked \(close code 4501\)\. Not reconnecting\.$/, shown.text);
    assert.deepEqual((await sockets(t.page)).map((s) => s.close && [s.close.code, s.close.reason]), [[4501, 'blocked']]);

    // A reload (a new connection): refused at `connect` with the reason, which the page shows.
    const before = await wsMetrics(srv);
    await t.page.reload({ waitUntil: 'load' });
    await stateIs(t.page, 'blocked', 'after the reload: blocked', 10_000);
    shown = await banner(t.page);
    assert.match(shown.text, /^Blocked by the server: unauthorized: blocked \(close code 4501\)\. Not reconnecting\.$/, shown.text);
    await screenshot(t.page, 'hub-api-blocked');
    // The refusal is final: no retry (watched for 3 s, past the first reconnect delays).
    await sleep(3_000);
    const ws = await sockets(t.page);
    assert.deepEqual(ws.map((s) => s.close && [s.close.code, s.close.reason]), [[4501, 'unauthorized: blocked']], JSON.stringify(ws));
    assert.equal((await wsMetrics(srv)).total, before.total + 1, 'one connection attempt for the reload');
    assert.deepEqual(t.errors, [], 'page errors');

    // Unblocked: the next reload connects.
    assert.deepEqual(await api(srv, 'unblock_user', { user: 'mal' }), {});
    await t.page.reload({ waitUntil: 'load' });
    await stateIs(t.page, 'connected', 'connected after unblock_user', 10_000);
    assert.equal((await banner(t.page)).shown, false);
  } finally {
    await mal.close().catch(() => {});
    await srv.stop();
  }
});
