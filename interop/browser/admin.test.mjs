// The admin page (/admin, docs/admin.md) in headless Chromium against a real
// `tidewire serve --admin-password ...`: a wrong password is refused, the right one typed
// and clicked logs in; the node's live connection and channel counts change as WebSocket
// clients (in another page) connect and subscribe; a channel's live tail shows what is
// published through the server API and through the page's publish form; a user is
// disconnected and blocked from the page, and unblocked; logging out shows the login form.
// Screenshots: screenshots/admin-*.png. Run through interop/browser/run.sh.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { launch, evaluate, screenshot, startServe, waitFor, withTimeout, STEP_TIMEOUT_MS } from './lib.mjs';

const PASSWORD = 'browser admin password 42';
const SECRET = 'browser-admin-secret-0123456789-abcdefgh';
const KEY = 'browser-admin-api-key-0123';
/** One page step: every wait below is bounded by this. */
const STEP = 10_000;

let browser;
before(async () => { browser = await launch(); });
after(async () => { await withTimeout(browser.close(), STEP_TIMEOUT_MS, 'closing Chromium').catch(() => {}); });

function jwt(sub) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const claims = { sub, exp: Math.floor(Date.now() / 1000) + 3600 };
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${createHmac('sha256', SECRET).update(signed).digest('base64url')}`;
}

async function open(url, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  if (process.env.BROWSER_VERBOSE) page.on('console', (m) => console.log(`[page] ${m.text()}`));
  const resp = await page.goto(url, { waitUntil: 'load' });
  return { page, context, errors, status: resp.status() };
}

/** POST /api/METHOD with the API key, from Node. */
async function api(base, method, params) {
  const r = await withTimeout(fetch(`${base}/api/${method}`, {
    method: 'POST',
    headers: { authorization: `apikey ${KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify(params),
  }), STEP, `POST /api/${method}`);
  const body = await r.json();
  assert.equal(r.status, 200, `${method}: ${JSON.stringify(body)}`);
  return body;
}

const text = (page, sel) => evaluate(page, (s) => document.querySelector(s)?.textContent ?? '', sel);
const until = (page, what, fn, arg) => waitFor(page, fn, arg, { what, timeout: STEP });

test('the admin page: login, live counts, live tail, publish, disconnect and block', async () => {
  const srv = await startServe(['--admin-password', PASSWORD, '--api-key', KEY, '--auth-hmac-secret', SECRET, '--auth-anonymous']);
  try {
    // --- login: the form, a wrong password, then the right one typed and clicked.
    const admin = await open(`${srv.base}/admin`);
    const { page } = admin;
    assert.equal(admin.status, 200);
    await page.fill('#password', 'not the password');
    await Promise.all([page.waitForNavigation({ timeout: STEP }), page.click('#login')]);
    assert.match(await text(page, '#login-error'), /wrong password/);
    await screenshot(page, 'admin-login');
    await page.fill('#password', PASSWORD);
    await Promise.all([page.waitForNavigation({ timeout: STEP }), page.click('#login')]);
    assert.equal(new URL(page.url()).pathname, '/admin');
    await until(page, 'the counts', () => document.getElementById('total-connections').textContent === '0');
    assert.match(await text(page, '#engine'), /memory up/);
    const cookies = await admin.context.cookies();
    const session = cookies.find((c) => c.name === 'tidewire_admin');
    assert.ok(session && session.httpOnly && session.sameSite === 'Strict' && session.path === '/admin', JSON.stringify(cookies));

    // --- clients connect (in another page of the same server): the counts follow.
    const clients = await open(`${srv.base}/healthz`, { width: 400, height: 300 });
    await evaluate(clients.page, async ({ tokens }) => {
      window.sockets = {};
      window.closes = {};
      window.received = {};
      const connect = (name, query, channels) => new Promise((ok, fail) => {
        const ws = new WebSocket(`ws://${location.host}/ws${query}`, ['tidewire.v1']);
        window.sockets[name] = ws;
        window.received[name] = [];
        ws.onopen = () => channels.forEach((channel, i) => ws.send(JSON.stringify({ id: i + 1, op: 'subscribe', channel })));
        ws.onmessage = (e) => {
          const m = JSON.parse(e.data);
          window.received[name].push(m);
          if (m.id === channels.length) (m.ok ? ok() : fail(new Error(e.data)));
        };
        ws.onclose = (e) => { window.closes[name] = e.code; };
        setTimeout(() => fail(new Error(`${name} did not subscribe in 5 s`)), 5000);
      });
      await connect('ann', `?token=${tokens.ann}`, ['chat:lobby']);
      await connect('bob', `?token=${tokens.bob}`, ['chat:lobby']);
      await connect('ticker', '', ['live:ticks']);
    }, { tokens: { ann: jwt('ann'), bob: jwt('bob') } });
    await until(page, '3 connections, 3 subscriptions', () => document.getElementById('total-connections').textContent === '3'
      && document.getElementById('total-subscriptions').textContent === '3');
    await until(page, 'chat:lobby with 2 subscribers', (name) => {
      const row = [...document.querySelectorAll('#channels tbody tr')].find((r) => r.dataset.channel === name);
      return row && row.cells[1].textContent === '2';
    }, 'chat:lobby');
    // The demo ticker publishes on live:ticks every 100 ms: its rate shows about 10/s.
    await until(page, 'the ticker\'s rate', () => {
      const row = [...document.querySelectorAll('#channels tbody tr')].find((r) => r.dataset.channel === 'live:ticks');
      const rate = row && Number(row.cells[3].textContent);
      return rate > 5 && rate < 15;
    });
    const nodeRow = await evaluate(page, () => [...document.querySelector('#nodes tbody tr').cells].map((c) => c.textContent));
    assert.deepEqual(nodeRow.slice(1, 4), ['3', '3', '2'], JSON.stringify(nodeRow));

    // --- the live tail of chat:lobby: publications through the API appear.
    await page.click('#channels tbody tr[data-channel="chat:lobby"] button');
    await until(page, 'the tail is live', () => document.getElementById('tail-state').textContent === 'live');
    await until(page, 'presence lists ann and bob', () => {
      const t = document.getElementById('tail-presence').textContent;
      return t.includes('ann') && t.includes('bob');
    });
    for (let n = 1; n <= 3; n++) await api(srv.base, 'publish', { channel: 'chat:lobby', data: { text: `from the API ${n}` } });
    await until(page, 'the API\'s publications on the tail', () => {
      const lines = [...document.querySelectorAll('#tail-log .pub')].map((l) => l.textContent);
      return lines.length === 3 && lines[2].includes('#3') && lines[2].includes('from the API 3');
    });

    // --- the publish form: on the tail, and at ann's client.
    await page.fill('#pub-channel', 'chat:lobby');
    await page.fill('#pub-data', '{"text": "from the form <b>not bold</b>"}');
    await page.click('#pub-send');
    await until(page, 'published', () => /Published on chat:lobby at offset 4/.test(document.getElementById('pub-result').textContent));
    await until(page, 'the form\'s publication on the tail', () => document.getElementById('tail-log').textContent.includes('from the form <b>not bold</b>'));
    assert.equal(await evaluate(page, () => document.querySelectorAll('#tail-log b').length), 0, 'data is shown as text');
    await until(clients.page, 'ann got it', () => window.received.ann.some((m) => m.offset === 4 && m.data.text.startsWith('from the form')));
    await until(page, 'the rate of chat:lobby', (name) => {
      const row = [...document.querySelectorAll('#channels tbody tr')].find((r) => r.dataset.channel === name);
      return row && row.cells[2].textContent === '4' && Number(row.cells[3].textContent) > 0;
    }, 'chat:lobby');
    await screenshot(page, 'admin-dashboard');
    // Data that is not JSON is refused in the page, with the reason; fixed, it goes.
    await page.fill('#pub-data', '{oops');
    await page.click('#pub-send');
    await until(page, 'the JSON error', () => document.getElementById('pub-result').textContent.startsWith('Data must be JSON'));
    await page.fill('#pub-data', '{"text": "fixed"}');
    await page.click('#pub-send');
    await until(page, 'published again', () => /at offset 5$/.test(document.getElementById('pub-result').textContent));

    // --- disconnect bob (4500): his socket closes, the counts and the tail follow.
    await page.fill('#user-id', 'bob');
    await page.click('#user-disconnect');
    await until(page, 'disconnected', () => document.getElementById('user-result').textContent.includes('Disconnected bob'));
    await until(clients.page, 'bob closed with 4500', () => window.closes.bob === 4500);
    assert.equal(await evaluate(clients.page, () => window.closes.ann), undefined);
    await until(page, '2 connections', () => document.getElementById('total-connections').textContent === '2');
    await until(page, 'bob left, on the tail', () => document.getElementById('tail-log').textContent.includes('left: bob'));

    // --- block ann (4501): closed, listed, refused when she comes back; then unblocked.
    await page.fill('#user-id', 'ann');
    await page.click('#user-block');
    await until(clients.page, 'ann closed with 4501', () => window.closes.ann === 4501);
    await until(page, 'ann listed as blocked', () => document.getElementById('blocked').textContent.includes('ann'));
    await until(page, '1 connection', () => document.getElementById('total-connections').textContent === '1');
    // The tail still follows chat:lobby, but is not a subscriber: one channel, live:ticks.
    await until(page, 'chat:lobby gone from the counts', () => document.getElementById('total-channels').textContent === '1'
      && document.querySelector('#nodes tbody tr').cells[3].textContent === '1');
    const refused = await evaluate(clients.page, (token) => new Promise((ok) => {
      const ws = new WebSocket(`ws://${location.host}/ws?token=${token}`, ['tidewire.v1']);
      ws.onopen = () => ok('open');
      ws.onclose = (e) => ok(`closed ${e.code}`);
      setTimeout(() => ok('timeout'), 5000);
    }), jwt('ann'));
    assert.equal(refused, 'closed 1006', 'a blocked user is refused at the upgrade');
    await screenshot(page, 'admin-blocked');
    await page.click('#blocked button');
    await until(page, 'nobody blocked', () => document.getElementById('blocked').textContent === 'nobody');
    const back = await evaluate(clients.page, (token) => new Promise((ok) => {
      const ws = new WebSocket(`ws://${location.host}/ws?token=${token}`, ['tidewire.v1']);
      ws.onopen = () => ok('open');
      ws.onclose = (e) => ok(`closed ${e.code}`);
      setTimeout(() => ok('timeout'), 5000);
    }), jwt('ann'));
    assert.equal(back, 'open');

    // --- on a phone's width nothing scrolls sideways.
    await page.setViewportSize({ width: 400, height: 800 });
    await until(page, 'no sideways scroll at 400 px', () => document.documentElement.scrollWidth <= window.innerWidth);
    await screenshot(page, 'admin-narrow');
    await page.setViewportSize({ width: 1280, height: 900 });

    // --- log out: the login form again, and the data is refused.
    await Promise.all([page.waitForNavigation({ timeout: STEP }), page.click('#logout')]);
    await until(page, 'the login form', () => document.getElementById('password') !== null);
    const status = await evaluate(page, async () => (await fetch('/admin/api/overview')).status);
    assert.equal(status, 401);
    assert.deepEqual([...admin.errors, ...clients.errors], []);
    await admin.context.close();
    await clients.context.close();
  } finally {
    await srv.stop();
  }
});
