// (c) publish, history, presence, join/leave, error replies, and tokens (connect, 4001, 4008).
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { ErrorCode, TidewireError, type ClientInfo } from "../src/index.js";
import { hs256, makeClient, Proxy, startServer, waitFor, type Served } from "./helpers.js";

const CONFIG = `
[namespaces.default]
history_size = 10000

[namespaces.ro]
publish = false

[namespaces.quiet]
presence = false
`;

const SECRET = "tidewire-js-client-tests-secret-0123456789";
const AUTH_CONFIG = `${CONFIG}
[auth]
hmac_secret = "${SECRET}"
`;

const now = () => Math.floor(Date.now() / 1000);

async function rejection(p: Promise<unknown>): Promise<TidewireError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(TidewireError);
    return e as TidewireError;
  }
  throw new Error("expected a rejection");
}

describe("anonymous server", () => {
  let srv: Served;
  beforeAll(async () => {
    srv = await startServer({ config: CONFIG });
  });
  afterAll(async () => {
    await srv?.kill();
  });

  test("publish and history", async () => {
    const { client } = makeClient(srv.url);
    await client.connect();
    const results = [];
    for (let n = 1; n <= 5; n++) results.push(await client.publish("history", { n }));
    expect(results.map((r) => r.offset)).toEqual([1, 2, 3, 4, 5]);
    expect(new Set(results.map((r) => r.epoch)).size).toBe(1);
    const h = await client.history<{ n: number }>("history", { limit: 3 });
    expect(h.offset).toBe(5);
    expect(h.epoch).toBe(results[0]!.epoch);
    expect(h.publications.map((p) => [p.offset, p.data.n, p.type, p.channel])).toEqual([
      [3, 3, "publication", "history"],
      [4, 4, "publication", "history"],
      [5, 5, "publication", "history"],
    ]);
    expect((await client.history("history")).publications.length).toBe(5);
    // A channel that does not exist (docs/protocol.md, history).
    expect(await client.history("never-used")).toEqual({ offset: 0, epoch: "", publications: [] });
    // Any JSON value is delivered unchanged.
    const sub = client.subscribe("values");
    const got: unknown[] = [];
    const it = (async () => {
      for await (const item of sub) {
        if (item.type === "publication") got.push(item.data);
        if (got.length === 5) break;
      }
    })();
    await sub.ready;
    const values = [null, 0, "text", [1, { a: [true] }], { nested: { ü: "ünïcödé ✓" } }];
    for (const v of values) await client.publish("values", v);
    await it;
    expect(got).toEqual(values);
    client.disconnect();
  });

  test("history on join: the newest N first, then live, no gap or duplicate", async () => {
    const { client } = makeClient(srv.url);
    await client.connect();
    for (let n = 1; n <= 8; n++) await client.publish("onjoin", { n });
    const got: number[] = [];
    const sub = client.subscribe<{ n: number }>("onjoin", { history: 3, onPublication: (p) => got.push(p.data.n) });
    await sub.ready;
    await client.publish("onjoin", { n: 9 });
    await waitFor(() => got.length === 4, "history then live");
    expect(got).toEqual([6, 7, 8, 9]);
    // On a channel that does not exist yet there is nothing to load.
    const fresh: number[] = [];
    const sub2 = client.subscribe<{ n: number }>("onjoin-new", { history: 50, onPublication: (p) => fresh.push(p.data.n) });
    await sub2.ready;
    await client.publish("onjoin-new", { n: 1 });
    await waitFor(() => fresh.length === 1, "first publication");
    expect(fresh).toEqual([1]);
    client.disconnect();
  });

  test("info is shown in presence", async () => {
    const a = makeClient(srv.url, { info: { nick: "ann" } }).client;
    const ia = await a.connect();
    const sub = a.subscribe("info-room");
    await sub.ready;
    const p = await a.presence("info-room");
    expect(p.clients).toEqual([{ client: ia.client, user: null, info: { nick: "ann" } }]);
    a.disconnect();
  });

  test("presence, join and leave", async () => {
    const a = makeClient(srv.url).client;
    const b = makeClient(srv.url).client;
    const [ia, ib] = await Promise.all([a.connect(), b.connect()]);
    const joins: ClientInfo[] = [];
    const leaves: ClientInfo[] = [];
    const subA = a.subscribe("room", { onJoin: (c) => joins.push(c), onLeave: (c) => leaves.push(c) });
    await subA.ready;
    await waitFor(() => joins.some((j) => j.client === ia.client), "own join event");
    const subB = b.subscribe("room");
    await subB.ready;
    await waitFor(() => joins.some((j) => j.client === ib.client), "b's join event");
    expect(joins.find((j) => j.client === ib.client)).toEqual({ client: ib.client, user: null, info: null });
    const p = await a.presence("room");
    expect(p.clients.map((c) => c.client).sort()).toEqual([ia.client, ib.client].sort());
    await subB.unsubscribe();
    expect(subB.state).toBe("unsubscribed");
    await waitFor(() => leaves.some((l) => l.client === ib.client), "b's leave event");
    expect((await a.presence("room")).clients.map((c) => c.client)).toEqual([ia.client]);
    a.disconnect();
    b.disconnect();
  });

  test("error replies carry code and message", async () => {
    const { client, errors } = makeClient(srv.url);
    await client.connect();
    const e103 = await rejection(client.publish("nope:x", 1));
    expect(e103.code).toBe(ErrorCode.UNKNOWN_CHANNEL);
    expect(e103.message).toMatch(/namespace/);
    const e104 = await rejection(client.publish("ro:x", 1));
    expect(e104.code).toBe(ErrorCode.PERMISSION_DENIED);
    expect(e104.message).toBe("publishing is not allowed in this namespace");
    const e110 = await rejection(client.presence("quiet:x"));
    expect(e110.code).toBe(ErrorCode.NOT_AVAILABLE);
    const e101 = await rejection(client.history("history", { limit: -1 }));
    expect(e101.code).toBe(ErrorCode.BAD_REQUEST);
    const eLong = await rejection(client.publish("x".repeat(256), 1));
    expect(eLong.code).toBe(ErrorCode.UNKNOWN_CHANNEL);

    // A refused subscription: ready rejects, onError is called, iteration throws.
    let onError: TidewireError | null = null;
    const sub = client.subscribe("nope:x", { onError: (e) => (onError = e) });
    const iterated = (async () => {
      for await (const _ of sub) {
        // nothing arrives
      }
    })();
    const e = await rejection(sub.ready);
    expect(e.code).toBe(ErrorCode.UNKNOWN_CHANNEL);
    expect(e.message).toMatch(/^subscribe to "nope:x" refused: /);
    expect(onError).toBe(e);
    await expect(iterated).rejects.toBe(e);
    expect(sub.state).toBe("unsubscribed");
    expect(client.getSubscription("nope:x")).toBeUndefined();
    expect(errors).toContain(e);

    // Subscribing twice to one channel is refused by the client itself.
    const ok = client.subscribe("twice");
    expect(() => client.subscribe("twice")).toThrowError(/already subscribed/);
    await ok.ready;
    await ok.unsubscribe();
    const again = client.subscribe("twice");
    await again.ready;

    // The connection survives all of this.
    expect(client.state).toBe("connected");
    expect((await client.publish("history", "still here")).offset).toBeGreaterThan(0);
    client.disconnect();
    // Not running: requests fail at once.
    expect((await rejection(client.publish("history", 1))).code).toBe("closed");
  });
});

describe("server with auth", () => {
  let srv: Served;
  let proxy: Proxy;
  beforeAll(async () => {
    srv = await startServer({ config: AUTH_CONFIG });
    proxy = await new Proxy(srv.port).listen();
  });
  afterAll(async () => {
    await proxy?.close();
    await srv?.kill();
  });

  test("token function: sent with connect, called again on every reconnect", async () => {
    let calls = 0;
    const token = async () => {
      calls++;
      return hs256(SECRET, { sub: "alice", exp: now() + 60, info: { name: "Alice" } });
    };
    const { client, states } = makeClient(proxy.url, { token });
    const info = await client.connect();
    expect(info.user).toBe("alice");
    expect(calls).toBe(1);
    const sub = client.subscribe("authroom");
    await sub.ready;
    const p = await client.presence("authroom");
    expect(p.clients).toEqual([{ client: info.client, user: "alice", info: { name: "Alice" } }]);
    proxy.sever();
    await waitFor(() => states.filter((s) => s.state === "connected").length === 2, "reconnected");
    expect(calls).toBe(2);
    expect(client.connection!.user).toBe("alice");
    client.disconnect();
  });

  test("bad token: error 109, close 4008, no reconnect", async () => {
    const bad = hs256("another-secret-another-secret-another-secret", { sub: "mallory", exp: now() + 60 });
    const { client, states, errors } = makeClient(srv.url, { token: bad });
    const e = await rejection(client.connect());
    expect(e.code).toBe("closed");
    expect(e.closeCode).toBe(4008);
    expect(states.at(-1)).toMatchObject({ state: "disconnected", code: 4008 });
    expect(states.some((s) => s.state === "reconnecting")).toBe(false);
    const refused = errors.find((x) => x instanceof TidewireError && x.code === ErrorCode.UNAUTHORIZED);
    expect(refused?.message).toMatch(/^connect refused: unauthorized: /);
  });

  test("no token where one is required: 4008, no reconnect", async () => {
    const { client, states } = makeClient(srv.url);
    const e = await rejection(client.connect());
    expect(e.closeCode).toBe(4008);
    expect(states.some((s) => s.state === "reconnecting")).toBe(false);
  });

  test("expired token: 4001 stops a static token, a token function gets a new one", async () => {
    const expired = hs256(SECRET, { sub: "bob", exp: now() - 120 });
    const fixed = makeClient(srv.url, { token: expired });
    const e = await rejection(fixed.client.connect());
    expect(e.closeCode).toBe(4001);
    expect(e.message).toMatch(/no token function/);
    expect(fixed.states.some((s) => s.state === "reconnecting")).toBe(false);

    let calls = 0;
    const fresh = makeClient(srv.url, {
      token: () => (++calls === 1 ? expired : hs256(SECRET, { sub: "bob", exp: now() + 60 })),
    });
    const info = await fresh.client.connect();
    expect(info.user).toBe("bob");
    expect(calls).toBe(2);
    expect(fresh.states.find((s) => s.state === "reconnecting")).toMatchObject({ attempt: 1, code: 4001 });
    fresh.client.disconnect();
  });
});

describe("message size", () => {
  let srv: Served;
  beforeAll(async () => {
    srv = await startServer({ config: `${CONFIG}\n[limits]\nmax_message_size = 4096\n` });
  });
  afterAll(async () => {
    await srv?.kill();
  });

  test("maxMessageSize rejects locally; a message the server finds too big closes with 1009 and stops", async () => {
    const big = "x".repeat(8000);
    const guarded = makeClient(srv.url, { maxMessageSize: 4096 });
    await guarded.client.connect();
    const e = await rejection(guarded.client.publish("size", big));
    expect(e.code).toBe("too_large");
    expect(e.message).toMatch(/not sent: 80\d\d bytes, more than maxMessageSize \(4096\)/);
    expect((await guarded.client.publish("size", "small")).offset).toBe(1);
    // Multi-byte text is counted in UTF-8 bytes: 1,500 × "€" is 4,500 bytes.
    expect((await rejection(guarded.client.publish("size", "€".repeat(1500)))).code).toBe("too_large");
    guarded.client.disconnect();

    const unguarded = makeClient(srv.url); // default 1 MiB: the server's limit is lower
    await unguarded.client.connect();
    const lost = await rejection(unguarded.client.publish("size", big));
    expect(lost.code).toBe("disconnected");
    await waitFor(() => unguarded.client.state === "disconnected", "stopped after 1009");
    expect(unguarded.states.at(-1)).toMatchObject({ state: "disconnected", code: 1009 });
    expect(unguarded.states.some((s) => s.state === "reconnecting")).toBe(false);
  });
});
