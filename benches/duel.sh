#!/usr/bin/env bash
# Duel: Tidewire and one peer served AT THE SAME TIME on the same core, each loaded by its own
# `tidewire bench echo` on the other core; see benches/README.md, "Duel".
#
# Why: on a shared VM the cost of a run can switch between two levels for tens of seconds
# (all servers alike), which makes servers measured one after the other differ by ±20%.
# Two servers measured in the same window share whatever the machine is doing, so the
# ratio of their CPU per message is precise to about 1% where compare.sh's is not. The
# scheduler splits core 0 between them; each one's CPU per message comes from its own
# threads' schedstat over the same window, and the more frugal one echoes more messages.
#
# Environment knobs (defaults in brackets):
#   PEERS ["fastwebsockets tokio-websockets raw-tcp"]   ROUNDS [6]   DURATION [4]   WARMUP [1]
#   SIZES ["20 1024 16384 65536"]   CONNS [100]   BIG_CONNS [1000] (20 B; 0 = skip)
#   GENERATOR [tidewire]: tidewire = `tidewire bench echo`; loadgen = benches/peers/loadgen
#   SERVER_CPU [0] / LOADGEN_CPU [1]   TIDEWIRE_BIN [target/release/tidewire]   PORT_BASE [19500]
# Needs the release builds of compare.sh (SKIP_BUILD=1 bash benches/compare.sh builds them,
# or: cargo build --release -p tidewire-cli; cd benches/peers && cargo build --release).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PEERS=${PEERS:-"fastwebsockets tokio-websockets raw-tcp"}
ROUNDS=${ROUNDS:-6}
DURATION=${DURATION:-4}
WARMUP=${WARMUP:-1}
SIZES=${SIZES:-"20 1024 16384 65536"}
CONNS=${CONNS:-100}
BIG_CONNS=${BIG_CONNS:-1000}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
TIDEWIRE_BIN=${TIDEWIRE_BIN:-$ROOT/target/release/tidewire}
PEERS_BIN=${CARGO_TARGET_DIR_PEERS:-$ROOT/benches/peers/target}/release
PORT=${PORT_BASE:-19500}
GENERATOR=${GENERATOR:-tidewire}
case "$GENERATOR" in
  tidewire|loadgen) ;;
  *) echo "[duel] GENERATOR must be tidewire or loadgen, not '$GENERATOR'" >&2; exit 2 ;;
esac

log() { echo "[duel] $*" >&2; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

server_cmd() { # NAME ADDR
  case "$1" in
    tidewire)          echo "$TIDEWIRE_BIN echo --listen $2" ;;
    tokio-tungstenite) echo "$PEERS_BIN/echo-tungstenite --listen $2" ;;
    fastwebsockets)    echo "$PEERS_BIN/echo-fastwebsockets --listen $2" ;;
    tokio-websockets)  echo "$PEERS_BIN/echo-tokio-websockets --listen $2" ;;
    raw-tcp)           echo "$PEERS_BIN/echo-raw --listen $2" ;;
    *) log "unknown server '$1' (PEERS takes tokio-tungstenite fastwebsockets tokio-websockets raw-tcp)"; return 1 ;;
  esac
}
[[ "$GENERATOR" == tidewire || -x "$PEERS_BIN/loadgen" ]] || { log "ERROR: $PEERS_BIN/loadgen not found"; exit 1; }
for s in tidewire $PEERS; do
  bin=$(server_cmd "$s" x | cut -d' ' -f1)
  [[ -x "$bin" ]] || { log "ERROR: $bin not found (see the build line at the top of this script)"; exit 1; }
done
command -v jq >/dev/null || { log "ERROR: jq is needed"; exit 1; }

OUT=$ROOT/benches/results/duel-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT"
RAW=$OUT/duels.jsonl
: > "$RAW"
{
  echo "git: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "uname: $(uname -srm); cpus: $(nproc); model: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "GENERATOR=$GENERATOR PEERS='$PEERS' ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP SIZES='$SIZES' CONNS=$CONNS BIG_CONNS=$BIG_CONNS"
} > "$OUT/env.txt"

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
trap cleanup EXIT INT TERM

start() { # NAME -> sets SPID and PORT
  PORT=$((PORT + 1))
  local cmd
  cmd=$(server_cmd "$1" "127.0.0.1:$PORT")
  # shellcheck disable=SC2086
  taskset -c "$SERVER_CPU" $cmd >>"$OUT/server-$1.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then SPID=$pid; return 0; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  log "ERROR: $1 did not start on 127.0.0.1:$PORT (see $OUT/server-$1.log)"
  return 1
}

gen() { # NAME PID PORT SIZE CONNS OUTFILE
  local cmd=()
  if [[ "$GENERATOR" == loadgen ]]; then
    cmd=("$PEERS_BIN/loadgen" --url "ws://127.0.0.1:$3")
    [[ "$1" == raw-tcp ]] && cmd+=(--raw)
  else
    cmd=("$TIDEWIRE_BIN" bench echo "ws://127.0.0.1:$3/")
    [[ "$1" == raw-tcp ]] && cmd+=(--raw-tcp)
  fi
  taskset -c "$LOADGEN_CPU" timeout $((DURATION + WARMUP + 60)) "${cmd[@]}" --conns "$5" --inflight 1 \
    --size "$4" --duration "$DURATION" --warmup "$WARMUP" --binary --server-pid "$2" --json \
    > "$6" 2>>"$OUT/generator.log"
}

duel() { # PEER SIZE CONNS ROUND
  local peer=$1 size=$2 conns=$3 round=$4 first second
  # Alternate which one starts first, so that neither always gets the warmer start.
  if (( round % 2 )); then first=tidewire; second=$peer; else first=$peer; second=tidewire; fi
  start "$first" || { cleanup; return 0; }
  local pa=$SPID porta=$PORT
  start "$second" || { cleanup; return 0; }
  gen "$first" "$pa" "$porta" "$size" "$conns" "$OUT/a.json" &
  local g1=$!
  gen "$second" "$SPID" "$PORT" "$size" "$conns" "$OUT/b.json" &
  local g2=$!
  if wait "$g1" && wait "$g2"; then
    jq -c -n --slurpfile x "$OUT/a.json" --slurpfile y "$OUT/b.json" \
      --arg fa "$first" --arg fb "$second" --arg peer "$peer" \
      --argjson size "$size" --argjson conns "$conns" --argjson round "$round" '
      ($x[0] | {s: $fa, m: .msgs_per_s, c: .server_cpu_us_per_msg, u: .server_cpu_util,
        g: (.generator_cpu_util // .loadgen_cpu_util), e: .errors_total}) as $p |
      ($y[0] | {s: $fb, m: .msgs_per_s, c: .server_cpu_us_per_msg, u: .server_cpu_util,
        g: (.generator_cpu_util // .loadgen_cpu_util), e: .errors_total}) as $q |
      (if $p.s == "tidewire" then [$p, $q] else [$q, $p] end) as [$t, $o] |
      {peer: $peer, size: $size, conns: $conns, round: $round, first: $fa,
       tidewire: $t, other: $o, msgs_ratio: ($t.m / $o.m), cpu_ratio: ($t.c / $o.c)}' >> "$RAW"
    log "round $round size=$size conns=$conns vs $peer: $(tail -1 "$RAW" | jq -r \
      '"tidewire \(.tidewire.m|floor) msg/s \(.tidewire.c)us, \(.peer) \(.other.m|floor) msg/s \(.other.c)us: msgs \(.msgs_ratio*1000|round/1000)x cpu \(.cpu_ratio*1000|round/1000)x"')"
  else
    log "round $round size=$size conns=$conns vs $peer: a generator FAILED (see $OUT/generator.log)"
  fi
  cleanup
  sleep 0.5
}

CASES=()
for s in $SIZES; do CASES+=("$s $CONNS"); done
[[ "$BIG_CONNS" != 0 ]] && CASES+=("20 $BIG_CONNS")
for r in $(seq 1 "$ROUNDS"); do
  log "=== round $r/$ROUNDS"
  for c in "${CASES[@]}"; do
    for p in $PEERS; do duel "$p" ${c% *} ${c#* } "$r"; done
  done
done

python3 - "$RAW" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print("| vs peer | size B | conns | duels | msgs/s ratio, median (min–max) | tidewire ahead | server CPU ratio, median (min–max) | tidewire cheaper | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
keys = []
for r in rows:
    k = (r["conns"], r["size"], r["peer"])
    if k not in keys:
        keys.append(k)
for conns, size, peer in sorted(keys, key=lambda k: (k[0], k[1])):
    rs = [r for r in rows if (r["conns"], r["size"], r["peer"]) == (conns, size, peer)]
    m = [r["msgs_ratio"] for r in rs]
    c = [r["cpu_ratio"] for r in rs]
    err = sum(r["tidewire"]["e"] + r["other"]["e"] for r in rs)
    print(f"| {peer} | {size} | {conns} | {len(rs)} | {statistics.median(m):.3f} ({min(m):.3f}–{max(m):.3f}) "
          f"| {sum(x > 1 for x in m)}/{len(m)} | {statistics.median(c):.3f} ({min(c):.3f}–{max(c):.3f}) "
          f"| {sum(x < 1 for x in c)}/{len(c)} | {err} |")
EOF
log "results in $OUT"
