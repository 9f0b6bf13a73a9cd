// The hub's demo pages in headless Chromium, against a real `tidewire serve`: two browser
// contexts chat; a cut connection reconnects by itself and shows, without gaps, what was
// published meanwhile; a restarted server is noticed (older messages could not be
// recovered) and new messages still arrive; the live chart moves; a whiteboard stroke
// drawn in one context appears in another and in a late joiner. Then what a person does by
// hand (issue 13): Join another room under another nickname, the tutorial's /bare page
// (subprotocols, heartbeat, reconnect), two pages opening at once, a server with auth on,
// whiteboard undo and clear, the favicon and the index cards. Screenshots go to
// screenshots/hub-*.png. Run through interop/browser/run.sh.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as joinPath } from 'node:path';
import {
  launch, evaluate, screenshot, startServe, startProxy, waitFor, withTimeout, runCapture, tidewireBin, STEP_TIMEOUT_MS,
} from './lib.mjs';

let browser;
before(async () => { browser = await launch(); });
after(async () => { await withTimeout(browser.close(), STEP_TIMEOUT_MS, 'closing Chromium').catch(() => {}); });

async function open(url, { viewport = { width: 1100, height: 800 } } = {}) {
  const context = await browser.newContext({ viewport });
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

// ------------------------------------------------------------------ issue 13: by hand

const text = (page, sel) => evaluate(page, (s) => document.querySelector(s)?.textContent ?? null, sel);
/** The names in "Here now", sorted. */
const people = (page) => evaluate(page, () => [...document.querySelectorAll('#people li')].map((li) => li.textContent).sort());
const peopleAre = (page, names, what, timeout) => waitFor(
  page,
  (want) => JSON.stringify([...document.querySelectorAll('#people li')].map((li) => li.textContent).sort()) === JSON.stringify(want),
  [...names].sort(),
  { what, timeout },
).catch(async (e) => { throw new Error(`${e.message}: "Here now" shows ${JSON.stringify(await people(page))}, want ${JSON.stringify([...names].sort())}`); });
const logHas = (page, needle, what, timeout) => waitFor(page, (n) => document.getElementById('log').textContent.includes(n), needle, { what, timeout });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Types a nickname and a room into the chat page and clicks Join, as a person would. */
async function join(page, nick, room) {
  await page.fill('#nick', nick);
  await page.fill('#room', room);
  await page.click('#join');
}

test('chat: clicking Join with another room and nickname moves the page there, in both windows', async () => {
  const srv = await startServe();
  try {
    // Both open the bare page (no query) and join by typing, as a person would.
    const a = await open(`${srv.base}/chat`);
    const b = await open(`${srv.base}/chat`);
    await join(a.page, 'ann', 'first');
    await join(b.page, 'bob', 'first');
    await connected(a.page); await connected(b.page);
    await peopleAre(a.page, ['ann', 'bob'], 'ann sees ann and bob in #first');
    await peopleAre(b.page, ['ann', 'bob'], 'bob sees ann and bob in #first');
    await say(b.page, 'said in first');
    await logHas(a.page, 'bob: said in first', 'ann sees bob in #first');

    // Ann becomes anna and goes to #second.
    await join(a.page, 'anna', 'second');
    await connected(a.page);
    await waitFor(a.page, () => document.title.includes('second') && document.querySelector('header').textContent.includes('second'), null, { what: 'title and header show #second' });
    const q = new URLSearchParams(await evaluate(a.page, () => location.search));
    assert.equal(q.get('room'), 'second', 'the URL says the room joined');
    assert.equal(q.get('nick'), 'anna', 'the URL says the nickname joined');
    assert.ok(!(await text(a.page, '#log')).includes('said in first'), "#first's messages are gone from ann's log");
    await peopleAre(a.page, ['anna'], 'anna alone in #second, under her new name');
    await peopleAre(b.page, ['bob'], 'bob sees ann leave #first');
    await say(b.page, 'still in first');

    // Bob follows (same nickname): both see each other under the new name.
    await join(b.page, 'bob', 'second');
    await connected(b.page);
    await peopleAre(a.page, ['anna', 'bob'], 'anna sees anna and bob in #second');
    await peopleAre(b.page, ['anna', 'bob'], 'bob sees anna and bob in #second');
    await say(a.page, 'hello from anna');
    await logHas(b.page, 'anna: hello from anna', 'bob sees the message in #second, signed anna');
    await say(b.page, 'hi anna');
    await logHas(a.page, 'bob: hi anna', 'anna sees bob in #second');
    for (const x of [a, b]) {
      const log = await text(x.page, '#log');
      assert.ok(!log.includes('still in first') && !log.includes('said in first'), `no #first message in #second: ${log}`);
    }
    await screenshot(a.page, 'hub-chat-join-anna');
    await screenshot(b.page, 'hub-chat-join-bob');
    assert.deepEqual([...a.errors, ...b.errors], [], 'page errors');
    for (const x of [a, b]) await x.context.close();
  } finally {
    await srv.stop();
  }
});

test("the tutorial's page: chat/superchat gives chat, the heartbeat is answered and never broadcast, reconnect after 5 s", async () => {
  let srv = await startServe();
  const port = srv.port;
  try {
    const url = `${srv.base}/bare?room=tutorial&heartbeat=1`;
    const a = await open(url);
    const b = await open(url);
    const open1 = (page, what) => waitFor(page, () => document.getElementById('status').textContent === 'connected', null, { what, timeout: 10_000 });
    await open1(a.page, 'a connected'); await open1(b.page, 'b connected');
    for (const x of [a, b]) {
      assert.equal(await text(x.page, '#protocol'), 'chat', 'the page shows the negotiated subprotocol');
      assert.equal((await evaluate(x.page, () => window.bareStats())).protocol, 'chat');
    }
    // A person types in a and presses Enter; b prints it.
    await a.page.fill('#text', 'hello from a');
    await a.page.press('#text', 'Enter');
    await logHas(b.page, 'hello from a', 'b prints what a typed');
    // Both send `ping` every second: each gets its `pong`, and neither prints the other's ping.
    for (const x of [a, b]) await waitFor(x.page, () => window.bareStats().pings >= 3, null, { what: 'three heartbeats sent', timeout: 10_000 });
    await sleep(300); // the last ones' way back
    for (const x of [a, b]) {
      const lines = await evaluate(x.page, () => [...document.querySelectorAll('#log div')].map((d) => d.textContent));
      assert.ok(!lines.some((l) => /^(ping|heartbeat|pong)$/i.test(l.trim())), `a heartbeat line was shown: ${JSON.stringify(lines)}`);
      const st = await waitFor(x.page, () => window.bareStats().pongs >= 3 && window.bareStats(), null, { what: 'three heartbeats answered', timeout: 5_000 });
      assert.ok(st.pongs <= st.pings, `more pongs than pings: ${JSON.stringify(st)}`);
    }
    await screenshot(b.page, 'hub-bare');

    // The server restarts at once; the page comes back 5 s after the close, not sooner.
    const { openedAt: firstOpen } = await evaluate(a.page, () => window.bareStats());
    await srv.stop();
    await logHas(a.page, 'reconnecting in 5 s', 'a says when it reconnects', 5_000);
    srv = await startServe([], `127.0.0.1:${port}`);
    const st = await waitFor(a.page, (t) => window.bareStats().openedAt > t && window.bareStats(), firstOpen, { what: 'a reconnected', timeout: 12_000 });
    const waited = st.openedAt - st.closedAt;
    assert.ok(waited >= 4900 && waited <= 7000, `reconnected ${waited} ms after the close (want 5 s)`);
    await open1(b.page, 'b reconnected');
    await b.page.fill('#text', 'after the restart');
    await b.page.press('#text', 'Enter');
    await logHas(a.page, 'after the restart', 'a prints what b typed after the restart');
    await screenshot(a.page, 'hub-bare-reconnected');
    assert.deepEqual([...a.errors, ...b.errors], [], 'page errors');
    for (const x of [a, b]) await x.context.close();
  } finally {
    await srv.stop();
  }
});

test('two pages opening at once in a room with history both see each other in "Here now", also after a restart', async () => {
  // The history is written with POST /api/publish, which needs an API key (config file).
  const config = joinPath(mkdtempSync(joinPath(tmpdir(), 'tidewire-browser-')), 'tidewire.toml');
  writeFileSync(config, '[api]\nkey = "browser-test-key"\n');
  const flags = ['--publish-rate', '0', '--config', config];
  let srv = await startServe(flags);
  const port = srv.port;
  const pages = [];
  try {
    // The old page missed someone in one round of four, or in the first: six rounds.
    for (let round = 0; round < 6; round++) {
      const room = `crowd${round}`;
      // History first: a few messages in the room.
      for (let i = 0; i < 5; i++) {
        const r = await fetch(`${srv.base}/api/publish`, {
          method: 'POST', headers: { 'content-type': 'application/json', authorization: 'apikey browser-test-key' },
          body: JSON.stringify({ channel: `chat:${room}`, data: { type: 'message', nick: 'earlier', text: `old ${i}` } }),
        });
        assert.ok(r.ok, `publish: ${r.status}`);
      }
      const [a, b] = await Promise.all([open(`${srv.base}/chat?room=${room}&nick=ann`), open(`${srv.base}/chat?room=${room}&nick=bob`)]);
      pages.push(a, b);
      await logHas(a.page, 'old 4', 'history shown'); await logHas(b.page, 'old 4', 'history shown');
      await peopleAre(a.page, ['ann', 'bob'], `round ${round}: ann sees both`, 8_000);
      await peopleAre(b.page, ['ann', 'bob'], `round ${round}: bob sees both`, 8_000);
    }
    // A restart: every page reconnects and resubscribes at about the same time.
    await srv.stop();
    srv = await startServe(flags, `127.0.0.1:${port}`);
    for (let i = 0; i < pages.length; i++) {
      await waitFor(pages[i].page, () => document.querySelector('#log .notice') !== null, null, { what: 'restart noticed', timeout: 20_000 });
      await peopleAre(pages[i].page, ['ann', 'bob'], `after the restart, page ${i} sees both`, 10_000);
    }
    await screenshot(pages[0].page, 'hub-chat-at-once');
    assert.deepEqual(pages.flatMap((x) => x.errors), [], 'page errors');
  } finally {
    for (const x of pages) await x.context.close().catch(() => {});
    await srv.stop();
  }
});

/** An HS256 JWT (docs/protocol.md: `sub` and `exp` required). */
function jwt(secret, claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const signed = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${signed}.${createHmac('sha256', secret).update(signed).digest('base64url')}`;
}

test('auth on: the pages say a token is needed and how to make one; with ?token= they connect', async () => {
  const secret = 'browser-test-secret-0123456789-abcdefgh';
  const srv = await startServe(['--auth-hmac-secret', secret]);
  const exp = Math.floor(Date.now() / 1000) + 3600;
  try {
    const a = await open(`${srv.base}/chat?room=auth&nick=ann`);
    await waitFor(a.page, () => document.getElementById('auth')?.classList.contains('show'), null, { what: 'the token notice', timeout: 10_000 });
    const notice = await text(a.page, '#auth');
    assert.match(notice, /requires a token/);
    assert.match(notice, /tidewire gentoken --user NAME/);
    assert.match(notice, /token=/);
    assert.equal(await evaluate(a.page, () => document.getElementById('banner').classList.contains('show')), false, 'no reconnecting banner');
    assert.equal(await text(a.page, '#state'), 'token needed');
    await screenshot(a.page, 'hub-auth-chat-no-token');

    // A person pastes a token into the notice and clicks the button.
    await a.page.fill('#token-input', jwt(secret, { sub: 'ann', exp }));
    await Promise.all([a.page.waitForURL(/token=/), a.page.click('#auth button')]);
    await connected(a.page);
    await peopleAre(a.page, ['ann'], 'ann is here');
    assert.equal(await evaluate(a.page, () => document.getElementById('auth')?.classList.contains('show') ?? false), false, 'notice gone');
    // Another with a token in the URL: they chat.
    const b = await open(`${srv.base}/chat?room=auth&nick=bob&token=${jwt(secret, { sub: 'bob', exp })}`);
    await connected(b.page);
    await peopleAre(a.page, ['ann', 'bob'], 'ann sees bob');
    await say(b.page, 'authenticated hello');
    await logHas(a.page, 'bob: authenticated hello', 'ann sees bob');
    await screenshot(a.page, 'hub-auth-chat-token');

    // A token signed with another secret: refused, and said so.
    const c = await open(`${srv.base}/chat?room=auth&nick=eve&token=${jwt('another-secret-0123456789-0123456789', { sub: 'eve', exp })}`);
    await waitFor(c.page, () => document.getElementById('auth')?.classList.contains('show'), null, { what: 'refused token notice', timeout: 10_000 });
    assert.match(await text(c.page, '#auth'), /refused the token.*signature/);

    // The whiteboard and the live chart say the same; the rooms page works out that auth is on.
    for (const path of ['/board', '/live']) {
      const x = await open(`${srv.base}${path}`);
      await waitFor(x.page, () => document.getElementById('auth')?.classList.contains('show'), null, { what: `${path}: token notice`, timeout: 10_000 });
      assert.match(await text(x.page, '#auth'), /requires a token/);
      await x.context.close();
    }
    const bare = await open(`${srv.base}/bare?room=auth`);
    await waitFor(bare.page, () => /requires a token/.test(document.getElementById('problem').textContent), null, { what: '/bare: auth is on', timeout: 10_000 });
    assert.match(await text(bare.page, '#problem'), /tidewire gentoken --user NAME/);
    await screenshot(bare.page, 'hub-auth-bare-no-token');
    // The command the notices name makes a token that gets in.
    const gen = await runCapture(tidewireBin(), ['gentoken', '--user', 'cat', '--auth-hmac-secret', secret]);
    assert.equal(gen.code, 0, `tidewire gentoken: ${gen.stderr}`);
    const bare2 = await open(`${srv.base}/bare?room=auth&token=${encodeURIComponent(gen.stdout.trim())}`);
    await waitFor(bare2.page, () => document.getElementById('status').textContent === 'connected', null, { what: '/bare with a token', timeout: 10_000 });
    assert.deepEqual([...a.errors, ...b.errors, ...c.errors, ...bare.errors, ...bare2.errors], [], 'page errors');
    for (const x of [a, b, c, bare, bare2]) await x.context.close();
  } finally {
    await srv.stop();
  }
});

/** Draws a stroke with the mouse on the board. */
async function drawStroke(page, y) {
  const box = await page.locator('#board').boundingBox();
  await page.mouse.move(box.x + 60, box.y + y);
  await page.mouse.down();
  for (let i = 1; i <= 12; i++) {
    await page.mouse.move(box.x + 60 + i * 25, box.y + y + (i % 2) * 20);
    await sleep(15);
  }
  await page.mouse.up();
}
const strokes = (page, n, what) => waitFor(page, (k) => window.boardStrokes() === k, n, { what, timeout: 10_000 })
  .catch(async (e) => { throw new Error(`${e.message}: ${await evaluate(page, () => window.boardStrokes())} strokes`); });
const ink = (page) => evaluate(page, () => window.boardInk());

test('whiteboard: Undo takes back your own last stroke and Clear empties the board, for everyone and for late joiners', async () => {
  const srv = await startServe(['--publish-rate', '0']);
  try {
    const a = await open(`${srv.base}/board?board=undo`);
    const b = await open(`${srv.base}/board?board=undo`);
    await connected(a.page); await connected(b.page);
    await drawStroke(a.page, 80);   // a's first
    await strokes(b.page, 1, 'b sees stroke 1');
    await drawStroke(a.page, 200);  // a's second
    await drawStroke(b.page, 320);  // b's
    await strokes(a.page, 3, 'a sees 3 strokes'); await strokes(b.page, 3, 'b sees 3 strokes');
    const full = await ink(b.page);
    await screenshot(b.page, 'hub-board-before-undo');

    // b's Undo removes b's stroke, not a's later ones; a's Undo removes a's second.
    await b.page.click('#undo');
    await strokes(a.page, 2, 'a: b undid its stroke'); await strokes(b.page, 2, 'b: b undid its stroke');
    await a.page.click('#undo');
    await strokes(a.page, 1, 'a: a undid its second'); await strokes(b.page, 1, 'b: a undid its second');
    const one = await ink(b.page);
    assert.ok(one > 50 && one < full, `ink after two undos: ${one} of ${full}`);
    // What is left is a's first stroke: b's Undo has nothing of b's left and changes nothing.
    await b.page.click('#undo');
    await sleep(500);
    assert.equal(await evaluate(a.page, () => window.boardStrokes()), 1);
    await screenshot(a.page, 'hub-board-after-undo');

    // A late joiner replays history, undos included: one stroke, the same pixels.
    const c = await open(`${srv.base}/board?board=undo`);
    await connected(c.page);
    await strokes(c.page, 1, 'late joiner: one stroke');
    assert.equal(await ink(c.page), one, 'late joiner shows the same pixels');
    await c.context.close();

    // Clear, from b: everyone's board is empty; a stroke after it is all a late joiner sees.
    await b.page.click('#clear');
    await strokes(a.page, 0, 'a: cleared'); await strokes(b.page, 0, 'b: cleared');
    assert.equal(await ink(a.page), 0, 'a: no ink after clear');
    await drawStroke(b.page, 400);
    await strokes(a.page, 1, 'a: the stroke after clear');
    const after = await ink(a.page);
    const d = await open(`${srv.base}/board?board=undo`);
    await connected(d.page);
    await strokes(d.page, 1, 'late joiner after clear: only the new stroke');
    assert.equal(await ink(d.page), after, 'late joiner after clear shows the same pixels');
    await screenshot(d.page, 'hub-board-late-after-clear');
    assert.deepEqual([...a.errors, ...b.errors, ...d.errors], [], 'page errors');
    for (const x of [a, b, d]) await x.context.close();
  } finally {
    await srv.stop();
  }
});

test('favicon is served, every page links it, and the index cards stay inside their borders', async () => {
  const srv = await startServe();
  try {
    for (const path of ['/favicon.ico', '/favicon.svg']) {
      const r = await fetch(`${srv.base}${path}`);
      assert.equal(r.status, 200, `${path}: ${r.status}`);
      assert.match(r.headers.get('content-type') || '', /^image\/svg\+xml/);
      assert.match(await r.text(), /^<svg[\s>]/);
    }
    for (const path of ['/', '/chat', '/live', '/board', '/bare']) {
      const r = await fetch(`${srv.base}${path}`);
      const html = await r.text();
      const m = html.match(/<link rel="icon" href="([^"]+)"/);
      assert.ok(m, `${path} links a favicon`);
      assert.equal((await fetch(`${srv.base}${m[1]}`)).status, 200, `${path}: ${m[1]}`);
    }
    for (const width of [1100, 400]) {
      const x = await open(`${srv.base}/`, { viewport: { width, height: 900 } });
      const out = await evaluate(x.page, () => [...document.querySelectorAll('.cards a')].map((card) => {
        const c = card.getBoundingClientRect();
        const range = document.createRange();
        range.selectNodeContents(card);
        const boxes = [...range.getClientRects()].filter((r) => r.width > 0);
        const right = Math.max(...boxes.map((r) => r.right)), bottom = Math.max(...boxes.map((r) => r.bottom));
        return { id: card.id, card: [c.left, c.top, c.right, c.bottom], content: [Math.min(...boxes.map((r) => r.left)), right, bottom], scroll: card.scrollWidth - card.clientWidth, page: document.documentElement.scrollWidth - document.documentElement.clientWidth };
      }));
      assert.equal(out.length, 4);
      for (const o of out) {
        assert.ok(o.content[0] >= o.card[0] && o.content[1] <= o.card[2] && o.content[2] <= o.card[3], `${width} px: ${o.id} content ${JSON.stringify(o.content)} outside its box ${JSON.stringify(o.card)}`);
        assert.ok(o.scroll <= 0, `${width} px: ${o.id} overflows by ${o.scroll} px`);
        assert.ok(o.page <= 0, `${width} px: the page scrolls sideways by ${o.page} px`);
      }
      await screenshot(x.page, `hub-index-${width}`);
      await x.context.close();
    }
  } finally {
    await srv.stop();
  }
});
