// `tidewire echo` from a real browser: headless Chromium opens a page served from
// 127.0.0.1 and runs `new WebSocket(...)` in it. Run through interop/browser/run.sh, or
// directly: `node --test --test-concurrency=1 interop/browser/echo.test.mjs` (needs
// node_modules, /usr/bin/chromium and a release build of tidewire-cli).
//
// BROWSER_DEFLATE=1 forces the permessage-deflate test on (it fails if the server cannot
// do it), BROWSER_DEFLATE=0 skips it; unset, it runs iff `tidewire echo --help` mentions
// --compression, and is otherwise skipped with a printed reason.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, withPage, evaluate, screenshot, serveHtml, startEcho, runCapture, tidewireBin,
  STEP_TIMEOUT_MS, withTimeout,
} from './lib.mjs';

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>Tidewire echo - browser test</title>
<style>body{font:14px/1.4 monospace;margin:16px;background:#fff;color:#111}
.ok{color:#070}.bad{color:#b00;font-weight:bold}h1{font-size:18px}</style></head>
<body><h1>Tidewire echo - browser test</h1><p id="ua"></p><pre id="log">waiting...</pre>
<script>document.getElementById('ua').textContent = navigator.userAgent;</script>
</body></html>`;

// Runs inside the page: the whole scenario against `url`, returns a JSON summary and
// renders it into #log. Everything is compared here; Node only checks the summary.
async function scenario({ url, protocols, stepMs }) {
  const lines = [];
  const log = (s) => { lines.push(s); document.getElementById('log').textContent = lines.join('\n'); };
  const summary = { url, protocols, extensions: null, protocol: null, messages: [], close: null, errors: [] };
  const enc = new TextEncoder();

  // 100 KiB of UTF-8: the pattern repeated, cut at a character boundary, '.'-padded.
  const PAT = 'héllo wörld — €𝄞 日本語 ';
  const exactUtf8 = (n) => {
    let s = '';
    while (enc.encode(s).length < n) s += PAT;
    const chars = Array.from(s);
    while (enc.encode(chars.join('')).length > n) chars.pop();
    s = chars.join('');
    return s + '.'.repeat(n - enc.encode(s).length);
  };
  // xorshift32 (13, 17, 5) seeded with 0x9E3779B9 ^ size, little-endian words (as interop/).
  const pattern = (size) => {
    const out = new Uint8Array(size);
    let x = (0x9e3779b9 ^ size) >>> 0;
    for (let i = 0; i < size; i += 4) {
      x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
      for (let b = 0; b < 4 && i + b < size; b++) out[i + b] = (x >>> (8 * b)) & 0xff;
    }
    return out;
  };
  const messages = [
    { name: 'text: short non-ASCII', data: PAT.repeat(3).trim() },
    { name: 'text: pattern x 200', data: PAT.repeat(200) },
    { name: 'text: 100 KiB', data: exactUtf8(100 * 1024) },
    { name: 'binary: 1 MiB', data: pattern(1 << 20).buffer },
  ];

  const step = (p, what) => Promise.race([
    p, new Promise((_, rej) => setTimeout(() => rej(new Error(what + ' timed out after ' + stepMs + ' ms')), stepMs)),
  ]);

  let ws;
  try {
    ws = protocols ? new WebSocket(url, protocols) : new WebSocket(url);
    ws.binaryType = 'arraybuffer';
    const inbox = [];
    let waiter = null;
    ws.onmessage = (e) => { if (waiter) { const w = waiter; waiter = null; w(e.data); } else inbox.push(e.data); };
    const closed = new Promise((ok) => { ws.onclose = (e) => ok({ code: e.code, reason: e.reason, wasClean: e.wasClean }); });
    const next = () => inbox.length ? Promise.resolve(inbox.shift()) : new Promise((ok) => { waiter = ok; });
    ws.onerror = () => summary.errors.push('error event');

    await step(new Promise((ok, rej) => {
      ws.onopen = ok;
      closed.then((c) => rej(new Error('closed before open: code ' + c.code)));
    }), 'open');
    summary.extensions = ws.extensions;
    summary.protocol = ws.protocol;
    log('open ' + url + '\n  extensions: ' + JSON.stringify(ws.extensions) + '\n  protocol:   ' + JSON.stringify(ws.protocol));

    for (const m of messages) {
      const t0 = performance.now();
      ws.send(m.data);
      const got = await step(next(), 'echo of ' + m.name);
      const ms = Math.round(performance.now() - t0);
      let ok, bytes, detail = '';
      if (typeof m.data === 'string') {
        bytes = enc.encode(m.data).length;
        ok = typeof got === 'string' && got === m.data;
        if (typeof got !== 'string') detail = 'came back as binary';
        else if (!ok) detail = 'differs (got ' + enc.encode(got).length + ' bytes)';
      } else {
        bytes = m.data.byteLength;
        const a = new Uint8Array(m.data);
        if (!(got instanceof ArrayBuffer)) { ok = false; detail = 'came back as text'; }
        else {
          const b = new Uint8Array(got);
          let diff = a.length === b.length ? -1 : Math.min(a.length, b.length);
          for (let i = 0; diff < 0 && i < a.length; i++) if (a[i] !== b[i]) diff = i;
          ok = diff < 0;
          if (!ok) detail = 'first difference at byte ' + diff + ' (got ' + b.length + ' bytes)';
        }
      }
      summary.messages.push({ name: m.name, bytes, ok, ms, detail });
      if (m === messages[0] && typeof got === 'string') log('echoed: ' + got);
      log((ok ? 'PASS ' : 'FAIL ') + m.name + ' (' + bytes + ' bytes, ' + ms + ' ms)' + (detail ? ': ' + detail : ''));
    }

    ws.close(1000, 'done');
    summary.close = await step(closed, 'close');
    log('close: code ' + summary.close.code + ', wasClean ' + summary.close.wasClean +
        ', reason ' + JSON.stringify(summary.close.reason));
  } catch (e) {
    summary.errors.push(String(e && e.message || e));
    log('ERROR ' + (e && e.message || e));
    try { ws && ws.close(); } catch (_) { /* ignore */ }
  }
  return summary;
}

let browser;
let site;
const failures = [];

before(async () => {
  browser = await launch();
  site = await serveHtml(PAGE);
});

after(async () => {
  await site?.close();
  await withTimeout(browser?.close() ?? Promise.resolve(), STEP_TIMEOUT_MS, 'closing Chromium').catch(() => {});
});

// Starts `tidewire echo extra...`, runs the scenario in a page, screenshots it.
async function runEcho(extra, { protocols = null, shot }) {
  const echo = await startEcho(extra);
  try {
    return await withPage(site.url, async (page, ctx) => {
      const s = await evaluate(page, scenario, { url: echo.url, protocols, stepMs: STEP_TIMEOUT_MS },
        { timeout: STEP_TIMEOUT_MS * 3, what: 'echo scenario in the page' });
      const path = await screenshot(page, shot);
      console.log(`screenshot: ${path}`);
      s.pageErrors = ctx.errors;
      return s;
    }, { browser });
  } finally {
    await echo.stop();
  }
}

function checkCommon(s) {
  assert.deepEqual(s.errors, [], `errors in the page: ${s.errors.join('; ')}`);
  assert.deepEqual(s.pageErrors, []);
  assert.equal(s.messages.length, 4);
  for (const m of s.messages) assert.ok(m.ok, `${m.name}: ${m.detail}`);
  // The server must answer 1000 and close cleanly; echoing the reason is optional (RFC 6455 5.5.1).
  assert.ok(s.close, 'no close event');
  assert.equal(s.close.code, 1000, 'close code');
  assert.equal(s.close.wasClean, true, 'wasClean');
}

test('echo without compression: non-ASCII text, 100 KiB text, 1 MiB binary, clean close', { timeout: STEP_TIMEOUT_MS * 5 }, async () => {
  const s = await runEcho([], { shot: 'browser-echo' });
  console.log(JSON.stringify(s.messages));
  checkCommon(s);
  assert.equal(s.extensions, '', 'no extension may be negotiated without --compression');
  assert.equal(s.protocol, '', 'no subprotocol was offered');
});

const deflate = await (async () => {
  const env = process.env.BROWSER_DEFLATE;
  if (env === '1') return { run: true };
  if (env === '0') return { run: false, why: 'BROWSER_DEFLATE=0' };
  try {
    const r = await runCapture(tidewireBin(), ['echo', '--help']);
    if (/--compression/.test(r.stdout + r.stderr)) return { run: true };
    return { run: false, why: 'tidewire echo has no --compression yet' };
  } catch (e) {
    return { run: true }; // binary missing: let the test fail loudly rather than skip
  }
})();
if (!deflate.run) {
  console.log(`skipped: ${deflate.why} (set BROWSER_DEFLATE=1 to force the permessage-deflate test)`);
}

test('echo with --compression: permessage-deflate negotiated, same messages', {
  timeout: STEP_TIMEOUT_MS * 5,
  skip: deflate.run ? false : `skipped: ${deflate.why}`,
}, async () => {
  const s = await runEcho(['--compression'], { shot: 'browser-echo-deflate' });
  console.log(JSON.stringify({ extensions: s.extensions, messages: s.messages }));
  checkCommon(s);
  assert.match(s.extensions, /permessage-deflate/);
  assert.equal(s.protocol, '');
});

test('subprotocol: client offers [chat, superchat], server prefers superchat', { timeout: STEP_TIMEOUT_MS * 5 }, async () => {
  const s = await runEcho(['--protocols', 'superchat,chat'], { protocols: ['chat', 'superchat'], shot: 'browser-echo-protocols' });
  checkCommon(s);
  assert.equal(s.protocol, 'superchat');
  assert.equal(s.extensions, '');
});
