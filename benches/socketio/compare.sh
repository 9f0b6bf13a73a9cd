#!/usr/bin/env bash
# Socket.IO 4 + @socket.io/redis-streams-adapter against Tidewire, two nodes on one Redis
# each, in one run:
#   1. fan-out: SUBSCRIBERS subscribers spread over the two nodes, RATE publications/s
#      published on the second node, DURATION s measured: deliveries/s, server CPU per
#      delivery (both nodes, from /proc/PID/stat), latency p50/p99 (Socket.IO: load.js;
#      Tidewire: `tidewire bench fanout`);
#   2. node loss: 100 clients on node A (through a failover balancer in load.js), a stream of
#      RATE publications/s for KILL_DURATION s published on B, A gets SIGKILL (then, in a fresh
#      cluster, SIGTERM: graceful stop) KILL_AT s in; the clients reconnect to B: how many
#      came back `recovered`, messages lost, duplicates (Socket.IO: connection-state recovery;
#      Tidewire: the JS client of clients/js resuming with `since`).
# Redis and the nodes on core 0, the load on core 1 (taskset). Every process it starts is
# stopped on exit, every wait is bounded.
#
# Env: SUBSCRIBERS [2000] RATE [50] DURATION [10] KILL_CLIENTS [100] KILL_DURATION [10]
#      KILL_AT [4] TIDEWIRE_BIN [../../target/release/tidewire] OUT [/tmp/socketio-compare]
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
cd "$HERE"
BIN="${TIDEWIRE_BIN:-$ROOT/target/release/tidewire}"
SUBSCRIBERS="${SUBSCRIBERS:-2000}"
RATE="${RATE:-50}"
DURATION="${DURATION:-10}"
KILL_CLIENTS="${KILL_CLIENTS:-100}"
KILL_DURATION="${KILL_DURATION:-10}"
KILL_AT="${KILL_AT:-4}"
OUT="${OUT:-/tmp/socketio-compare}"
mkdir -p "$OUT"
rm -f "$OUT"/*.json
[ -x "$BIN" ] || { echo "compare.sh: no $BIN (cargo build --release -p tidewire-cli, or TIDEWIRE_BIN=...)" >&2; exit 2; }

# Dependencies: this directory's pinned packages, and the built JS client of clients/js.
if [ ! -d node_modules/socket.io ]; then timeout 180 npm ci --no-audit --no-fund >"$OUT/npm.log" 2>&1; fi
if [ ! -f "$ROOT/clients/js/dist/index.js" ]; then
  ( cd "$ROOT/clients/js" && { [ -d node_modules/typescript ] || timeout 180 npm ci --no-audit --no-fund; } \
    && timeout 120 npx tsc -p tsconfig.json ) >"$OUT/js-client.log" 2>&1
fi

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

CONF="$OUT/fan.toml"
printf '[namespaces.fan]\npresence = false\nhistory_size = 100\nhistory_ttl = "10m"\n' > "$CONF"

wait_for() { # file pattern name
  for _ in $(seq 100); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "compare.sh: $3 did not start:" >&2; cat "$1" "${1%.out}.log" >&2 2>/dev/null; exit 1
}

# Each start_* sets PID and PORT (no subshell, so that PIDS is kept).
start_redis() {
  PORT=$(port)
  taskset -c 0 redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
  PID=$!; PIDS+=("$PID")
  for _ in $(seq 100); do redis-cli -p "$PORT" ping >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "compare.sh: redis did not start" >&2; exit 1
}
start_sio() { # name redis_port
  PORT=$(port)
  taskset -c 0 node server.js --port "$PORT" --redis "redis://127.0.0.1:$2" --name "$1" >"$OUT/$1.out" 2>"$OUT/$1.log" &
  PID=$!; PIDS+=("$PID")
  wait_for "$OUT/$1.out" listening "$1"
}
start_tw() { # name redis_port
  PORT=$(port)
  taskset -c 0 "$BIN" serve --listen "127.0.0.1:$PORT" --threads 1 --no-demo --publish-rate 0 \
    --subscribe-rate 0 --config "$CONF" --engine "redis://127.0.0.1:$2" --node-name "$1" \
    >"$OUT/$1.out" 2>"$OUT/$1.log" &
  PID=$!; PIDS+=("$PID")
  wait_for "$OUT/$1.out" listening "$1"
}
cluster() { # sio|tw -> R_PID R_PORT A_PID A_PORT B_PID B_PORT
  start_redis; R_PID=$PID; R_PORT=$PORT
  "start_$1" "$1-a" "$R_PORT"; A_PID=$PID; A_PORT=$PORT
  "start_$1" "$1-b" "$R_PORT"; B_PID=$PID; B_PORT=$PORT
}

echo "--- fan-out, Socket.IO: $SUBSCRIBERS subscribers on two nodes, $RATE publications/s, ${DURATION} s"
cluster sio
timeout 150 taskset -c 1 node load.js fanout --a "http://127.0.0.1:$A_PORT" --b "http://127.0.0.1:$B_PORT" \
  --subscribers "$SUBSCRIBERS" --rate "$RATE" --duration "$DURATION" --warmup 1 --drain 10 \
  --pids "$A_PID,$B_PID" --engine-pid "$R_PID" > "$OUT/fanout-sio.json"
cleanup

echo "--- fan-out, Tidewire: the same"
cluster tw
timeout 150 taskset -c 1 "$BIN" bench fanout "ws://127.0.0.1:$A_PORT/ws" --node "ws://127.0.0.1:$B_PORT/ws" \
  --subscribers "$SUBSCRIBERS" --rate "$RATE" --duration "$DURATION" --warmup 1 --drain 10 --channel fan:x \
  --server-pid "$A_PID" --node-pid "$B_PID" --engine-pid "$R_PID" --json > "$OUT/fanout-tw.json"
cleanup

for sys in sio tw; do
  for sig in SIGKILL SIGTERM; do
    echo "--- node loss, $sys, $sig: $KILL_CLIENTS clients on node A, A gets $sig ${KILL_AT} s into a ${KILL_DURATION} s stream"
    cluster "$sys"
    if [ "$sys" = sio ]; then a="http://127.0.0.1:$A_PORT" b="http://127.0.0.1:$B_PORT" system=sio
    else a="ws://127.0.0.1:$A_PORT/ws" b="ws://127.0.0.1:$B_PORT/ws" system=tidewire; fi
    timeout 90 taskset -c 1 node load.js kill --system "$system" --a "$a" --b "$b" --clients "$KILL_CLIENTS" \
      --rate "$RATE" --duration "$KILL_DURATION" --kill-at "$KILL_AT" --signal "$sig" --kill-pid "$A_PID" \
      --drain 15 > "$OUT/kill-$sys-$sig.json"
    cleanup
  done
done

python3 - "$OUT" <<'EOF'
import json, os, sys
out = sys.argv[1]
def load(name):
    return json.load(open(os.path.join(out, name)))
sio, tw = load("fanout-sio.json"), load("fanout-tw.json")
def f(x, spec):
    return "-" if x is None else format(x, spec)
print()
print(f"{'fan-out':<42}{'Socket.IO 4':>16}{'Tidewire':>16}")
rows = [
    ("deliveries/s", sio["deliveries_per_s"], tw["deliveries_per_s"], ".0f"),
    ("server CPU us/delivery (2 nodes)", sio["server_cpu_us_per_delivery"], tw.get("server_cpu_us_per_delivery"), ".2f"),
    ("Redis CPU us/publication", sio["engine_cpu_us_per_publication"], tw.get("engine_cpu_us_per_publication"), ".1f"),
    ("latency p50 ms", sio["latency_ms"]["p50"], tw["latency_us"]["p50"] / 1000, ".2f"),
    ("latency p99 ms", sio["latency_ms"]["p99"], tw["latency_us"]["p99"] / 1000, ".2f"),
    ("missing", sio["missing"], tw["missing"], "d"),
    ("duplicates", sio["duplicates"], tw["duplicates"], "d"),
]
for name, a, b, spec in rows:
    print(f"{name:<42}{f(a, spec):>16}{f(b, spec):>16}")
print(f"load generator CPU over the window: Socket.IO {sio['load_cpu_share'] * 100:.0f}%, Tidewire {tw['generator_cpu_util'] * 100:.0f}% of core 1")
print(f"other processes' CPU over the window (cores; 2 on this machine): Socket.IO run {sio['others_cpu_share']:.2f}, Tidewire run {tw['others_cpu_util'] - (tw.get('engine_cpu_util') or 0):.2f} (Redis excluded in both)")
print()
print(f"{'node loss (clients on A)':<42}{'Socket.IO 4':>16}{'Tidewire':>16}")
for sig, label in (("SIGKILL", "SIGKILL"), ("SIGTERM", "graceful stop")):
    s, t = load(f"kill-sio-{sig}.json"), load(f"kill-tw-{sig}.json")
    for name, key in (("reconnected", "reconnected"), ("recovered", "recovered"),
                      ("clients that lost messages", "clients_losing"), ("messages lost", "lost"),
                      ("max lost per client", "max_lost_per_client"), ("duplicates", "duplicates")):
        a, b = s[key], t[key]
        if key in ("reconnected", "recovered"):
            a, b = f"{a}/{s['clients']}", f"{b}/{t['clients']}"
        elif key == "lost":
            a = f"{a} ({s['lost_share'] * 100:.1f}%)"; b = f"{b} ({t['lost_share'] * 100:.1f}%)"
        print(f"{label + ': ' + name:<42}{str(a):>16}{str(b):>16}")
EOF
