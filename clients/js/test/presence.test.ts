// (f) What the demo pages build "who is here" on (issue 13: pages that asked for presence
// on `connected` missed people): `onSubscribed` fires once the subscription is in place,
// after every (re)subscription, with history on join too; presence asked then includes
// the subscriber, and join/leave events from then on cover everyone who comes later.
import { afterAll, expect, test } from "vitest";
import type { ClientInfo, SubscribedEvent, TidewireClient } from "../src/index.js";
import { makeClient, startServer, waitFor, within, type Served } from "./helpers.js";

const servers: Served[] = [];
afterAll(async () => {
  for (const s of servers) await s.kill();
});

/** A client's view of who is here: presence after each onSubscribed, merged with events. */
function roster(client: TidewireClient, channel: string) {
  const people = new Set<string>();
  const events: [string, ClientInfo][] = [];
  const subscribed: SubscribedEvent[] = [];
  const selfInSnapshot: boolean[] = [];
  let gen = 0;
  const sub = client.subscribe(channel, {
    history: 10,
    onJoin: (c) => { events.push(["join", c]); people.add(c.client); },
    onLeave: (c) => { events.push(["leave", c]); people.delete(c.client); },
    onSubscribed: (e) => {
      subscribed.push(e);
      const g = ++gen;
      const mark = events.length;
      client.presence(channel).then((r) => {
        if (g !== gen) return;
        selfInSnapshot.push(r.clients.some((c) => c.client === client.connection?.client));
        people.clear();
        for (const c of r.clients) people.add(c.client);
        for (const [kind, c] of events.slice(mark)) {
          if (kind === "join") people.add(c.client); else people.delete(c.client);
        }
      }, () => {});
    },
  });
  return { sub, people, subscribed, selfInSnapshot };
}

test("two clients subscribing at once to a channel with history see each other, every time", async () => {
  const srv = await startServer();
  servers.push(srv);
  const pub = makeClient(srv.url).client;
  await within(pub.connect(), "the publisher");
  for (let round = 0; round < 8; round++) {
    const channel = `at-once-${round}`;
    for (let i = 0; i < 5; i++) await within(pub.publish(channel, { i }), "history");
    const a = makeClient(srv.url).client;
    const b = makeClient(srv.url).client;
    const ra = roster(a, channel);
    const rb = roster(b, channel);
    const [ia, ib] = await within(Promise.all([a.connect(), b.connect()]), "both connected");
    // Join events alone can get there before the presence reply: wait for that too.
    await waitFor(
      () => ra.selfInSnapshot.length === 1 && rb.selfInSnapshot.length === 1 && ra.people.size === 2 && rb.people.size === 2,
      `round ${round}: both see both`,
      5_000,
    );
    expect([...ra.people].sort()).toEqual([ia.client, ib.client].sort());
    expect([...rb.people].sort()).toEqual([ia.client, ib.client].sort());
    // The subscription was in place when presence was asked: it listed the asker.
    expect(ra.selfInSnapshot).toEqual([true]);
    expect(rb.selfInSnapshot).toEqual([true]);
    expect(ra.subscribed).toHaveLength(1);
    expect(ra.subscribed[0]!.resubscribed).toBe(false);
    b.disconnect();
    await waitFor(() => ra.people.size === 1, `round ${round}: b's leave`);
    a.disconnect();
  }
  pub.disconnect();
});

test("after a server restart onSubscribed fires again (resubscribed), once presence can list the client", async () => {
  const first = await startServer();
  servers.push(first);
  const a = makeClient(first.url, { initialDelay: 50, maxDelay: 250 }).client;
  const b = makeClient(first.url, { initialDelay: 50, maxDelay: 250 }).client;
  const ra = roster(a, "restart-presence");
  const rb = roster(b, "restart-presence");
  await within(Promise.all([a.connect(), b.connect()]), "both connected");
  await waitFor(() => ra.people.size === 2 && rb.people.size === 2, "both see both");
  await first.kill("SIGKILL");
  await waitFor(() => a.state === "reconnecting" && b.state === "reconnecting", "both notice");
  const second = await startServer({ port: first.port });
  servers.push(second);
  await waitFor(() => ra.subscribed.length === 2 && rb.subscribed.length === 2, "resubscribed", 10_000);
  expect(ra.subscribed[1]!.resubscribed).toBe(true);
  // New connections, new client ids: the old ones are gone from the roster (join events
  // alone can get there first: wait for the presence replies too).
  await waitFor(
    () => [a, b].every((c) => c.connection) &&
      ra.selfInSnapshot.length === 2 && rb.selfInSnapshot.length === 2 &&
      [ra, rb].every((r) => r.people.size === 2 && r.people.has(a.connection!.client) && r.people.has(b.connection!.client)),
    "both see both again, under their new ids",
  );
  expect(ra.selfInSnapshot).toEqual([true, true]);
  expect(rb.selfInSnapshot).toEqual([true, true]);
  a.disconnect();
  b.disconnect();
});
