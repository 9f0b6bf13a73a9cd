// (f) Server-side subscriptions: the server API's `subscribe` / `unsubscribe` (docs/api.md)
// push `{"channel":C,"subscribed":POSITION}` / `{"channel":C,"unsubscribed":{}}` to every
// connection of a user (docs/protocol.md). The client exposes them (`serverSubscribed`,
// `serverUnsubscribed`, a Subscription with origin "server"), resubscribes them itself with
// `since` after a reconnect, and ends them on `unsubscribed`. Against a real
// `tidewire serve` with auth and an API key; the races the real server cannot be made to
// produce on demand are played with a scripted WebSocket at the end.
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import {
  TidewireError,
  type Publication,
  type ServerSubscribedEvent,
  type ServerUnsubscribedEvent,
  type SubscribedEvent,
  type Subscription,
  type SubscriptionItem,
  type UnsubscribedEvent,
} from "../src/index.js";
import { fakeServer, hs256, makeClient, Proxy, sleep, startServer, waitFor, within, type Served } from "./helpers.js";

const SECRET = "tidewire-js-server-subs-secret-0123456789";
const API_KEY = "tidewire-js-api-key-0123456789";
const CONFIG = `
[namespaces.default]
history_size = 10000

[namespaces.priv]
private = true

[auth]
hmac_secret = "${SECRET}"
`;

const token = (user: string) => hs256(SECRET, { sub: user, exp: Math.floor(Date.now() / 1000) + 3600 });

let srv: Served;
let proxy: Proxy;
beforeAll(async () => {
  srv = await startServer({ config: CONFIG, args: ["--api-key", API_KEY] });
  proxy = await new Proxy(srv.port).listen();
});
afterAll(async () => {
  await proxy?.close();
  await srv?.kill();
});

/** POST /api/METHOD with the API key; the result, or a failure with the server's answer. */
async function api(method: string, params: Record<string, unknown>): Promise<any> {
  const r = await within(
    fetch(`http://127.0.0.1:${srv.port}/api/${method}`, {
      method: "POST",
      headers: { authorization: `apikey ${API_KEY}`, "content-type": "application/json" },
      body: JSON.stringify(params),
    }),
    `POST /api/${method}`,
  );
  const body = await r.text();
  if (!r.ok) throw new Error(`POST /api/${method} ${JSON.stringify(params)}: ${r.status} ${body}`);
  return JSON.parse(body);
}

/** The number of subscribers the server counts on `channel` (API `channels`). */
async function subscribers(channel: string): Promise<number> {
  const r = await api("channels", { pattern: channel });
  return r.channels?.[channel]?.subscribers ?? 0;
}

/** A client of `user` that records its server-side subscription events. */
function userClient(user: string, url = srv.url, options: Parameters<typeof makeClient>[1] = {}) {
  const c = makeClient(url, { token: () => token(user), ...options });
  const subscribed: ServerSubscribedEvent[] = [];
  const unsubscribed: ServerUnsubscribedEvent[] = [];
  c.client.on("serverSubscribed", (e) => subscribed.push(e));
  c.client.on("serverUnsubscribed", (e) => unsubscribed.push(e));
  return { ...c, subscribed, unsubscribed };
}

let n = 0;
const fresh = (prefix: string) => `${prefix}-${Date.now()}-${++n}`;

test("the server subscribes every connection of a user: the event, a Subscription with positions; unsubscribed ends it", async () => {
  const channel = fresh("srv");
  const other = fresh("mine");
  const a1 = userClient("ann");
  const a2 = userClient("ann");
  const bob = userClient("bob");
  await Promise.all([a1.client.connect(), a2.client.connect(), bob.client.connect()]);

  // a1 follows the subscription from inside the listener, with a listener and an iterator.
  const viaOn: Publication[] = [];
  const viaIter: SubscriptionItem[] = [];
  const subEvents: SubscribedEvent[] = [];
  const ended: UnsubscribedEvent[] = [];
  let iterDone: Promise<void> | null = null;
  a1.client.on("serverSubscribed", ({ subscription }) => {
    subscription.on("publication", (p) => viaOn.push(p));
    subscription.on("subscribed", (e) => subEvents.push(e));
    subscription.on("unsubscribed", (e) => ended.push(e));
    iterDone = (async () => {
      for await (const item of subscription) viaIter.push(item);
    })();
  });
  // Published before the server subscribes: not delivered (the subscription starts after it).
  const before = await api("publish", { channel, data: { n: 0 } });
  expect(await api("subscribe", { user: "ann", channel })).toEqual({});
  await waitFor(() => a1.subscribed.length === 1 && a2.subscribed.length === 1, "serverSubscribed on both of ann's connections");
  const ev = a1.subscribed[0]!;
  expect(ev.channel).toBe(channel);
  expect(ev.position).toEqual({ offset: before.offset, epoch: before.epoch });
  const sub = ev.subscription;
  expect(sub.origin).toBe("server");
  expect(sub.channel).toBe(channel);
  expect(sub.state).toBe("subscribed");
  expect(sub.position).toEqual(ev.position);
  expect((await sub.ready).position).toEqual(ev.position);
  expect(a1.client.getSubscription(channel)).toBe(sub);
  expect(a1.client.subscriptions).toEqual([sub]);
  expect(a2.subscribed[0]!.subscription).not.toBe(sub);
  // The application cannot subscribe a second time; the message says who subscribed.
  expect(() => a1.client.subscribe(channel)).toThrow(/by the server/);
  expect(await subscribers(channel)).toBe(2);

  const published = [];
  for (let i = 1; i <= 3; i++) published.push(await api("publish", { channel, data: { n: i } }));
  await waitFor(() => viaOn.length === 3, "three publications on a1");
  expect(viaOn.map((p) => [p.channel, p.offset, p.epoch, (p.data as any).n])).toEqual(
    published.map((r, i) => [channel, r.offset, r.epoch, i + 1]),
  );
  expect(viaOn.map((p) => p.offset)).toEqual([before.offset + 1, before.offset + 2, before.offset + 3]);
  expect(sub.position).toEqual({ offset: before.offset + 3, epoch: before.epoch });
  await waitFor(() => viaIter.length === 3, "three items from the iterator");
  expect(viaIter).toEqual(viaOn);
  expect(bob.subscribed).toEqual([]);
  // Only the first (push) subscription so far: no `subscribed` event after it.
  expect(subEvents).toEqual([]);

  // The server ends it: both connections are told, the subscription ends, iteration finishes.
  const mine = a1.client.subscribe(other);
  await mine.ready;
  expect(await api("unsubscribe", { user: "ann", channel })).toEqual({});
  await waitFor(() => a1.unsubscribed.length === 1 && a2.unsubscribed.length === 1, "serverUnsubscribed on both");
  expect(a1.unsubscribed[0]).toEqual({ channel, subscription: sub });
  expect(sub.state).toBe("unsubscribed");
  expect(ended).toEqual([{ channel, byServer: true }]);
  await within(iterDone!, "the iterator finishes");
  expect(a1.client.getSubscription(channel)).toBeUndefined();
  expect(a1.client.subscriptions).toEqual([mine]);
  expect(await subscribers(channel)).toBe(0);
  // Nothing more arrives on it: a publication on the channel, then one on `other`, which
  // comes after it on the same connection.
  await api("publish", { channel, data: { n: 4 } });
  const marker = await api("publish", { channel: other, data: "marker" });
  await waitFor(() => mine.position?.offset === marker.offset, "the marker on the other channel");
  expect(viaOn.length).toBe(3);
  expect(a1.errors).toEqual([]);
  expect(a2.errors).toEqual([]);
  for (const c of [a1, a2, bob]) c.client.disconnect();
});

test("reconnects: the client resubscribes a server subscription with since; no gap, no duplicate, recovered", async () => {
  const channel = fresh("resume");
  // Every subscribe request the client sends, to see the `since` it asks for.
  const sent: any[] = [];
  const Recording = class extends WebSocket {
    override send(data: string) {
      const m = JSON.parse(data);
      if (m.op === "subscribe" || m.op === "unsubscribe") sent.push(m);
      super.send(data);
    }
  };
  const a = userClient("cat", proxy.url, { WebSocket: Recording as any });
  await a.client.connect();
  const got: Publication[] = [];
  const resubs: SubscribedEvent[] = [];
  a.client.on("serverSubscribed", ({ subscription }) => {
    subscription.on("publication", (p) => got.push(p));
    subscription.on("subscribed", (e) => resubs.push(e));
  });
  await api("subscribe", { user: "cat", channel });
  await waitFor(() => a.subscribed.length === 1, "serverSubscribed");
  const start = a.subscribed[0]!.position;
  const sub = a.subscribed[0]!.subscription;
  let total = 0;
  const ROUNDS = 3;
  for (let round = 1; round <= ROUNDS; round++) {
    for (let i = 0; i < 5; i++) await api("publish", { channel, data: ++total });
    await waitFor(() => got.length === total, `round ${round}: live publications`);
    // Down: cut, refuse reconnects while 5 more are published.
    proxy.refuse = true;
    expect(proxy.sever()).toBe(1);
    await waitFor(() => a.client.state !== "connected", `round ${round}: connection lost`);
    const position = sub.position!;
    for (let i = 0; i < 5; i++) await api("publish", { channel, data: ++total });
    proxy.refuse = false;
    await waitFor(() => resubs.length === round, `round ${round}: resubscribed`);
    const ev = resubs[round - 1]!;
    expect(ev).toMatchObject({ channel, resubscribed: true, recovered: true, recoveredCount: 5 });
    expect(sent.filter((m) => m.op === "subscribe").at(-1)).toMatchObject({ channel, since: position });
    await waitFor(() => got.length === total, `round ${round}: recovered publications`);
  }
  for (let i = 0; i < 5; i++) await api("publish", { channel, data: ++total });
  await waitFor(() => got.length === total, "live publications after the last reconnect");
  expect(got.map((p) => p.data)).toEqual(Array.from({ length: total }, (_, k) => k + 1));
  expect(got.map((p) => p.offset)).toEqual(Array.from({ length: total }, (_, k) => start.offset + k + 1));
  expect(new Set(got.map((p) => p.epoch))).toEqual(new Set([start.epoch]));
  expect(a.subscribed.length).toBe(1); // the same Subscription throughout
  expect(a.errors).toEqual([]);
  expect(await subscribers(channel)).toBe(1);

  // Once the server ends it, a reconnect does not bring it back.
  await api("unsubscribe", { user: "cat", channel });
  await waitFor(() => a.unsubscribed.length === 1, "serverUnsubscribed");
  const before = sent.length;
  expect(proxy.sever()).toBe(1);
  await waitFor(() => a.client.state === "connected" && a.states.filter((s) => s.state === "connected").length === ROUNDS + 2, "reconnected");
  // A round trip on the new connection: anything sent on connect has been answered.
  await a.client.publish(fresh("after"), 1);
  expect(sent.slice(before)).toEqual([]);
  expect(await subscribers(channel)).toBe(0);
  a.client.disconnect();
});

test("the server API's unsubscribe ends the application's own subscription too", async () => {
  const channel = fresh("own");
  const a = userClient("dan");
  await a.client.connect();
  const ended: UnsubscribedEvent[] = [];
  const errors: TidewireError[] = [];
  const sub = a.client.subscribe(channel, { onUnsubscribed: (e) => ended.push(e), onError: (e) => errors.push(e) });
  await sub.ready;
  expect(sub.origin).toBe("client");
  await api("unsubscribe", { user: "dan", channel });
  await waitFor(() => a.unsubscribed.length === 1, "serverUnsubscribed");
  expect(a.unsubscribed[0]!.subscription).toBe(sub);
  expect(sub.state).toBe("unsubscribed");
  expect(ended).toEqual([{ channel, byServer: true }]);
  expect(errors).toEqual([]);
  expect(a.subscribed).toEqual([]);
  // The application may subscribe again.
  const again = a.client.subscribe(channel);
  await again.ready;
  expect(await subscribers(channel)).toBe(1);
  a.client.disconnect();
});

test("unsubscribe() of a server subscription ends it on the server; the server may subscribe again", async () => {
  const channel = fresh("leave");
  const a = userClient("eve");
  await a.client.connect();
  await api("subscribe", { user: "eve", channel });
  await waitFor(() => a.subscribed.length === 1, "serverSubscribed");
  const sub = a.subscribed[0]!.subscription;
  const ended: UnsubscribedEvent[] = [];
  sub.on("unsubscribed", (e) => ended.push(e));
  await within(sub.unsubscribe(), "unsubscribe()");
  expect(ended).toEqual([{ channel, byServer: false }]);
  expect(await subscribers(channel)).toBe(0);
  expect(a.unsubscribed).toEqual([]); // the application ended it: no serverUnsubscribed
  await api("subscribe", { user: "eve", channel });
  await waitFor(() => a.subscribed.length === 2, "subscribed again");
  expect(a.subscribed[1]!.subscription).not.toBe(sub);
  expect(a.subscribed[1]!.subscription.state).toBe("subscribed");
  a.client.disconnect();
});

test("a private channel the user may not subscribe to itself: the resubscribe after a reconnect is refused and reported", async () => {
  // docs/protocol.md: the server does not restore server subscriptions on a new connection;
  // the client's own resubscribe goes through the channel's checks, which the API skips.
  const channel = `priv:${fresh("desk")}`;
  const a = userClient("fay", proxy.url);
  await a.client.connect();
  await api("subscribe", { user: "fay", channel });
  await waitFor(() => a.subscribed.length === 1, "serverSubscribed to a private channel");
  const sub = a.subscribed[0]!.subscription;
  const refused: TidewireError[] = [];
  sub.on("error", (e) => refused.push(e));
  const got: Publication[] = [];
  sub.on("publication", (p) => got.push(p));
  await api("publish", { channel, data: "for fay" });
  await waitFor(() => got.length === 1, "a publication on the private channel");
  proxy.sever();
  await waitFor(() => refused.length === 1, "the resubscribe refused");
  expect(refused[0]!.code).toBe(104);
  expect(refused[0]!.message).toMatch(/private channel/);
  expect(sub.state).toBe("unsubscribed");
  expect(a.errors.some((e) => e instanceof TidewireError && e.code === 104)).toBe(true);
  expect(a.client.getSubscription(channel)).toBeUndefined();
  // The backend subscribes the new connection again: a new server subscription.
  await api("subscribe", { user: "fay", channel });
  await waitFor(() => a.subscribed.length === 2, "subscribed again by the server");
  expect(a.subscribed[1]!.subscription.state).toBe("subscribed");
  a.client.disconnect();
});

describe("races, with a scripted server", () => {
  const E = "e1";
  const pub = (channel: string, offset: number, epoch = E) => ({ channel, offset, epoch, data: offset });

  /** A client connected to a scripted socket, with a server subscription to "s" at `offset`. */
  function withServerSub(offset: number) {
    const fake = fakeServer();
    const c = fake.client();
    const events: ServerSubscribedEvent[] = [];
    c.client.on("serverSubscribed", (e) => events.push(e));
    void c.client.connect();
    fake.last().accept();
    fake.last().receive({ channel: "s", subscribed: { offset, epoch: E } });
    const sub = events[0]!.subscription as Subscription<number>;
    const got: number[] = [];
    const subscribed: SubscribedEvent[] = [];
    const lost: SubscriptionItem[] = [];
    sub.on("publication", (p) => got.push(p.offset));
    sub.on("subscribed", (e) => subscribed.push(e));
    sub.on("unrecoverable", (e) => lost.push(e));
    return { fake, ...c, events, sub, got, subscribed, lost };
  }

  test("publications before the push are not delivered; resubscribed with since on the next connection", async () => {
    const t = withServerSub(5);
    let s = t.fake.last();
    for (const o of [5, 6, 7]) s.receive(pub("s", o));
    expect(t.got).toEqual([6, 7]);
    s.serverClose(1006);
    await waitFor(() => t.fake.sockets.length === 2, "reconnect");
    s = t.fake.last();
    s.accept("c-2");
    const req = s.ops("subscribe").at(-1);
    expect(req).toEqual({ id: req.id, op: "subscribe", channel: "s", since: { offset: 7, epoch: E } });
    s.receive({ id: req.id, ok: true, result: { offset: 9, epoch: E, recovered: true, publications: [pub("s", 8), pub("s", 9)] } });
    s.receive(pub("s", 10));
    expect(t.got).toEqual([6, 7, 8, 9, 10]);
    expect(t.subscribed).toEqual([{ channel: "s", position: { offset: 9, epoch: E }, resubscribed: true, recovered: true, recoveredCount: 2 }]);
    expect(t.events.length).toBe(1);
    expect(t.errors).toEqual([]);
    t.client.disconnect();
  });

  test("the server subscribes again while the client's resubscribe is on its way: continued from the push", async () => {
    // Same position: nothing lost.
    const t = withServerSub(5);
    let s = t.fake.last();
    s.receive(pub("s", 6));
    s.serverClose(1006);
    await waitFor(() => t.fake.sockets.length === 2, "reconnect");
    s = t.fake.last();
    s.accept("c-2");
    let req = s.ops("subscribe").at(-1);
    expect(req.since).toEqual({ offset: 6, epoch: E });
    s.receive({ channel: "s", subscribed: { offset: 6, epoch: E } }); // e.g. the backend at connect
    s.receive(pub("s", 7)); // live, on the server's subscription: held until the reply
    s.receive({ id: req.id, error: { code: 106, message: "already subscribed" } });
    s.receive(pub("s", 8));
    expect(t.got).toEqual([6, 7, 8]);
    expect(t.subscribed.at(-1)).toMatchObject({ resubscribed: true, recovered: true, recoveredCount: 0, position: { offset: 6, epoch: E } });
    expect(t.lost).toEqual([]);
    expect(t.events.length).toBe(1); // no second serverSubscribed: the same Subscription goes on
    expect(t.sub.state).toBe("subscribed");

    // Further along: the publications in between are reported as unrecoverable.
    s.serverClose(1006);
    await waitFor(() => t.fake.sockets.length === 3, "reconnect");
    s = t.fake.last();
    s.accept("c-3");
    req = s.ops("subscribe").at(-1);
    expect(req.since).toEqual({ offset: 8, epoch: E });
    s.receive({ channel: "s", subscribed: { offset: 11, epoch: E } });
    s.receive({ id: req.id, error: { code: 104, message: "private channel" } });
    s.receive(pub("s", 12));
    expect(t.got).toEqual([6, 7, 8, 12]);
    expect(t.lost).toEqual([{ type: "unrecoverable", channel: "s", since: { offset: 8, epoch: E }, position: { offset: 11, epoch: E } }]);
    expect(t.subscribed.at(-1)).toMatchObject({ recovered: false, position: { offset: 11, epoch: E } });
    expect(t.errors).toEqual([]);
    t.client.disconnect();
  });

  test("unsubscribed while the resubscribe is on its way: ended, and the subscribe taken back", async () => {
    const t = withServerSub(1);
    const ends: ServerUnsubscribedEvent[] = [];
    t.client.on("serverUnsubscribed", (e) => ends.push(e));
    let s = t.fake.last();
    s.serverClose(1006);
    await waitFor(() => t.fake.sockets.length === 2, "reconnect");
    s = t.fake.last();
    s.accept("c-2");
    const req = s.ops("subscribe").at(-1);
    s.receive({ channel: "s", subscribed: { offset: 1, epoch: E } });
    s.receive({ channel: "s", unsubscribed: {} });
    expect(ends).toEqual([{ channel: "s", subscription: t.sub }]);
    expect(t.sub.state).toBe("unsubscribed");
    expect(s.sent.at(-1)).toMatchObject({ op: "unsubscribe", channel: "s" });
    // The replies that follow change nothing.
    s.receive({ id: req.id, error: { code: 106, message: "already subscribed" } });
    s.receive({ id: s.sent.at(-1).id, ok: true, result: {} });
    s.receive(pub("s", 2));
    expect(t.got).toEqual([]);
    expect(t.client.getSubscription("s")).toBeUndefined();
    expect(t.errors).toEqual([]);
    // A push that is not a position is a protocol error, and creates nothing.
    s.receive({ channel: "t", subscribed: { offset: "x" } });
    expect(t.errors.map((e) => (e as TidewireError).code)).toEqual(["protocol"]);
    expect(t.client.subscriptions).toEqual([]);
    await sleep(0);
    t.client.disconnect();
  });
});
