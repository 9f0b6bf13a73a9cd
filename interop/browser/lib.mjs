// Small harness for driving Debian's headless Chromium with playwright-core.
// Reused by every browser test (echo today, the hub's demo pages later).
//
//   import { launch, withBrowser, withPage, serveHtml, startServer, screenshot } from './lib.mjs';
//
//   await withBrowser(async (browser) => {
//     const site = await serveHtml('<pre id="log"></pre>');          // http://127.0.0.1:<ephemeral>/
//     try {
//       await withPage(site.url, async (page) => { ...; await screenshot(page, 'name'); }, { browser });
//     } finally { await site.close(); }
//   });
//
// Chromium never talks to 127.0.0.1 from about:blank (local network access checks), so a
// test page must be loaded over HTTP from 127.0.0.1 first (serveHtml) and open its
// WebSockets from there. Nothing here waits without a bound: every step has a timeout.
//
// Env: BROWSER_CHROMIUM (/usr/bin/chromium), BROWSER_TIMEOUT_MS (30000, per page step),
//      BROWSER_PID_DIR (if set, each launched browser's pid is written there so that
//      run.sh can kill leftovers), BROWSER_SCREENSHOT_DIR (<repo>/screenshots).

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdir, writeFile, rm } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO_ROOT = resolve(HERE, '..', '..');
export const CHROMIUM = process.env.BROWSER_CHROMIUM || '/usr/bin/chromium';
export const STEP_TIMEOUT_MS = Number(process.env.BROWSER_TIMEOUT_MS || 30_000);
export const SCREENSHOT_DIR = process.env.BROWSER_SCREENSHOT_DIR || join(REPO_ROOT, 'screenshots');

export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-quic',
  '--no-first-run',
  '--disable-component-update',
  '--disable-sync',
];

/** Rejects with `what timed out after N ms` unless `promise` settles first. */
export function withTimeout(promise, ms, what) {
  let timer;
  const guard = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, guard]).finally(() => clearTimeout(timer));
}

/**
 * Launches headless Chromium (never downloads a browser: Debian's binary only). `args` are
 * added to CHROMIUM_ARGS; `env` is added to this process's environment for Chromium.
 */
export async function launch({ args = [], env, timeout = STEP_TIMEOUT_MS } = {}) {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...args],
    ...(env ? { env: { ...process.env, ...env } } : {}),
    timeout,
  });
  const pid = browser.process?.()?.pid;
  if (pid && process.env.BROWSER_PID_DIR) {
    await mkdir(process.env.BROWSER_PID_DIR, { recursive: true });
    await writeFile(join(process.env.BROWSER_PID_DIR, `chromium.${pid}`), `${pid}\n`);
    browser.on('disconnected', () => {
      rm(join(process.env.BROWSER_PID_DIR, `chromium.${pid}`), { force: true }).catch(() => {});
    });
  }
  return browser;
}

/** Runs fn(browser) with a fresh browser, always closed afterwards. */
export async function withBrowser(fn, opts = {}) {
  const browser = await launch(opts);
  try {
    return await fn(browser);
  } finally {
    await withTimeout(browser.close(), STEP_TIMEOUT_MS, 'closing Chromium').catch(() => {
      try { browser.process?.()?.kill('SIGKILL'); } catch { /* already gone */ }
    });
  }
}

/**
 * Opens `url` in a new page (own context) and returns fn(page, ctx)'s result. The page's
 * console and errors are collected in ctx.console / ctx.errors (and echoed with
 * BROWSER_VERBOSE=1). Launches a browser of its own unless opts.browser is given.
 */
export async function withPage(url, fn, { browser, timeout = STEP_TIMEOUT_MS, viewport = { width: 1000, height: 700 } } = {}) {
  if (!browser) return withBrowser((b) => withPage(url, fn, { browser: b, timeout, viewport }));
  const context = await browser.newContext({ viewport });
  const ctx = { console: [], errors: [] };
  try {
    const page = await context.newPage();
    page.setDefaultTimeout(timeout);
    page.setDefaultNavigationTimeout(timeout);
    page.on('console', (m) => {
      ctx.console.push(`${m.type()}: ${m.text()}`);
      if (process.env.BROWSER_VERBOSE) console.log(`[page ${m.type()}] ${m.text()}`);
    });
    page.on('pageerror', (e) => ctx.errors.push(String(e)));
    const resp = await page.goto(url, { waitUntil: 'load', timeout });
    if (resp && !resp.ok()) throw new Error(`GET ${url}: HTTP ${resp.status()}`);
    return await fn(page, ctx);
  } finally {
    await withTimeout(context.close(), timeout, 'closing the page').catch(() => {});
  }
}

/**
 * page.evaluate with a bound: the in-page function should have its own timeouts too,
 * this one only makes sure Node never waits forever.
 */
export function evaluate(page, fn, arg, { timeout = STEP_TIMEOUT_MS, what = 'page.evaluate' } = {}) {
  return withTimeout(page.evaluate(fn, arg), timeout, what);
}

/** Full-page PNG into screenshots/<name>.png (folder created); returns the path. */
export async function screenshot(page, name, { dir = SCREENSHOT_DIR } = {}) {
  await mkdir(dir, { recursive: true });
  const path = join(dir, name.endsWith('.png') ? name : `${name}.png`);
  await page.screenshot({ path, fullPage: true });
  return path;
}

/**
 * Serves pages over HTTP on 127.0.0.1 (ephemeral port). `routes` is either one HTML
 * string (served at /) or { '/path': string | { type, body } }. Returns { url, port, close }.
 */
export async function serveHtml(routes) {
  if (typeof routes === 'string') routes = { '/': routes };
  const server = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    let r = routes[path];
    if (r === undefined) {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
      return;
    }
    if (typeof r === 'string') r = { type: 'text/html; charset=utf-8', body: r };
    res.writeHead(200, { 'content-type': r.type, 'cache-control': 'no-store' }).end(r.body);
  });
  await new Promise((ok, fail) => {
    server.once('error', fail);
    server.listen(0, '127.0.0.1', ok);
  });
  server.unref();
  const { port } = server.address();
  return {
    port,
    url: `http://127.0.0.1:${port}/`,
    close: () => new Promise((ok) => { server.closeAllConnections?.(); server.close(() => ok()); }),
  };
}

const children = new Set();
process.on('exit', () => { for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } } });

/**
 * Spawns a server and waits (bounded) for a stdout line matching `ready` (a RegExp);
 * returns { proc, match, output(), stop() }. Killed when this process exits.
 */
export async function startServer(cmd, args, { ready, timeout = 15_000, env } = {}) {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  children.add(proc);
  let out = '';
  const exited = new Promise((ok) => proc.once('exit', (code, sig) => { children.delete(proc); ok({ code, sig }); }));
  const matched = new Promise((ok, fail) => {
    const onData = (d) => {
      out += d;
      const m = ready ? out.match(ready) : [''];
      if (m) ok(m);
    };
    proc.stdout.on('data', onData);
    proc.stderr.on('data', (d) => { out += d; });
    proc.once('error', fail);
    exited.then(({ code, sig }) => fail(new Error(`${cmd} ${args.join(' ')} exited (${sig || code}) before it was ready:\n${out}`)));
  });
  let match;
  try {
    match = await withTimeout(matched, timeout, `waiting for ${cmd} ${args.join(' ')} to be ready`);
  } catch (e) {
    proc.kill('SIGKILL');
    throw e;
  }
  return {
    proc,
    match,
    output: () => out,
    stop: async () => {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      await withTimeout(exited, 5_000, 'server exit').catch(() => proc.kill('SIGKILL'));
    },
  };
}

/** Runs a command to completion (bounded) and returns { code, stdout, stderr }. */
export function runCapture(cmd, args, { timeout = 15_000 } = {}) {
  return new Promise((ok, fail) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d) => { stdout += d; });
    p.stderr.on('data', (d) => { stderr += d; });
    const t = setTimeout(() => { p.kill('SIGKILL'); fail(new Error(`${cmd} ${args.join(' ')} timed out`)); }, timeout);
    p.once('error', (e) => { clearTimeout(t); fail(e); });
    p.once('close', (code) => { clearTimeout(t); ok({ code, stdout, stderr }); });
  });
}

/** The tidewire binary: $TIDEWIRE_BIN, else ${CARGO_TARGET_DIR:-<repo>/target}/release/tidewire. */
export function tidewireBin() {
  if (process.env.TIDEWIRE_BIN) return process.env.TIDEWIRE_BIN;
  const target = process.env.CARGO_TARGET_DIR ? resolve(REPO_ROOT, process.env.CARGO_TARGET_DIR) : join(REPO_ROOT, 'target');
  return join(target, 'release', 'tidewire');
}

/** `tidewire echo --listen 127.0.0.1:0 ...extra`; resolves to { url, port, stop, ... }. */
export async function startEcho(extra = []) {
  const s = await startServer(tidewireBin(), ['echo', '--listen', '127.0.0.1:0', ...extra], {
    ready: /listening on (ws:\/\/127\.0\.0\.1:(\d+)\/)/,
  });
  return { ...s, url: s.match[1], port: Number(s.match[2]) };
}

/**
 * Starts `tidewire serve --listen ADDR extra...`; returns { ...server, port, base }. `base`
 * is `https://...` when the server says so (`--tls-cert`/`--tls-key`). `env` is added to
 * the server's environment (e.g. `{ TIDEWIRE_LOG: 'debug' }`).
 */
export async function startServe(extra = [], listen = '127.0.0.1:0', { env } = {}) {
  const s = await startServer(tidewireBin(), ['serve', '--listen', listen, ...extra], {
    ready: /listening on (https?):\/\/127\.0\.0\.1:(\d+)\//,
    env,
  });
  const port = Number(s.match[2]);
  return { ...s, port, base: `${s.match[1]}://127.0.0.1:${port}` };
}

/**
 * A TCP proxy on 127.0.0.1 in front of `port`, to cut connections the way a network does:
 * `cut()` destroys every proxied socket at once (no close frame, no FIN handshake from the
 * far side), `down(ms)` also refuses new connections for that long. Returns
 * { port, base, cut, down, close }.
 */
export async function startProxy(port) {
  const { createServer: createTcp, connect } = await import('node:net');
  const sockets = new Set();
  let downUntil = 0;
  const server = createTcp((client) => {
    if (Date.now() < downUntil) { client.destroy(); return; }
    const upstream = connect(port, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => {});
    }
    client.pipe(upstream); upstream.pipe(client);
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise((ok, fail) => { server.once('error', fail); server.listen(0, '127.0.0.1', ok); });
  server.unref();
  const own = server.address().port;
  const cut = () => { for (const s of sockets) s.resetAndDestroy ? s.resetAndDestroy() : s.destroy(); };
  return {
    port: own,
    base: `http://127.0.0.1:${own}`,
    cut,
    down: (ms) => { downUntil = Date.now() + ms; cut(); },
    close: () => new Promise((ok) => { cut(); server.close(() => ok()); }),
  };
}

/** Polls `fn` in the page until it returns a truthy value (bounded); returns that value. */
export async function waitFor(page, fn, arg, { timeout = STEP_TIMEOUT_MS, what = 'condition' } = {}) {
  let handle;
  try {
    handle = await withTimeout(
      page.waitForFunction(fn, arg, { timeout, polling: 100 }),
      timeout + 1000,
      what,
    );
  } catch (e) {
    // Playwright's own timeout comes first and does not say what was awaited.
    throw String(e.message).includes(what) ? e : new Error(`${what}: ${e.message}`, { cause: e });
  }
  return handle.jsonValue();
}
