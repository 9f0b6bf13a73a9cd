#!/usr/bin/env node
// Run the interop SCENARIO (../README.md) as a client with Node `ws`.
// Usage: node client.mjs URL [--compression] [--http2] [--ca FILE] [--step-timeout SECONDS]
// Prints one line per step; exits 0 on success, 1 with a message otherwise.
// --http2: the WebSocket is a stream of an HTTP/2 session (RFC 8441 extended CONNECT,
// h2c with prior knowledge for ws://, TLS with ALPN h2 for wss://; `--ca` a PEM to trust),
// with ws running over that stream (./h2.mjs).

import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import * as H2 from './h2.mjs';
import * as S from './scenario.mjs';

const wsVersion = createRequire(import.meta.url)('ws/package.json').version;
const args = S.parseArgs(process.argv.slice(2), ['step-timeout', 'ca']);
const url = args._[0];
if (!url || args.help) {
  console.error('usage: client.mjs URL [--compression] [--http2] [--ca FILE] [--step-timeout SECONDS]');
  process.exit(2);
}
const compression = Boolean(args.compression);
const http2 = Boolean(args.http2);
const ca = args.ca ? readFileSync(args.ca) : undefined;
const stepTimeoutMs = Number(args['step-timeout'] ?? 30) * 1000;

class ScenarioError extends Error {}

function withTimeout(promise, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new ScenarioError(`timed out after ${stepTimeoutMs} ms: ${what}`)), stepTimeoutMs);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

function ok(msg, t0) {
  console.log(`ok   ${msg} (${Math.round(performance.now() - t0)} ms)`);
}

// The HTTP/2 session of the --http2 WebSocket, once open.
let session = null;

// Turns ws events into awaitable queues. Over HTTP/2 the ws is made once the extended
// CONNECT was answered, and `attach` runs before it is opened.
function open(url) {
  const c = {};
  if (!http2) {
    attach(c, new WebSocket(url, {
      perMessageDeflate: compression ? {} : false,
      maxPayload: S.MAX_MESSAGE_SIZE,
      handshakeTimeout: stepTimeoutMs,
    }));
    return c;
  }
  c.opened = (async () => {
    session = await H2.openSession(url, { ca });
    const { headers } = await H2.connectWebSocket(session, H2.pathOf(url), {
      compression,
      maxPayload: S.MAX_MESSAGE_SIZE,
      beforeOpen: (ws) => attach(c, ws),
    });
    c.responseHeaders = headers;
  })();
  return c;
}

function attach(c, ws) {
  const messages = [];
  const pongs = [];
  let waiter = null;
  let failure = null;
  const wake = () => {
    if (waiter) {
      const w = waiter;
      waiter = null;
      w();
    }
  };
  ws.on('message', (data, isBinary) => {
    messages.push({ data, isBinary });
    wake();
  });
  ws.on('pong', (data) => {
    pongs.push(data);
    wake();
  });
  ws.on('error', (err) => {
    failure = failure ?? err;
    wake();
  });
  const closed = new Promise((resolve) => {
    // addEventListener gives a CloseEvent with wasClean (close frame sent and received).
    ws.addEventListener('close', (ev) => {
      failure = failure ?? new ScenarioError(`connection closed: code ${ev.code} ${ev.reason}`);
      wake();
      resolve(ev);
    }, { once: true });
  });
  // Over HTTP/2, `c.opened` is the extended CONNECT (the ws is open once made).
  const opened = c.opened ?? new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  async function next(queue, what) {
    return withTimeout((async () => {
      for (;;) {
        if (queue.length) return queue.shift();
        if (failure) throw failure;
        await new Promise((r) => { waiter = r; });
      }
    })(), what);
  }
  Object.assign(c, {
    ws,
    opened,
    closed,
    nextMessage: (what) => next(messages, what),
    nextPong: (what) => next(pongs, what),
    clearFailure: () => { failure = null; },
  });
}

async function echoStep(c, kind, payload) {
  const t0 = performance.now();
  const isBinary = kind === 'binary';
  const sent = isBinary ? payload : Buffer.from(payload, 'utf8');
  await withTimeout(new Promise((resolve, reject) => {
    c.ws.send(payload, { binary: isBinary }, (err) => (err ? reject(err) : resolve()));
  }), `sending ${kind} ${sent.length}`);
  const got = await c.nextMessage(`echo of ${kind} ${sent.length}`);
  if (got.isBinary !== isBinary) {
    throw new ScenarioError(`${kind} ${sent.length}: expected ${kind} echo, got ${S.describe(got.data, got.isBinary)}`);
  }
  if (!sent.equals(got.data)) {
    throw new ScenarioError(`${kind} ${sent.length}: echo differs: sent ${sent.length} bytes, got ${got.data.length} bytes, first difference at byte ${S.firstDifference(sent, got.data)}`);
  }
  if (!isBinary && got.data.toString('utf8') !== payload) {
    throw new ScenarioError(`text ${sent.length}: echo is not the same string`);
  }
  ok(`${kind} ${sent.length} bytes echoed`, t0);
}

async function run() {
  let t0 = performance.now();
  const c = open(url);
  await withTimeout(c.opened, `connecting to ${url}`);
  const ext = c.ws.extensions || 'none';
  const over = http2
    ? `HTTP/2 ${session.encrypted ? `TLS ALPN ${session.alpnProtocol}` : 'h2c'}, extended CONNECT :status ${c.responseHeaders[':status']}`
    : 'HTTP/1.1';
  ok(`connected to ${url} (ws ${wsVersion}, ${over}, extensions: ${ext})`, t0);
  if (!compression && ext !== 'none') {
    throw new ScenarioError(`server negotiated extensions ${ext} although none were offered`);
  }
  if (compression && !ext.includes('permessage-deflate')) {
    throw new ScenarioError(`permessage-deflate was offered but not negotiated (extensions: ${ext})`);
  }

  for (const n of S.SIZES) await echoStep(c, 'text', S.textPayload(n));
  for (const n of S.SIZES) await echoStep(c, 'binary', S.binaryPayload(n));

  t0 = performance.now();
  c.ws.ping(S.PING_PAYLOAD);
  for (;;) {
    const pong = await c.nextPong('pong');
    if (pong.equals(S.PING_PAYLOAD)) break;
    console.log(`note unsolicited pong ${pong.toString('hex')} ignored`);
  }
  ok(`ping ${S.PING_PAYLOAD.toString('hex')} answered by pong with same payload`, t0);

  t0 = performance.now();
  c.ws.close(S.CLOSE_CODE, S.CLOSE_REASON);
  const ev = await withTimeout(c.closed, 'close handshake');
  if (ev.code !== S.CLOSE_CODE || !ev.wasClean) {
    throw new ScenarioError(`close: expected clean close with code ${S.CLOSE_CODE}, got code ${ev.code} wasClean=${ev.wasClean}`);
  }
  ok(`close ${ev.code} handshake completed (wasClean)`, t0);
}

const started = performance.now();
run().then(
  () => {
    console.log(`done: scenario passed in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    process.exit(0);
  },
  (err) => {
    console.error(`FAIL ${err.constructor.name}: ${err.message}`);
    process.exit(1);
  },
);
