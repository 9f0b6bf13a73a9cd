// Test helpers: a real `tidewire serve`, a TCP proxy that can cut connections, waiting.
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { createServer, connect as tcpConnect, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { createHmac } from "node:crypto";
import { fileURLToPath } from "node:url";
import { TidewireClient, type ClientOptions, type StateEvent, type WebSocketConstructor } from "../src/index.js";

/** TIDEWIRE_BIN, else ../../target/release/tidewire from clients/js. */
export const BIN = process.env.TIDEWIRE_BIN
  ? resolve(process.env.TIDEWIRE_BIN)
  : fileURLToPath(new URL("../../../target/release/tidewire", import.meta.url));

/** Default test configuration: enough history for the stream tests. */
export const DEFAULT_CONFIG = `[namespaces.default]\nhistory_size = 10000\n`;

export interface Served {
  port: number;
  /** ws://127.0.0.1:PORT/ws */
  url: string;
  proc: ChildProcess;
  /** The last lines the server wrote to stderr (for failure messages). */
  log(): string;
  /** Kills the process (SIGKILL by default) and waits for it to exit. */
  kill(signal?: NodeJS.Signals): Promise<void>;
}

const tempDirs: string[] = [];
process.on("exit", () => {
  for (const d of tempDirs) rmSync(d, { recursive: true, force: true });
});

/**
 * Starts `tidewire serve --listen 127.0.0.1:PORT --publish-rate 0 --config FILE` and reads
 * the address from the first stdout line
 * (`tidewire serve listening on http://127.0.0.1:PORT/ (...)`).
 */
export async function startServer(opts: { port?: number; config?: string; args?: string[] } = {}): Promise<Served> {
  const dir = mkdtempSync(join(tmpdir(), "tidewire-js-"));
  tempDirs.push(dir);
  const configFile = join(dir, "tidewire.toml");
  writeFileSync(configFile, opts.config ?? DEFAULT_CONFIG);
  const args = [
    "serve",
    "--listen",
    `127.0.0.1:${opts.port ?? 0}`,
    "--publish-rate",
    "0",
    "--config",
    configFile,
    ...(opts.args ?? []),
  ];
  const proc = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
  const stderr: string[] = [];
  proc.stderr!.setEncoding("utf8");
  proc.stderr!.on("data", (chunk: string) => {
    stderr.push(chunk);
    if (stderr.length > 200) stderr.splice(0, stderr.length - 200);
  });
  const exited = new Promise<void>((res) => proc.once("exit", () => res()));
  const lines = createInterface({ input: proc.stdout! });
  const port = await new Promise<number>((res, rej) => {
    const timer = setTimeout(() => rej(new Error(`tidewire serve printed no address within 10 s: ${stderr.join("")}`)), 10_000);
    proc.once("error", (e) => {
      clearTimeout(timer);
      rej(new Error(`cannot run ${BIN} (set TIDEWIRE_BIN or build with cargo build --release -p tidewire-cli): ${e.message}`));
    });
    proc.once("exit", (code) => {
      clearTimeout(timer);
      rej(new Error(`tidewire serve exited with ${code} before listening: ${stderr.join("")}`));
    });
    lines.once("line", (line) => {
      clearTimeout(timer);
      const m = /^tidewire serve listening on http:\/\/127\.0\.0\.1:(\d+)\//.exec(line);
      if (m) res(Number(m[1]));
      else rej(new Error(`unexpected first line from tidewire serve: ${line}`));
    });
  });
  lines.on("line", () => {}); // keep draining stdout
  return {
    port,
    url: `ws://127.0.0.1:${port}/ws`,
    proc,
    log: () => stderr.join("").split("\n").slice(-30).join("\n"),
    async kill(signal: NodeJS.Signals = "SIGKILL") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}

/**
 * A TCP proxy in front of the server. `sever()` resets every connection (no close frame:
 * the client sees 1006); `refuse` resets new connections at once; `blackhole()` stops
 * forwarding on the current connections without closing them.
 */
export class Proxy {
  private server: Server;
  private pairs = new Set<{ client: Socket; upstream: Socket; dead: boolean }>();
  refuse = false;
  /** Connections accepted so far. */
  accepted = 0;
  port = 0;

  constructor(private readonly targetPort: number) {
    this.server = createServer((client) => this.accept(client));
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/ws`;
  }

  /** Connections currently forwarded. */
  get live(): number {
    return this.pairs.size;
  }

  async listen(): Promise<this> {
    await new Promise<void>((res) => this.server.listen(0, "127.0.0.1", () => res()));
    this.port = (this.server.address() as { port: number }).port;
    return this;
  }

  private accept(client: Socket): void {
    this.accepted++;
    if (this.refuse) {
      client.resetAndDestroy();
      return;
    }
    client.setNoDelay(true);
    const upstream = tcpConnect(this.targetPort, "127.0.0.1");
    upstream.setNoDelay(true);
    const pair = { client, upstream, dead: false };
    this.pairs.add(pair);
    const end = () => {
      if (!this.pairs.delete(pair)) return;
      client.destroy();
      upstream.destroy();
    };
    client.on("data", (d) => {
      if (!pair.dead) upstream.write(d);
    });
    upstream.on("data", (d) => {
      if (!pair.dead) client.write(d);
    });
    client.on("close", end);
    upstream.on("close", end);
    client.on("error", end);
    upstream.on("error", end);
  }

  /** Resets every connection; returns how many there were. */
  sever(): number {
    const n = this.pairs.size;
    for (const p of [...this.pairs]) {
      this.pairs.delete(p);
      p.client.resetAndDestroy();
      p.upstream.resetAndDestroy();
    }
    return n;
  }

  /** Silently drops everything on the current connections, both ways. */
  blackhole(): void {
    for (const p of this.pairs) p.dead = true;
  }

  async close(): Promise<void> {
    this.sever();
    await new Promise<void>((res) => this.server.close(() => res()));
  }
}

/** Polls `pred` every 5 ms until it holds; fails after `timeout` ms with `what`. */
export async function waitFor(pred: () => boolean, what: string, timeout = 10_000): Promise<void> {
  const t0 = Date.now();
  while (!pred()) {
    if (Date.now() - t0 > timeout) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(5);
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Awaits `p`, failing after `timeout` ms with `what`: a step that hangs names itself
 * instead of running into the test's own timeout. */
export async function within<T>(p: Promise<T>, what: string, timeout = 10_000): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expired = new Promise<never>((_, rej) => {
    timer = setTimeout(() => rej(new Error(`timed out after ${timeout} ms: ${what}`)), timeout);
  });
  try {
    return await Promise.race([p, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** A client with fast test timings, recording its state events. */
export function makeClient(url: string, options: ClientOptions = {}) {
  const client = new TidewireClient(url, {
    initialDelay: 20,
    maxDelay: 200,
    networkEvents: null,
    ...options,
  });
  const states: StateEvent[] = [];
  const errors: Error[] = [];
  client.on("state", (s) => states.push(s));
  client.on("error", (e) => errors.push(e));
  return { client, states, errors };
}

/** An HS256 JWT from the standard library. */
export function hs256(secret: string, claims: Record<string, unknown>): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const head = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  const sig = createHmac("sha256", secret).update(head).digest("base64url");
  return `${head}.${sig}`;
}

// ---------------------------------------------------------------- a scripted WebSocket

/** A WebSocket whose server is the test: it sees what the client sends and plays the replies. */
export class FakeSocket {
  readyState = 0;
  protocol = "";
  sent: any[] = [];
  closed: { code?: number; reason?: string } | null = null;
  onopen: ((ev: any) => any) | null = null;
  onmessage: ((ev: { data: any }) => any) | null = null;
  onclose: ((ev: { code: number; reason: string }) => any) | null = null;
  onerror: ((ev: any) => any) | null = null;
  constructor(
    readonly url: string,
    readonly protocols?: string | string[],
  ) {}
  send(text: string) {
    this.sent.push(JSON.parse(text));
  }
  close(code?: number, reason?: string) {
    this.closed = { code, reason };
    this.readyState = 3;
  }
  // -- the test plays the server
  open(protocol = "tidewire.v1") {
    this.protocol = protocol;
    this.readyState = 1;
    this.onopen?.({});
  }
  receive(msg: unknown) {
    this.onmessage?.({ data: JSON.stringify(msg) });
  }
  /** Opens and answers the connect request. */
  accept(client = "c-fake") {
    this.open();
    const c = this.sent.find((m) => m.op === "connect");
    this.receive({ id: c.id, ok: true, result: { client, user: null, version: "tidewire.v1" } });
  }
  /** A failed connection, as browsers report it. */
  fail() {
    this.readyState = 3;
    this.onerror?.({});
    this.onclose?.({ code: 1006, reason: "" });
  }
  serverClose(code: number, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason });
  }
  ops(op: string) {
    return this.sent.filter((m) => m.op === op);
  }
}

/** Clients on scripted sockets (fast backoff); `last()` is the newest socket. */
export function fakeServer() {
  const sockets: FakeSocket[] = [];
  const WS = class extends FakeSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      sockets.push(this);
    }
  } as unknown as WebSocketConstructor;
  return {
    sockets,
    last: () => sockets[sockets.length - 1]!,
    client(options: ClientOptions = {}) {
      return makeClient("ws://fake/ws", { WebSocket: WS, initialDelay: 1, maxDelay: 5, ...options });
    },
  };
}

// ---------------------------------------------------------------- Server-Sent Events

/**
 * An EventSource for Node (which has none before 22), over fetch, as browsers behave:
 * `Last-Event-ID` on every reconnect, the server's `retry:`, reconnecting by itself after a
 * network error or the end of the stream, closed for good (readyState 2) when the answer
 * is not 200 text/event-stream. `requests` records each connection's URL and Last-Event-ID.
 */
export class NodeEventSource {
  static readonly CONNECTING = 0;
  static readonly OPEN = 1;
  static readonly CLOSED = 2;
  /** Every connection made by any NodeEventSource, in order. */
  static requests: { url: string; lastEventId: string; status: number }[] = [];
  readyState = 0;
  private readonly listeners = new Map<string, Set<(ev: any) => void>>();
  private lastEventId = "";
  private retry = 1000;
  private ctl: AbortController | null = null;
  private closed = false;

  constructor(readonly url: string) {
    setTimeout(() => void this.connect(), 0);
  }

  addEventListener(type: string, fn: (ev: any) => void): void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(fn);
  }

  close(): void {
    this.closed = true;
    this.readyState = 2;
    this.ctl?.abort();
  }

  private emit(type: string, ev: Record<string, unknown>): void {
    for (const fn of [...(this.listeners.get(type) ?? [])]) fn({ type, ...ev });
  }

  private async connect(): Promise<void> {
    if (this.closed) return;
    const ctl = (this.ctl = new AbortController());
    const headers: Record<string, string> = { accept: "text/event-stream" };
    if (this.lastEventId) headers["last-event-id"] = this.lastEventId;
    const record = { url: this.url, lastEventId: this.lastEventId, status: 0 };
    NodeEventSource.requests.push(record);
    let resp: Response;
    try {
      resp = await fetch(this.url, { headers, signal: ctl.signal });
    } catch {
      this.again();
      return;
    }
    record.status = resp.status;
    if (this.closed) return;
    if (resp.status !== 200 || !(resp.headers.get("content-type") ?? "").startsWith("text/event-stream")) {
      await resp.body?.cancel().catch(() => {});
      this.closed = true;
      this.readyState = 2;
      this.emit("error", {});
      return;
    }
    this.readyState = 1;
    this.emit("open", {});
    const decoder = new TextDecoder();
    let buf = "";
    let data: string[] = [];
    let type = "";
    try {
      for await (const chunk of resp.body as any as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buf.indexOf("\n")) >= 0) {
          const line = buf.slice(0, nl).replace(/\r$/, "");
          buf = buf.slice(nl + 1);
          if (line === "") {
            if (data.length) this.emit(type || "message", { data: data.join("\n"), lastEventId: this.lastEventId });
            data = [];
            type = "";
            continue;
          }
          if (line.startsWith(":")) continue;
          const i = line.indexOf(":");
          const field = i < 0 ? line : line.slice(0, i);
          const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
          if (field === "data") data.push(value);
          else if (field === "event") type = value;
          else if (field === "id") this.lastEventId = value;
          else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
        }
        if (this.closed) return;
      }
    } catch {
      // the connection broke
    }
    this.again();
  }

  private again(): void {
    if (this.closed) return;
    this.readyState = 0;
    this.emit("error", {});
    setTimeout(() => void this.connect(), this.retry);
  }
}

/** A scripted EventSource: the test plays the server's events. */
export class FakeEventSource {
  readyState = 0;
  closed = false;
  private readonly listeners = new Map<string, Set<(ev: any) => void>>();
  constructor(readonly url: string) {}
  addEventListener(type: string, fn: (ev: any) => void): void {
    let set = this.listeners.get(type);
    if (!set) this.listeners.set(type, (set = new Set()));
    set.add(fn);
  }
  close(): void {
    this.closed = true;
    this.readyState = 2;
  }
  /** The query of its URL: channel, token, since. */
  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }
  // -- the test plays the server
  event(type: string, data: unknown): void {
    this.readyState = 1;
    for (const fn of [...(this.listeners.get(type) ?? [])]) fn({ type, data: JSON.stringify(data) });
  }
  subscribed(offset: number, epoch: string, recovered: boolean | null = null): void {
    this.event("subscribed", { channel: this.query.get("channel"), client: "c-sse", offset, epoch, recovered });
  }
  publication(offset: number, epoch: string, data: unknown): void {
    this.event("message", { channel: this.query.get("channel"), offset, epoch, data });
  }
  /** A network error (the EventSource reconnects by itself) or, with `closed`, a refusal. */
  error(closed = false): void {
    this.readyState = closed ? 2 : 0;
    for (const fn of [...(this.listeners.get("error") ?? [])]) fn({ type: "error" });
  }
}

/** Scripted EventSources and fetch: `sources` in order of creation, `calls` of fetch. */
export function fakeHttp(answer: (url: string, init: any) => { status: number; body: string } = () => ({ status: 200, body: "{}" })) {
  const sources: FakeEventSource[] = [];
  const calls: { url: string; init: any }[] = [];
  const ES = class extends FakeEventSource {
    constructor(url: string) {
      super(url);
      sources.push(this);
    }
  };
  const fetchFn = async (url: string, init: any = {}) => {
    calls.push({ url, init });
    const a = answer(url, init);
    return { ok: a.status >= 200 && a.status < 300, status: a.status, text: async () => a.body };
  };
  return { sources, calls, EventSource: ES, fetch: fetchFn, last: () => sources[sources.length - 1]! };
}

/** A WebSocket that never opens (as behind a proxy that breaks upgrades), while `broken()`. */
export function breakableWebSocket(broken: () => boolean): { WS: WebSocketConstructor; attempts: () => number } {
  let attempts = 0;
  const Real = (globalThis as any).WebSocket;
  const WS = function (this: unknown, url: string, protocols?: string | string[]) {
    attempts++;
    if (!broken()) return new Real(url, protocols);
    const ws: any = {
      readyState: 0,
      protocol: "",
      onopen: null,
      onmessage: null,
      onclose: null,
      onerror: null,
      send() {
        throw new Error("not open");
      },
      close() {
        ws.readyState = 3;
      },
    };
    setTimeout(() => {
      ws.readyState = 3;
      ws.onerror?.({});
      ws.onclose?.({ code: 1006, reason: "" });
    }, 1);
    return ws;
  } as unknown as WebSocketConstructor;
  return { WS, attempts: () => attempts };
}
