// A resubscribe refused for a while (112: the engine behind the hub is down; 107: over the
// subscribe rate, as when many subscriptions come back at once) keeps the subscription:
// the client tries again after a backoff, with the same `since`, and loses nothing. A
// first subscribe refused that way rejects `ready` for its caller. Played with a scripted
// WebSocket: the real hub gives these only under engine faults (the cluster suite).
import { expect, test } from "vitest";
import { TidewireError } from "../src/index.js";
import { fakeServer, waitFor } from "./helpers.js";

const E = "e1";
const pub = (channel: string, offset: number) => ({ channel, offset, epoch: E, data: offset });

test("a resubscribe refused with 112 then 107 is tried again from the same position", async () => {
  const fake = fakeServer();
  const { client, errors } = fake.client({ random: () => 0.5 });
  void client.connect();
  let s = fake.last();
  s.accept();
  const sub = client.subscribe<number>("c");
  const got: number[] = [];
  sub.on("publication", (p) => got.push(p.offset));
  let req = s.ops("subscribe").at(-1);
  s.receive({ id: req.id, ok: true, result: { offset: 0, epoch: E } });
  await sub.ready;
  s.receive(pub("c", 1));
  // A first subscribe refused for a while: its caller is told.
  const first = client.subscribe("d");
  req = s.ops("subscribe").at(-1);
  expect(req.channel).toBe("d");
  s.receive({ id: req.id, error: { code: 112, message: "engine down" } });
  await expect(first.ready).rejects.toMatchObject({ code: 112 });

  s.serverClose(1012);
  await waitFor(() => fake.sockets.length === 2, "reconnect");
  s = fake.last();
  s.accept("c-2");
  req = s.ops("subscribe").at(-1);
  expect(req).toEqual({ id: req.id, op: "subscribe", channel: "c", since: { offset: 1, epoch: E } });
  s.receive({ id: req.id, error: { code: 112, message: "engine down" } });
  // Live publications are not taken before a subscribe succeeds.
  s.receive(pub("c", 3));
  await waitFor(() => s.ops("subscribe").length === 2, "a second resubscribe");
  req = s.ops("subscribe").at(-1);
  expect(req.since).toEqual({ offset: 1, epoch: E });
  s.receive({ id: req.id, error: { code: 107, message: "slow down" } });
  await waitFor(() => s.ops("subscribe").length === 3, "a third resubscribe");
  req = s.ops("subscribe").at(-1);
  expect(req.since).toEqual({ offset: 1, epoch: E });
  s.receive({ id: req.id, ok: true, result: { offset: 3, epoch: E, recovered: true, publications: [pub("c", 2), pub("c", 3)] } });
  s.receive(pub("c", 4));
  expect(got).toEqual([1, 2, 3, 4]);
  expect(sub.state).toBe("subscribed");
  const refused = errors.filter((e) => e instanceof TidewireError && /refused for now/.test(e.message));
  expect(refused.map((e) => (e as TidewireError).code)).toEqual([112, 107]);
  client.disconnect();
});

test("a refusal that will not pass (104) still ends the subscription", async () => {
  const fake = fakeServer();
  const { client } = fake.client();
  void client.connect();
  let s = fake.last();
  s.accept();
  const sub = client.subscribe<number>("c");
  let req = s.ops("subscribe").at(-1);
  s.receive({ id: req.id, ok: true, result: { offset: 0, epoch: E } });
  await sub.ready;
  s.serverClose(1012);
  await waitFor(() => fake.sockets.length === 2, "reconnect");
  s = fake.last();
  s.accept("c-2");
  req = s.ops("subscribe").at(-1);
  s.receive({ id: req.id, error: { code: 104, message: "permission denied" } });
  expect(sub.state).toBe("unsubscribed");
  await new Promise((r) => setTimeout(r, 300));
  expect(s.ops("subscribe").length).toBe(1);
  client.disconnect();
});
