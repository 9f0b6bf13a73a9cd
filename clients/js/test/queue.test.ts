// (d) The send queue while reconnecting (kept, flushed in order, bounded), requests lost
// with a connection, and the browser's offline/online events.
import { afterAll, beforeAll, expect, test } from "vitest";
import { TidewireError, type PublishResult } from "../src/index.js";
import { makeClient, Proxy, sleep, startServer, waitFor, type Served } from "./helpers.js";

let srv: Served;
let proxy: Proxy;
beforeAll(async () => {
  srv = await startServer();
  proxy = await new Proxy(srv.port).listen();
});
afterAll(async () => {
  await proxy?.close();
  await srv?.kill();
});

test("publishes made while reconnecting are queued, bounded, and flushed in order", async () => {
  const { client, states } = makeClient(proxy.url, { queueSize: 5, initialDelay: 10, maxDelay: 50 });
  await client.connect();
  proxy.refuse = true;
  proxy.sever();
  await waitFor(() => client.state === "reconnecting", "reconnecting");

  const settled: (PublishResult | TidewireError)[] = [];
  const queued = [1, 2, 3, 4, 5].map((n) =>
    client.publish("queued", { n }).then(
      (r) => settled.push(r),
      (e) => settled.push(e),
    ),
  );
  expect(client.queued).toBe(5);
  // The 6th does not fit.
  const overflow = await client.publish("queued", { n: 6 }).catch((e) => e);
  expect(overflow).toBeInstanceOf(TidewireError);
  expect(overflow.code).toBe("queue_full");
  expect(overflow.message).toMatch(/send queue is full \(5 requests wait/);
  // Failed attempts do not touch the queue.
  const attemptsBefore = proxy.accepted;
  await waitFor(() => proxy.accepted >= attemptsBefore + 3, "a few failed attempts");
  expect(settled).toEqual([]);
  expect(client.queued).toBe(5);

  proxy.refuse = false;
  await Promise.all(queued);
  expect(client.queued).toBe(0);
  const offsets = settled.map((r) => (r instanceof TidewireError ? -1 : r.offset));
  expect(offsets).toEqual([1, 2, 3, 4, 5]);
  const h = await client.history<{ n: number }>("queued");
  expect(h.publications.map((p) => p.data.n)).toEqual([1, 2, 3, 4, 5]);
  expect(states.filter((s) => s.state === "connected").length).toBe(2);
  client.disconnect();
});

test("requests waiting for a reply are rejected when the connection is lost; queued ones are kept", async () => {
  const { client } = makeClient(proxy.url, { initialDelay: 10, maxDelay: 50 });
  await client.connect();
  proxy.blackhole(); // the request leaves but never reaches the server
  const lost = client.publish("pending", { n: "lost" }).catch((e) => e);
  const lostHistory = client.history("pending").catch((e) => e);
  await sleep(20);
  proxy.refuse = true;
  proxy.sever();
  const e = await lost;
  expect(e).toBeInstanceOf(TidewireError);
  expect(e.code).toBe("disconnected");
  expect(e.message).toMatch(/may or may not have been applied/);
  expect((await lostHistory).code).toBe("disconnected");
  const kept = client.publish("pending", { n: "kept" });
  expect(client.queued).toBe(1);
  proxy.refuse = false;
  expect((await kept).offset).toBe(1);
  expect((await client.history("pending")).publications.map((p) => p.data)).toEqual([{ n: "kept" }]);

  // disconnect() rejects what is still queued.
  proxy.refuse = true;
  proxy.sever();
  await waitFor(() => client.state === "reconnecting", "reconnecting");
  const dropped = client.publish("pending", 1).catch((x) => x);
  client.disconnect();
  expect((await dropped).code).toBe("closed");
  expect(client.state).toBe("disconnected");
  proxy.refuse = false;
});

test("offline closes and waits, online reconnects at once", async () => {
  const net = new EventTarget();
  const { client, states } = makeClient(proxy.url, { networkEvents: net, initialDelay: 5_000, maxDelay: 5_000 });
  await client.connect();
  const data: unknown[] = [];
  const sub = client.subscribe("net", { onPublication: (p) => data.push(p.data) });
  await sub.ready;
  await client.publish("net", "before");

  net.dispatchEvent(new Event("offline"));
  expect(states.at(-1)).toEqual({ state: "disconnected", reason: "the browser is offline", offline: true });
  await waitFor(() => proxy.live === 0, "the connection closed");
  const queued = client.publish("net", "while offline");
  const accepted = proxy.accepted;
  await sleep(150);
  expect(proxy.accepted).toBe(accepted); // no attempt while offline
  expect(client.state).toBe("disconnected");

  const t0 = Date.now();
  net.dispatchEvent(new Event("online"));
  await waitFor(() => client.state === "connected", "connected after online");
  expect(Date.now() - t0).toBeLessThan(1000); // not the 5 s backoff
  await queued;
  await waitFor(() => data.length === 2, "both publications");
  expect(data).toEqual(["before", "while offline"]);

  // `online` during a backoff wait also reconnects at once.
  proxy.refuse = true;
  proxy.sever();
  await waitFor(() => client.state === "reconnecting", "reconnecting");
  proxy.refuse = false;
  const t1 = Date.now();
  net.dispatchEvent(new Event("online"));
  await waitFor(() => client.state === "connected", "connected after online");
  expect(Date.now() - t1).toBeLessThan(1000);
  client.disconnect();
  // After disconnect() the client no longer listens.
  net.dispatchEvent(new Event("online"));
  await sleep(50);
  expect(client.state).toBe("disconnected");
});
