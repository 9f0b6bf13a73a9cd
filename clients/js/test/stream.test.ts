// (a) The connection is cut abruptly 20 times while another connection publishes 5,000
// publications on a channel with history: every publication arrives exactly once, in order.
// Also: the application heartbeat notices a connection that went silent.
import { afterAll, beforeAll, expect, test } from "vitest";
import type { Publication, SubscriptionItem } from "../src/index.js";
import { makeClient, Proxy, startServer, waitFor, type Served } from "./helpers.js";

let srv: Served;
let proxy: Proxy;
beforeAll(async () => {
  srv = await startServer(); // default namespace: history_size = 10000
  proxy = await new Proxy(srv.port).listen();
});
afterAll(async () => {
  await proxy?.close();
  await srv?.kill();
});

test("20 abrupt cuts during 5,000 publications: each one delivered exactly once, in order", async () => {
  const TOTAL = 5000;
  const CUTS = 20;
  const channel = `stream-${Date.now()}`;
  // Every publication the server sends (pushed or recovered), to count duplicates it sent.
  const raw: number[] = [];
  const Counting = class extends WebSocket {
    constructor(url: string | URL, protocols?: string | string[]) {
      super(url, protocols);
      this.addEventListener("message", (ev: MessageEvent) => {
        const m = JSON.parse(ev.data);
        if (m.channel === channel && typeof m.offset === "number") raw.push(m.offset);
        for (const p of m.result?.publications ?? []) raw.push(p.offset);
      });
    }
  };
  const sub$ = makeClient(proxy.url, { WebSocket: Counting });
  const pub$ = makeClient(srv.url);
  const subscriber = sub$.client;
  const publisher = pub$.client;
  await Promise.all([subscriber.connect(), publisher.connect()]);

  let resubscribed = 0;
  let unrecoverable = 0;
  let recoveredTotal = 0;
  const sub = subscriber.subscribe<{ i: number }>(channel, {
    onSubscribed: (e) => {
      if (e.resubscribed) {
        resubscribed++;
        recoveredTotal += e.recoveredCount;
        expect(e.recovered).toBe(true);
      }
    },
    onUnrecoverable: () => unrecoverable++,
  });
  // Consume with async iteration.
  const items: SubscriptionItem<{ i: number }>[] = [];
  const consumed = (async () => {
    for await (const item of sub) {
      items.push(item);
      if (items.length >= TOTAL) break;
    }
  })();
  const start = await sub.ready;

  const cutAt = new Set(Array.from({ length: CUTS }, (_, k) => 125 + k * 250)); // 125, 375, ..., 4875
  let severed = 0;
  let cuts = 0;
  const WINDOW = 100;
  let inflight: Promise<unknown>[] = [];
  for (let i = 1; i <= TOTAL; i++) {
    inflight.push(publisher.publish(channel, { i }));
    if (inflight.length >= WINDOW) {
      await Promise.all(inflight);
      inflight = [];
    }
    if (cutAt.has(i)) {
      // Each cut must hit a live, resubscribed connection: wait for the previous recovery.
      await waitFor(() => resubscribed >= cuts && proxy.live > 0, `resubscription after cut ${cuts}`);
      severed += proxy.sever();
      cuts++;
    }
  }
  await Promise.all(inflight);
  await Promise.race([
    consumed,
    waitFor(() => false, "never", 20_000).catch(() => {
      throw new Error(`received ${items.length} of ${TOTAL} items; server log:\n${srv.log()}`);
    }),
  ]);

  expect(cuts).toBe(CUTS);
  expect(severed).toBeGreaterThanOrEqual(CUTS);
  expect(unrecoverable).toBe(0);
  expect(sub$.errors).toEqual([]); // no gap and no epoch change was seen
  expect(items.every((x) => x.type === "publication")).toBe(true);
  const pubs = items as Publication<{ i: number }>[];
  expect(pubs.length).toBe(TOTAL);
  expect(pubs.map((p) => p.data.i)).toEqual(Array.from({ length: TOTAL }, (_, k) => k + 1));
  expect(pubs.map((p) => p.offset)).toEqual(Array.from({ length: TOTAL }, (_, k) => start.position.offset + k + 1));
  expect(new Set(pubs.map((p) => p.epoch)).size).toBe(1);
  // 20 reconnections, each resumed with `since` and recovered.
  const connected = sub$.states.filter((s) => s.state === "connected").length;
  expect(connected).toBe(1 + CUTS);
  expect(resubscribed).toBe(CUTS);
  expect(sub$.states.filter((s) => s.state === "reconnecting").every((s) => s.state === "reconnecting" && s.code === 1006)).toBe(true);
  console.log(
    `cuts ${cuts} (connections severed ${severed}), reconnects ${connected - 1}, ` +
      `publications recovered from history after reconnects ${recoveredTotal}, live ${TOTAL - recoveredTotal}, ` +
      `duplicates sent by the server (skipped) ${raw.length - new Set(raw).size}`,
  );
  subscriber.disconnect();
  publisher.disconnect();
});

test("heartbeat: a connection that goes silent is dropped after pingTimeout and replaced", async () => {
  const { client, states } = makeClient(proxy.url, { pingInterval: 100, pingTimeout: 200 });
  const first = await client.connect();
  const sub = client.subscribe("heartbeat");
  await sub.ready;
  proxy.blackhole(); // no FIN, no RST: only the heartbeat can tell
  await waitFor(() => states.some((s) => s.state === "reconnecting"), "reconnecting after the ping timeout", 3000);
  const r = states.find((s) => s.state === "reconnecting")!;
  expect(r.state === "reconnecting" && r.reason).toMatch(/nothing received within 200 ms of a ping/);
  await waitFor(() => client.state === "connected", "reconnected", 3000);
  expect(client.connection!.client).not.toBe(first.client);
  await waitFor(() => sub.state === "subscribed", "resubscribed", 3000);
  const p = await client.publish("heartbeat", "alive");
  expect(p.offset).toBeGreaterThan(0);
  client.disconnect();
});
