#!/usr/bin/env bash
# Side-by-side WebSocket echo comparison: Tidewire vs peer libraries vs a raw TCP floor.
# See benches/README.md. Every load targets 127.0.0.1 and is bounded in time.
#
# Environment knobs (defaults in brackets):
#   GENERATOR [tidewire]  the load: tidewire = the project's own `tidewire bench echo` (idle
#                     probe `tidewire bench connections`); loadgen = benches/peers/loadgen, the
#                     independent generator with no WebSocket library inside (the cross-check)
#   ROUNDS [3]        rounds; servers are interleaved inside each round
#   DURATION [5]      measured seconds per run      WARMUP [1]  warm-up seconds per run
#   SIZES ["20 1024 16384 65536"]                   CONNS [100] connections per run
#   BIG_CONNS [1000]  extra 20-byte run at this many connections (0 = skip)
#   INFLIGHT [1]      messages outstanding per connection
#   IDLE_CONNS [1000] idle-memory probe per server in round 1 (0 = skip)
#   SERVERS ["tidewire tokio-tungstenite fastwebsockets tokio-websockets node-ws python-websockets raw-tcp"]
#   SERVER_CPU [0] / LOADGEN_CPU [1]   cores for taskset
#   TIDEWIRE_BIN [target/release/tidewire]   SKIP_BUILD [0]   PORT_BASE [19300]
#   PAYLOAD [alpha]   --payload of either generator: alpha (same a..z bytes every message)
#                     or json (JSON-like records varying per message, the same bytes in both)
#   COMPRESSION [0]   1 = permessage-deflate mode: only servers that support it
#                     [SERVERS default "tidewire node-ws python-websockets"], the generator
#                     offers compression and compresses every message (zlib level 6), json
#                     payload, idle probe = KB per compressed connection (one IDLE_SIZE
#                     [2048] B compressed message each)
#   DEFLATE_LEVEL [6] zlib level of tidewire bench's messages with COMPRESSION=1 (loadgen's
#                     is always 6; 1 costs the generator about half as much CPU)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
GENERATOR=${GENERATOR:-tidewire}
case "$GENERATOR" in
  tidewire|loadgen) ;;
  *) echo "[compare] GENERATOR must be tidewire or loadgen, not '$GENERATOR'" >&2; exit 2 ;;
esac
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SIZES=${SIZES:-"20 1024 16384 65536"}
CONNS=${CONNS:-100}
BIG_CONNS=${BIG_CONNS:-1000}
INFLIGHT=${INFLIGHT:-1}
IDLE_CONNS=${IDLE_CONNS:-1000}
COMPRESSION=${COMPRESSION:-0}
if [[ "$COMPRESSION" == 1 ]]; then
  SERVERS=${SERVERS:-"tidewire node-ws python-websockets"}
  PAYLOAD=${PAYLOAD:-json}
else
  SERVERS=${SERVERS:-"tidewire tokio-tungstenite fastwebsockets tokio-websockets node-ws python-websockets raw-tcp"}
  PAYLOAD=${PAYLOAD:-alpha}
fi
IDLE_SIZE=${IDLE_SIZE:-2048}
DEFLATE_LEVEL=${DEFLATE_LEVEL:-6}
NODE_DIR=$ROOT/benches/peers-node
PY_DIR=$ROOT/benches/peers-python
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
TIDEWIRE_BIN=${TIDEWIRE_BIN:-$ROOT/target/release/tidewire}
PORT_BASE=${PORT_BASE:-19300}
PEERS_TARGET=${CARGO_TARGET_DIR_PEERS:-$ROOT/benches/peers/target}
PEERS_BIN=$PEERS_TARGET/release
LOADGEN=$PEERS_BIN/loadgen

log() { echo "[compare] $*" >&2; }

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# ---------------------------------------------------------------- build
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building peers + loadgen (release, CARGO_TARGET_DIR=$PEERS_TARGET)"
  (cd benches/peers && CARGO_TARGET_DIR="$PEERS_TARGET" cargo build --release --locked -q)
  if [[ " $SERVERS " == *" tidewire "* || "$GENERATOR" == tidewire ]]; then
    log "building tidewire (cargo build --release -p tidewire-cli)"
    if ! cargo build --release -p tidewire-cli -q; then
      log "WARNING: tidewire-cli failed to build; tidewire will be skipped"
    fi
  fi
fi
# The generator must be there: without it nothing can be measured.
if [[ "$GENERATOR" == tidewire ]]; then
  # timeout: a build whose 'bench' ignored --help must not start loading anything
  if [[ ! -x "$TIDEWIRE_BIN" ]] || ! timeout 5 "$TIDEWIRE_BIN" bench echo --help 2>/dev/null | grep -q -- --raw-tcp \
      || ! timeout 5 "$TIDEWIRE_BIN" bench connections --help 2>/dev/null | grep -q -- --message-size; then
    log "ERROR: GENERATOR=tidewire needs $TIDEWIRE_BIN with 'bench echo --raw-tcp' and 'bench connections" \
        "--message-size' (cargo build --release -p tidewire-cli), or run with GENERATOR=loadgen"
    exit 1
  fi
elif [[ ! -x "$LOADGEN" ]]; then
  log "ERROR: GENERATOR=loadgen needs $LOADGEN (cd benches/peers && cargo build --release)"
  exit 1
fi
# Node / Python peers: installed on first use (npm ci from the committed lock file; a venv
# with the pinned requirements). Offline-safe afterwards; SKIP_BUILD does not skip these.
if [[ " $SERVERS " == *" node-ws "* && ! -d "$NODE_DIR/node_modules/ws" ]]; then
  log "installing node-ws peer (npm ci in $NODE_DIR)"
  (cd "$NODE_DIR" && npm ci --no-audit --no-fund --silent) || log "WARNING: npm ci failed; node-ws will be skipped"
fi
if [[ " $SERVERS " == *" python-websockets "* && ! -x "$PY_DIR/.venv/bin/python" ]]; then
  log "installing python-websockets peer (venv in $PY_DIR/.venv)"
  (python3 -m venv "$PY_DIR/.venv" && "$PY_DIR/.venv/bin/pip" install -q -r "$PY_DIR/requirements.txt") \
    || { log "WARNING: venv/pip failed; python-websockets will be skipped"; rm -rf "$PY_DIR/.venv"; }
fi

# ---------------------------------------------------------------- servers
ZFLAG=
[[ "$COMPRESSION" == 1 ]] && ZFLAG=--compression
server_cmd() { # NAME ADDR -> prints the command line, or nothing if unavailable
  case "$1" in
    tidewire)          [[ -x "$TIDEWIRE_BIN" ]] && echo "$TIDEWIRE_BIN echo --listen $2 $ZFLAG" ;;
    tokio-tungstenite) echo "$PEERS_BIN/echo-tungstenite --listen $2" ;;
    fastwebsockets)    echo "$PEERS_BIN/echo-fastwebsockets --listen $2" ;;
    tokio-websockets)  echo "$PEERS_BIN/echo-tokio-websockets --listen $2" ;;
    node-ws)           [[ -d "$NODE_DIR/node_modules/ws" ]] && echo "node $NODE_DIR/echo.mjs --port ${2##*:} $ZFLAG" ;;
    python-websockets) [[ -x "$PY_DIR/.venv/bin/python" ]] && echo "$PY_DIR/.venv/bin/python $PY_DIR/echo.py --port ${2##*:} $ZFLAG" ;;
    raw-tcp)           echo "$PEERS_BIN/echo-raw --listen $2" ;;
    *) log "unknown server $1"; return 1 ;;
  esac
}

# Which servers can do permessage-deflate (COMPRESSION=1). The Rust peers cannot:
# tokio-tungstenite/tungstenite 0.30.0 (the newest on crates.io) have no deflate feature,
# fastwebsockets 0.10 and tokio-websockets 0.13 have no compression support at all.
supports_compression() { # NAME -> 0 if it can run in COMPRESSION=1 mode, else prints why
  case "$1" in
    node-ws|python-websockets) return 0 ;;
    tidewire)
      if [[ ! -x "$TIDEWIRE_BIN" ]]; then echo "$TIDEWIRE_BIN not found (cargo build --release -p tidewire-cli)"; return 1; fi
      # timeout: a build whose 'echo' ignores --help would otherwise start serving here
      if timeout 5 "$TIDEWIRE_BIN" echo --help 2>&1 | grep -q -- --compression; then return 0; fi
      echo "'$TIDEWIRE_BIN echo --help' does not mention --compression (not implemented in this build yet)"; return 1 ;;
    tokio-tungstenite) echo "tokio-tungstenite 0.30 / tungstenite 0.30 (newest on crates.io) have no permessage-deflate (no 'deflate' feature)"; return 1 ;;
    fastwebsockets)    echo "fastwebsockets 0.10 has no permessage-deflate support"; return 1 ;;
    tokio-websockets)  echo "tokio-websockets 0.13 has no permessage-deflate support"; return 1 ;;
    raw-tcp)           echo "raw TCP has no WebSocket extensions"; return 1 ;;
    *) echo "unknown server"; return 1 ;;
  esac
}

PRESENT=()
for s in $SERVERS; do
  if [[ "$COMPRESSION" == 1 ]] && ! why=$(supports_compression "$s"); then
    log "SKIPPING $s in COMPRESSION=1 mode: $why"
    continue
  fi
  if [[ -n "$(server_cmd "$s" 127.0.0.1:0 || true)" ]]; then
    PRESENT+=("$s")
  else
    case "$s" in
      tidewire) log "SKIPPING $s: $TIDEWIRE_BIN not found (build it with 'cargo build --release -p tidewire-cli';" \
                    "it must accept 'echo --listen ADDR'). Ratios will be computed against the first server present." ;;
      node-ws)  log "SKIPPING $s: $NODE_DIR/node_modules missing (run 'npm ci' there; Node >= 18)" ;;
      python-websockets) log "SKIPPING $s: $PY_DIR/.venv missing (python3 -m venv .venv && .venv/bin/pip install -r requirements.txt)" ;;
      *) log "SKIPPING $s: not available" ;;
    esac
  fi
done
[[ ${#PRESENT[@]} -gt 0 ]] || { log "no servers to run"; exit 1; }
BASELINE=${PRESENT[0]}
log "servers: ${PRESENT[*]} (ratio baseline: $BASELINE); generator: $GENERATOR"

RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$ROOT/benches/results/$RUN_ID
mkdir -p "$OUT"
RAW=$OUT/runs.jsonl
: > "$RAW"
{
  echo "run_id: $RUN_ID"
  echo "git: $(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "uname: $(uname -srm)"
  echo "cpus: $(nproc); model: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "loadavg at start: $(cat /proc/loadavg)"
  echo "ROUNDS=$ROUNDS DURATION=$DURATION WARMUP=$WARMUP SIZES='$SIZES' CONNS=$CONNS BIG_CONNS=$BIG_CONNS INFLIGHT=$INFLIGHT"
  echo "COMPRESSION=$COMPRESSION PAYLOAD=$PAYLOAD IDLE_SIZE=$IDLE_SIZE DEFLATE_LEVEL=$DEFLATE_LEVEL"
  if [[ "$GENERATOR" == tidewire ]]; then
    echo "GENERATOR=tidewire: $TIDEWIRE_BIN bench echo / bench connections (tidewire-cli $("$TIDEWIRE_BIN" --version 2>/dev/null | awk '{print $2}'))"
  else
    echo "GENERATOR=loadgen: $LOADGEN"
  fi
  echo "node: $(node --version 2>/dev/null || echo none) ws: $(jq -r .version "$NODE_DIR/node_modules/ws/package.json" 2>/dev/null || echo none)"
  echo "python-websockets: $("$PY_DIR/.venv/bin/python" -c 'import sys, websockets; print(websockets.__version__, "on Python", sys.version.split()[0])' 2>/dev/null || echo none)"
  echo "SERVER_CPU=$SERVER_CPU LOADGEN_CPU=$LOADGEN_CPU servers: ${PRESENT[*]}"
} > "$OUT/env.txt"

SERVER_PID=
PORT=$PORT_BASE
stop_server() {
  if [[ -n "$SERVER_PID" ]]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}
trap stop_server EXIT INT TERM

start_server() { # NAME -> sets SERVER_PID, ADDR
  PORT=$((PORT + 1))
  ADDR=127.0.0.1:$PORT
  local cmd
  cmd=$(server_cmd "$1" "$ADDR")
  # shellcheck disable=SC2086
  taskset -c "$SERVER_CPU" $cmd >>"$OUT/server-$1.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 200); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
    sleep 0.05
  done
  log "ERROR: $1 did not start listening on $ADDR (see $OUT/server-$1.log)"
  stop_server
  return 1
}

# Both generators print one JSON object per run; NORMALIZE maps tidewire bench's to the
# field names summarize.py reads (loadgen's): lat_us, loadgen_cpu_util (= the generator's
# CPU), compression (bool). tidewire bench's count check is kernel_echoes (its sockets'
# TCP_INFO byte count), loadgen's server_echoes_by_ss; summarize.py takes either.
NORMALIZE_TIDEWIRE='. + {lat_us: .latency_us, loadgen_cpu_util: .generator_cpu_util,
  compression: ((.compression_negotiated // 0) > 0)}'
NORMALIZE_TIDEWIRE_IDLE='. + {compression: ((.compression_negotiated // 0) > 0),
  compressed_replies: .replies_compressed, msg_size: .message_size}'

run_one() { # NAME SIZE CONNS ROUND
  local name=$1 size=$2 conns=$3 round=$4 url cmd=() norm=.
  start_server "$name" || return 0
  url=ws://$ADDR/
  if [[ "$GENERATOR" == tidewire ]]; then
    cmd=("$TIDEWIRE_BIN" bench echo "$url")
    [[ "$name" == raw-tcp ]] && cmd+=(--raw-tcp)
    # Like loadgen: every message compressed, at zlib level 6 (DEFLATE_LEVEL).
    [[ "$COMPRESSION" == 1 ]] && cmd+=(--compression --deflate-level "$DEFLATE_LEVEL" --deflate-threshold 0)
    norm=$NORMALIZE_TIDEWIRE
  else
    cmd=("$LOADGEN" --url "ws://$ADDR")
    [[ "$name" == raw-tcp ]] && cmd+=(--raw)
    [[ "$COMPRESSION" == 1 ]] && cmd+=(--compression)
  fi
  cmd+=(--payload "$PAYLOAD" --conns "$conns" --inflight "$INFLIGHT" --size "$size" --duration "$DURATION"
        --warmup "$WARMUP" --binary --server-pid "$SERVER_PID" --json)
  local json
  if json=$(timeout "$(awk "BEGIN{print int($DURATION + $WARMUP + 90)}")" taskset -c "$LOADGEN_CPU" "${cmd[@]}" \
      2>>"$OUT/$GENERATOR.log") && json=$(echo "$json" | jq -c "$norm"); then
    echo "$json" | jq -c --arg s "$name" --argjson r "$round" --arg la "$(cut -d' ' -f1 /proc/loadavg)" --arg g "$GENERATOR" \
      '. + {server:$s, round:$r, loadavg1:($la|tonumber), generator:$g}' >> "$RAW"
    log "round $round $name size=$size conns=$conns: $(echo "$json" | jq -r '"\(.msgs_per_s|floor) msg/s p50 \(.lat_us.p50)us p99 \(.lat_us.p99)us cpu \(.server_cpu_us_per_msg)us/msg wire \(.tx_wire_bytes_per_msg // 0|floor)/\(.rx_wire_bytes_per_msg // 0|floor)B errors \(.errors_total)"')"
  else
    log "round $round $name size=$size conns=$conns: $GENERATOR FAILED (see $OUT/$GENERATOR.log)"
  fi
  stop_server
}

idle_one() { # NAME
  local name=$1
  [[ "$name" == raw-tcp || "$IDLE_CONNS" == 0 ]] && return 0
  start_server "$name" || return 0
  local json cmd=() norm=.
  if [[ "$GENERATOR" == tidewire ]]; then
    # Each connection does one ping/pong; with compression, one IDLE_SIZE B json echo.
    cmd=("$TIDEWIRE_BIN" bench connections "ws://$ADDR/" --conns "$IDLE_CONNS")
    [[ "$COMPRESSION" == 1 ]] && cmd+=(--compression --message-size "$IDLE_SIZE")
    norm=$NORMALIZE_TIDEWIRE_IDLE
  else
    cmd=("$LOADGEN" --url "ws://$ADDR" --connections "$IDLE_CONNS")
    [[ "$COMPRESSION" == 1 ]] && cmd+=(--compression --size "$IDLE_SIZE")
  fi
  if json=$(timeout 120 taskset -c "$LOADGEN_CPU" "${cmd[@]}" --hold 1 --server-pid "$SERVER_PID" --json \
      2>>"$OUT/$GENERATOR.log") && json=$(echo "$json" | jq -c "$norm"); then
    echo "$json" | jq -c --arg s "$name" --arg g "$GENERATOR" '. + {server:$s, generator:$g}' >> "$OUT/idle.jsonl"
    log "idle $name: $(echo "$json" | jq -r '"\(.open) conns, \(.kb_per_conn) KB/conn, compression \(.compression), \(.compressed_replies) replies compressed"')"
  else
    log "idle $name: FAILED (see $OUT/$GENERATOR.log)"
  fi
  stop_server
}

# Probe: a server that is listed but does not come up (e.g. a tidewire binary without
# the `echo` subcommand yet) is dropped here, with a message, instead of failing every run.
PROBED=()
for s in "${PRESENT[@]}"; do
  if start_server "$s" 2>/dev/null; then
    PROBED+=("$s")
    stop_server
  else
    log "SKIPPING $s: '$(server_cmd "$s" "$ADDR")' did not start listening (it exited, or" \
        "10 s passed; see $OUT/server-$s.log). Ratios use the first server that runs."
  fi
done
PRESENT=("${PROBED[@]}")
[[ ${#PRESENT[@]} -gt 0 ]] || { log "no servers came up"; exit 1; }
BASELINE=${PRESENT[0]}
log "running: ${PRESENT[*]} (ratio baseline: $BASELINE)"
sed -i "s/^SERVER_CPU=.*/& running: ${PRESENT[*]}/" "$OUT/env.txt"

CASES=()
for size in $SIZES; do CASES+=("$size:$CONNS"); done
[[ "$BIG_CONNS" != 0 ]] && CASES+=("20:$BIG_CONNS")

# The order of the servers rotates from one case and round to the next: the first run after
# a case change inherits the previous run's teardown (sockets closing, TIME_WAIT) and a
# fixed order would hand that to the same server every time (it showed as a 5% handicap
# for whichever server ran first).
NPRESENT=${#PRESENT[@]}
for round in $(seq 1 "$ROUNDS"); do
  log "=== round $round/$ROUNDS"
  ci=0
  for c in "${CASES[@]}"; do
    for k in $(seq 0 $((NPRESENT - 1))); do
      s=${PRESENT[$(( (k + round - 1 + ci) % NPRESENT ))]}
      run_one "$s" "${c%%:*}" "${c##*:}" "$round"
    done
    ci=$((ci + 1))
  done
  if [[ $round == 1 ]]; then
    for s in "${PRESENT[@]}"; do idle_one "$s"; done
  fi
done

python3 "$ROOT/benches/summarize.py" "$OUT" "$BASELINE" "${PRESENT[@]}" | tee "$OUT/table.md"
log "results in $OUT"
