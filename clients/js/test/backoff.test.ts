// (e) Backoff bounds (full jitter), maxAttempts, and the close-code policy of
// docs/protocol.md; plus the duplicate/gap handling of the client, driven through a
// scripted WebSocket where the real server cannot be made to misbehave.
import { createServer } from "node:net";
import { describe, expect, test } from "vitest";
import {
  backoffCeiling,
  backoffDelay,
  closePolicy,
  CloseCode,
  type Publication,
  type StateEvent,
  type SubscriptionItem,
} from "../src/index.js";
import { fakeServer, makeClient, sleep, waitFor } from "./helpers.js";

describe("backoffDelay", () => {
  test("ceilings double from initialDelay up to maxDelay", () => {
    const ceilings = [1, 2, 3, 4, 5, 6, 7].map((n) => backoffCeiling(n, 100, 1000));
    expect(ceilings).toEqual([100, 200, 400, 800, 1000, 1000, 1000]);
    expect(backoffCeiling(10_000, 100, 30_000)).toBe(30_000); // no overflow to Infinity/NaN
  });

  test("full jitter: uniformly in [0, ceiling)", () => {
    for (let attempt = 1; attempt <= 12; attempt++) {
      const ceiling = backoffCeiling(attempt, 50, 2000);
      const draws = Array.from({ length: 2000 }, () => backoffDelay(attempt, 50, 2000));
      expect(Math.min(...draws)).toBeGreaterThanOrEqual(0);
      expect(Math.max(...draws)).toBeLessThan(ceiling);
      expect(draws.every(Number.isInteger)).toBe(true);
      // Spread over the whole range, not clustered at the top (that would not be jitter).
      const mean = draws.reduce((a, b) => a + b, 0) / draws.length;
      expect(mean).toBeGreaterThan(ceiling * 0.4);
      expect(mean).toBeLessThan(ceiling * 0.6);
    }
    expect(backoffDelay(3, 100, 1000, () => 0)).toBe(0);
    expect(backoffDelay(3, 100, 1000, () => 0.5)).toBe(200);
    expect(backoffDelay(9, 100, 1000, () => 0.999)).toBe(999);
  });

  test("close codes: retry, stop, or new token (docs/protocol.md)", () => {
    for (const c of [1001, 1006, 1008, 1011, 1012, 1013, 4000, 4029, undefined]) expect(closePolicy(c)).toBe("retry");
    // The ranges: codes nobody has defined yet.
    for (const c of [1002, 1007, 3000, 3999, 4002, 4499]) expect(closePolicy(c)).toBe("retry");
    for (const c of [1000, 1009, 4003, 4008, 4500, 4501, 4999]) expect(closePolicy(c)).toBe("stop");
    expect(closePolicy(4001)).toBe("new-token");
    expect(Object.values(CloseCode).map((c) => closePolicy(c))).toEqual(["retry", "new-token", "stop", "stop", "retry", "stop", "stop"]);
  });
});

function closedPort(): Promise<number> {
  return new Promise<number>((res) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const p = (s.address() as { port: number }).port;
      s.close(() => res(p));
    });
  });
}

test("against a closed port: delays within the bounds, then gives up after maxAttempts", async () => {
  const port = await closedPort();
  const { client, states } = makeClient(`ws://127.0.0.1:${port}/ws`, { initialDelay: 20, maxDelay: 80, maxAttempts: 6 });
  const err = await client.connect().catch((e) => e);
  expect(err.code).toBe("closed");
  expect(err.message).toMatch(/gave up after 6 reconnection attempts/);
  const retries = states.filter((s): s is Extract<StateEvent, { state: "reconnecting" }> => s.state === "reconnecting");
  expect(retries.map((r) => r.attempt)).toEqual([1, 2, 3, 4, 5, 6]);
  for (const r of retries) {
    expect(r.delay).toBeGreaterThanOrEqual(0);
    expect(r.delay).toBeLessThan(backoffCeiling(r.attempt, 20, 80));
    expect(r.code).toBe(1006);
  }
  expect(states.at(-1)).toMatchObject({ state: "disconnected" });
  expect(states.filter((s) => s.state === "connecting").length).toBe(7);
});

test("each attempt waits its delay", async () => {
  const port = await closedPort();
  const { client } = makeClient(`ws://127.0.0.1:${port}/ws`, {
    initialDelay: 40,
    maxDelay: 160,
    maxAttempts: 4,
    random: () => 0.75,
  });
  const stamped: { ev: StateEvent; t: number }[] = [];
  client.on("state", (ev) => stamped.push({ ev, t: performance.now() }));
  await client.connect().catch(() => {});
  const waits: [number, number][] = [];
  for (let i = 0; i + 1 < stamped.length; i++) {
    const { ev, t } = stamped[i]!;
    if (ev.state === "reconnecting") {
      expect(stamped[i + 1]!.ev.state).toBe("connecting");
      waits.push([ev.delay, stamped[i + 1]!.t - t]);
    }
  }
  expect(waits.map(([d]) => d)).toEqual([30, 60, 120, 120]);
  // Node's timers count from the event loop's cached time, so a timer may fire a few ms
  // early by the wall clock on a busy machine.
  for (const [delay, waited] of waits) expect(waited).toBeGreaterThanOrEqual(delay - 15);
});

test("the backoff restarts from attempt 1 after a successful connection", async () => {
  const fake = fakeServer();
  const { client, states } = fake.client({ initialDelay: 100, maxDelay: 10_000, random: () => 0.5 });
  void client.connect();
  fake.last().fail();
  await waitFor(() => fake.sockets.length === 2, "attempt 1");
  fake.last().fail();
  await waitFor(() => fake.sockets.length === 3, "attempt 2");
  fake.last().accept();
  fake.last().serverClose(1006);
  await waitFor(() => fake.sockets.length === 4, "attempt 1 again");
  const delays = states.flatMap((s) => (s.state === "reconnecting" ? [[s.attempt, s.delay]] : []));
  expect(delays).toEqual([
    [1, 50],
    [2, 100],
    [1, 50],
  ]);
  client.disconnect();
});

describe("close codes against a scripted server", () => {
  for (const code of [1000, 1009, 4003, 4008, 4500, 4999]) {
    test(`${code}: stop`, async () => {
      const fake = fakeServer();
      const { client, states } = fake.client();
      const connected = client.connect();
      fake.last().accept();
      await connected;
      fake.last().serverClose(code, "bye");
      expect(states.at(-1)).toEqual({ state: "disconnected", code, reason: "bye" });
      await sleep(30);
      expect(fake.sockets.length).toBe(1);
    });
  }

  for (const code of [1001, 1006, 1008, 1011, 1012, 1013, 4000, 4029, 1002, 4002]) {
    test(`${code}: reconnect with backoff`, async () => {
      const fake = fakeServer();
      const { client, states } = fake.client();
      void client.connect();
      fake.last().accept();
      fake.last().serverClose(code);
      expect(states.at(-1)).toMatchObject({ state: "reconnecting", attempt: 1, code });
      await waitFor(() => fake.sockets.length === 2, "a new socket");
      client.disconnect();
    });
  }

  test("4001: stop with a static token, new token from a token function", async () => {
    const fake = fakeServer();
    const a = fake.client({ token: "static" });
    void a.client.connect();
    expect(fake.last().sent[0]).toBeUndefined(); // nothing before open
    fake.last().open();
    expect(fake.last().sent[0]).toMatchObject({ op: "connect", token: "static" });
    fake.last().serverClose(4001, "unauthorized: token expired");
    expect(a.states.at(-1)).toMatchObject({ state: "disconnected", code: 4001 });

    const fake2 = fakeServer();
    let n = 0;
    const b = fake2.client({ token: async () => `t${++n}` });
    void b.client.connect();
    await waitFor(() => fake2.sockets.length === 1, "socket");
    fake2.last().open();
    expect(fake2.last().sent[0]).toMatchObject({ op: "connect", token: "t1" });
    fake2.last().serverClose(4001);
    await waitFor(() => fake2.sockets.length === 2, "a new socket");
    fake2.last().open();
    expect(fake2.last().sent[0]).toMatchObject({ op: "connect", token: "t2" });
    b.client.disconnect();
  });

  test("a server that does not select tidewire.v1 is not used", async () => {
    const fake = fakeServer();
    const { client, errors } = fake.client();
    const p = client.connect().catch((e) => e);
    fake.last().open("");
    const e = await p;
    expect(e.code).toBe("protocol");
    expect(fake.last().sent).toEqual([]);
    expect(fake.last().closed).not.toBeNull();
    expect(errors).toContain(e);
    expect(fake.sockets[0]!.protocols).toEqual(["tidewire.v1"]);
  });

  test("connectTimeout: a handshake that never completes is retried", async () => {
    const fake = fakeServer();
    const { client, states } = fake.client({ connectTimeout: 50 });
    void client.connect();
    await waitFor(() => fake.sockets.length === 2, "a second attempt");
    expect(states.find((s) => s.state === "reconnecting")).toMatchObject({ reason: "not connected within 50 ms (connectTimeout)" });
    expect(fake.sockets[0]!.closed).not.toBeNull();
    client.disconnect();
  });
});

describe("exactly once, in order, whatever the server sends", () => {
  const E = "e1";
  const pub = (offset: number, epoch = E) => ({ channel: "ch", offset, epoch, data: offset });

  test("duplicates are skipped, a gap or a new epoch resubscribes with since", async () => {
    const fake = fakeServer();
    const { client, errors } = fake.client();
    void client.connect();
    fake.last().accept();
    const got: number[] = [];
    const items: SubscriptionItem[] = [];
    const sub = client.subscribe("ch", { onPublication: (p: Publication) => got.push(p.offset) });
    void (async () => {
      for await (const i of sub) items.push(i);
    })();
    let s = fake.last();
    let req = s.ops("subscribe").at(-1);
    expect(req).toEqual({ id: req.id, op: "subscribe", channel: "ch" });
    s.receive(pub(11)); // before the reply: held, then delivered after it (11 follows 10)
    s.receive({ id: req.id, ok: true, result: { offset: 10, epoch: E } });
    for (const o of [12, 12, 11, 13]) s.receive(pub(o));
    expect(got).toEqual([11, 12, 13]);

    // A gap: unsubscribe, subscribe with since, continue from the recovered publications.
    s.receive(pub(15));
    expect(s.sent.slice(-2).map((m) => m.op)).toEqual(["unsubscribe", "subscribe"]);
    req = s.ops("subscribe").at(-1);
    expect(req.since).toEqual({ offset: 13, epoch: E });
    s.receive(pub(16)); // in flight before the server saw the unsubscribe: held
    s.receive({ id: s.ops("unsubscribe").at(-1).id, ok: true, result: {} });
    s.receive({
      id: req.id,
      ok: true,
      result: { offset: 16, epoch: E, recovered: true, publications: [pub(13), pub(14), pub(15), pub(16)] },
    });
    s.receive(pub(17));
    expect(got).toEqual([11, 12, 13, 14, 15, 16, 17]);
    expect(errors.map((e) => e.message)).toEqual([`channel "ch": a gap: offset 15 after 13; resubscribing with since`]);

    // A reconnect: since = the last offset delivered; recovered duplicates skipped.
    s.serverClose(1006);
    await waitFor(() => fake.sockets.length === 2, "reconnect");
    s = fake.last();
    s.accept("c-2");
    req = s.ops("subscribe").at(-1);
    expect(req.since).toEqual({ offset: 17, epoch: E });
    s.receive({ id: req.id, ok: true, result: { offset: 18, epoch: E, recovered: true, publications: [pub(17), pub(18)] } });
    s.receive(pub(18));
    s.receive(pub(19));
    expect(got).toEqual([11, 12, 13, 14, 15, 16, 17, 18, 19]);

    // A different epoch on a live publication: resubscribe; the server says recovered: false.
    s.receive(pub(1, "e2"));
    req = s.ops("subscribe").at(-1);
    expect(req.since).toEqual({ offset: 19, epoch: E });
    s.receive({ id: req.id, ok: true, result: { offset: 1, epoch: "e2", recovered: false, publications: [] } });
    s.receive(pub(2, "e2"));
    expect(got).toEqual([11, 12, 13, 14, 15, 16, 17, 18, 19, 2]);
    expect(sub.position).toEqual({ offset: 2, epoch: "e2" });
    await sleep(0);
    expect(items.map((i) => (i.type === "publication" ? i.offset : `lost ${i.since.offset}@${i.since.epoch}`))).toEqual([
      11, 12, 13, 14, 15, 16, 17, 18, 19, "lost 19@e1", 2,
    ]);
    client.disconnect();
  });

  test("subscribe with a saved position; unsubscribe ends iteration", async () => {
    const fake = fakeServer();
    const { client } = fake.client();
    const sub = client.subscribe("ch", { since: { offset: 5, epoch: E } });
    void client.connect();
    fake.last().accept();
    const s = fake.last();
    const req = s.ops("subscribe")[0];
    expect(req.since).toEqual({ offset: 5, epoch: E });
    const it = sub[Symbol.asyncIterator]();
    s.receive({ id: req.id, ok: true, result: { offset: 6, epoch: E, recovered: true, publications: [pub(6)] } });
    expect((await sub.ready).recoveredCount).toBe(1);
    expect((await it.next()).value).toMatchObject({ type: "publication", offset: 6 });
    const pending = it.next();
    const done = sub.unsubscribe();
    expect(await pending).toEqual({ value: undefined, done: true });
    expect(s.sent.at(-1)).toMatchObject({ op: "unsubscribe", channel: "ch" });
    s.receive({ id: s.sent.at(-1).id, ok: true, result: {} });
    await done;
    s.receive(pub(7)); // after unsubscribing: ignored
    expect(sub.position).toEqual({ offset: 6, epoch: E });
    client.disconnect();
  });

  test("error listeners see protocol oddities; the connection stays up", async () => {
    const fake = fakeServer();
    const { client, errors } = fake.client();
    void client.connect();
    fake.last().accept();
    fake.last().onmessage!({ data: "not json" });
    fake.last().receive({ id: null, error: { code: 101, message: "not JSON" } });
    expect(errors.map((e) => e.message)).toEqual([
      "the server sent something that is not JSON: not json",
      "not JSON",
    ]);
    expect(client.state).toBe("connected");
    client.disconnect();
  });
});
