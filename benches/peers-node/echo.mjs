#!/usr/bin/env node
// Node `ws` echo server for benches/compare.sh.
//
//   node echo.mjs --port P [--host 127.0.0.1] [--compression]
//
// Echoes every text and binary message back unchanged (same opcode), answers pings
// (ws does it itself) and closes. --compression enables permessage-deflate with ws's
// DEFAULT settings (perMessageDeflate: true: context takeover on both sides, no window
// limits, zlib level/memLevel defaults, concurrencyLimit 10 on the libuv thread pool;
// the 1024 B threshold only applies when no_context_takeover is negotiated, so with the
// defaults every message is compressed); without it perMessageDeflate is false.
// Node itself is one event loop; zlib work runs on libuv pool threads (all threads are
// counted by loadgen's /proc/PID/task/*/schedstat reading and pinned by taskset).
import { WebSocketServer } from 'ws';

let port = 9001;
let host = '127.0.0.1';
let compression = false;
const argv = process.argv.slice(2);
for (let i = 0; i < argv.length; i++) {
  const a = argv[i];
  if (a === '--port') port = Number(argv[++i]);
  else if (a === '--host') host = argv[++i];
  else if (a === '--listen') { const v = argv[++i]; const j = v.lastIndexOf(':'); host = v.slice(0, j); port = Number(v.slice(j + 1)); }
  else if (a === '--compression') compression = true;
  else if (a === '-h' || a === '--help') {
    console.log('usage: echo.mjs --port P [--host H] [--compression]   (ws echo server; --compression = permessage-deflate with ws defaults)');
    process.exit(0);
  } else { console.error(`echo.mjs: unknown argument ${a}`); process.exit(2); }
}

const wss = new WebSocketServer({
  host,
  port,
  perMessageDeflate: compression, // true = ws's default deflate options
  maxPayload: 64 * 1024 * 1024,
  clientTracking: false,
});
wss.on('connection', (ws, req) => {
  req.socket.setNoDelay(true);
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  ws.on('error', () => {});
});
wss.on('listening', () => console.error(`echo-node-ws: listening on ${host}:${port} (permessage-deflate ${compression ? 'on' : 'off'})`));
wss.on('error', (e) => { console.error(`echo-node-ws: ${e.message}`); process.exit(1); });
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
