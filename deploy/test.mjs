// The deployment of deploy/ from a browser: headless Chromium loads the hub's page over
// https:// through nginx, subscribes over wss:// with the hub's own JS client (web/lib) and
// records every publication (and, separately, every publication frame on the wire), while
// a numbered stream is published through nginx's /api/ with idempotency keys. The node that
// holds the page's WebSocket is found (GET /api/cluster) and SIGKILLed mid-stream: the page
// must reconnect through nginx to another node, resume with `since` (recovered: true), and
// end with every publication exactly once, in order. Then the node it moved to is stopped
// as systemd stops one (SIGTERM, --drain): 1012, and the same again on the last node.
// Run by deploy/test.sh, which starts Redis, the three nodes and nginx and passes them in
// DEPLOY_* variables.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import https from 'node:https';
import { readFileSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import {
  launch, evaluate, screenshot, waitFor, withTimeout, STEP_TIMEOUT_MS,
} from '../interop/browser/lib.mjs';

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run deploy/test.sh`);
  return v;
};
const BASE = env('DEPLOY_BASE'); // https://127.0.0.1:PORT (nginx)
const CA = readFileSync(env('DEPLOY_CA'));
const API_KEY = env('DEPLOY_API_KEY');
const NODES = JSON.parse(env('DEPLOY_NODES')); // [{name, port, pid, log}]
const ACCESS_LOG = env('DEPLOY_ACCESS_LOG');
const TOTAL = Number(process.env.DEPLOY_PUBLICATIONS || 400);
const KILL_AT = Math.floor(TOTAL / 3); // the page has seen this many when its node dies
const DRAIN_N = Math.floor(TOTAL / 2); // published in the second phase (a drained node)

// Node's own HTTPS client, verifying nginx's certificate against the test CA.
const agent = new https.Agent({ ca: CA, keepAlive: true, maxSockets: 4 });
after(() => agent.destroy());

/** One request through nginx (bounded); resolves to { status, body }, rejects on network errors. */
function request(method, path, body, { timeout = 5000 } = {}) {
  return new Promise((ok, fail) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = https.request(`${BASE}${path}`, {
      method,
      agent,
      timeout,
      headers: {
        authorization: `apikey ${API_KEY}`,
        ...(data ? { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) } : {}),
      },
    }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { text += d; });
      res.on('end', () => ok({ status: res.statusCode, body: text }));
      res.on('error', fail);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${path}: no answer in ${timeout} ms`)));
    req.on('error', fail);
    req.end(data);
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** GET /api/cluster through nginx: { node, nodes: [{name, connections, ...}] }. */
async function cluster() {
  const r = await request('GET', '/api/cluster');
  assert.equal(r.status, 200, `GET /api/cluster through nginx: ${r.status} ${r.body}`);
  return JSON.parse(r.body);
}

/**
 * Polls the registry (bounded) until exactly one node, among `candidates`, holds one
 * WebSocket and no other node holds any: the page's is the only one in this test.
 */
async function holder(candidates, { timeout = 10_000, what } = {}) {
  const end = Date.now() + timeout;
  let last;
  while (Date.now() < end) {
    try {
      last = await cluster();
      const busy = last.nodes.filter((n) => n.connections > 0);
      if (busy.length === 1 && busy[0].connections === 1 && candidates.includes(busy[0].name)) return busy[0].name;
    } catch (e) {
      last = String(e);
    }
    await sleep(250);
  }
  throw new Error(`${what}: no single node among ${candidates} holds the page's WebSocket within ${timeout} ms; last /api/cluster: ${JSON.stringify(last)}`);
}

let browser;
before(async () => {
  // The test CA is not in Chromium's trust store: accept the certificate (curl in test.sh
  // verified it against the CA already). Both for the page and for its WebSocket.
  browser = await launch({ args: ['--ignore-certificate-errors'] });
});
after(async () => { await withTimeout(browser.close(), STEP_TIMEOUT_MS, 'closing Chromium').catch(() => {}); });

test('a node killed, then one drained, under a browser: the page resumes through nginx on another node each time, nothing lost or doubled', async () => {
  const channel = `deploy-${randomBytes(4).toString('hex')}`; // default namespace: history 1,000
  assert.ok(TOTAL + DRAIN_N <= 1000, 'the stream must fit in the channel history');
  const context = await browser.newContext({ viewport: { width: 1100, height: 820 }, ignoreHTTPSErrors: true });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  if (process.env.BROWSER_VERBOSE) page.on('console', (m) => console.log(`[page] ${m.text()}`));

  // The hub's index page, over https:// through nginx: the same origin as the WebSocket.
  const resp = await page.goto(`${BASE}/`, { waitUntil: 'load' });
  assert.ok(resp.ok(), `GET ${BASE}/ through nginx: ${resp.status()}`);
  assert.equal(new URL(page.url()).protocol, 'https:');

  // In the page: the hub's JS client (/lib/index.js, as the demo pages load it) on
  // wss://<nginx>/ws. `rec` holds what the application saw (pubs, states, subscribed
  // events) and, from a WebSocket wrapper, every publication frame per connection.
  const wsUrl = await evaluate(page, async ({ channel, total }) => {
    const { TidewireClient } = await import('/lib/index.js');
    const rec = {
      pubs: [], states: [], subscribed: [], unrecoverable: [], errors: [], sockets: [], wire: [],
    };
    window.rec = rec;
    class RecordingWebSocket extends WebSocket {
      constructor(url, protocols) {
        super(url, protocols);
        const s = { n: rec.sockets.length + 1, url, opened: null, closed: null, code: null, protocol: null };
        rec.sockets.push(s);
        this.addEventListener('open', () => { s.opened = Date.now(); s.protocol = this.protocol; });
        this.addEventListener('close', (e) => { s.closed = Date.now(); s.code = e.code; });
        this.addEventListener('message', (e) => {
          let m;
          try { m = JSON.parse(e.data); } catch { return; }
          if (m && m.channel === channel && typeof m.offset === 'number' && 'data' in m) {
            rec.wire.push([s.n, m.offset, 'push']);
          } else if (m && m.result && Array.isArray(m.result.publications)) {
            for (const p of m.result.publications) rec.wire.push([s.n, p.offset, 'resume']);
          }
        });
      }
    }
    const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
    const client = new TidewireClient(url, { WebSocket: RecordingWebSocket, initialDelay: 200, maxDelay: 2000 });
    window.client = client;
    client.on('state', (s) => rec.states.push({ state: s.state, code: s.code ?? null, reason: s.reason ?? '', t: Date.now() }));
    client.on('error', (e) => rec.errors.push(String(e && e.message ? e.message : e)));
    client.subscribe(channel, {
      onPublication: (p) => rec.pubs.push({ offset: p.offset, epoch: p.epoch, n: p.data.n }),
      onSubscribed: (ev) => rec.subscribed.push({ ...ev, t: Date.now() }),
      onUnrecoverable: (ev) => rec.unrecoverable.push(ev),
    });

    // What the screenshot shows: a panel over the page, one cell per publication.
    document.body.innerHTML = `
      <main style="font:14px/1.4 system-ui,sans-serif;max-width:1040px;margin:1rem auto;color:#1d2430">
        <h1 style="font-size:1.3rem;margin:.2rem 0">Tidewire behind nginx: a node killed under this page</h1>
        <p id="where" style="margin:.2rem 0;color:#444"></p>
        <p id="summary" style="margin:.2rem 0;font-weight:600"></p>
        <div id="cells" style="display:grid;grid-template-columns:repeat(40,1fr);gap:2px;margin:.6rem 0"></div>
        <pre id="events" style="background:#f6f7fb;border:1px solid #dde;padding:.5rem;font-size:12px;white-space:pre-wrap"></pre>
      </main>`;
    document.getElementById('where').textContent = `page ${location.href} · WebSocket ${url} · channel ${channel}`;
    const cells = [];
    for (let i = 0; i < total; i++) {
      const c = document.createElement('div');
      c.style.cssText = 'height:14px;border-radius:2px;background:#e5e7eb';
      c.title = `#${i}`;
      document.getElementById('cells').appendChild(c);
      cells.push(c);
    }
    window.note = (text) => rec.states.push({ state: 'note', reason: text, t: Date.now() });
    const draw = () => {
      const seen = new Map();
      for (const p of rec.pubs) seen.set(p.n, (seen.get(p.n) || 0) + 1);
      cells.forEach((c, i) => {
        const k = seen.get(i) || 0;
        c.style.background = k === 1 ? '#2f9e44' : k > 1 ? '#d6336c' : '#e5e7eb'; // once, twice+, not yet
      });
      const resumed = rec.subscribed.filter((s) => s.resubscribed);
      document.getElementById('summary').textContent =
        `${rec.pubs.length} of ${total} publications received · ` +
        `offsets ${rec.pubs.length ? rec.pubs[0].offset + '–' + rec.pubs[rec.pubs.length - 1].offset : '–'} · ` +
        `${rec.sockets.length} WebSocket(s) opened · ` +
        (resumed.length ? `resumed: recovered ${resumed.map((s) => s.recovered).join(', ')}, ${resumed.map((s) => s.recoveredCount).join(', ')} from history` : 'not resumed yet');
      const t0 = rec.states.length ? rec.states[0].t : Date.now();
      document.getElementById('events').textContent = [
        ...rec.states.map((s) => ({ t: s.t, text: s.state === 'note' ? `** ${s.reason}` : `state ${s.state}${s.code ? ' (' + s.code + ')' : ''}${s.reason ? ': ' + s.reason : ''}` })),
        ...rec.subscribed.map((s) => ({ t: s.t, text: `subscribed at offset ${s.position.offset}${s.resubscribed ? ` (resumed with since: recovered ${s.recovered}, ${s.recoveredCount} publications from history)` : ''}` })),
        ...rec.sockets.filter((s) => s.closed).map((s) => ({ t: s.closed, text: `WebSocket #${s.n} closed with ${s.code}` })),
      ].sort((a, b) => a.t - b.t).map((e) => `+${((e.t - t0) / 1000).toFixed(2)} s  ${e.text}`).join('\n');
    };
    window.draw = draw;
    setInterval(draw, 200);
    client.connect();
    return url;
  }, { channel, total: TOTAL + DRAIN_N }, { what: 'connecting the page' });
  assert.match(wsUrl, /^wss:\/\/127\.0\.0\.1:\d+\/ws$/, 'the page uses wss:// through nginx');

  try {
    await waitFor(page, () => window.rec.subscribed.length === 1, null, { what: 'first subscribe', timeout: 15_000 });
  } catch (e) {
    // Say why: the client's states (close codes) and what nginx logged for /ws.
    const states = await evaluate(page, () => window.rec.states.slice(-5)).catch(() => []);
    const ws = readFileSync(ACCESS_LOG, 'utf8').split('\n').filter((l) => l.includes('"GET /ws ')).slice(-3);
    throw new Error(`${e.message}\nclient states: ${JSON.stringify(states)}\nnginx /ws lines:\n${ws.join('\n')}`);
  }
  const first = await evaluate(page, () => ({ sub: window.rec.subscribed[0], socket: window.rec.sockets[0] }));
  assert.equal(first.socket.protocol, 'tidewire.v1', 'subprotocol through nginx');

  // Which node holds the page's WebSocket (the registry of /api/cluster, through nginx).
  const names = NODES.map((n) => n.name);
  const victimName = await holder(names, { what: 'before the kill' });
  const victim = NODES.find((n) => n.name === victimName);
  console.log(`the page's WebSocket is on ${victim.name} (127.0.0.1:${victim.port}, pid ${victim.pid})`);

  // The publisher: n = 0..TOTAL-1 through nginx's /api/publish, one at a time, each with an
  // idempotency key; a failed attempt (the node that had it died: 502 from nginx, or an
  // error) is retried with the same key, so it is published at most once wherever it lands.
  const stats = { retries: 0, statuses: {}, positions: [] };
  let published = 0;
  const publish = (from, to, pause = 10) => (async () => {
    for (let n = from; n < to; n++) {
      const body = { channel, data: { n }, idempotency_key: `${channel}-${n}` };
      const end = Date.now() + 20_000;
      for (;;) {
        let r;
        try { r = await request('POST', '/api/publish', body); } catch (e) { r = { status: String(e.code || e.message) }; }
        stats.statuses[r.status] = (stats.statuses[r.status] || 0) + 1;
        if (r.status === 200) { stats.positions.push(JSON.parse(r.body).offset); break; }
        if (Date.now() > end) throw new Error(`publish #${n}: no success in 20 s (last: ${r.status} ${r.body || ''})`);
        stats.retries++;
        await sleep(100);
      }
      published = n + 1;
      await sleep(pause);
    }
  })();
  const publisher = publish(0, TOTAL);
  publisher.catch(() => {}); // awaited below

  // Mid-stream: once the page has seen KILL_AT publications, SIGKILL its node.
  await waitFor(page, (k) => window.rec.pubs.length >= k, KILL_AT, { what: `${KILL_AT} publications before the kill`, timeout: 20_000 });
  process.kill(victim.pid, 'SIGKILL');
  const killedAt = Date.now();
  const publishedAtKill = published;
  const seenAtKill = await evaluate(page, () => window.rec.pubs.length);
  await evaluate(page, (name) => window.note(`${name} killed (SIGKILL) by the test`), victim.name);
  console.log(`SIGKILL ${victim.name} after ${seenAtKill} publications seen by the page, ${published} published`);

  // The page notices (its WebSocket closes), reconnects through nginx and resumes.
  await waitFor(page, (t) => window.rec.sockets[0].closed !== null && window.rec.sockets[0].closed >= t - 50, killedAt, { what: 'the page\'s WebSocket closes after the kill', timeout: 10_000 });
  await waitFor(page, () => window.rec.subscribed.length >= 2, null, { what: 'resubscribed through nginx after the kill', timeout: 20_000 });
  await withTimeout(publisher, 60_000, 'the publisher');
  assert.ok(seenAtKill >= KILL_AT && publishedAtKill < TOTAL, `the kill came mid-stream (${publishedAtKill} of ${TOTAL} published)`);
  await waitFor(page, (t) => window.rec.pubs.length >= t, TOTAL, { what: `all ${TOTAL} publications in the page`, timeout: 20_000 });
  await sleep(700); // anything doubled would arrive now
  await evaluate(page, () => window.draw());

  // The page is now on another node, and only there.
  const survivors = names.filter((n) => n !== victim.name);
  const newHome = await holder(survivors, { what: 'after the kill' });
  console.log(`the page resumed on ${newHome}`);
  await evaluate(page, (name) => window.note(`/api/cluster: the page's WebSocket is now on ${name}`), newHome);
  await evaluate(page, () => window.draw());
  await screenshot(page, 'deploy-nginx-kill');

  const rec = await evaluate(page, () => window.rec);
  console.log(`publisher: ${stats.retries} retries, answers ${JSON.stringify(stats.statuses)}`);
  console.log(`sockets: ${JSON.stringify(rec.sockets.map((s) => ({ n: s.n, code: s.code })))}`);
  console.log(`subscribed: ${JSON.stringify(rec.subscribed.map((s) => ({ offset: s.position.offset, resubscribed: s.resubscribed, recovered: s.recovered, recoveredCount: s.recoveredCount })))}`);

  // Every publication exactly once, in order, one epoch, consecutive offsets.
  const ns = rec.pubs.map((p) => p.n);
  assert.deepEqual(ns, Array.from({ length: TOTAL }, (_, i) => i), 'the page got 0..TOTAL-1 exactly once, in order');
  const offsets = rec.pubs.map((p) => p.offset);
  assert.deepEqual(offsets, offsets.map((_, i) => offsets[0] + i), 'consecutive offsets');
  assert.equal(new Set(rec.pubs.map((p) => p.epoch)).size, 1, 'one epoch');
  // The publisher's answers agree: TOTAL distinct positions, the same offsets.
  assert.deepEqual(stats.positions, offsets, 'the API answered the offsets the page received');

  // The same on the wire: every offset in exactly one frame (a push or a resume reply).
  const wire = rec.wire.map(([, o]) => o);
  assert.deepEqual(wire, offsets, 'every publication on the wire exactly once, in order (none dropped by the client as a duplicate)');
  // Before the kill on the first WebSocket, after it on the second (resume reply + pushes).
  const onFirst = rec.wire.filter(([s]) => s === 1).length;
  assert.ok(onFirst >= seenAtKill && onFirst < TOTAL, `first WebSocket carried ${onFirst}`);
  assert.ok(rec.wire.every(([s]) => s === 1 || s === 2), 'two WebSockets in all');

  // The resume: a second subscribe with `since`, recovered, nothing unrecoverable, no gap
  // the client had to repair (it reports those as errors).
  assert.equal(rec.subscribed.length, 2, JSON.stringify(rec.subscribed));
  const resumed = rec.subscribed[1];
  assert.equal(resumed.resubscribed, true);
  assert.equal(resumed.recovered, true, 'resumed with recovered: true');
  assert.deepEqual(rec.unrecoverable, []);
  assert.deepEqual(rec.errors.filter((e) => /resubscrib|gap|protocol/i.test(e)), [], 'no gap repaired by the client');
  assert.equal(rec.sockets.length, 2, 'one reconnect');
  assert.equal(rec.sockets[0].code, 1006, 'the first WebSocket ended abruptly (its node was killed)');
  assert.equal(rec.sockets[1].closed, null, 'the second WebSocket is open');
  assert.equal(rec.sockets[1].protocol, 'tidewire.v1');
  // The client went through disconnected/connecting and back to connected after the kill.
  const after = rec.states.filter((s) => s.t >= killedAt && s.state !== 'note').map((s) => s.state);
  assert.ok(after.some((s) => s !== 'connected') && after.at(-1) === 'connected', `states after the kill: ${after}`);
  assert.deepEqual(pageErrors, []);

  // nginx's access log (a WebSocket's line is written when it closes): the first /ws went
  // through nginx to the killed node and was switched (101).
  const lines = readFileSync(ACCESS_LOG, 'utf8').split('\n').filter((l) => l.includes('"GET /ws '));
  assert.ok(lines.some((l) => / 101 .*upstream=127\.0\.0\.1:(\d+)/.test(l) && l.match(/upstream=127\.0\.0\.1:(\d+)/)[1] === String(victim.port)),
    `nginx logged the page's first WebSocket to ${victim.name} (port ${victim.port}):\n${lines.join('\n')}`);

  // Phase 2, the way systemd stops a node (`systemctl restart`): SIGTERM to the node now
  // holding the page, which drains (--drain 2s): it answers /readyz with 503 and closes the
  // WebSocket with 1012; the page reconnects through nginx to the last node and resumes.
  const home = NODES.find((n) => n.name === newHome);
  const last = NODES.find((n) => n.name !== victim.name && n.name !== newHome);
  // Slower, so that the stream outlasts the drain (the 1012 comes at some point within it).
  let publisher2Done = null;
  const publisher2 = publish(TOTAL, TOTAL + DRAIN_N, 25).then(() => { publisher2Done = Date.now(); });
  publisher2.catch(() => {});
  await waitFor(page, (k) => window.rec.pubs.length >= k, TOTAL + 20, { what: 'publications before the drain', timeout: 20_000 });
  process.kill(home.pid, 'SIGTERM');
  const termAt = Date.now();
  await evaluate(page, (name) => window.note(`${name} stopped (SIGTERM, drain 2 s) by the test`), home.name);
  console.log(`SIGTERM ${home.name}: it drains`);
  // While draining, its /readyz says so (asked directly: nginx picks any node).
  const ready = await new Promise((ok) => {
    import('node:http').then(({ get }) => get(`http://127.0.0.1:${home.port}/readyz`, (res) => {
      let t = ''; res.on('data', (d) => { t += d; }); res.on('end', () => ok(`${res.statusCode} ${t.trim()}`));
    }).on('error', (e) => ok(String(e.code))));
  });
  assert.match(ready, /^503 draining/, `${home.name}'s /readyz during the drain`);
  await waitFor(page, () => window.rec.subscribed.length >= 3, null, { what: 'resubscribed after the drain', timeout: 20_000 });
  await withTimeout(publisher2, 60_000, 'the publisher (drain)');
  await waitFor(page, (t) => window.rec.pubs.length >= t, TOTAL + DRAIN_N, { what: `all ${TOTAL + DRAIN_N} publications in the page`, timeout: 20_000 });
  await sleep(700);
  // The drained node exits by itself within the drain plus the unit's 5 s (TimeoutStopSec).
  const exitBy = termAt + 7000;
  while (Date.now() < exitBy) {
    try { process.kill(home.pid, 0); } catch { break; }
    await sleep(100);
  }
  assert.throws(() => process.kill(home.pid, 0), `${home.name} (pid ${home.pid}) exited within 7 s of SIGTERM`);
  const finalHome = await holder([last.name], { what: 'after the drain' });
  await evaluate(page, (name) => window.note(`/api/cluster: the page's WebSocket is now on ${name}`), finalHome);
  await evaluate(page, () => window.draw());
  await screenshot(page, 'deploy-nginx-resume');
  const rec2 = await evaluate(page, () => window.rec);
  console.log(`after the drain: sockets ${JSON.stringify(rec2.sockets.map((s) => ({ n: s.n, code: s.code })))}, ` +
    `subscribed ${JSON.stringify(rec2.subscribed.slice(2).map((s) => ({ offset: s.position.offset, recovered: s.recovered, recoveredCount: s.recoveredCount })))}, ` +
    `publisher ${stats.retries} retries, answers ${JSON.stringify(stats.statuses)}`);
  assert.deepEqual(rec2.pubs.map((p) => p.n), Array.from({ length: TOTAL + DRAIN_N }, (_, i) => i), 'every publication exactly once, in order, across the kill and the drain');
  const offsets2 = rec2.pubs.map((p) => p.offset);
  assert.deepEqual(offsets2, offsets2.map((_, i) => offsets2[0] + i), 'consecutive offsets');
  assert.deepEqual(rec2.wire.map(([, o]) => o), offsets2, 'on the wire too');
  assert.deepEqual(stats.positions, offsets2, 'the API answered the offsets the page received');
  assert.equal(rec2.sockets.length, 3, 'one reconnect for the drain');
  assert.equal(rec2.sockets[1].code, 1012, 'the draining node closed the page\'s WebSocket with 1012 (service restart)');
  assert.ok(rec2.sockets[1].closed < publisher2Done, 'the drain closed the page\'s WebSocket mid-stream');
  assert.equal(rec2.subscribed.length, 3);
  assert.equal(rec2.subscribed[2].recovered, true, 'resumed with recovered: true after the drain');
  assert.deepEqual(rec2.unrecoverable, []);
  assert.deepEqual(rec2.errors.filter((e) => /resubscrib|gap|protocol/i.test(e)), [], 'no gap repaired by the client');
  assert.deepEqual(pageErrors, []);

  await context.close();
  // Now the last /ws is closed too: nginx logged it with the last node's port.
  const deadline = Date.now() + 5000;
  let logged = false;
  while (!logged && Date.now() < deadline) {
    logged = readFileSync(ACCESS_LOG, 'utf8').split('\n')
      .some((l) => l.includes('"GET /ws ') && / 101 /.test(l) && l.includes(`127.0.0.1:${last.port}`));
    if (!logged) await sleep(200);
  }
  assert.ok(logged, `nginx logged the last WebSocket to ${last.name} (port ${last.port})`);
  // ... and the second one to the node that drained (switched: 101).
  assert.ok(readFileSync(ACCESS_LOG, 'utf8').split('\n').some((l) => l.includes('"GET /ws ') && / 101 /.test(l) && l.includes(`127.0.0.1:${home.port}`)),
    `nginx logged the second WebSocket to ${home.name} (port ${home.port})`);
});
