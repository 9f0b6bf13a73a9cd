// The hub's demo pages in headless Chromium, against a real `tidewire serve`: two browser
// contexts chat; a cut connection reconnects by itself and shows, without gaps, what was
// published meanwhile; a restarted server is noticed (older messages could not be
// recovered) and new messages still arrive; the live chart moves; a whiteboard stroke
// drawn in one context appears in another and in a late joiner. Screenshots go to
// screenshots/hub-*.png. Run through interop/browser/run.sh.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  launch, evaluate, screenshot, startServe, startProxy, waitFor, withTimeout, STEP_TIMEOUT_MS,
} from './lib.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await withTimeout(browser.close(), STEP_TIMEOUT_MS, 'closing Chromium').catch(() => {}); });

async function open(url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  const page = await context.newPage();
  page.setDefaultTimeout(STEP_TIMEOUT_MS);
  const errors = [];
  page.on('pageerror', (e) => errors.push(String(e)));
  if (process.env.BROWSER_VERBOSE) page.on('console', (m) => console.log(`[page] ${m.text()}`));
  const resp = await page.goto(url, { waitUntil: 'load' });
  assert.ok(resp.ok(), `GET ${url}: ${resp.status()}`);
  return { page, context, errors };
}

const connected = (page) => waitFor(page, () => document.getElementById('state').textContent === 'connected', null, { what: 'connected' });

async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

/** The chat messages shown, as [offset, text] in page order. */
const shown = (page) => evaluate(page, () => [...document.querySelectorAll('#log .msg')].map((d) => [Number(d.dataset.offset), d.textContent]));

test('every demo page loads in well under a second, from the binary alone', async () => {
  const srv = await startServe();
  try {
    for (const path of ['/', '/chat', '/live', '/board', '/bare']) {
      const x = await open(`${srv.base}${path}`);
      const ms = await evaluate(x.page, () => {
        const nav = performance.getEntriesByType('navigation')[0];
        return nav.loadEventEnd - nav.startTime;
      });
      // Every request the page made went to the server itself (no CDN).
      const foreign = await evaluate(x.page, () => performance.getEntriesByType('resource').map((r) => r.name).filter((n) => !n.startsWith(location.origin)));
      assert.deepEqual(foreign, [], `${path} loaded resources from elsewhere`);
      assert.ok(ms < 1000, `${path} loaded in ${ms.toFixed(0)} ms`);
      console.log(`${path}: loaded in ${ms.toFixed(0)} ms`);
      if (path === '/') await screenshot(x.page, 'hub-index');
      assert.deepEqual(x.errors, [], `${path}: page errors`);
      await x.context.close();
    }
  } finally {
    await srv.stop();
  }
});

test('two browser contexts chat with each other, with presence', async () => {
  const srv = await startServe();
  try {
    const a = await open(`${srv.base}/chat?room=e2e&nick=ann`);
    const b = await open(`${srv.base}/chat?room=e2e&nick=bob`);
    await connected(a.page); await connected(b.page);
    await say(a.page, 'hello from ann');
    await waitFor(b.page, () => document.getElementById('log').textContent.includes('ann: hello from ann'), null, { what: 'bob sees ann' });
    await say(b.page, 'hi ann, bob here');
    await waitFor(a.page, () => document.getElementById('log').textContent.includes('bob: hi ann, bob here'), null, { what: 'ann sees bob' });
    await waitFor(a.page, () => { const t = document.getElementById('people').textContent; return t.includes('ann') && t.includes('bob'); }, null, { what: 'presence lists both' });
    // Typing indicator.
    await b.page.fill('#text', 'typing...');
    await b.page.dispatchEvent('#text', 'input');
    await waitFor(a.page, () => document.getElementById('typing').textContent.includes('bob is typing'), null, { what: 'typing indicator' });
    await screenshot(a.page, 'hub-chat-ann');
    await screenshot(b.page, 'hub-chat-bob');
    // A late joiner gets the history.
    const c = await open(`${srv.base}/chat?room=e2e&nick=cat`);
    await waitFor(c.page, () => document.getElementById('log').textContent.includes('ann: hello from ann'), null, { what: 'history on join' });
    assert.deepEqual([...a.errors, ...b.errors, ...c.errors], []);
    for (const x of [a, b, c]) await x.context.close();
  } finally {
    await srv.stop();
  }
});

test('a cut connection reconnects by itself and shows what it missed, without gaps', async () => {
  const srv = await startServe(['--publish-rate', '0']);
  const proxy = await startProxy(srv.port);
  try {
    const a = await open(`${proxy.base}/chat?room=cut&nick=ann`); // through the proxy
    const b = await open(`${srv.base}/chat?room=cut&nick=bob`);   // direct
    await connected(a.page); await connected(b.page);
    for (let i = 0; i < 5; i++) await say(b.page, `before ${i}`);
    await waitFor(a.page, () => document.getElementById('log').textContent.includes('before 4'), null, { what: 'before 4' });
    proxy.down(3000); // cut, and refuse reconnects for 3 s
    await waitFor(a.page, () => document.getElementById('banner').classList.contains('show'), null, { what: 'reconnect banner' });
    await screenshot(a.page, 'hub-chat-reconnecting');
    for (let i = 0; i < 20; i++) await say(b.page, `during ${i}`);
    await waitFor(a.page, () => document.getElementById('log').textContent.includes('during 19'), null, { what: 'missed messages shown', timeout: 20_000 });
    await waitFor(a.page, () => !document.getElementById('banner').classList.contains('show'), null, { what: 'banner gone' });
    for (let i = 0; i < 3; i++) await say(b.page, `after ${i}`);
    await waitFor(a.page, () => document.getElementById('log').textContent.includes('after 2'), null, { what: 'after 2' });
    const msgs = await shown(a.page);
    const offsets = msgs.map(([o]) => o);
    assert.equal(offsets.length, 28, JSON.stringify(msgs));
    assert.deepEqual(offsets, offsets.map((_, i) => offsets[0] + i), 'consecutive offsets, no gap, no duplicate');
    await screenshot(a.page, 'hub-chat-resumed');
    await a.context.close(); await b.context.close();
  } finally {
    await proxy.close();
    await srv.stop();
  }
});

test('after a server restart the page reconnects and says older messages could not be recovered', async () => {
  let srv = await startServe();
  const port = srv.port;
  try {
    const a = await open(`${srv.base}/chat?room=restart&nick=ann`);
    await connected(a.page);
    await say(a.page, 'before the restart');
    await waitFor(a.page, () => document.getElementById('log').textContent.includes('before the restart'), null, { what: 'own message' });
    await srv.stop();
    await waitFor(a.page, () => document.getElementById('banner').classList.contains('show'), null, { what: 'reconnect banner' });
    srv = await startServe([], `127.0.0.1:${port}`);
    await waitFor(a.page, () => document.querySelector('#log .notice') !== null, null, { what: 'unrecoverable notice', timeout: 20_000 });
    await connected(a.page);
    const b = await open(`${srv.base}/chat?room=restart&nick=bob`);
    await connected(b.page);
    await say(b.page, 'after the restart');
    await waitFor(a.page, () => document.getElementById('log').textContent.includes('bob: after the restart'), null, { what: 'new message after restart' });
    await screenshot(a.page, 'hub-chat-after-restart');
    await a.context.close(); await b.context.close();
  } finally {
    await srv.stop();
  }
});

test('the live chart updates', async () => {
  const srv = await startServe();
  try {
    const a = await open(`${srv.base}/live`);
    await connected(a.page);
    const first = await waitFor(a.page, () => window.liveTicks() > 5 && window.liveTicks(), null, { what: 'ticks' });
    await new Promise((r) => setTimeout(r, 1000));
    const later = await evaluate(a.page, () => window.liveTicks());
    assert.ok(later >= first + 5, `ticks ${first} -> ${later} in 1 s`);
    await screenshot(a.page, 'hub-live');
    assert.deepEqual(a.errors, []);
    await a.context.close();
  } finally {
    await srv.stop();
  }
});

test('a whiteboard stroke drawn in one context appears in another and in a late joiner', async () => {
  const srv = await startServe();
  try {
    const a = await open(`${srv.base}/board?board=e2e`);
    const b = await open(`${srv.base}/board?board=e2e`);
    await connected(a.page); await connected(b.page);
    const box = await a.page.locator('#board').boundingBox();
    await a.page.mouse.move(box.x + 100, box.y + 100);
    await a.page.mouse.down();
    for (let i = 1; i <= 30; i++) {
      await a.page.mouse.move(box.x + 100 + i * 15, box.y + 100 + Math.round(60 * Math.sin(i / 4)));
      await new Promise((r) => setTimeout(r, 10));
    }
    await a.page.mouse.up();
    const seen = await waitFor(b.page, () => window.boardSegments() >= 3 && window.boardSegments(), null, { what: 'segments in b' });
    // The pixels changed in b: some non-white pixel where the stroke went.
    const inked = await evaluate(b.page, () => {
      const c = document.getElementById('board'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0) n++;
      return n;
    });
    assert.ok(inked > 100, `inked pixels in b: ${inked}`);
    await screenshot(a.page, 'hub-board-a');
    await screenshot(b.page, 'hub-board-b');
    const c = await open(`${srv.base}/board?board=e2e`);
    const late = await waitFor(c.page, (n) => window.boardSegments() >= n && window.boardSegments(), seen, { what: 'late joiner redraws from history' });
    assert.ok(late >= seen);
    await screenshot(c.page, 'hub-board-late-joiner');
    for (const x of [a, b, c]) await x.context.close();
  } finally {
    await srv.stop();
  }
});
