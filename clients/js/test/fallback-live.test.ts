// The SSE fallback against a real `tidewire serve`: the client's WebSocket cannot be opened
// (it errors before opening, as behind a proxy that breaks upgrades), so it goes on over
// GET /sse (NodeEventSource: fetch-based, Last-Event-ID like a browser's) and POST
// /publish; once the WebSocket can be opened again it moves back, while publications keep
// coming, and every publication arrives exactly once, in order.
// (interop/browser/sse.test.mjs does this in Chromium, with its own EventSource.)
import { afterAll, beforeAll, expect, test } from "vitest";
import type { TransportEvent } from "../src/index.js";
import { breakableWebSocket, makeClient, NodeEventSource, sleep, startServer, waitFor, within, type Served } from "./helpers.js";

let srv: Served;
beforeAll(async () => {
  srv = await startServer();
});
afterAll(async () => {
  await srv?.kill();
});

test("WebSocket broken: subscriptions over /sse, publish over POST /publish; back on WebSocket without gap or duplicate", async () => {
  const channel = `fallback-${Date.now()}`;
  let broken = true;
  const ws = breakableWebSocket(() => broken);
  const { client, states } = makeClient(srv.url, {
    WebSocket: ws.WS,
    EventSource: NodeEventSource,
    fallback: "sse",
    fallbackAfter: 2,
    fallbackProbeDelay: 300,
    fallbackProbeMaxDelay: 600,
  });
  const transports: TransportEvent[] = [];
  let deliveredAtSwitch = -1;
  client.on("transport", (t) => {
    transports.push(t);
    if (t.transport === "websocket") deliveredAtSwitch = got.length;
  });
  const pub = makeClient(srv.url).client;
  const got: number[] = [];
  const data: unknown[] = [];
  NodeEventSource.requests = [];
  const sub = client.subscribe<{ n: number }>(channel, {
    onPublication: (p) => {
      got.push(p.offset);
      data.push(p.data);
    },
  });
  try {
    const [info] = await within(Promise.all([client.connect(), pub.connect()]), "the client on SSE, the publisher on WebSocket");
    expect(info.transport).toBe("sse");
    expect(client.transport).toBe("sse");
    expect(ws.attempts()).toBe(2);
    expect(states.filter((s) => s.state === "reconnecting").length).toBe(1);
    await within(sub.ready, "subscribed over SSE");
    expect(NodeEventSource.requests.map((r) => [new URL(r.url).pathname, r.status])).toEqual([["/sse", 200]]);

    // Publications from a WebSocket client reach the SSE subscription.
    for (let n = 1; n <= 10; n++) await pub.publish(channel, { n, by: "ws" });
    await waitFor(() => got.length === 10, "10 publications over SSE");
    // The client's own publishes go over POST /publish, in order.
    const results = await Promise.all([11, 12, 13, 14, 15].map((n) => client.publish(channel, { n, by: "post" })));
    expect(results.map((r) => r.offset)).toEqual([11, 12, 13, 14, 15]);
    await waitFor(() => got.length === 15, "the client's own publications over SSE");
    const hist = await pub.history<{ n: number; by: string }>(channel, { limit: 100 });
    expect(hist.publications.map((p) => p.data.by)).toEqual([...Array(10).fill("ws"), ...Array(5).fill("post")]);
    const presence = await client.presence(channel).catch((e) => e);
    expect(presence.code).toBe("transport");
    expect(client.connection).toMatchObject({ transport: "sse" });

    // The WebSocket works again: the client moves back while publications keep coming.
    broken = false;
    const TOTAL = 120;
    const publishing = (async () => {
      for (let n = 16; n <= TOTAL; n++) {
        await pub.publish(channel, { n, by: "ws" });
        await sleep(8);
      }
    })();
    await waitFor(() => client.transport === "websocket", "back on WebSocket", 10_000);
    expect(transports.map((t) => t.transport)).toEqual(["sse", "websocket"]);
    await within(publishing, "the publisher");
    await waitFor(() => got.length >= TOTAL, `${TOTAL} publications`, 10_000);
    await sleep(100);
    expect(got).toEqual(Array.from({ length: TOTAL }, (_, i) => i + 1));
    expect(data.map((d: any) => d.n)).toEqual(got);
    expect(client.connection?.client).toMatch(/.+/);
    // Back on WebSocket, presence works again.
    const here = await client.presence(channel);
    expect(here.clients.map((c) => c.client)).toContain(client.connection!.client);
    // The switch happened while publications were flowing.
    expect(deliveredAtSwitch).toBeGreaterThanOrEqual(15);
    expect(deliveredAtSwitch).toBeLessThan(TOTAL);
    expect(states.at(-1)).toMatchObject({ state: "connected", transport: "websocket" });
  } finally {
    client.disconnect();
    pub.disconnect();
  }
});
