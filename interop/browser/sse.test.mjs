// The Server-Sent Events fallback (docs/protocol.md, "Server-Sent Events") in headless
// Chromium, against a real `tidewire serve`:
//
// 1. Chromium's own EventSource on /sse keeps receiving across a SIGKILL and restart of its
//    node (Redis engine, same port): it reconnects by itself with Last-Event-ID and gets
//    every publication exactly once, in order, including those another node published while
//    its node was down.
// 2. The browser library (web/lib, as the binary embeds it) with `fallback: "sse"` behind an
//    HTTP proxy that refuses WebSocket upgrades: Chromium's WebSocket fails, the client goes
//    on over EventSource and POST /publish by itself; when the proxy lets upgrades through
//    again it moves back to WebSocket while publications keep coming, with no gap and no
//    duplicate.
//
// Run through interop/browser/run.sh. The Redis test needs redis-server on 127.0.0.1:6379
// (BROWSER_REDIS_URL to use another); it uses a channel name of its own and --no-demo (no
// demo ticker publishing into a shared Redis).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createServer as createHttp, request as httpRequest } from 'node:http';
import { createServer as createTcp, connect as tcpConnect } from 'node:net';
import {
  launch, evaluate, startServe, waitFor, withTimeout, STEP_TIMEOUT_MS,
} from './lib.mjs';

const REDIS = process.env.BROWSER_REDIS_URL || 'redis://127.0.0.1:6379';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await withTimeout(browser.close(), STEP_TIMEOUT_MS, 'closing Chromium').catch(() => {}); });

async function open(url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  if (process.env.BROWSER_VERBOSE) page.on('console', (m) => console.log(`[page] ${m.text()}`));
  const resp = await page.goto(url, { waitUntil: 'load' });
  assert.ok(resp.ok(), `GET ${url}: ${resp.status()}`);
  return { page, context, errors };
}

/** A port that was free a moment ago (the node must come back on the same one). */
function freePort() {
  return new Promise((ok, fail) => {
    const s = createTcp();
    s.once('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** POST /publish on a node (no auth configured): { offset, epoch }. */
async function publish(base, channel, data) {
  const resp = await withTimeout(fetch(`${base}/publish`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ channel, data }),
  }), 10_000, `POST ${base}/publish`);
  const body = await resp.text();
  assert.equal(resp.status, 200, `POST ${base}/publish: ${resp.status} ${body}`);
  return JSON.parse(body);
}

/** Is redis-server answering at url? (PING over RESP, bounded.) */
function redisUp(url) {
  const { hostname, port } = new URL(url);
  return new Promise((ok) => {
    const s = tcpConnect(Number(port || 6379), hostname);
    const t = setTimeout(() => { s.destroy(); ok(false); }, 2000);
    s.once('error', () => { clearTimeout(t); ok(false); });
    s.once('connect', () => s.write('PING\r\n'));
    s.once('data', (d) => { clearTimeout(t); s.destroy(); ok(String(d).startsWith('+PONG')); });
  });
}

async function killHard(node) {
  node.proc.kill('SIGKILL');
  await withTimeout(new Promise((ok) => {
    if (node.proc.exitCode !== null || node.proc.signalCode !== null) ok();
    else node.proc.once('exit', () => ok());
  }), 5000, 'the killed node to exit');
}

test("Chromium's EventSource across a SIGKILL and restart of its node (Redis): every publication once, in order", async (t) => {
  if (!(await redisUp(REDIS))) {
    t.skip(`no redis-server at ${REDIS}`);
    return;
  }
  const channel = `sse-browser-${process.pid}-${Date.now()}`;
  const port = await freePort();
  const listen = `127.0.0.1:${port}`;
  const flags = (name) => ['--engine', REDIS, '--node-name', `${name}-${process.pid}`, '--no-demo', '--publish-rate', '0'];
  let a = await startServe(flags('sse-a'), listen);
  const b = await startServe(flags('sse-b'));
  let x;
  try {
    // A page of node A's origin (its /healthz), so that '/sse' is node A.
    x = await open(`${a.base}/healthz`);
    await evaluate(x.page, (ch) => {
      const seen = { subscribed: [], messages: [], errors: 0, opens: 0 };
      window.__sse = seen;
      const es = new EventSource(`/sse?channel=${encodeURIComponent(ch)}`);
      window.__es = es;
      es.addEventListener('open', () => { seen.opens++; });
      es.addEventListener('error', () => { seen.errors++; });
      es.addEventListener('subscribed', (ev) => { seen.subscribed.push({ id: ev.lastEventId, ...JSON.parse(ev.data) }); });
      es.addEventListener('message', (ev) => {
        const p = JSON.parse(ev.data);
        seen.messages.push({ id: ev.lastEventId, offset: p.offset, epoch: p.epoch, n: p.data.n });
      });
    }, channel);
    await waitFor(x.page, () => window.__sse.subscribed.length === 1, null, { what: 'the subscribed event' });
    const first = await evaluate(x.page, () => window.__sse.subscribed[0]);
    assert.equal(first.channel, channel);
    assert.equal(first.recovered, null, 'a first stream asks for nothing');
    assert.equal(first.id, `${first.offset}:${first.epoch}`);

    // 1-20 through node A, then A is killed mid-stream (publications keep flowing on B),
    // 21-40 through node B while A is down, A restarts on the same port, 41-60 through A.
    const TOTAL = 60;
    const published = [];
    for (let n = 1; n <= 20; n++) published.push(await publish(a.base, channel, { n }));
    const flowing = (async () => {
      for (let n = 21; n <= 40; n++) {
        published.push(await publish(b.base, channel, { n }));
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    await waitFor(x.page, () => window.__sse.messages.length >= 20, null, { what: '20 messages before the kill' });
    await killHard(a);
    const down = Date.now();
    await waitFor(x.page, () => window.__sse.errors >= 1, null, { what: 'the EventSource to notice' });
    await withTimeout(flowing, 20_000, 'publishing 21-40 on node B');
    await new Promise((r) => setTimeout(r, Math.max(0, 1500 - (Date.now() - down)))); // down for 1.5 s at least
    const beforeRestart = await evaluate(x.page, () => window.__sse.messages.length);
    assert.ok(beforeRestart < 40, `the page cannot have 21-40 from a dead node (${beforeRestart})`);
    a = await startServe(flags('sse-a'), listen);
    await waitFor(x.page, () => window.__sse.subscribed.length === 2, null, { what: 'the EventSource to reconnect by itself', timeout: 20_000 });
    for (let n = 41; n <= TOTAL; n++) published.push(await publish(a.base, channel, { n }));
    await waitFor(x.page, (total) => window.__sse.messages.length >= total, TOTAL, { what: `${TOTAL} messages` });
    await new Promise((r) => setTimeout(r, 300)); // nothing more (no duplicate) arrives late

    const seen = await evaluate(x.page, () => window.__sse);
    assert.deepEqual(seen.messages.map((m) => m.n), Array.from({ length: TOTAL }, (_, i) => i + 1), 'every message once, in order');
    const epoch = first.epoch;
    assert.deepEqual(seen.messages.map((m) => m.offset), published.map((p) => p.offset), 'the offsets of the publications');
    for (const [i, m] of seen.messages.entries()) {
      assert.equal(m.epoch, epoch, 'one epoch across the restart (Redis keeps the history)');
      assert.equal(m.offset, first.offset + i + 1, 'consecutive offsets');
      assert.equal(m.id, `${m.offset}:${m.epoch}`, 'lastEventId is OFFSET:EPOCH');
    }
    // The second stream resumed from Last-Event-ID (the browser sent it: `recovered` is only
    // set when the request named a position) and filled the gap from the history.
    const second = seen.subscribed[1];
    assert.equal(second.recovered, true, JSON.stringify(second));
    assert.equal(second.epoch, epoch);
    assert.ok(second.offset >= first.offset + 40, `the resumed stream started at ${second.offset}`);
    assert.notEqual(second.client, first.client);
    assert.ok(seen.opens >= 2, `EventSource opened ${seen.opens} times`);
    assert.deepEqual(x.errors, [], 'page errors');
    console.log(`EventSource: ${TOTAL}/${TOTAL} once, in order; ${beforeRestart} before the restart, ` +
      `resumed after ${second.id} with recovered: true (${seen.errors} error events, ${seen.opens} opens)`);
  } finally {
    await x?.context.close().catch(() => {});
    await a.stop();
    await b.stop();
  }
});

/**
 * An HTTP proxy on 127.0.0.1 in front of `port` that refuses WebSocket upgrades (502) while
 * `refuseUpgrades` is set, as some corporate proxies do, and passes everything else,
 * streaming (Server-Sent Events). Counts what it saw in `seen`.
 */
async function upgradeBreakingProxy(port) {
  const state = { refuseUpgrades: true, seen: { refused: 0, tunnelled: 0, sse: 0, publish: 0 } };
  const sockets = new Set();
  const server = createHttp((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    if (path === '/sse') state.seen.sse++;
    if (path === '/publish' && req.method === 'POST') state.seen.publish++;
    const up = httpRequest({ host: '127.0.0.1', port, method: req.method, path: req.url, headers: req.headers }, (upRes) => {
      res.writeHead(upRes.statusCode, upRes.headers);
      res.flushHeaders();
      upRes.pipe(res);
    });
    up.on('error', () => res.destroy());
    res.on('close', () => up.destroy());
    req.pipe(up);
  });
  server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
  server.on('upgrade', (req, client, head) => {
    if (state.refuseUpgrades) {
      state.seen.refused++;
      client.end('HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/plain\r\ncontent-length: 25\r\nconnection: close\r\n\r\nupgrades are not allowed\n');
      return;
    }
    state.seen.tunnelled++;
    const upstream = tcpConnect(port, '127.0.0.1', () => {
      let head_ = `${req.method} ${req.url} HTTP/1.1\r\n`;
      for (let i = 0; i < req.rawHeaders.length; i += 2) head_ += `${req.rawHeaders[i]}: ${req.rawHeaders[i + 1]}\r\n`;
      upstream.write(`${head_}\r\n`);
      if (head?.length) upstream.write(head);
      upstream.pipe(client);
      client.pipe(upstream);
    });
    sockets.add(upstream);
    upstream.on('close', () => { sockets.delete(upstream); client.destroy(); });
    client.on('close', () => upstream.destroy());
    upstream.on('error', () => client.destroy());
    client.on('error', () => upstream.destroy());
  });
  await new Promise((ok, fail) => { server.once('error', fail); server.listen(0, '127.0.0.1', ok); });
  const own = server.address().port;
  return {
    state,
    base: `http://127.0.0.1:${own}`,
    close: () => new Promise((ok) => { for (const s of sockets) s.destroy(); server.close(() => ok()); }),
  };
}

test('the browser library falls back to EventSource + POST /publish behind a proxy that refuses upgrades, and moves back', async () => {
  const srv = await startServe(['--publish-rate', '0']);
  const proxy = await upgradeBreakingProxy(srv.port);
  const channel = `fallback-browser-${Date.now()}`;
  let x;
  try {
    // Node A's page through the proxy; the library as the binary serves it (web/lib).
    x = await open(`${proxy.base}/healthz`);
    const info = await evaluate(x.page, async (ch) => {
      const { TidewireClient } = await import('/lib/index.js');
      const t = { got: [], transports: [], states: [], errors: [] };
      window.__t = t;
      const client = new TidewireClient(`ws://${location.host}/ws`, {
        fallback: 'sse', fallbackAfter: 2, initialDelay: 50, maxDelay: 200,
        fallbackProbeDelay: 400, fallbackProbeMaxDelay: 600,
      });
      window.__client = client;
      client.on('transport', (e) => t.transports.push({ transport: e.transport, delivered: t.got.length }));
      client.on('state', (s) => t.states.push(s.state + (s.transport ? `/${s.transport}` : '')));
      client.on('error', (e) => t.errors.push(`${e.code}: ${e.message}`));
      client.subscribe(ch, { onPublication: (p) => t.got.push([p.offset, p.data.n, p.data.by]) });
      return client.connect();
    }, channel);
    assert.deepEqual(info, { client: '', user: null, version: 'tidewire.v1', transport: 'sse' });
    assert.equal(proxy.state.seen.refused, 2, 'two refused upgrades (fallbackAfter: 2), then SSE');
    await waitFor(x.page, (ch) => window.__client.getSubscription(ch).state === 'subscribed', channel, { what: 'subscribed over SSE' });
    assert.equal(proxy.state.seen.sse, 1, 'one EventSource for the one subscription');

    // Publications from elsewhere arrive over SSE; the page's own go over POST /publish.
    for (let n = 1; n <= 10; n++) await publish(srv.base, channel, { n, by: 'api' });
    const posted = await evaluate(x.page, async (ch) => {
      const offsets = [];
      for (let n = 11; n <= 15; n++) offsets.push((await window.__client.publish(ch, { n, by: 'page' })).offset);
      const presence = await window.__client.presence(ch).then(() => 'answered', (e) => e.code);
      return { offsets, presence };
    }, channel);
    assert.deepEqual(posted, { offsets: [11, 12, 13, 14, 15], presence: 'transport' });
    assert.equal(proxy.state.seen.publish, 5, 'five POST /publish through the proxy');
    await waitFor(x.page, () => window.__t.got.length >= 15, null, { what: '15 publications over SSE' });
    assert.equal(await evaluate(x.page, () => window.__client.transport), 'sse');

    // The proxy lets upgrades through again: the library moves back to WebSocket by itself
    // while publications keep coming.
    proxy.state.refuseUpgrades = false;
    const TOTAL = 100;
    for (let n = 16; n <= TOTAL; n++) {
      await publish(srv.base, channel, { n, by: 'api' });
      await new Promise((r) => setTimeout(r, 15));
    }
    await waitFor(x.page, () => window.__client.transport === 'websocket', null, { what: 'back on WebSocket' });
    await waitFor(x.page, (total) => window.__t.got.length >= total, TOTAL, { what: `${TOTAL} publications` });
    const after = await evaluate(x.page, async (ch) => {
      const r = await window.__client.publish(ch, { n: 101, by: 'page' });
      const here = await window.__client.presence(ch);
      return { offset: r.offset, here: here.clients.length, me: window.__client.connection.client };
    }, channel);
    assert.equal(after.offset, TOTAL + 1);
    assert.equal(after.here, 1, 'presence works again on WebSocket');
    assert.equal(proxy.state.seen.publish, 5, 'the publish after the switch went over the WebSocket');
    await waitFor(x.page, (total) => window.__t.got.length >= total, TOTAL + 1, { what: 'the last publication' });
    await new Promise((r) => setTimeout(r, 300));

    const t = await evaluate(x.page, () => window.__t);
    const offsets = t.got.map(([o]) => o);
    assert.deepEqual(offsets, Array.from({ length: TOTAL + 1 }, (_, i) => i + 1), 'every publication once, in order');
    assert.deepEqual(t.got.map(([, n]) => n), offsets);
    assert.deepEqual(t.transports.map((e) => e.transport), ['sse', 'websocket']);
    const switched = t.transports[1].delivered;
    assert.ok(switched >= 15 && switched < TOTAL, `moved back while publications flowed (after ${switched})`);
    assert.ok(proxy.state.seen.tunnelled >= 1, 'a WebSocket went through once allowed');
    assert.ok(t.states.includes('connected/sse') && t.states.at(-1) === 'connected/websocket', t.states.join(' '));
    assert.deepEqual(x.errors, [], 'page errors');
    console.log(`fallback: ${proxy.state.seen.refused} upgrades refused, SSE + ${5} POSTs, back on WebSocket after ` +
      `${switched} publications, ${TOTAL + 1}/${TOTAL + 1} once, in order`);
  } finally {
    await x?.context.close().catch(() => {});
    await proxy.close();
    await srv.stop();
  }
});
