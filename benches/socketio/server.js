// A Socket.IO 4 node with @socket.io/redis-streams-adapter and connection-state recovery.
//
//   node server.js --port P --redis redis://127.0.0.1:R [--name N]
//
// Sockets connecting with auth {role: "sub"} join the room "fan". A socket emitting
// "pub" {seq, t} has it broadcast to the room with io.to("fan").emit("m", {seq, t}) (through
// the adapter, so the subscribers of every node get it); the publisher's acknowledgement
// callback, if any, is called once the emit has been handed to the adapter.
// Prints "listening PORT" once ready. SIGTERM: graceful stop (io.close(), which disconnects
// every socket with "server shutting down" and persists its session in Redis, then QUIT on
// the Redis client so that the pending session writes are sent first), exit 0.
"use strict";
const http = require("http");
const { Server } = require("socket.io");
const { createClient } = require("redis");
const { createAdapter } = require("@socket.io/redis-streams-adapter");

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const port = Number(arg("port", "3000"));
const redisUrl = arg("redis", "redis://127.0.0.1:6379");
const name = arg("name", `node-${port}`);

async function main() {
  const redisClient = createClient({ url: redisUrl });
  redisClient.on("error", (e) => console.error(`${name}: redis: ${e.message}`));
  await redisClient.connect();

  const httpServer = http.createServer();
  const io = new Server(httpServer, {
    adapter: createAdapter(redisClient),
    connectionStateRecovery: {
      maxDisconnectionDuration: 2 * 60 * 1000,
      skipMiddlewares: true,
    },
  });

  let subs = 0;
  io.on("connection", (socket) => {
    const role = socket.handshake.auth && socket.handshake.auth.role;
    if (role === "sub") {
      subs++;
      socket.join("fan"); // idempotent after a recovery (the rooms are restored)
      socket.on("disconnect", () => subs--);
    }
    socket.on("pub", (msg, ack) => {
      io.to("fan").emit("m", msg);
      if (typeof ack === "function") ack(true);
    });
  });

  let stopping = false;
  process.on("SIGTERM", async () => {
    if (stopping) return;
    stopping = true;
    const t0 = Date.now();
    const timer = setTimeout(() => process.exit(1), 5000);
    try {
      await io.close();
      await redisClient.quit();
    } catch (e) {
      console.error(`${name}: stop: ${e.message}`);
    }
    clearTimeout(timer);
    console.error(`${name}: stopped gracefully in ${Date.now() - t0} ms (${subs} subscribers left)`);
    process.exit(0);
  });

  httpServer.listen(port, "127.0.0.1", () => console.log(`listening ${port}`));
}

main().catch((e) => {
  console.error(`${name}: ${e.stack || e}`);
  process.exit(1);
});
