// WebSocket over HTTP/2 (RFC 8441) seen from Chromium: `tidewire serve` with TLS, a test
// CA and a certificate for 127.0.0.1 made here. Chromium opens a wss:// WebSocket as an
// extended CONNECT on an HTTP/2 connection only when it already has one to the origin that
// advertised SETTINGS_ENABLE_CONNECT_PROTOCOL, so each page is first loaded over https from
// the server itself. Three proofs, each asserted: the DevTools protocol's handshake
// response (200 without Sec-WebSocket-Accept over HTTP/2, 101 with it over HTTP/1.1);
// Chromium's NetLog (`:method: CONNECT` and `:protocol: websocket` in an HTTP/2 session's
// sent headers); the server's `tidewire_websocket_handshakes_total{http}`. The same page
// against `--no-http2` must show the opposite, and the demo chat page must work over HTTP/2.
// Run through interop/browser/run.sh.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { request } from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  launch, evaluate, screenshot, startServe, waitFor, withTimeout, runCapture, STEP_TIMEOUT_MS,
} from './lib.mjs';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ------------------------------------------------------------------ certificates

/**
 * A test CA and a server certificate for IP 127.0.0.1 signed by it (P-256, 2 days), in a
 * fresh temp dir. Returns the paths, the CA's PEM and the base64 SHA-256 of the leaf's
 * SubjectPublicKeyInfo (what --ignore-certificate-errors-spki-list takes).
 */
async function makeCerts() {
  const dir = mkdtempSync(join(tmpdir(), 'tidewire-h2-'));
  const f = (name) => join(dir, name);
  const openssl = async (...args) => {
    const r = await runCapture('openssl', args, { timeout: 20_000 });
    if (r.code !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  await openssl('req', '-x509', ...ec, '-keyout', f('ca.key'), '-out', f('ca.pem'), '-days', '2',
    '-subj', '/CN=Tidewire browser test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  await openssl('req', ...ec, '-keyout', f('leaf.key'), '-out', f('leaf.csr'), '-subj', '/CN=127.0.0.1');
  writeFileSync(f('leaf.ext'), [
    'subjectAltName=IP:127.0.0.1',
    'basicConstraints=critical,CA:FALSE',
    'keyUsage=critical,digitalSignature',
    'extendedKeyUsage=serverAuth',
    '',
  ].join('\n'));
  await openssl('x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'),
    '-CAcreateserial', '-days', '2', '-extfile', f('leaf.ext'), '-out', f('leaf.pem'));
  const ca = readFileSync(f('ca.pem'), 'utf8');
  const leaf = readFileSync(f('leaf.pem'), 'utf8');
  writeFileSync(f('chain.pem'), leaf + ca);
  const x = new X509Certificate(leaf);
  assert.ok(x.checkIP('127.0.0.1'), 'the leaf is for 127.0.0.1');
  assert.ok(x.verify(new X509Certificate(ca).publicKey), 'the leaf is signed by the CA');
  const spki = createHash('sha256').update(x.publicKey.export({ type: 'spki', format: 'der' })).digest('base64');
  return { dir, cert: f('chain.pem'), key: f('leaf.key'), ca, spki };
}

let certs;
before(async () => { certs = await makeCerts(); });
// The temp dir holds the keys and the NetLogs; BROWSER_KEEP_NETLOG=1 keeps it to look at.
after(() => {
  if (!certs) return;
  if (process.env.BROWSER_KEEP_NETLOG) console.log(`kept ${certs.dir} (keys, netlog-h2.json, netlog-h1.json)`);
  else rmSync(certs.dir, { recursive: true, force: true });
});

/** `tidewire serve` with the test certificate (and `extra`), over https. */
async function serveTls(extra = []) {
  const srv = await startServe(['--tls-cert', certs.cert, '--tls-key', certs.key, ...extra], '127.0.0.1:0', {
    env: { TIDEWIRE_LOG: process.env.TIDEWIRE_LOG || 'info' },
  });
  assert.match(srv.base, /^https:\/\//, 'the server says https');
  return srv;
}

// ------------------------------------------------------------------ server side

/** GET over https from Node (HTTP/1.1, the test CA trusted); bounded. */
function getText(url) {
  return new Promise((ok, fail) => {
    const req = request(url, { ca: certs.ca, agent: false, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => ok({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${url} timed out`)));
    req.on('error', fail);
    req.end();
  });
}

/** The counters of /metrics this test reads: { h1, h2, h2conns }. */
async function metrics(srv) {
  const r = await getText(`${srv.base}/metrics`);
  assert.equal(r.status, 200, `/metrics: ${r.status}`);
  const value = (re) => {
    const m = r.body.match(re);
    assert.ok(m, `/metrics has ${re}`);
    return Number(m[1]);
  };
  return {
    h1: value(/^tidewire_websocket_handshakes_total\{http="1\.1"\} (\d+)$/m),
    h2: value(/^tidewire_websocket_handshakes_total\{http="2"\} (\d+)$/m),
    h2conns: value(/^tidewire_http2_connections (\d+)$/m),
  };
}

// ------------------------------------------------------------------ browser side

/**
 * Chromium trusting the test certificate by its key (no CA install), with a NetLog of
 * everything (cookies and bytes included) written to `<dir>/netlog.json` when it closes.
 */
async function launchTrusting({ netlog } = {}) {
  const args = [`--ignore-certificate-errors-spki-list=${certs.spki}`];
  if (netlog) args.push(`--log-net-log=${netlog}`, '--net-log-capture-mode=Everything');
  return launch({ args });
}

/** Closes Chromium (bounded) so that its NetLog is complete, then parses it. */
async function closeAndReadNetLog(browser, file) {
  await withTimeout(browser.close(), STEP_TIMEOUT_MS, 'closing Chromium');
  // The file is finished on shutdown; give the writer a moment if the process lags.
  let text = '';
  for (let i = 0; i < 50; i++) {
    text = existsSync(file) ? readFileSync(file, 'utf8') : '';
    if (/\}\s*$/.test(text)) break;
    await sleep(100);
  }
  let log;
  try {
    log = JSON.parse(text);
  } catch (e) {
    throw new Error(`the NetLog ${file} is not complete JSON (${text.length} bytes): ${e.message}`);
  }
  const names = Object.fromEntries(Object.entries(log.constants.logEventTypes).map(([k, v]) => [v, k]));
  const events = log.events.map((e) => ({ ...e, name: names[e.type] }));
  return { text, events };
}

/** The headers ("name: value" strings) of every HTTP2_SESSION_SEND_HEADERS event. */
const h2SentHeaders = (netlog) => netlog.events
  .filter((e) => e.name === 'HTTP2_SESSION_SEND_HEADERS')
  .map((e) => e.params?.headers ?? []);

/**
 * A new context and page with a DevTools session recording its WebSocket handshakes (by
 * requestId: url, request headers, response status and headers), then `url` loaded.
 */
async function open(browser, url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  if (process.env.BROWSER_VERBOSE) page.on('console', (m) => console.log(`[page] ${m.text()}`));
  const cdp = await page.context().newCDPSession(page);
  const sockets = new Map();
  const socket = (id) => { if (!sockets.has(id)) sockets.set(id, { id }); return sockets.get(id); };
  cdp.on('Network.webSocketCreated', (e) => { socket(e.requestId).url = e.url; });
  cdp.on('Network.webSocketWillSendHandshakeRequest', (e) => { socket(e.requestId).request = e.request.headers; });
  cdp.on('Network.webSocketHandshakeResponseReceived', (e) => {
    const s = socket(e.requestId);
    s.status = e.response.status;
    s.headers = e.response.headers;
  });
  cdp.on('Network.webSocketFrameError', (e) => { socket(e.requestId).error = e.errorMessage; });
  await withTimeout(cdp.send('Network.enable'), STEP_TIMEOUT_MS, 'Network.enable');
  const resp = await page.goto(url, { waitUntil: 'load' });
  assert.ok(resp.ok(), `GET ${url}: ${resp.status()}`);
  // How the page itself came: 'h2' or 'http/1.1' (Resource Timing).
  const pageProtocol = await evaluate(page, () => performance.getEntriesByType('navigation')[0].nextHopProtocol);
  return { page, context, errors, sockets, pageProtocol };
}

/** Lower-cased header names of a CDP header object. */
const headerNames = (h) => Object.keys(h || {}).map((k) => k.toLowerCase());

/**
 * In the page: two WebSockets to /rooms/ROOM offering chat and superchat; the first sends
 * a message that the second receives, then `ping`, answered `pong` to the first alone;
 * both close with 1000. Returns what the page saw.
 */
function roomRoundTrip(page, room) {
  return evaluate(page, async ({ room, ms }) => {
    const deadline = (what) => new Promise((_, no) => setTimeout(() => no(new Error(`${what}: timed out`)), ms));
    const url = `wss://${location.host}/rooms/${room}`;
    const openOne = () => new Promise((ok, no) => {
      const ws = new WebSocket(url, ['chat', 'superchat']);
      ws.got = [];
      ws.onmessage = (e) => ws.got.push(e.data);
      ws.onopen = () => ok(ws);
      ws.onerror = () => no(new Error(`WebSocket ${url} failed to open`));
    });
    const [a, b] = await Promise.race([Promise.all([openOne(), openOne()]), deadline('open')]);
    const until = (ws, pred, what) => Promise.race([new Promise((ok) => {
      const t = setInterval(() => { if (pred(ws.got)) { clearInterval(t); ok(); } }, 20);
    }), deadline(what)]);
    const text = `hello over ${room} ${Math.random().toString(36).slice(2)}`;
    a.send(text);
    await until(b, (g) => g.includes(text), 'b receives what a sent');
    a.send('ping');
    await until(a, (g) => g.includes('pong'), 'a gets pong');
    await new Promise((r) => setTimeout(r, 300)); // a pong for b would have come by now
    const out = { protocols: [a.protocol, b.protocol], text, aGot: [...a.got], bGot: [...b.got] };
    const closed = (ws) => new Promise((ok) => { ws.onclose = (e) => ok({ code: e.code, clean: e.wasClean }); });
    const closes = Promise.all([closed(a), closed(b)]);
    a.close(1000); b.close(1000);
    out.closes = await Promise.race([closes, deadline('close')]);
    return out;
  }, { room, ms: STEP_TIMEOUT_MS - 2000 }, { what: 'two WebSockets in a room' });
}

/**
 * The whole round, with or without HTTP/2 on the server: server, browser with a NetLog, the
 * index page over https, two WebSockets in a room, metrics before and after, the NetLog.
 */
async function roundOver({ http2 }) {
  const srv = await serveTls(http2 ? [] : ['--no-http2']);
  const netlogFile = join(certs.dir, `netlog-${http2 ? 'h2' : 'h1'}.json`);
  const browser = await launchTrusting({ netlog: netlogFile });
  let browserOpen = true;
  try {
    const m0 = await metrics(srv);
    const x = await open(browser, `${srv.base}/`);
    const room = `h2probe${http2 ? 'on' : 'off'}`;
    const seen = await roomRoundTrip(x.page, room);
    // Read while the page is open: with HTTP/2 on, tidewire_http2_connections counts its
    // connection (which carried the page and both WebSockets).
    const m1 = await metrics(srv);
    const sockets = [...x.sockets.values()];
    await x.context.close();
    browserOpen = false;
    const netlog = await closeAndReadNetLog(browser, netlogFile);
    return { srv, room, before: m0, after: m1, seen, sockets, pageProtocol: x.pageProtocol, errors: x.errors, netlog };
  } finally {
    if (browserOpen) await withTimeout(browser.close(), STEP_TIMEOUT_MS, 'closing Chromium').catch(() => {});
    await srv.stop();
  }
}

/** What every round checks in the page: subprotocol, message, heartbeat, clean closes. */
function assertRoomWorked(r) {
  assert.deepEqual(r.seen.protocols, ['chat', 'chat'], 'chat/superchat offered: the server picks chat');
  assert.ok(r.seen.bGot.includes(r.seen.text), `b got a's message: ${JSON.stringify(r.seen.bGot)}`);
  assert.ok(r.seen.aGot.includes('pong'), `a got its pong: ${JSON.stringify(r.seen.aGot)}`);
  assert.ok(!r.seen.bGot.includes('pong') && !r.seen.bGot.includes('ping'), `b saw no heartbeat: ${JSON.stringify(r.seen.bGot)}`);
  assert.deepEqual(r.seen.closes, [{ code: 1000, clean: true }, { code: 1000, clean: true }], 'clean closes');
  assert.deepEqual(r.errors, [], 'page errors');
}

test('wss:// from Chromium goes over HTTP/2: extended CONNECT, 200 without Sec-WebSocket-Accept, counted as http="2"', async () => {
  const r = await roundOver({ http2: true });
  assertRoomWorked(r);
  assert.equal(r.pageProtocol, 'h2', 'the index page came over HTTP/2');

  // (a) DevTools: both handshakes answered 200, without Sec-WebSocket-Accept.
  const ws = r.sockets.filter((s) => s.url === `wss://127.0.0.1:${r.srv.port}/rooms/${r.room}`);
  assert.equal(ws.length, 2, `two WebSockets seen by DevTools: ${JSON.stringify(r.sockets)}`);
  for (const s of ws) {
    assert.equal(s.status, 200, `handshake status over HTTP/2: ${JSON.stringify(s)}`);
    assert.ok(!headerNames(s.headers).includes('sec-websocket-accept'), `no Sec-WebSocket-Accept over HTTP/2: ${JSON.stringify(s.headers)}`);
    assert.ok(!headerNames(s.request).includes('sec-websocket-key'), `no Sec-WebSocket-Key over HTTP/2: ${JSON.stringify(s.request)}`);
    assert.equal(s.error, undefined, `frame error: ${s.error}`);
  }
  console.log(`DevTools: ${ws.map((s) => `${s.status} ${JSON.stringify(s.headers)}`).join(' | ')}`);

  // (b) NetLog: the HTTP/2 session sent extended CONNECTs for the room, one per socket.
  const path = `:path: /rooms/${r.room}`;
  const connects = h2SentHeaders(r.netlog).filter((h) => h.includes(':method: CONNECT') && h.includes(':protocol: websocket'));
  assert.equal(connects.length, 2, `two extended CONNECTs in HTTP2_SESSION_SEND_HEADERS: ${JSON.stringify(connects)}`);
  for (const h of connects) {
    assert.ok(h.includes(path), `${path} in ${JSON.stringify(h)}`);
    assert.ok(h.includes(':scheme: https'), `:scheme: https in ${JSON.stringify(h)}`);
    assert.ok(h.some((l) => /^sec-websocket-protocol: chat, ?superchat$/i.test(l)), `subprotocols offered in ${JSON.stringify(h)}`);
  }
  // The page went over the same kind of session (a GET in HTTP2_SESSION_SEND_HEADERS).
  assert.ok(h2SentHeaders(r.netlog).some((h) => h.includes(':method: GET') && h.includes(':path: /')), 'the page was fetched over HTTP/2');
  console.log(`NetLog HTTP2_SESSION_SEND_HEADERS: ${JSON.stringify(connects[0])}`);

  // (c) The server counted two WebSockets over HTTP/2 and none over HTTP/1.1.
  assert.equal(r.after.h2 - r.before.h2, 2, `http="2": ${r.before.h2} -> ${r.after.h2}`);
  assert.equal(r.after.h1, r.before.h1, `http="1.1": ${r.before.h1} -> ${r.after.h1}`);
  assert.ok(r.after.h2conns >= 1, `tidewire_http2_connections while the page is open: ${r.after.h2conns}`);
  console.log(`metrics: before ${JSON.stringify(r.before)}, after ${JSON.stringify(r.after)}`);
});

test('the same page against --no-http2: HTTP/1.1 upgrade, 101 with Sec-WebSocket-Accept, counted as http="1.1"', async () => {
  const r = await roundOver({ http2: false });
  assertRoomWorked(r);
  assert.equal(r.pageProtocol, 'http/1.1', 'the index page came over HTTP/1.1');

  // (a) DevTools: 101 with Sec-WebSocket-Accept.
  const ws = r.sockets.filter((s) => s.url === `wss://127.0.0.1:${r.srv.port}/rooms/${r.room}`);
  assert.equal(ws.length, 2, `two WebSockets seen by DevTools: ${JSON.stringify(r.sockets)}`);
  for (const s of ws) {
    assert.equal(s.status, 101, `handshake status over HTTP/1.1: ${JSON.stringify(s)}`);
    assert.ok(headerNames(s.headers).includes('sec-websocket-accept'), `Sec-WebSocket-Accept over HTTP/1.1: ${JSON.stringify(s.headers)}`);
  }
  console.log(`DevTools: ${ws.map((s) => `${s.status} ${JSON.stringify(s.headers)}`).join(' | ')}`);

  // (b) NetLog: no HTTP/2 at all, no extended CONNECT; the upgrade requests are there.
  assert.ok(!r.netlog.text.includes(':protocol: websocket'), 'no :protocol: websocket anywhere in the NetLog');
  assert.deepEqual(h2SentHeaders(r.netlog), [], 'no HTTP/2 headers sent');
  const upgrades = r.netlog.events.filter((e) => e.name === 'HTTP_TRANSACTION_SEND_REQUEST_HEADERS'
    && String(e.params?.line).startsWith(`GET /rooms/${r.room} HTTP/1.1`));
  assert.equal(upgrades.length, 2, `two HTTP/1.1 upgrade requests in the NetLog: ${upgrades.length}`);
  for (const e of upgrades) assert.ok(e.params.headers.some((l) => /^upgrade: websocket$/i.test(l)), JSON.stringify(e.params));
  console.log(`NetLog HTTP_TRANSACTION_SEND_REQUEST_HEADERS: ${JSON.stringify(upgrades[0].params.line)} ${JSON.stringify(upgrades[0].params.headers)}`);

  // (c) The server counted two over HTTP/1.1, none over HTTP/2, and has no HTTP/2 connection.
  assert.equal(r.after.h1 - r.before.h1, 2, `http="1.1": ${r.before.h1} -> ${r.after.h1}`);
  assert.equal(r.after.h2, r.before.h2, `http="2": ${r.before.h2} -> ${r.after.h2}`);
  assert.equal(r.after.h2conns, 0, 'tidewire_http2_connections');
  console.log(`metrics: before ${JSON.stringify(r.before)}, after ${JSON.stringify(r.after)}`);
});

test('the demo chat page over https with HTTP/2: two contexts chat, and their WebSockets are HTTP/2 streams', async () => {
  const srv = await serveTls();
  const browser = await launchTrusting();
  try {
    const m0 = await metrics(srv);
    const a = await open(browser, `${srv.base}/chat?room=h2chat&nick=ann`);
    const b = await open(browser, `${srv.base}/chat?room=h2chat&nick=bob`);
    const connected = (page) => waitFor(page, () => document.getElementById('state').textContent === 'connected', null, { what: 'connected' });
    await connected(a.page); await connected(b.page);
    await a.page.fill('#text', 'hello over h2 from ann');
    await a.page.press('#text', 'Enter');
    await waitFor(b.page, () => document.getElementById('log').textContent.includes('ann: hello over h2 from ann'), null, { what: 'bob sees ann' });
    await b.page.fill('#text', 'bob here, also h2');
    await b.page.press('#text', 'Enter');
    await waitFor(a.page, () => document.getElementById('log').textContent.includes('bob: bob here, also h2'), null, { what: 'ann sees bob' });
    await waitFor(a.page, () => { const t = document.getElementById('people').textContent; return t.includes('ann') && t.includes('bob'); }, null, { what: 'presence lists both' });
    await screenshot(a.page, 'http2-chat-ann');

    for (const [who, x] of [['ann', a], ['bob', b]]) {
      assert.equal(x.pageProtocol, 'h2', `${who}'s page came over HTTP/2`);
      const ws = [...x.sockets.values()].filter((s) => s.url === `wss://127.0.0.1:${srv.port}/ws`);
      assert.ok(ws.length >= 1, `${who}: a WebSocket to /ws: ${JSON.stringify([...x.sockets.values()])}`);
      for (const s of ws) {
        assert.equal(s.status, 200, `${who}: handshake over HTTP/2: ${JSON.stringify(s)}`);
        assert.ok(!headerNames(s.headers).includes('sec-websocket-accept'), `${who}: no Sec-WebSocket-Accept`);
      }
    }
    const m1 = await metrics(srv);
    const opened = [...a.sockets.values(), ...b.sockets.values()].filter((s) => s.status !== undefined).length;
    assert.equal(m1.h2 - m0.h2, opened, `http="2" grew by the pages' WebSockets (${opened}): ${m0.h2} -> ${m1.h2}`);
    assert.equal(m1.h1, m0.h1, `http="1.1": ${m0.h1} -> ${m1.h1}`);
    console.log(`chat: ${opened} WebSockets, metrics before ${JSON.stringify(m0)}, after ${JSON.stringify(m1)}`);
    assert.deepEqual([...a.errors, ...b.errors], [], 'page errors');
    for (const x of [a, b]) await x.context.close();
  } finally {
    await withTimeout(browser.close(), STEP_TIMEOUT_MS, 'closing Chromium').catch(() => {});
    await srv.stop();
  }
});
