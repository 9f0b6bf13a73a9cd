#!/usr/bin/env node
// Echo server with Node `ws` for the interop SCENARIO (../README.md).
// Usage: node server.mjs --port P [--host 127.0.0.1] [--compression] [--http2]
// Echoes text as text and binary as binary; ws answers pings and echoes the
// close code itself.
// --http2: an HTTP/2 server in clear (h2c with prior knowledge) that sends
// SETTINGS_ENABLE_CONNECT_PROTOCOL and runs ws over each extended CONNECT stream with
// `:protocol websocket` (RFC 8441, ./h2.mjs); other requests get a 4xx.

import http2 from 'node:http2';
import { createRequire } from 'node:module';
import { WebSocketServer } from 'ws';
import * as H2 from './h2.mjs';
import * as S from './scenario.mjs';

const wsVersion = createRequire(import.meta.url)('ws/package.json').version;
const args = S.parseArgs(process.argv.slice(2), ['port', 'host']);
const port = Number(args.port);
const host = args.host ?? '127.0.0.1';
if (!Number.isInteger(port) || args.help) {
  console.error('usage: server.mjs --port P [--host 127.0.0.1] [--compression] [--http2]');
  process.exit(2);
}
const compression = Boolean(args.compression);

function echo(ws) {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', (err) => console.error(`server.mjs: connection error: ${err.message}`));
}

if (args.http2) {
  const server = http2.createServer({ settings: { enableConnectProtocol: true } });
  server.on('session', (session) => {
    console.log(`server.mjs: HTTP/2 session from ${session.socket.remoteAddress}:${session.socket.remotePort}`);
    session.on('error', (err) => console.error(`server.mjs: session error: ${err.message}`));
  });
  server.on('stream', (stream, headers) => {
    stream.on('error', (err) => console.error(`server.mjs: stream error: ${err.message}`));
    const ws = H2.acceptWebSocket(stream, stream.session, headers, {
      compression,
      maxPayload: S.MAX_MESSAGE_SIZE,
      beforeOpen: echo,
    });
    if (ws) {
      console.log(`server.mjs: WebSocket over HTTP/2 stream ${stream.id} (${headers[':path']}, extensions: ${ws.extensions || 'none'})`);
    } else {
      console.log(`server.mjs: refused ${headers[':method']} ${headers[':path']} (:protocol ${headers[':protocol']})`);
    }
  });
  server.on('error', (err) => {
    console.error(`server.mjs: ${err.message}`);
    process.exit(1);
  });
  server.listen(port, host, () => {
    console.log(`server.mjs: ws ${wsVersion} echo over HTTP/2 (h2c, extended CONNECT) listening on ${host}:${port} (compression ${compression ? 'on' : 'off'})`);
  });
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
} else {
  serveHttp1();
}

function serveHttp1() {
  const wss = new WebSocketServer({
    host,
    port,
    perMessageDeflate: compression ? {} : false,
    maxPayload: S.MAX_MESSAGE_SIZE,
  });
  wss.on('connection', echo);
  wss.on('listening', () => {
    console.log(`server.mjs: ws ${wsVersion} echo listening on ws://${host}:${port} (compression ${compression ? 'on' : 'off'})`);
  });
  wss.on('error', (err) => {
    console.error(`server.mjs: ${err.message}`);
    process.exit(1);
  });
  for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => wss.close(() => process.exit(0)));
}
