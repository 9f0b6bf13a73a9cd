#!/usr/bin/env bash
# Echo over HTTP/2 (RFC 8441) beside HTTP/1.1, with the same binary, measured side by side:
#
# 1. CPU per message: two `tidewire echo` servers run AT THE SAME TIME on SERVER_CPU, one
#    loaded by `tidewire bench echo` over HTTP/1.1 (a TCP connection per WebSocket), the
#    other by the same generator with `--http2 only` (every WebSocket a stream of a shared
#    h2c connection: 100 WebSockets on one connection); both generators on LOADGEN_CPU.
#    Each server's CPU per echoed message comes from its own threads over the same window
#    (as benches/duel.sh does for peers), so the machine's moods hit both alike. ROUNDS
#    rounds, the sides swap ports each round.
# 2. Memory per WebSocket: a fresh `tidewire echo`, then `tidewire bench connections` with
#    MEM_CONNS idle WebSockets over HTTP/1.1, and again with --http2 only (at most 256
#    WebSockets per HTTP/2 connection, the server's stream limit): the server's VmRSS
#    growth per WebSocket.
#
# Prints one line per measurement and a summary with the ratios (HTTP/2 / HTTP/1.1).
#
# HTTP=3 measures WebSocket over HTTP/3 (RFC 9220) the same way instead: both servers get a
# certificate from a CA made here (openssl) and `--http3`; the baseline is HTTP/1.1 over
# TLS (wss://, a TCP connection per WebSocket), the other side `--http3` (every WebSocket
# a stream of one QUIC connection, at most 256 per connection).
#
# Knobs: ROUNDS [3] DURATION [5] WARMUP [1] SIZES ["20 1024"] CONNS [100] MEM_CONNS [10000]
#        SERVER_CPU [0] LOADGEN_CPU [1] TIDEWIRE_BIN [target/release/tidewire] PORT_BASE [19700]
#        HTTP [2]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-1}
SIZES=${SIZES:-"20 1024"}
CONNS=${CONNS:-100}
MEM_CONNS=${MEM_CONNS:-10000}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
BIN=${TIDEWIRE_BIN:-$ROOT/target/release/tidewire}
PORT=${PORT_BASE:-19700}
HTTP=${HTTP:-2}
case "$HTTP" in 2 | 3) ;; *) echo "[http2] HTTP=$HTTP: 2 or 3" >&2; exit 2 ;; esac
[ -x "$BIN" ] || { echo "[http2] no $BIN: cargo build --release -p tidewire-cli" >&2; exit 2; }
OUT=$(mktemp -d "${TMPDIR:-/tmp}/tidewire-http2.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$OUT"; }
trap cleanup EXIT

# What each side runs: the server's flags, the URL scheme, the generators' flags.
SERVER_ARGS=()
SCHEME=ws
BASE_ARGS=(--http2 off)
OTHER_ARGS=(--http2 only)
if [ "$HTTP" = 3 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -keyout "$OUT/ca.key" -out "$OUT/ca.pem" -subj /CN=bench-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$OUT/key.pem" -out "$OUT/leaf.csr" -subj /CN=localhost 2>/dev/null
  printf 'subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n' > "$OUT/ext.cnf"
  openssl x509 -req -in "$OUT/leaf.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" \
    -CAcreateserial -out "$OUT/cert.pem" -days 2 -extfile "$OUT/ext.cnf" 2>/dev/null
  # The generators trust the CA through the platform store's variable.
  export SSL_CERT_FILE="$OUT/ca.pem"
  SERVER_ARGS=(--tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem" --no-http2 --http3)
  SCHEME=wss
  OTHER_ARGS=(--http3)
fi
HOST=127.0.0.1
[ "$HTTP" = 3 ] && HOST=localhost

start_echo() { # port -> pid
  taskset -c "$SERVER_CPU" "$BIN" echo --listen "127.0.0.1:$1" "${SERVER_ARGS[@]}" > "$OUT/echo.$1.log" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  for _ in $(seq 1 100); do
    grep -q "listening" "$OUT/echo.$1.log" 2>/dev/null && { echo "$pid"; return; }
    sleep 0.05
  done
  echo "[http2] tidewire echo on $1 did not start" >&2
  exit 1
}

field() { # json-file key
  python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print("" if v is None else v)' "$1" "$2"
}

echo "[http2] $BIN; servers on CPU $SERVER_CPU, generators on CPU $LOADGEN_CPU; $ROUNDS rounds of ${DURATION}s"
for size in $SIZES; do
  for round in $(seq 1 "$ROUNDS"); do
    a=$PORT; b=$((PORT + 1)); PORT=$((PORT + 2))
    if [ $((round % 2)) -eq 0 ]; then t=$a; a=$b; b=$t; fi
    pa=$(start_echo "$a"); pb=$(start_echo "$b")
    common=(--conns "$CONNS" --size "$size" --duration "$DURATION" --warmup "$WARMUP" --json)
    taskset -c "$LOADGEN_CPU" "$BIN" bench echo "$SCHEME://$HOST:$a/" "${common[@]}" \
      "${BASE_ARGS[@]}" --server-pid "$pa" > "$OUT/h1.json" 2> "$OUT/h1.err" &
    g1=$!
    taskset -c "$LOADGEN_CPU" "$BIN" bench echo "$SCHEME://$HOST:$b/" "${common[@]}" \
      "${OTHER_ARGS[@]}" --server-pid "$pb" > "$OUT/h2.json" 2> "$OUT/h2.err" &
    g2=$!
    wait "$g1" || { echo "[http2] HTTP/1.1 run failed:"; tail -5 "$OUT/h1.err"; exit 1; }
    wait "$g2" || { echo "[http2] HTTP/$HTTP run failed:"; tail -5 "$OUT/h2.err"; exit 1; }
    kill "$pa" "$pb" 2>/dev/null || true
    wait "$pa" "$pb" 2>/dev/null || true
    for v in h1 h2; do
      echo "echo size=$size round=$round http=$(field "$OUT/$v.json" http) msgs_per_s=$(field "$OUT/$v.json" msgs_per_s) server_cpu_us_per_msg=$(field "$OUT/$v.json" server_cpu_us_per_msg) http2_connections=$(field "$OUT/$v.json" http2_connections)" | tee -a "$OUT/lines"
    done
  done
done

for mode in base other; do
  p=$PORT; PORT=$((PORT + 1))
  pid=$(start_echo "$p")
  if [ "$mode" = base ]; then flags=("${BASE_ARGS[@]}"); http=1.1; else flags=("${OTHER_ARGS[@]}"); http=$HTTP; fi
  taskset -c "$LOADGEN_CPU" "$BIN" bench connections "$SCHEME://$HOST:$p/" --conns "$MEM_CONNS" \
    --hold 2 "${flags[@]}" --server-pid "$pid" --json > "$OUT/mem.json" 2> "$OUT/mem.err" \
    || { echo "[http2] connections run failed:"; tail -5 "$OUT/mem.err"; exit 1; }
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo "memory http=$http held=$(field "$OUT/mem.json" held) kb_per_conn=$(field "$OUT/mem.json" kb_per_conn)" | tee -a "$OUT/lines"
done

python3 - "$OUT/lines" "$HTTP" <<'EOF'
import re, statistics, sys
rows = [dict(kv.split("=", 1) for kv in l.split()[1:]) | {"kind": l.split()[0]} for l in open(sys.argv[1])]
v = sys.argv[2]
print(f"\n[http2] summary (medians; ratio = HTTP/{v} / HTTP/1.1{' over TLS' if v == '3' else ''})")
for size in sorted({r["size"] for r in rows if r["kind"] == "echo"}, key=int):
    def med(http, key):
        v = [float(r[key]) for r in rows if r["kind"] == "echo" and r["size"] == size and r["http"] == http and r[key]]
        return statistics.median(v) if v else float("nan")
    c1, c2 = med("1.1", "server_cpu_us_per_msg"), med(v, "server_cpu_us_per_msg")
    m1, m2 = med("1.1", "msgs_per_s"), med(v, "msgs_per_s")
    print(f"echo {size} B: server CPU per message {c1:.2f} us (1.1) vs {c2:.2f} us ({v}): ratio {c2/c1:.2f}; "
          f"msgs/s {m1:.0f} vs {m2:.0f}")
mem = {r["http"]: float(r["kb_per_conn"]) for r in rows if r["kind"] == "memory" and r["kb_per_conn"]}
if "1.1" in mem and v in mem:
    print(f"idle WebSocket: {mem['1.1']:.2f} KB (1.1) vs {mem[v]:.2f} KB ({v}): ratio {mem[v]/mem['1.1']:.2f}")
EOF
