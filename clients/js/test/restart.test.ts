// (b) The server process is killed and restarted on the same port: the client reconnects
// and resubscribes by itself, reports recovered: false, then receives new publications.
// Also the other recovered: false case: history that no longer reaches back.
import { afterAll, expect, test } from "vitest";
import type { SubscriptionItem, Unrecoverable } from "../src/index.js";
import { makeClient, Proxy, startServer, waitFor, within, type Served } from "./helpers.js";

const servers: Served[] = [];
afterAll(async () => {
  for (const s of servers) await s.kill();
});

test("server killed and restarted on the same port: resubscribed, recovered: false, then live again", async () => {
  const first = await startServer();
  servers.push(first);
  const { client, states } = makeClient(first.url, { initialDelay: 50, maxDelay: 250 });
  const pub$ = makeClient(first.url, { initialDelay: 50, maxDelay: 250 });
  await Promise.all([client.connect(), pub$.client.connect()]);

  const lost: Unrecoverable[] = [];
  const data: unknown[] = [];
  const sub = client.subscribe("restart", {
    onPublication: (p) => data.push(p.data),
    onUnrecoverable: (u) => lost.push(u),
  });
  const items: SubscriptionItem[] = [];
  void (async () => {
    for await (const item of sub) items.push(item);
  })();
  await sub.ready;
  for (const n of [1, 2, 3]) await pub$.client.publish("restart", { n, server: 1 });
  await waitFor(() => data.length === 3, "3 publications before the restart");
  const before = sub.position!;
  expect(before.offset).toBe(3);

  await first.kill("SIGKILL"); // no close frame, no goodbye
  await waitFor(() => states.some((s) => s.state === "reconnecting"), "the client to notice");
  const second = await startServer({ port: first.port });
  servers.push(second);

  await waitFor(() => lost.length === 1, "onUnrecoverable after the restart", 10_000);
  expect(lost[0]!.channel).toBe("restart");
  expect(lost[0]!.since).toEqual(before);
  expect(lost[0]!.position.epoch).not.toBe(before.epoch);
  expect(sub.state).toBe("subscribed");

  await waitFor(() => pub$.client.state === "connected", "the publisher to reconnect too");
  for (const n of [4, 5]) await pub$.client.publish("restart", { n, server: 2 });
  await waitFor(() => data.length === 5, "publications after the restart");
  expect(data).toEqual([
    { n: 1, server: 1 },
    { n: 2, server: 1 },
    { n: 3, server: 1 },
    { n: 4, server: 2 },
    { n: 5, server: 2 },
  ]);
  // The iterator sees the same, with the explicit marker where messages may be missing.
  await waitFor(() => items.length === 6, "6 iterator items");
  expect(items.map((i) => (i.type === "publication" ? (i.data as { n: number }).n : "unrecoverable"))).toEqual([
    1, 2, 3, "unrecoverable", 4, 5,
  ]);
  expect(sub.position).toEqual({ offset: lost[0]!.position.offset + 2, epoch: lost[0]!.position.epoch });
  const reconnecting = states.filter((s) => s.state === "reconnecting");
  expect(reconnecting[0]).toMatchObject({ state: "reconnecting", attempt: 1, code: 1006 });
  client.disconnect();
  pub$.client.disconnect();
});

test("history that no longer reaches back: recovered: false in the same epoch, then live", async () => {
  const srv = await startServer({ config: `[namespaces.short]\nhistory_size = 3\n` });
  servers.push(srv);
  const proxy = await new Proxy(srv.port).listen();
  const clients: { disconnect(): void }[] = [];
  try {
    const { client } = makeClient(proxy.url);
    const pub = makeClient(srv.url).client;
    clients.push(client, pub);
    await within(Promise.all([client.connect(), pub.connect()]), "both clients to connect");
    const lost: Unrecoverable[] = [];
    const got: number[] = [];
    const sub = client.subscribe<number>("short:feed", {
      onUnrecoverable: (u) => lost.push(u),
      onPublication: (p) => got.push(p.data),
    });
    await within(sub.ready, "the subscription");
    await within(pub.publish("short:feed", 1), "publication 1 acknowledged");
    await waitFor(() => got.length === 1, "publication 1");
    proxy.refuse = true;
    proxy.sever();
    await waitFor(() => client.state === "reconnecting", "reconnecting");
    for (let n = 2; n <= 10; n++) await within(pub.publish("short:feed", n), `publication ${n} acknowledged`); // 9 missed, 3 kept
    proxy.refuse = false;
    await waitFor(() => lost.length === 1, "onUnrecoverable");
    expect(lost[0]!.since.offset).toBe(1);
    expect(lost[0]!.position).toEqual({ offset: 10, epoch: lost[0]!.since.epoch });
    await within(pub.publish("short:feed", 11), "publication 11 acknowledged");
    await waitFor(() => got.length === 2, "publication 11");
    expect(got).toEqual([1, 11]);
  } finally {
    // Clients first, so that a failure above is reported as itself, not as a proxy that
    // cannot close while a client keeps reconnecting through it.
    for (const c of clients) c.disconnect();
    await within(proxy.close(), "the proxy to close");
  }
});
