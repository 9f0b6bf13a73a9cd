// Load generator for the Socket.IO side (and the Tidewire side of the kill test).
// One process: publisher and subscribers share one clock (performance.now()), so latency is
// receive time minus the send time carried in the message.
//
// Fan-out (Socket.IO only; Tidewire's figures come from `tidewire bench fanout`):
//   node load.js fanout --a http://127.0.0.1:PA --b http://127.0.0.1:PB --subscribers 2000 \
//     --rate 50 --duration 10 [--warmup 1] [--drain 10] [--pids PA_PID,PB_PID] [--engine-pid R]
//   Subscribers alternate between A and B; the publisher is on B. Prints one JSON object.
//
// Kill / graceful stop (either system):
//   node load.js kill --system sio|tidewire --a URL_A --b URL_B --clients 100 --rate 50 \
//     --duration 10 --kill-at 4 --signal SIGKILL|SIGTERM --kill-pid PID_A [--drain 15]
//   The clients connect through a tiny TCP balancer in this process that sends a connection
//   to A while A is up, to B once A has been signalled (or when A refuses the connection);
//   the publisher is on B. At --kill-at seconds into the stream A gets --signal. Per client:
//   reconnected, recovered (Socket.IO: socket.recovered; Tidewire: the resubscription's
//   `recovered`), messages lost (published and acknowledged, never received), duplicates.
"use strict";
const fs = require("fs");
const net = require("net");
const path = require("path");
const { performance } = require("perf_hooks");

const mode = process.argv[2];
function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const TICK_US = 1e6 / 100; // /proc/PID/stat counts in clock ticks (USER_HZ = 100 on Linux)

function cpuUs(pid) {
  // utime + stime of the process (all its threads, live and exited), in microseconds.
  const s = fs.readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = s.slice(s.lastIndexOf(")") + 2).split(" ");
  return (Number(f[11]) + Number(f[12])) * TICK_US;
}
function machineBusyUs() {
  // Busy time of every core (all processes), from the first line of /proc/stat.
  const f = fs.readFileSync("/proc/stat", "utf8").split("\n")[0].trim().split(/\s+/).slice(1).map(Number);
  const total = f.slice(0, 8).reduce((x, y) => x + y, 0);
  return (total - f[3] - f[4]) * TICK_US;
}
function selfCpuUs() {
  const u = process.cpuUsage();
  return u.user + u.system;
}
function percentile(sorted, p) {
  if (sorted.length === 0) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
async function waitUntil(pred, ms) {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) return false;
    await sleep(20);
  }
  return true;
}
// Open-loop publisher: seq 1..count at `rate` per second from now; fn(seq) sends one.
async function publishLoop(rate, count, fn, onSecond) {
  const t0 = performance.now();
  let seq = 0;
  while (seq < count) {
    const due = Math.min(count, Math.floor(((performance.now() - t0) / 1000) * rate) + 1);
    while (seq < due) fn(++seq);
    if (onSecond) onSecond((performance.now() - t0) / 1000);
    await sleep(Math.max(1, 1000 / rate / 2));
  }
}

function sioConnect(url, auth, extra = {}) {
  const { io } = require("socket.io-client");
  return io(url, {
    transports: ["websocket"],
    forceNew: true, // one connection per client (io() would otherwise multiplex them on one)
    auth,
    ...extra,
  });
}

// ---------------------------------------------------------------------------- fan-out
async function fanout() {
  const a = arg("a"), b = arg("b");
  const n = Number(arg("subscribers", "2000"));
  const rate = Number(arg("rate", "50"));
  const duration = Number(arg("duration", "10"));
  const warmup = Number(arg("warmup", "1"));
  const drain = Number(arg("drain", "10"));
  const pids = (arg("pids", "") || "").split(",").filter(Boolean).map(Number);
  const enginePid = arg("engine-pid") ? Number(arg("engine-pid")) : null;
  const total = Math.round((warmup + duration) * rate);
  const firstMeasured = Math.round(warmup * rate) + 1;

  const got = []; // per subscriber: received count per seq
  const lat = new Float64Array(n * (total - firstMeasured + 1));
  let nlat = 0, delivered = 0, inWindow = false, windowDeliveries = 0, connected = 0;
  const socks = [];
  const t0c = performance.now();
  for (let i = 0; i < n; i++) {
    const seen = new Uint8Array(total + 1);
    got.push(seen);
    const s = sioConnect(i % 2 === 0 ? a : b, { role: "sub" });
    s.once("connect", () => connected++);
    s.on("m", (m) => {
      const now = performance.now();
      delivered++;
      if (inWindow) windowDeliveries++;
      if (m.seq <= total) seen[m.seq]++;
      if (m.seq >= firstMeasured && seen[m.seq] === 1) lat[nlat++] = now - m.t;
    });
    socks.push(s);
    if (i % 200 === 199) await waitUntil(() => connected > i - 50, 30000);
  }
  if (!(await waitUntil(() => connected === n, 60000))) throw new Error(`only ${connected}/${n} subscribers connected`);
  const connectS = (performance.now() - t0c) / 1000;
  const pub = sioConnect(b, { role: "pub" });
  if (!(await waitUntil(() => pub.connected, 10000))) throw new Error("publisher did not connect");

  let acked = 0, cpu0 = null, cpu1 = null, tw0 = 0, tw1 = 0;
  const sample = () => ({
    nodes: pids.reduce((s, p) => s + cpuUs(p), 0),
    engine: enginePid ? cpuUs(enginePid) : 0,
    self: selfCpuUs(),
    machine: machineBusyUs(),
  });
  await publishLoop(rate, total, (seq) => pub.emit("pub", { seq, t: performance.now() }, () => acked++), (el) => {
    if (!cpu0 && el >= warmup) { cpu0 = sample(); tw0 = performance.now(); inWindow = true; }
  });
  // The window ends with the last publication (warmup + duration seconds in).
  cpu1 = sample(); tw1 = performance.now(); inWindow = false;
  const expected = n * total;
  await waitUntil(() => delivered >= expected, drain * 1000);
  let missing = 0, dups = 0;
  for (const seen of got) for (let q = 1; q <= total; q++) {
    if (seen[q] === 0) missing++;
    else if (seen[q] > 1) dups += seen[q] - 1;
  }
  const win = (tw1 - tw0) / 1000;
  const sorted = Array.from(lat.subarray(0, nlat)).sort((x, y) => x - y);
  const out = {
    system: "socket.io",
    subscribers: n, rate, duration_s: win, connect_s: connectS,
    publications: total, acked,
    deliveries_per_s: windowDeliveries / win,
    server_cpu_us_per_delivery: pids.length ? (cpu1.nodes - cpu0.nodes) / windowDeliveries : null,
    server_cpu_share: pids.length ? (cpu1.nodes - cpu0.nodes) / 1e6 / win : null,
    engine_cpu_us_per_publication: enginePid ? (cpu1.engine - cpu0.engine) / (rate * win) : null,
    load_cpu_share: (cpu1.self - cpu0.self) / 1e6 / win,
    // Everything else on the machine over the window (cores): other processes' CPU.
    others_cpu_share: (cpu1.machine - cpu0.machine - (cpu1.nodes - cpu0.nodes) - (cpu1.engine - cpu0.engine) - (cpu1.self - cpu0.self)) / 1e6 / win,
    latency_ms: { p50: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99), max: sorted[sorted.length - 1] ?? null, samples: sorted.length },
    missing, duplicates: dups,
  };
  console.log(JSON.stringify(out));
  for (const s of socks) s.disconnect();
  pub.disconnect();
}

// ---------------------------------------------------------------------------- kill test
function balancer(hostA, portA, hostB, portB) {
  const state = { aDown: false, toA: 0, toB: 0 };
  const server = net.createServer((down) => {
    down.setNoDelay(true);
    const pipe = (up) => {
      up.setNoDelay(true);
      down.pipe(up); up.pipe(down);
      const end = () => { down.destroy(); up.destroy(); };
      up.on("error", end); down.on("error", end); up.on("close", end); down.on("close", end);
    };
    const toB = () => { state.toB++; const up = net.connect(portB, hostB); up.once("connect", () => pipe(up)); up.once("error", () => down.destroy()); };
    if (state.aDown) return toB();
    const up = net.connect(portA, hostA);
    up.once("connect", () => { state.toA++; pipe(up); });
    up.once("error", (e) => { if (!up.connecting) return; toB(); });
    down.on("error", () => {});
  });
  return new Promise((res) => server.listen(0, "127.0.0.1", () => res({ server, state, port: server.address().port })));
}

async function kill() {
  const system = arg("system");
  const a = new URL(arg("a")), b = new URL(arg("b"));
  const n = Number(arg("clients", "100"));
  const rate = Number(arg("rate", "50"));
  const duration = Number(arg("duration", "10"));
  const killAt = Number(arg("kill-at", "4"));
  const signal = arg("signal", "SIGKILL");
  const killPid = Number(arg("kill-pid"));
  const drain = Number(arg("drain", "15"));
  const channel = arg("channel", "fan:kill");
  const total = Math.round(duration * rate);

  const lb = await balancer(a.hostname, Number(a.port), b.hostname, Number(b.port));
  const viaLb = new URL(a.href); viaLb.port = String(lb.port);

  const clients = []; // {seen: Uint8Array, reconnects, recovered: [bool], recoveredCount}
  let connected = 0;
  let pub, publish, closeAll;
  if (system === "sio") {
    const socks = [];
    for (let i = 0; i < n; i++) {
      const c = { seen: new Uint8Array(total + 1), connects: 0, recovered: [] };
      clients.push(c);
      const s = sioConnect(viaLb.href, { role: "sub" });
      s.on("connect", () => {
        if (c.connects++ === 0) connected++;
        else c.recovered.push(s.recovered);
      });
      s.on("m", (m) => { if (m.seq <= total) c.seen[m.seq]++; });
      socks.push(s);
    }
    pub = sioConnect(b.href, { role: "pub" });
    publish = (seq, ok) => pub.emit("pub", { seq, t: performance.now() }, () => ok(seq));
    closeAll = () => { socks.forEach((s) => s.disconnect()); pub.disconnect(); };
    if (!(await waitUntil(() => pub.connected, 10000))) throw new Error("publisher did not connect");
  } else if (system === "tidewire") {
    const dist = path.resolve(__dirname, "../../clients/js/dist/index.js");
    const { TidewireClient } = await import(dist);
    const WS = require("ws");
    const opts = { WebSocket: WS, networkEvents: null };
    const tcs = [];
    for (let i = 0; i < n; i++) {
      const c = { seen: new Uint8Array(total + 1), connects: 0, recovered: [], recoveredCount: 0 };
      clients.push(c);
      const tc = new TidewireClient(viaLb.href, opts);
      tc.on("state", (s) => { if (s.state === "connected" && c.connects++ === 0) connected++; });
      tc.subscribe(channel, {
        onPublication: (p) => { const m = p.data; if (m.seq <= total) c.seen[m.seq]++; },
        onSubscribed: (e) => { if (e.resubscribed) { c.recovered.push(e.recovered === true); c.recoveredCount += e.recoveredCount; } else c.subscribed = true; },
      });
      tc.connect();
      tcs.push(tc);
    }
    pub = new TidewireClient(b.href, opts);
    pub.connect();
    publish = (seq, ok) => pub.publish(channel, { seq, t: performance.now() }).then(() => ok(seq), () => {});
    closeAll = () => { tcs.forEach((t) => t.disconnect()); pub.disconnect(); };
    if (!(await waitUntil(() => clients.every((c) => c.subscribed), 30000))) throw new Error("not every client subscribed");
  } else throw new Error("--system sio|tidewire");
  if (!(await waitUntil(() => connected === n, 30000))) throw new Error(`only ${connected}/${n} clients connected`);
  const onA = lb.state.toA;

  const acked = new Uint8Array(total + 1);
  let killed = false, killSeq = 0;
  await publishLoop(rate, total, (seq) => publish(seq, (q) => (acked[q] = 1)), (el) => {
    if (!killed && el >= killAt) {
      killed = true;
      lb.state.aDown = true; // the balancer's health check: A is gone
      killSeq = Math.floor(el * rate);
      try { process.kill(killPid, signal); } catch (e) { console.error(`kill ${killPid}: ${e.message}`); }
    }
  });
  const ackedSeqs = [];
  for (let q = 1; q <= total; q++) if (acked[q]) ackedSeqs.push(q);
  const complete = (c) => ackedSeqs.every((q) => c.seen[q] > 0);
  await waitUntil(() => clients.every(complete), drain * 1000);
  // A client still reconnecting at the end of the drain has lost what it did not get.
  let lost = 0, dups = 0, clientsLosing = 0, maxLost = 0, reconnected = 0, recovered = 0, recoveredCount = 0;
  for (const c of clients) {
    let l = 0;
    for (const q of ackedSeqs) if (c.seen[q] === 0) l++;
    for (let q = 1; q <= total; q++) if (c.seen[q] > 1) dups += c.seen[q] - 1;
    lost += l; if (l > 0) clientsLosing++; maxLost = Math.max(maxLost, l);
    if (c.connects > 1 || c.recovered.length) reconnected++;
    if (c.recovered.length && c.recovered.every(Boolean)) recovered++;
    recoveredCount += c.recoveredCount || 0;
  }
  const out = {
    system: system === "sio" ? "socket.io" : "tidewire", signal, clients: n, on_a_before: onA,
    published: total, acked: ackedSeqs.length, killed_near_seq: killSeq,
    reconnected, recovered, clients_losing: clientsLosing,
    lost, lost_share: lost / (n * ackedSeqs.length), max_lost_per_client: maxLost, duplicates: dups,
    tidewire_recovered_publications: system === "tidewire" ? recoveredCount : undefined,
    balancer: { to_a: lb.state.toA, to_b: lb.state.toB },
  };
  console.log(JSON.stringify(out));
  closeAll();
  lb.server.close();
}

const run = mode === "fanout" ? fanout : mode === "kill" ? kill : null;
if (!run) { console.error("usage: node load.js fanout|kill ..."); process.exit(2); }
run().then(() => setTimeout(() => process.exit(0), 200), (e) => { console.error(`load.js: ${e.stack || e}`); process.exit(1); });
