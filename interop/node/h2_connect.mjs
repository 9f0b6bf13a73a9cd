#!/usr/bin/env node
// WebSocket over HTTP/2 (RFC 8441) by hand: a `node:http2` client that sends the extended
// CONNECT itself, writes masked frames byte by byte and parses the server's frames itself
// (no `ws` involved), against `tidewire echo` or `tidewire serve` (../README.md,
// "Over HTTP/2").
//
// Usage: node h2_connect.mjs URL --target echo|serve [--ca FILE] [--compression]
//                            [--step-timeout SECONDS]
//   URL        ws://HOST:PORT (h2c with prior knowledge) or wss://HOST:PORT (TLS, ALPN h2,
//              trusting --ca)
//   --target   echo: `tidewire echo --protocols chat,superchat`;
//              serve: `tidewire serve` (/rooms/NAME with subprotocol chat, /ws with tidewire.v1)
//   --compression  the server negotiates permessage-deflate (else it must not)
// Prints `ok   <check> (<ms> ms)` per check; exits 0 when all passed, 1 with `FAIL ...`.

import http2 from 'node:http2';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import zlib from 'node:zlib';
import * as S from './scenario.mjs';

const args = S.parseArgs(process.argv.slice(2), ['target', 'ca', 'step-timeout']);
const url = args._[0];
const target = args.target;
if (!url || !['echo', 'serve'].includes(target) || args.help) {
  console.error('usage: h2_connect.mjs URL --target echo|serve [--ca FILE] [--compression] [--step-timeout SECONDS]');
  process.exit(2);
}
const compression = Boolean(args.compression);
const stepTimeoutMs = Number(args['step-timeout'] ?? 30) * 1000;
const ca = args.ca ? readFileSync(args.ca) : undefined;
const u = new URL(url);
const tls = u.protocol === 'wss:';
const origin = `${tls ? 'https' : 'http'}://${u.host}`;

const OP = { cont: 0, text: 1, binary: 2, close: 8, ping: 9, pong: 10 };
const OP_NAME = Object.fromEntries(Object.entries(OP).map(([k, v]) => [v, k]));
const DEFLATE_TAIL = Buffer.from([0x00, 0x00, 0xff, 0xff]);

class CheckError extends Error {}
function expect(cond, msg) {
  if (!cond) throw new CheckError(msg);
}

function withTimeout(promise, what) {
  let timer;
  const t = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new CheckError(`timed out after ${stepTimeoutMs} ms: ${what}`)), stepTimeoutMs);
  });
  return Promise.race([promise, t]).finally(() => clearTimeout(timer));
}

async function check(name, fn) {
  const t0 = performance.now();
  let detail;
  try {
    detail = await withTimeout(fn(), name);
  } catch (err) {
    err.message = `${name}: ${err.message}`;
    throw err;
  }
  console.log(`ok   ${name}${detail ? `: ${detail}` : ''} (${Math.round(performance.now() - t0)} ms)`);
}

// ------------------------------------------------------------------ frames by hand

/** One client frame: FIN/RSV1/opcode, MASK bit and a random masking key (RFC 6455 §5.2, §5.3). */
function frame(opcode, payload = Buffer.alloc(0), { fin = true, rsv1 = false } = {}) {
  payload = Buffer.from(payload);
  const n = payload.length;
  const ext = n < 126 ? 0 : n < 65536 ? 2 : 8;
  const head = Buffer.alloc(2 + ext + 4);
  head[0] = (fin ? 0x80 : 0) | (rsv1 ? 0x40 : 0) | opcode;
  if (ext === 0) head[1] = 0x80 | n;
  else if (ext === 2) {
    head[1] = 0x80 | 126;
    head.writeUInt16BE(n, 2);
  } else {
    head[1] = 0x80 | 127;
    head.writeBigUInt64BE(BigInt(n), 2);
  }
  const key = randomBytes(4);
  key.copy(head, 2 + ext);
  const body = Buffer.alloc(n);
  for (let i = 0; i < n; i++) body[i] = payload[i] ^ key[i & 3];
  return Buffer.concat([head, body]);
}

function closePayload(code, reason = '') {
  const b = Buffer.alloc(2 + Buffer.byteLength(reason));
  b.writeUInt16BE(code, 0);
  b.write(reason, 2, 'utf8');
  return b;
}

const inflaters = new WeakMap();
/** Inflates one permessage-deflate message (RFC 7692 §7.2.2) with the socket's context. */
function inflate(sock, data) {
  let inf = inflaters.get(sock);
  if (!inf) {
    inf = zlib.createInflateRaw();
    inflaters.set(sock, inf);
  }
  return new Promise((resolve, reject) => {
    const chunks = [];
    const onData = (d) => chunks.push(d);
    const onError = (e) => reject(e);
    inf.on('data', onData);
    inf.once('error', onError);
    inf.write(Buffer.concat([data, DEFLATE_TAIL]));
    inf.flush(zlib.constants.Z_SYNC_FLUSH, () => {
      inf.off('data', onData);
      inf.off('error', onError);
      resolve(Buffer.concat(chunks));
    });
  });
}

/**
 * A WebSocket on one HTTP/2 stream: parses what the server sends into frames (checking
 * that none is masked, RSV1 only with permessage-deflate on a first data frame, control
 * frames unfragmented and at most 125 bytes), answers its pings by hand, and hands out
 * whole messages, pongs and the close.
 */
class Sock {
  constructor(stream, headers, deflate) {
    this.stream = stream;
    this.headers = headers;
    this.deflate = deflate;
    this.buf = Buffer.alloc(0);
    this.items = []; // {kind: 'message'|'pong'|'close'|'end'|'error', ...}
    this.waiter = null;
    this.frag = null;
    this.compressedFrames = 0;
    this.ended = false;
    stream.on('data', (d) => this.onData(d));
    stream.on('end', () => {
      this.ended = true;
      this.push({ kind: 'end' });
    });
    stream.on('error', (e) => this.push({ kind: 'error', error: e }));
  }

  push(item) {
    this.items.push(item);
    if (this.waiter) {
      const w = this.waiter;
      this.waiter = null;
      w();
    }
  }

  onData(d) {
    this.buf = Buffer.concat([this.buf, d]);
    for (;;) {
      const f = this.parse();
      if (!f) return;
      this.onFrame(f).catch((e) => this.push({ kind: 'error', error: e }));
    }
  }

  parse() {
    const b = this.buf;
    if (b.length < 2) return null;
    const masked = (b[1] & 0x80) !== 0;
    let n = b[1] & 0x7f;
    let off = 2;
    if (n === 126) {
      if (b.length < 4) return null;
      n = b.readUInt16BE(2);
      off = 4;
    } else if (n === 127) {
      if (b.length < 10) return null;
      n = Number(b.readBigUInt64BE(2));
      off = 10;
    }
    if (masked) off += 4;
    if (b.length < off + n) return null;
    const f = {
      fin: (b[0] & 0x80) !== 0,
      rsv1: (b[0] & 0x40) !== 0,
      rsv23: b[0] & 0x30,
      opcode: b[0] & 0x0f,
      masked,
      payload: Buffer.from(b.subarray(off, off + n)),
    };
    this.buf = b.subarray(off + n);
    return f;
  }

  // Sequential: frames are handled in order (inflate is asynchronous).
  onFrame(f) {
    this.chain = (this.chain ?? Promise.resolve()).then(() => this.handle(f));
    return this.chain;
  }

  async handle(f) {
    const name = OP_NAME[f.opcode] ?? `opcode ${f.opcode}`;
    if (f.masked) throw new CheckError(`the server sent a masked ${name} frame (RFC 6455 §5.1)`);
    if (f.rsv23) throw new CheckError(`the server set RSV2/RSV3 on a ${name} frame`);
    if (f.opcode >= 8) {
      if (!f.fin || f.payload.length > 125 || f.rsv1) throw new CheckError(`malformed control frame ${name}`);
      if (f.opcode === OP.ping) {
        this.write(frame(OP.pong, f.payload));
      } else if (f.opcode === OP.pong) {
        this.push({ kind: 'pong', payload: f.payload });
      } else if (f.opcode === OP.close) {
        const code = f.payload.length >= 2 ? f.payload.readUInt16BE(0) : null;
        const reason = f.payload.subarray(2);
        const text = new TextDecoder('utf-8', { fatal: true }).decode(reason);
        this.push({ kind: 'close', code, reason: text });
      } else {
        throw new CheckError(`the server sent reserved control opcode ${f.opcode}`);
      }
      return;
    }
    if (f.opcode === OP.cont) {
      if (!this.frag) throw new CheckError('the server sent a continuation frame outside a message');
      if (f.rsv1) throw new CheckError('the server set RSV1 on a continuation frame');
      this.frag.parts.push(f.payload);
    } else if (f.opcode === OP.text || f.opcode === OP.binary) {
      if (this.frag) throw new CheckError('the server began a message inside another one');
      if (f.rsv1 && !this.deflate) throw new CheckError('the server set RSV1 without permessage-deflate');
      this.frag = { opcode: f.opcode, compressed: f.rsv1, parts: [f.payload] };
    } else {
      throw new CheckError(`the server sent reserved data opcode ${f.opcode}`);
    }
    if (!f.fin) return;
    const { opcode, compressed, parts } = this.frag;
    this.frag = null;
    let data = Buffer.concat(parts);
    if (compressed) {
      this.compressedFrames++;
      data = await inflate(this, data);
    }
    if (opcode === OP.text) new TextDecoder('utf-8', { fatal: true }).decode(data);
    this.push({ kind: 'message', binary: opcode === OP.binary, data, compressed });
  }

  write(buf) {
    if (!this.stream.writableEnded && !this.stream.destroyed) this.stream.write(buf);
  }

  send(opcode, payload, opts) {
    this.write(frame(opcode, payload, opts));
  }

  async next(kinds, what) {
    for (;;) {
      const i = this.items.findIndex((it) => kinds.includes(it.kind) || it.kind === 'error');
      if (i >= 0) {
        const it = this.items.splice(i, 1)[0];
        if (it.kind === 'error') throw new CheckError(`${what}: ${it.error.message}`);
        return it;
      }
      const end = this.items.find((it) => it.kind === 'end' || it.kind === 'close');
      if (end && !kinds.includes(end.kind)) throw new CheckError(`${what}: the server sent ${end.kind === 'end' ? 'END_STREAM' : `close ${end.code}`} first`);
      await new Promise((r) => { this.waiter = r; });
    }
  }

  async message(what) {
    const m = await this.next(['message'], what);
    return m;
  }

  /** Sends a close, expects the server's close with `code` and then END_STREAM; ends ours. */
  async close(code, reason) {
    this.send(OP.close, closePayload(code, reason));
    const c = await this.next(['close'], `close ${code}`);
    expect(c.code === code, `close ${code}: the server answered with code ${c.code}`);
    expect(c.reason === '' || c.reason === reason, `close: reason ${JSON.stringify(c.reason)} is neither empty nor ours`);
    await this.next(['end'], 'END_STREAM after the close');
    this.stream.end();
    return c;
  }
}

// ------------------------------------------------------------------ HTTP/2

let session;

function openSession() {
  const s = http2.connect(origin, tls ? { ca, ALPNProtocols: ['h2'] } : {});
  s.on('error', (e) => console.error(`note session error: ${e.message}`));
  return new Promise((resolve, reject) => {
    s.once('remoteSettings', (settings) => resolve({ s, settings }));
    s.once('error', reject);
    s.once('close', () => reject(new CheckError('the session closed before the server\'s SETTINGS')));
  });
}

/** Sends `headers` on a new stream; resolves with the response headers and the stream. */
function request(headers) {
  return new Promise((resolve, reject) => {
    const stream = session.request(headers, { endStream: false });
    stream.once('error', reject);
    stream.once('response', (h) => {
      stream.off('error', reject);
      resolve({ stream, headers: h });
    });
  });
}

function connectHeaders(path, { protocols, extensions, version = '13', extra = {} } = {}) {
  const h = {
    ':method': 'CONNECT',
    ':protocol': 'websocket',
    ':scheme': tls ? 'https' : 'http',
    ':path': path,
    ':authority': u.host,
    'sec-websocket-version': version,
    ...extra,
  };
  if (protocols) h['sec-websocket-protocol'] = protocols.join(', ');
  if (extensions) h['sec-websocket-extensions'] = extensions;
  return h;
}

/** An extended CONNECT that must be accepted: 200, no Sec-WebSocket-Accept. */
async function openWs(path, opts = {}) {
  const { stream, headers } = await request(connectHeaders(path, opts));
  const status = headers[':status'];
  if (status !== 200) {
    const body = await readBody(stream);
    throw new CheckError(`CONNECT ${path}: expected :status 200, got ${status}: ${body.trim()}`);
  }
  expect(headers['sec-websocket-accept'] === undefined, `CONNECT ${path}: the 200 carries sec-websocket-accept (RFC 8441 §5: none over HTTP/2)`);
  for (const h of ['upgrade', 'connection']) {
    expect(headers[h] === undefined, `CONNECT ${path}: the 200 carries the connection-specific field ${h}`);
  }
  const ext = headers['sec-websocket-extensions'];
  expect(ext === undefined || opts.extensions, `CONNECT ${path}: sec-websocket-extensions ${ext} although none were offered`);
  return new Sock(stream, headers, ext !== undefined && /^\s*permessage-deflate\b/.test(ext));
}

function readBody(stream) {
  return new Promise((resolve, reject) => {
    let body = '';
    stream.setEncoding('utf8');
    stream.on('data', (d) => { body += d; });
    stream.on('end', () => resolve(body));
    stream.on('error', reject);
  });
}

/** A request that must be refused: 4xx and a body of one line. Returns [status, line, headers]. */
async function refused(headers, what) {
  const { stream, headers: h } = await request(headers);
  const status = h[':status'];
  const body = await readBody(stream);
  expect(status >= 400 && status < 500, `${what}: expected a 4xx, got ${status} (${body.trim()})`);
  const line = body.replace(/\r?\n$/, '');
  expect(line.length > 0 && !/[\r\n]/.test(line), `${what}: the body is not one line of reason: ${JSON.stringify(body)}`);
  return [status, line, h];
}

// ------------------------------------------------------------------ checks

const TEXT = 'tidewire over h2: é€𝄞|';

async function echoOnce(ws, opcode, payload, what, opts) {
  ws.send(opcode, payload, opts);
  const m = await ws.message(what);
  const sent = Buffer.from(payload);
  expect(m.binary === (opcode === OP.binary), `${what}: echoed as ${m.binary ? 'binary' : 'text'}`);
  expect(sent.equals(m.data), `${what}: echo differs (sent ${sent.length} bytes, got ${m.data.length}, first difference at ${S.firstDifference(sent, m.data)})`);
  return m;
}

async function checkSettings() {
  await check('SETTINGS_ENABLE_CONNECT_PROTOCOL', async () => {
    const { s, settings } = await openSession();
    session = s;
    expect(settings.enableConnectProtocol === true, `the server's SETTINGS: ${JSON.stringify(settings)}`);
    expect(s.remoteSettings.enableConnectProtocol === true, 'remoteSettings.enableConnectProtocol is not true');
    if (tls) expect(s.alpnProtocol === 'h2', `ALPN selected ${s.alpnProtocol}`);
    return `${tls ? `TLS, ALPN ${s.alpnProtocol}` : 'h2c prior knowledge'}, max concurrent streams ${settings.maxConcurrentStreams}`;
  });
}

async function echoChecks() {
  let ws;
  await check('extended CONNECT / offering superchat, chat', async () => {
    ws = await openWs('/', { protocols: ['superchat', 'chat'] });
    expect(ws.headers['sec-websocket-protocol'] === 'chat', `selected subprotocol ${ws.headers['sec-websocket-protocol']}, expected chat (the server's first)`);
    return `:status 200, sec-websocket-protocol chat, no sec-websocket-accept, stream ${ws.stream.id}`;
  });
  await check('text frame echoed', async () => {
    await echoOnce(ws, OP.text, TEXT, 'text');
    await echoOnce(ws, OP.text, TEXT.repeat(6).slice(0, 126), 'text 16-bit length');
  });
  await check('binary 70000 bytes (64-bit length) echoed', async () => {
    await echoOnce(ws, OP.binary, S.binaryPayload(70000), 'binary');
  });
  await check('fragmented text with a ping between fragments', async () => {
    const parts = ['frag-1 é', '€ frag-2 ', '𝄞 frag-3'];
    const whole = Buffer.from(parts.join(''));
    // Split inside the 2-byte é: a fragment need not end on a character boundary.
    const cut1 = Buffer.byteLength(parts[0]) - 1;
    const cut2 = cut1 + 9;
    ws.send(OP.text, whole.subarray(0, cut1), { fin: false });
    ws.send(OP.ping, 'mid-message');
    ws.send(OP.cont, whole.subarray(cut1, cut2), { fin: false });
    ws.send(OP.cont, whole.subarray(cut2), { fin: true });
    const pong = await ws.next(['pong'], 'pong');
    expect(pong.payload.toString() === 'mid-message', `pong payload ${pong.payload}`);
    const m = await ws.message('fragmented text');
    expect(!m.binary && whole.equals(m.data), `echo of the fragmented text: ${m.data}`);
  });
  await check('ping answered by pong with the same payload; unsolicited pong ignored', async () => {
    ws.send(OP.pong, 'unsolicited');
    ws.send(OP.ping, S.PING_PAYLOAD);
    const pong = await ws.next(['pong'], 'pong');
    expect(pong.payload.equals(S.PING_PAYLOAD), `pong payload ${pong.payload.toString('hex')}`);
    await echoOnce(ws, OP.text, 'after the pong', 'text after the pong');
  });
  await check('close 4242 answered with 4242, then END_STREAM', async () => {
    const c = await ws.close(4242, 'bye over h2');
    return `reason ${JSON.stringify(c.reason)}`;
  });

  await check('8 WebSockets at once on the one session', async () => {
    const N = 8;
    const socks = await Promise.all(Array.from({ length: N }, () => openWs('/')));
    const ids = new Set(socks.map((s) => s.stream.id));
    expect(ids.size === N, `stream ids ${[...ids]}`);
    // Interleaved: every socket sends before any reads; 300 KiB each is more than one
    // stream's window on the server, so the echoes depend on per-stream flow control.
    const big = socks.map((_, i) => S.binaryPayload(300 * 1024 + i));
    socks.forEach((s, i) => s.send(OP.text, `socket ${i} first`));
    socks.forEach((s, i) => s.send(OP.binary, big[i]));
    socks.forEach((s, i) => s.send(OP.text, `socket ${i} last`));
    await Promise.all(socks.map(async (s, i) => {
      const a = await s.message(`socket ${i} first`);
      expect(a.data.toString() === `socket ${i} first`, `socket ${i}: got ${a.data.subarray(0, 40)}`);
      const b = await s.message(`socket ${i} binary`);
      expect(b.binary && b.data.equals(big[i]), `socket ${i}: binary echo differs`);
      const c = await s.message(`socket ${i} last`);
      expect(c.data.toString() === `socket ${i} last`, `socket ${i}: got ${c.data.subarray(0, 40)}`);
    }));
    await Promise.all(socks.map((s) => s.close(1000, '')));
    return `streams ${[...ids].join(', ')}`;
  });

  await refusalChecks('/');

  await check(`permessage-deflate offered: ${compression ? 'negotiated' : 'not negotiated'}`, async () => {
    const w = await openWs('/', { extensions: 'permessage-deflate; client_max_window_bits' });
    const ext = w.headers['sec-websocket-extensions'];
    if (!compression) {
      expect(ext === undefined, `the server negotiated ${ext} without --compression`);
      await echoOnce(w, OP.text, TEXT, 'text');
      await w.close(1000, '');
      return 'no sec-websocket-extensions in the 200';
    }
    expect(w.deflate, `sec-websocket-extensions in the 200: ${ext}`);
    // Ours compressed by hand (a fresh context each time is valid whatever was agreed),
    // the server's inflated by hand; at least one of its echoes must be compressed.
    const long = TEXT.repeat(60);
    const deflated = zlib.deflateRawSync(Buffer.from(long), { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    expect(deflated.subarray(-4).equals(DEFLATE_TAIL), 'deflate output does not end with 00 00 ff ff');
    w.send(OP.text, deflated.subarray(0, -4), { rsv1: true });
    const m1 = await w.message('compressed text');
    expect(!m1.binary && m1.data.toString() === long, 'echo of the compressed text differs');
    const bin = Buffer.alloc(4000, 'h2 deflate ');
    const m2 = await echoOnce(w, OP.binary, bin, 'binary 4000');
    const m3 = await echoOnce(w, OP.text, long, 'text again');
    expect(w.compressedFrames >= 2, `only ${w.compressedFrames} echoes came compressed (RSV1)`);
    await w.close(1000, '');
    return `${ext}; ${w.compressedFrames} echoes compressed (${[m1, m2, m3].map((m) => m.compressed ? 'RSV1' : 'plain').join(', ')})`;
  });
}

async function refusalChecks(path) {
  await check('CONNECT without :protocol refused', async () => {
    const [status, line] = await refused({ ':method': 'CONNECT', ':authority': u.host }, 'plain CONNECT');
    return `${status} ${line}`;
  });
  await check('sec-websocket-version 8 refused', async () => {
    const [status, line, h] = await refused(connectHeaders(path, { version: '8' }), 'version 8');
    expect(status === 426, `expected 426 Upgrade Required, got ${status}`);
    expect(h['sec-websocket-version'] === '13', `the 426 has sec-websocket-version ${h['sec-websocket-version']}, expected 13 (RFC 6455 §4.4)`);
    return `${status} ${line}`;
  });
  await check(':protocol other than websocket refused', async () => {
    const [status, line] = await refused(connectHeaders(path, { extra: { ':protocol': 'not-websocket' } }), ':protocol not-websocket');
    return `${status} ${line}`;
  });
  await check('the session still carries WebSockets after the refusals', async () => {
    const w = await openWs(path, target === 'serve' ? { protocols: ['chat'] } : {});
    if (target === 'echo') await echoOnce(w, OP.text, 'still here', 'text');
    await w.close(1000, '');
  });
}

async function serveChecks() {
  const room = `/rooms/h2-${randomBytes(4).toString('hex')}`;
  let a;
  let b;
  await check(`two members of ${room} with subprotocol chat on the one session`, async () => {
    [a, b] = await Promise.all([openWs(room, { protocols: ['chat'] }), openWs(room, { protocols: ['nope', 'chat'] })]);
    for (const w of [a, b]) {
      expect(w.headers['sec-websocket-protocol'] === 'chat', `selected subprotocol ${w.headers['sec-websocket-protocol']}`);
    }
    return `:status 200, sec-websocket-protocol chat, streams ${a.stream.id} and ${b.stream.id}`;
  });
  await check('text and binary from one member reach the other', async () => {
    a.send(OP.text, `hello from A ${TEXT}`);
    const m1 = await b.message('text at B');
    expect(!m1.binary && m1.data.toString() === `hello from A ${TEXT}`, `B got ${m1.data}`);
    const bin = S.binaryPayload(70000);
    b.send(OP.binary, bin);
    const m2 = await a.message('binary at A');
    expect(m2.binary && m2.data.equals(bin), 'A got another binary');
    // Fragmented, from B.
    b.send(OP.text, 'frag', { fin: false });
    b.send(OP.cont, 'mented', { fin: true });
    const m3 = await a.message('fragmented at A');
    expect(m3.data.toString() === 'fragmented', `A got ${m3.data}`);
  });
  await check('room heartbeat "ping" answered "pong"; WebSocket ping answered', async () => {
    a.send(OP.text, 'ping');
    const m = await a.message('heartbeat reply');
    expect(!m.binary && m.data.toString() === 'pong', `A got ${m.data}`);
    b.send(OP.ping, S.PING_PAYLOAD);
    const p = await b.next(['pong'], 'pong');
    expect(p.payload.equals(S.PING_PAYLOAD), `pong ${p.payload.toString('hex')}`);
  });
  await check('/ws with tidewire.v1: ping, subscribe, publish, publication', async () => {
    const w = await openWs('/ws', { protocols: ['tidewire.v1'] });
    expect(w.headers['sec-websocket-protocol'] === 'tidewire.v1', `selected ${w.headers['sec-websocket-protocol']}`);
    const reply = async (id) => {
      for (;;) {
        const m = await w.message(`reply ${id}`);
        const j = JSON.parse(m.data.toString());
        if (j.id === id) return j;
        w.pushed = [...(w.pushed ?? []), j];
      }
    };
    w.send(OP.text, JSON.stringify({ id: 1, op: 'ping' }));
    const r1 = await reply(1);
    expect(r1.ok === true, `ping: ${JSON.stringify(r1)}`);
    const ch = `h2node${randomBytes(4).toString('hex')}`;
    w.send(OP.text, JSON.stringify({ id: 2, op: 'subscribe', channel: ch }));
    const r2 = await reply(2);
    expect(r2.ok === true, `subscribe: ${JSON.stringify(r2)}`);
    const data = { text: TEXT, over: 'h2' };
    w.send(OP.text, JSON.stringify({ id: 3, op: 'publish', channel: ch, data }));
    const r3 = await reply(3);
    expect(r3.ok === true && r3.result.offset === r2.result.offset + 1, `publish: ${JSON.stringify(r3)}`);
    // Presence events (join) on the channel may come too: the publication has `data`.
    const isPub = (j) => j.channel === ch && 'data' in j;
    let pub = (w.pushed ?? []).find(isPub);
    while (!pub) {
      const j = JSON.parse((await w.message('publication')).data.toString());
      if (isPub(j)) pub = j;
    }
    expect(JSON.stringify(pub.data) === JSON.stringify(data) && pub.offset === r3.result.offset, `publication ${JSON.stringify(pub)}`);
    const c = await w.close(1000, 'bye');
    return `publication at offset ${pub.offset}, close ${c.code}`;
  });
  await check(`permessage-deflate offered on /ws: ${compression ? 'negotiated' : 'not negotiated'}`, async () => {
    const w = await openWs('/ws', { protocols: ['tidewire.v1'], extensions: 'permessage-deflate; client_max_window_bits' });
    const ext = w.headers['sec-websocket-extensions'];
    expect(compression ? /^permessage-deflate\b/.test(ext ?? '') : ext === undefined, `sec-websocket-extensions: ${ext}`);
    w.send(OP.text, JSON.stringify({ id: 9, op: 'ping' }));
    const j = JSON.parse((await w.message('ping reply')).data.toString());
    expect(j.id === 9 && j.ok === true, `ping reply ${JSON.stringify(j)}`);
    await w.close(1000, '');
    return ext ?? 'none';
  });
  await check('/ws without tidewire.v1 refused', async () => {
    const [status, line] = await refused(connectHeaders('/ws'), '/ws without a subprotocol');
    return `${status} ${line}`;
  });
  await refusalChecks(room);
  await check('both room members close 1000, answered 1000 then END_STREAM', async () => {
    await Promise.all([a.close(1000, 'done A'), b.close(1000, 'done B')]);
  });
}

async function run() {
  await checkSettings();
  if (target === 'echo') await echoChecks();
  else await serveChecks();
  session.close();
}

const started = performance.now();
run().then(
  () => {
    console.log(`done: extended CONNECT by hand against tidewire ${target} passed in ${((performance.now() - started) / 1000).toFixed(2)} s`);
    process.exit(0);
  },
  (err) => {
    console.error(`FAIL ${err.message}`);
    process.exit(1);
  },
);
