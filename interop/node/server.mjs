#!/usr/bin/env node
// Echo server with Node `ws` for the interop SCENARIO (../README.md).
// Usage: node server.mjs --port P [--host 127.0.0.1] [--compression]
// Echoes text as text and binary as binary; ws answers pings and echoes the
// close code itself.

import { createRequire } from 'node:module';
import { WebSocketServer } from 'ws';
import * as S from './scenario.mjs';

const wsVersion = createRequire(import.meta.url)('ws/package.json').version;
const args = S.parseArgs(process.argv.slice(2), ['port', 'host']);
const port = Number(args.port);
const host = args.host ?? '127.0.0.1';
if (!Number.isInteger(port) || args.help) {
  console.error('usage: server.mjs --port P [--host 127.0.0.1] [--compression]');
  process.exit(2);
}
const compression = Boolean(args.compression);

const wss = new WebSocketServer({
  host,
  port,
  perMessageDeflate: compression ? {} : false,
  maxPayload: S.MAX_MESSAGE_SIZE,
});
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', (err) => console.error(`server.mjs: connection error: ${err.message}`));
});
wss.on('listening', () => {
  console.log(`server.mjs: ws ${wsVersion} echo listening on ws://${host}:${port} (compression ${compression ? 'on' : 'off'})`);
});
wss.on('error', (err) => {
  console.error(`server.mjs: ${err.message}`);
  process.exit(1);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => wss.close(() => process.exit(0)));
