// The SSE fallback (option `fallback: "sse"`), driven through a scripted WebSocket,
// EventSource and fetch: when the WebSocket cannot be opened `fallbackAfter` times in a row
// the client goes on over SSE (EventSource per subscription, from the positions it has;
// POST /publish), reports the transport, refuses what needs the WebSocket, keeps trying the
// WebSocket in the background and moves back without gap or duplicate.
// fallback-live.test.ts does the same against a real `tidewire serve`.
import { describe, expect, test } from "vitest";
import { TidewireError, type Publication, type StateEvent, type SubscribedEvent, type TransportEvent, type Unrecoverable } from "../src/index.js";
import { fakeHttp, fakeServer, sleep, waitFor } from "./helpers.js";

const E = "epoch-1";

function setup(options: Record<string, unknown> = {}, answer?: Parameters<typeof fakeHttp>[0]) {
  const fake = fakeServer();
  const http = fakeHttp(answer);
  const { client, states, errors } = fake.client({
    fallback: "sse",
    fallbackAfter: 3,
    fallbackProbeDelay: 60_000, // no background attempt unless a test asks for one
    EventSource: http.EventSource,
    fetch: http.fetch,
    random: () => 0.5,
    ...options,
  });
  const transports: TransportEvent[] = [];
  client.on("transport", (t) => transports.push(t));
  return { fake, http, client, states, errors, transports };
}

/** Fails the next `n` WebSocket attempts before they open. */
async function failOpens(fake: ReturnType<typeof fakeServer>, n: number) {
  const first = fake.sockets.filter((s) => s.readyState !== 3).length ? fake.sockets.length : fake.sockets.length + 1;
  for (let i = first; i < first + n; i++) {
    await waitFor(() => fake.sockets.length === i, `WebSocket attempt ${i}`);
    fake.last().fail();
  }
}

describe("fallback to SSE", () => {
  test("after fallbackAfter failures to open: EventSource per subscription, same callbacks, POST /publish, transport reported", async () => {
    const { fake, http, client, states, transports } = setup({ token: "tok en" }, (url, init) =>
      url.endsWith("/publish") ? { status: 200, body: JSON.stringify({ offset: 7, epoch: E }) } : { status: 500, body: "" },
    );
    const got: Publication[] = [];
    const subscribed: SubscribedEvent[] = [];
    const sub = client.subscribe("chat:lobby", { onPublication: (p) => got.push(p), onSubscribed: (e) => subscribed.push(e) });
    const connected = client.connect();
    await failOpens(fake, 2);
    await sleep(20);
    expect(http.sources.length).toBe(0); // not yet: 2 failures of 3
    expect(client.transport).toBe(null);
    await failOpens(fake, 1);
    await waitFor(() => http.sources.length === 1, "the EventSource");
    expect(fake.sockets.length).toBe(3); // no more WebSocket attempts in the foreground
    const es = http.last();
    expect(es.url).toBe("http://fake/sse?channel=chat%3Alobby&token=tok%20en");
    expect(client.transport).toBe("sse");
    expect(transports).toEqual([{ transport: "sse", reason: expect.stringMatching(/failed to open 3 times in a row/) }]);
    expect(states.at(-1)).toEqual({ state: "connected", client: "", user: null, transport: "sse" });
    expect(await connected).toEqual({ client: "", user: null, version: "tidewire.v1", transport: "sse" });
    expect(client.connection?.transport).toBe("sse");

    es.subscribed(4, E);
    expect(sub.state).toBe("subscribed");
    expect(subscribed).toEqual([{ channel: "chat:lobby", position: { offset: 4, epoch: E }, resubscribed: false, recoveredCount: 0 }]);
    es.publication(5, E, { text: "a" });
    es.publication(5, E, { text: "a again" }); // a duplicate is dropped
    es.publication(6, E, { text: "b" });
    expect(got.map((p) => [p.offset, p.data])).toEqual([
      [5, { text: "a" }],
      [6, { text: "b" }],
    ]);
    expect(sub.position).toEqual({ offset: 6, epoch: E });
    const joins: unknown[] = [];
    sub.on("join", (c) => joins.push(c));
    es.event("join", { channel: "chat:lobby", join: { client: "c-2", user: "bob", info: null } });
    expect(joins).toEqual([{ client: "c-2", user: "bob", info: null }]);

    // publish: POST /publish with the token as Bearer.
    expect(await client.publish("chat:lobby", { text: "hi" })).toEqual({ offset: 7, epoch: E });
    const post = http.calls.find((c) => c.url === "http://fake/publish")!;
    expect(post.init.method).toBe("POST");
    expect(post.init.headers.authorization).toBe("Bearer tok en");
    expect(JSON.parse(post.init.body)).toEqual({ channel: "chat:lobby", data: { text: "hi" } });

    // What needs the WebSocket says so.
    for (const call of [() => client.presence("chat:lobby"), () => client.history("chat:lobby"), () => client.rpc("m", 1)]) {
      const err = await call().catch((e) => e);
      expect(err).toBeInstanceOf(TidewireError);
      expect(err.code).toBe("transport");
      expect(err.message).toMatch(/needs the WebSocket, and the client is on its SSE fallback/);
    }
    expect(fake.sockets.length).toBe(3);

    // A new subscription on SSE gets its own EventSource; unsubscribe closes it.
    const other = client.subscribe("other");
    await waitFor(() => http.sources.length === 2, "a second EventSource");
    expect(http.last().query.get("channel")).toBe("other");
    await other.unsubscribe();
    expect(http.last().closed).toBe(true);
    expect(es.closed).toBe(false);

    client.disconnect();
    expect(es.closed).toBe(true);
    expect(client.transport).toBe(null);
    expect(transports.at(-1)).toMatchObject({ transport: null });
  });

  test("resumes with the offsets it has: since in the URL, recovered publications, then subscribed", async () => {
    const { fake, http, client } = setup();
    const got: number[] = [];
    const subscribed: SubscribedEvent[] = [];
    const order: string[] = [];
    const sub = client.subscribe("news", {
      onPublication: (p) => {
        got.push(p.offset);
        order.push(`pub ${p.offset}`);
      },
      onSubscribed: (e) => {
        subscribed.push(e);
        order.push("subscribed");
      },
    });
    void client.connect();
    // Connected over WebSocket first, up to offset 3.
    await waitFor(() => fake.sockets.length === 1, "the WebSocket");
    const ws = fake.last();
    ws.accept();
    const s = ws.ops("subscribe")[0];
    ws.receive({ id: s.id, ok: true, result: { offset: 1, epoch: E } });
    ws.receive({ channel: "news", offset: 2, epoch: E, data: 2 });
    ws.receive({ channel: "news", offset: 3, epoch: E, data: 3 });
    expect(client.transport).toBe("websocket");
    ws.serverClose(1006);
    for (let i = 2; i <= 4; i++) {
      await waitFor(() => fake.sockets.length === i, `attempt ${i}`);
      fake.last().fail();
    }
    await waitFor(() => http.sources.length === 1, "the EventSource");
    const es = http.last();
    expect(es.query.get("since")).toBe(`3:${E}`);
    order.length = 0;
    es.subscribed(6, E, true);
    expect(subscribed.length).toBe(1); // waits for the recovered publications
    es.publication(3, E, 3); // already delivered over WebSocket
    es.publication(4, E, 4);
    es.publication(5, E, 5);
    expect(subscribed.length).toBe(1);
    es.publication(6, E, 6);
    expect(subscribed[1]).toEqual({
      channel: "news",
      position: { offset: 6, epoch: E },
      resubscribed: true,
      recovered: true,
      recoveredCount: 3,
    });
    expect(order).toEqual(["pub 4", "pub 5", "pub 6", "subscribed"]);
    es.publication(7, E, 7);
    expect(got).toEqual([2, 3, 4, 5, 6, 7]);

    // The EventSource reconnects by itself (Last-Event-ID); the server says it recovered.
    es.error();
    expect(sub.state).toBe("subscribing");
    es.publication(7, E, 7); // ignored until the next subscribed
    es.subscribed(8, E, true);
    es.publication(8, E, 8);
    expect(got).toEqual([2, 3, 4, 5, 6, 7, 8]);
    expect(subscribed.at(-1)).toMatchObject({ recovered: true, recoveredCount: 1, resubscribed: true });

    // The history no longer reaches back (or a new epoch): unrecoverable, then live.
    const lost: Unrecoverable[] = [];
    sub.on("unrecoverable", (u) => lost.push(u));
    es.error();
    es.subscribed(20, "epoch-2", false);
    expect(lost).toEqual([{ type: "unrecoverable", channel: "news", since: { offset: 8, epoch: E }, position: { offset: 20, epoch: "epoch-2" } }]);
    es.publication(21, "epoch-2", 21);
    expect(got.at(-1)).toBe(21);

    // A gap: a new EventSource from the position.
    es.publication(23, "epoch-2", 23);
    await waitFor(() => http.sources.length === 2, "a new EventSource after the gap");
    expect(es.closed).toBe(true);
    expect(http.last().query.get("since")).toBe("21:epoch-2");
    expect(got.at(-1)).toBe(21);
    client.disconnect();
  });

  test("moves back to WebSocket: background attempts with backoff, resubscribed with since, no gap, no duplicate", async () => {
    const { fake, http, client, states, transports } = setup({ fallbackProbeDelay: 40, fallbackProbeMaxDelay: 100 });
    const got: number[] = [];
    client.subscribe("ticks", { onPublication: (p) => got.push(p.offset) });
    void client.connect();
    await failOpens(fake, 3);
    await waitFor(() => http.sources.length === 1, "the EventSource");
    const es = http.last();
    es.subscribed(10, E);
    es.publication(11, E, 11);
    const statesOnSse = states.length;

    // Background attempts: silent (no state events); failing ones back off (20-40, 40-80 ms).
    const t0 = performance.now();
    await waitFor(() => fake.sockets.length === 4, "background attempt 1", 2000);
    const t1 = performance.now();
    fake.last().fail();
    await waitFor(() => fake.sockets.length === 5, "background attempt 2", 2000);
    const t2 = performance.now();
    expect(t1 - t0).toBeGreaterThanOrEqual(20 - 5); // random 0.5: 30 ms, 60 ms
    expect(t2 - t1).toBeGreaterThanOrEqual(45);
    fake.last().fail();
    expect(states.length).toBe(statesOnSse);
    expect(client.transport).toBe("sse");
    es.publication(12, E, 12); // still on SSE meanwhile

    await waitFor(() => fake.sockets.length === 6, "background attempt 3", 2000);
    const ws = fake.last();
    ws.accept("c-back");
    expect(es.closed).toBe(true);
    expect(client.transport).toBe("websocket");
    expect(transports.map((t) => t.transport)).toEqual(["sse", "websocket"]);
    expect(states.at(-1)).toEqual({ state: "connected", client: "c-back", user: null, transport: "websocket" });
    const s = ws.ops("subscribe")[0];
    expect(s.since).toEqual({ offset: 12, epoch: E });
    ws.receive({ id: s.id, ok: true, result: { offset: 14, epoch: E, recovered: true, publications: [
      { offset: 13, epoch: E, data: 13 },
      { offset: 14, epoch: E, data: 14 },
    ] } });
    es.publication(13, E, "late SSE event"); // after close: ignored
    ws.receive({ channel: "ticks", offset: 14, epoch: E, data: 14 }); // duplicate
    ws.receive({ channel: "ticks", offset: 15, epoch: E, data: 15 });
    expect(got).toEqual([11, 12, 13, 14, 15]);

    // Publishing goes over the WebSocket again.
    const posts = http.calls.length;
    const p = client.publish("ticks", 1);
    const req = ws.ops("publish")[0];
    ws.receive({ id: req.id, ok: true, result: { offset: 16, epoch: E } });
    expect(await p).toEqual({ offset: 16, epoch: E });
    expect(http.calls.length).toBe(posts);
    client.disconnect();
  });

  test("requests waiting for the WebSocket: publishes go over POST in order, the others reject", async () => {
    let n = 0;
    const { fake, http, client } = setup({}, () => ({ status: 200, body: JSON.stringify({ offset: ++n, epoch: E }) }));
    void client.connect();
    const pubs = [client.publish("a", 1), client.publish("a", 2), client.publish("a", 3)];
    const presence = client.presence("a").catch((e) => e);
    expect(client.queued).toBe(4);
    await failOpens(fake, 3);
    expect(await Promise.all(pubs)).toEqual([1, 2, 3].map((offset) => ({ offset, epoch: E })));
    expect(http.calls.map((c) => JSON.parse(c.init.body).data)).toEqual([1, 2, 3]);
    expect((await presence).code).toBe("transport");
    expect(client.queued).toBe(0);
    client.disconnect();
  });

  test("POST /publish refusals and network failures reject with the server's code", async () => {
    let answer = { status: 403, body: JSON.stringify({ error: { code: 104, message: "publishing is not allowed in this namespace" } }) };
    const fake = fakeServer();
    const http = fakeHttp(() => answer);
    const failing = async (url: string, init: any) => {
      if (answer.status === 0) throw new TypeError("fetch failed");
      return http.fetch(url, init);
    };
    const { client } = fake.client({ fallback: "sse", fallbackAfter: 1, fallbackProbeDelay: 60_000, EventSource: http.EventSource, fetch: failing });
    void client.connect();
    await failOpens(fake, 1);
    await waitFor(() => client.transport === "sse", "SSE");
    let err = await client.publish("live:x", 1).catch((e) => e);
    expect([err.code, err.message]).toEqual([104, "publishing is not allowed in this namespace"]);
    answer = { status: 0, body: "" };
    err = await client.publish("live:x", 1).catch((e) => e);
    expect(err.code).toBe("disconnected");
    expect(err.message).toMatch(/may or may not have been applied/);
    answer = { status: 502, body: "bad gateway" };
    err = await client.publish("live:x", 1).catch((e) => e);
    expect(err.message).toBe("POST /publish: HTTP 502: bad gateway");
    client.disconnect();
  });

  test("an EventSource refused by the server (closed, 403) ends the subscription with the reason; a 503 is tried again", async () => {
    let status = 403;
    const { fake, http, client, errors } = setup({}, () => ({ status, body: status === 403 ? "news:x: permission denied\n" : "full\n" }));
    const ended: TidewireError[] = [];
    const sub = client.subscribe("priv:x", { onError: (e) => ended.push(e) });
    const busy = client.subscribe("busy");
    void client.connect();
    await failOpens(fake, 3);
    await waitFor(() => http.sources.length === 2, "two EventSources");
    const [esPriv, esBusy] = http.sources as [typeof http.sources[0], typeof http.sources[0]];
    esPriv.error(true);
    await waitFor(() => ended.length === 1, "the subscription to end");
    expect(ended[0]!.code).toBe(104);
    expect(ended[0]!.message).toMatch(/refused \(GET \/sse: HTTP 403\): news:x: permission denied/);
    expect(sub.state).toBe("unsubscribed");
    expect(client.getSubscription("priv:x")).toBeUndefined();
    expect(errors.some((e) => e === ended[0])).toBe(true);

    status = 503;
    esBusy.error(true);
    await waitFor(() => http.sources.length === 3, "the 503 tried again");
    expect(http.last().query.get("channel")).toBe("busy");
    expect(busy.state).toBe("subscribing");
    client.disconnect();
  });

  test("only failures to open count: a WebSocket that opens and then drops never leads to SSE", async () => {
    const { fake, http, client } = setup({ fallbackAfter: 2 });
    void client.connect();
    for (let i = 1; i <= 6; i++) {
      await waitFor(() => fake.sockets.length === i, `attempt ${i}`);
      if (i % 2) fake.last().fail();
      else {
        fake.last().open(); // the upgrade went through, then the connection dropped
        fake.last().serverClose(1006);
      }
    }
    await sleep(20);
    expect(http.sources.length).toBe(0);
    expect(client.transport).toBe(null);
    expect(client.state).not.toBe("connected");
    client.disconnect();
  });

  test("without the option, the client never leaves the WebSocket", async () => {
    const fake = fakeServer();
    const http = fakeHttp();
    const { client } = fake.client({ EventSource: http.EventSource, fetch: http.fetch, maxAttempts: 5 });
    const err = await Promise.all([client.connect(), failOpens(fake, 6)]).catch((e) => e);
    expect(err.code).toBe("closed");
    expect(http.sources.length + http.calls.length).toBe(0);
    expect(client.transport).toBe(null);
  });

  test("no EventSource: said once, and the WebSocket keeps being tried", async () => {
    const fake = fakeServer();
    const { client, errors, states } = fake.client({ fallback: "sse", fallbackAfter: 1, EventSource: undefined, fetch: fakeHttp().fetch });
    (client as any).ES = undefined; // the Node test runtime may have a global EventSource
    void client.connect();
    await failOpens(fake, 4);
    await waitFor(() => fake.sockets.length === 5, "attempt 5");
    expect(errors.filter((e) => /cannot fall back to SSE: no EventSource/.test(e.message)).length).toBe(1);
    expect(states.filter((s: StateEvent) => s.state === "reconnecting").length).toBe(4);
    client.disconnect();
  });
});
