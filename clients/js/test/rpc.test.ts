// `client.rpc()`: a call to the application's backend through the hub (docs/backend.md),
// with a backend written for the test (Node's http server).
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, expect, test } from "vitest";
import { TidewireError } from "../src/index.js";
import { makeClient, startServer, type Served } from "./helpers.js";

let backend: Server;
let srv: Served;
const calls: any[] = [];

beforeAll(async () => {
  backend = createServer((req, res) => {
    let body = "";
    req.on("data", (c) => (body += c));
    req.on("end", () => {
      const call = JSON.parse(body);
      calls.push({ path: req.url, ...call });
      const answer =
        call.method === "game:cheat"
          ? { error: { code: 1409, message: "not in this game" } }
          : { result: { data: { rolled: [3, 5], asked: call.data } } };
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(answer));
    });
  });
  await new Promise<void>((r) => backend.listen(0, "127.0.0.1", r));
  const port = (backend.address() as AddressInfo).port;
  srv = await startServer({
    config: `[backend]\nurl = "http://127.0.0.1:${port}"\n\n[namespaces.game]\nrpc_proxy = true\n`,
  });
});

afterAll(async () => {
  await srv?.kill();
  backend?.close();
});

test("rpc round trip, refusals and errors", async () => {
  const { client } = makeClient(srv.url);
  await client.connect();
  const answer = await client.rpc<{ rolled: number[]; asked: unknown }>("game:roll", { dice: 2 });
  expect(answer).toEqual({ rolled: [3, 5], asked: { dice: 2 } });
  expect(calls[0]).toMatchObject({ path: "/rpc", method: "game:roll", data: { dice: 2 }, user: null });
  // Without data: null.
  expect(await client.rpc("game:roll")).toEqual({ rolled: [3, 5], asked: null });
  // The backend's own code; a namespace without rpc_proxy; an unknown namespace.
  const codes = [];
  for (const method of ["game:cheat", "roll", "nope:roll"]) {
    try {
      await client.rpc(method);
      codes.push("resolved");
    } catch (e) {
      expect(e).toBeInstanceOf(TidewireError);
      codes.push((e as TidewireError).code);
    }
  }
  expect(codes).toEqual([1409, 104, 103]);
  await expect(client.rpc("")).rejects.toBeInstanceOf(TypeError);
  client.disconnect();
});
