// Independent cross-check generator: Node.js + the `ws` library (or node:net for --raw).
// Same closed-loop model as benches/peers loadgen: CONNS connections, each with INFLIGHT
// messages of SIZE bytes outstanding; echoes received during the measured window are
// counted and timed (send -> echo). Prints one JSON line.
//
// usage: node node-loadgen.mjs --url ws://127.0.0.1:PORT [--raw] [--conns 10] [--inflight 1]
//                              [--size 1024] [--duration 5] [--warmup 1]
import net from "node:net";
import WebSocket from "ws";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((acc, a, i, all) => {
    if (a.startsWith("--")) acc.push([a.slice(2), all[i + 1]?.startsWith("--") || all[i + 1] === undefined ? true : all[i + 1]]);
    return acc;
  }, []),
);
const url = args.url;
const raw = !!args.raw;
const conns = +(args.conns ?? 10);
const inflight = +(args.inflight ?? 1);
const size = +(args.size ?? 1024);
const duration = +(args.duration ?? 5);
const warmup = +(args.warmup ?? 1);
const payload = Buffer.alloc(size, 0x61);

let phase = 0; // 0 warmup, 1 measure, 2 stop
let msgs = 0;
let errors = 0;
const lat = []; // microseconds, measured window only

function startWs(done) {
  const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 64 << 20 });
  ws.binaryType = "nodebuffer";
  const sent = [];
  const send = () => {
    sent.push(process.hrtime.bigint());
    ws.send(payload, { binary: true, mask: true });
  };
  ws.on("open", () => {
    ws._socket.setNoDelay(true);
    done();
    for (let i = 0; i < inflight; i++) send();
  });
  ws.on("message", (data) => {
    const t0 = sent.shift();
    if (data.length !== size) errors++;
    if (phase === 1) {
      msgs++;
      lat.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
    if (phase < 2) send();
  });
  ws.on("error", () => errors++);
  return () => ws.terminate();
}

function startRaw(done) {
  const u = new URL(url.replace(/^ws:/, "http:"));
  const s = net.connect({ host: u.hostname, port: +u.port, noDelay: true });
  const sent = [];
  let got = 0;
  const send = () => {
    sent.push(process.hrtime.bigint());
    s.write(payload);
  };
  s.on("connect", () => {
    done();
    for (let i = 0; i < inflight; i++) send();
  });
  s.on("data", (d) => {
    got += d.length;
    while (got >= size) {
      got -= size;
      const t0 = sent.shift();
      if (phase === 1) {
        msgs++;
        lat.push(Number(process.hrtime.bigint() - t0) / 1000);
      }
      if (phase < 2) send();
    }
  });
  s.on("error", () => errors++);
  return () => s.destroy();
}

let up = 0;
const closers = [];
await new Promise((resolve) => {
  for (let i = 0; i < conns; i++) closers.push((raw ? startRaw : startWs)(() => ++up === conns && resolve()));
});
await new Promise((r) => setTimeout(r, warmup * 1000));
const cpu0 = process.cpuUsage();
const t0 = process.hrtime.bigint();
phase = 1;
await new Promise((r) => setTimeout(r, duration * 1000));
phase = 2;
const window = Number(process.hrtime.bigint() - t0) / 1e9;
const cpu = process.cpuUsage(cpu0);
closers.forEach((c) => c());
lat.sort((a, b) => a - b);
const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : 0);
console.log(JSON.stringify({
  generator: "node-ws", ws_version: WebSocket.prototype.constructor.name && (await import("ws/package.json", { with: { type: "json" } })).default.version,
  raw, conns, inflight, size, window_s: +window.toFixed(4), msgs, msgs_per_s: +(msgs / window).toFixed(2),
  lat_us: { p50: +q(0.5).toFixed(2), p90: +q(0.9).toFixed(2), p99: +q(0.99).toFixed(2) },
  client_cpu_util: +((cpu.user + cpu.system) / 1e6 / window).toFixed(4), errors,
}));
process.exit(0);
