#!/usr/bin/env bash
# Cluster benchmarks (issue 16), side by side in one run, same build:
#   1. fan-out: one node on memory against two nodes on one Redis (and on NATS), the same
#      SUBSCRIBERS subscribers (spread over the nodes), RATE publications/s published on
#      the second node: server CPU per delivery (both nodes together), the engine's CPU per
#      publication, publish-to-receive latency;
#   2. publish throughput with history through one Redis: `tidewire bench fanout` with one
#      subscriber and INFLIGHT publishes outstanding, against the ceiling of the same Lua
#      script driven by `redis-benchmark` (EVALSHA, same keys and arguments); Redis CPU per
#      publication in both.
# Everything targets 127.0.0.1, every process it starts is stopped on exit, every wait is
# bounded. Servers and engines on core 0, the generator on core 1 (taskset).
#
# Env: SUBSCRIBERS [10000] RATE [10] DURATION [8] INFLIGHT [8] PUBLISHERS [16] PUB_DURATION [5]
#      ENGINES [memory redis nats] NODE_CPUS [0] (the nodes' cores; the engine is on 0, the
#      generator on 1) TIDEWIRE_BIN [target/release/tidewire] OUT [target/cluster-bench]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
BIN="${TIDEWIRE_BIN:-$ROOT/target/release/tidewire}"
SUBSCRIBERS="${SUBSCRIBERS:-10000}"
RATE="${RATE:-10}"
DURATION="${DURATION:-8}"
INFLIGHT="${INFLIGHT:-8}"
PUBLISHERS="${PUBLISHERS:-16}"
PUB_DURATION="${PUB_DURATION:-5}"
ENGINES="${ENGINES:-memory redis nats}"
OUT="${OUT:-$ROOT/target/cluster-bench}"
NODE_CPUS="${NODE_CPUS:-0}"
mkdir -p "$OUT"
[ -x "$BIN" ] || { echo "cluster.sh: no $BIN (cargo build --release -p tidewire-cli)" >&2; exit 2; }

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

CONF="$OUT/fan.toml"
printf '[namespaces.fan]\npresence = false\nhistory_size = 100\nhistory_ttl = "10m"\n' > "$CONF"

# start_node NAME ENGINE_URL: sets PID and PORT (in this shell, so that the trap stops it).
start_node() {
  local name="$1" engine="$2" p
  p=$(port)
  taskset -c "$NODE_CPUS" "$BIN" serve --listen "127.0.0.1:$p" --threads 1 --no-demo --publish-rate 0 \
    --subscribe-rate 0 --config "$CONF" --engine "$engine" --node-name "$name" \
    >"$OUT/$name.out" 2>"$OUT/$name.log" &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 100); do
    grep -q listening "$OUT/$name.out" 2>/dev/null && break
    sleep 0.1
  done
  grep -q listening "$OUT/$name.out" || { echo "node $name did not start:"; cat "$OUT/$name.log"; exit 1; }
  PID=$pid PORT=$p
}

start_redis() {
  local p; p=$(port)
  taskset -c 0 redis-server --port "$p" --bind 127.0.0.1 --save "" --appendonly no >"$OUT/redis.log" 2>&1 &
  PIDS+=("$!")
  local pid=$!
  for _ in $(seq 100); do redis-cli -p "$p" ping >/dev/null 2>&1 && break; sleep 0.1; done
  PID=$pid PORT=$p
}

start_nats() {
  local p; p=$(port)
  rm -rf "$OUT/nats-store"
  taskset -c 0 nats-server -js -a 127.0.0.1 -p "$p" -sd "$OUT/nats-store" >"$OUT/nats.log" 2>&1 &
  PIDS+=("$!")
  local pid=$!
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
  PID=$pid PORT=$p
}

fanout() { # label, then bench fanout args
  local label="$1"; shift
  echo "--- fan-out: $label"
  taskset -c 1 "$BIN" bench fanout --subscribers "$SUBSCRIBERS" --rate "$RATE" \
    --duration "$DURATION" --channel fan:x --json "$@" > "$OUT/fanout-$label.json"
  python3 - "$OUT/fanout-$label.json" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r.get("latency_us", {})
print(f"  deliveries/s {r['deliveries_per_s']:.0f}  server CPU {r.get('server_cpu_us_per_delivery')} us/delivery"
      f"  engine CPU {r.get('engine_cpu_us_per_publication', '-')} us/publication"
      f"  latency p50 {lat.get('p50')} us p99 {lat.get('p99')} us  missing {r['missing']} dup {r['duplicates']}")
EOF
  cleanup; PIDS=()
}

for engine in $ENGINES; do
  case "$engine" in
    memory)
      start_node solo memory; pid=$PID p=$PORT
      fanout memory "ws://127.0.0.1:$p/ws" --server-pid "$pid"
      ;;
    redis)
      start_redis; rpid=$PID rport=$PORT
      start_node node-a "redis://127.0.0.1:$rport"; a=$PID ap=$PORT
      start_node node-b "redis://127.0.0.1:$rport"; b=$PID bp=$PORT
      fanout redis "ws://127.0.0.1:$ap/ws" --node "ws://127.0.0.1:$bp/ws" \
        --server-pid "$a" --node-pid "$b" --engine-pid "$rpid"
      ;;
    nats)
      command -v nats-server >/dev/null || { echo "--- nats: no nats-server, skipped"; continue; }
      start_nats; npid=$PID nport=$PORT
      start_node node-a "nats://127.0.0.1:$nport"; a=$PID ap=$PORT
      start_node node-b "nats://127.0.0.1:$nport"; b=$PID bp=$PORT
      fanout nats "ws://127.0.0.1:$ap/ws" --node "ws://127.0.0.1:$bp/ws" \
        --server-pid "$a" --node-pid "$b" --engine-pid "$npid"
      ;;
  esac
done

# Publish throughput with history through one Redis, against redis-benchmark's ceiling for
# the same script.
case " $ENGINES " in *" redis "*)
  echo "--- publish throughput with history through one Redis"
  start_redis; rpid=$PID rport=$PORT
  start_node node-a "redis://127.0.0.1:$rport"; a=$PID ap=$PORT
  taskset -c 1 "$BIN" bench fanout "ws://127.0.0.1:$ap/ws" --subscribers 1 --rate 0 \
    --inflight "$INFLIGHT" --publishers "$PUBLISHERS" --duration "$PUB_DURATION" --channel fan:p --json \
    --server-pid "$a" --engine-pid "$rpid" > "$OUT/publish-redis.json"
  # The script as the node loaded it (SCRIPT LOAD gives its SHA-1).
  SCRIPT="$(sed -n '/^pub(super) const PUBLISH: &str = r#"/,/^"#;/p' crates/tidewire-hub/src/engine/redis/keys.rs | sed '1d;$d')"
  SHA=$(redis-cli -p "$rport" SCRIPT LOAD "$SCRIPT")
  before=$(awk '{print $14+$15}' "/proc/$rpid/stat")
  start=$(date +%s.%N)
  taskset -c 1 redis-benchmark -p "$rport" -c 50 -n 200000 -q --csv \
    EVALSHA "$SHA" 2 "tw:{fan:q}:m" "tw:{fan:q}:s" "tw:{fan:q}:live" '{"n":"x"}' 100 600000 e0 PUBLISH \
    > "$OUT/redis-benchmark.csv"
  end=$(date +%s.%N)
  after=$(awk '{print $14+$15}' "/proc/$rpid/stat")
  python3 - "$OUT/publish-redis.json" "$OUT/redis-benchmark.csv" "$before" "$after" "$start" "$end" <<'EOF'
import csv, json, os, sys
r = json.load(open(sys.argv[1]))
rows = list(csv.reader(open(sys.argv[2])))
ceiling = float(rows[-1][1])
ticks = os.sysconf("SC_CLK_TCK")
redis_cpu_s = (int(sys.argv[4]) - int(sys.argv[3])) / ticks
ours = r["publications_per_s"]
print(f"  tidewire: {ours:.0f} publications/s with history (Redis CPU {r.get('engine_cpu_us_per_publication')} us each,"
      f" server CPU {r.get('server_cpu_us_per_delivery')} us per delivery)")
print(f"  redis-benchmark, same script: {ceiling:.0f}/s (Redis CPU {redis_cpu_s / 200000 * 1e6:.1f} us each)")
print(f"  ratio {ours / ceiling:.2f}x of the ceiling")
EOF
  cleanup; PIDS=()
;; esac
