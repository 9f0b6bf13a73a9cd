#!/usr/bin/env bash
# Cross-check benches/peers loadgen against an independent generator (Node.js + ws) on the
# same server, same closed-loop shape, same cores. Also cross-checks loadgen's server-CPU
# reading (schedstat, window only) against /proc/PID/stat utime+stime read by this script
# around the whole loadgen process. 127.0.0.1 only; every run is bounded in time.
#   env: DURATION [5] CASES ["raw-tcp:100:20 raw-tcp:10:1024 tokio-websockets:100:20 tokio-websockets:10:1024 fastwebsockets:10:16384"]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT/benches"
DURATION=${DURATION:-5}
CASES=${CASES:-"raw-tcp:100:20 raw-tcp:10:1024 tokio-websockets:100:20 tokio-websockets:10:1024 fastwebsockets:10:16384"}
BIN=$ROOT/benches/peers/target/release
[[ -x $BIN/loadgen ]] || (cd peers && cargo build --release --locked -q)
[[ -d crosscheck/node_modules/ws ]] || (cd crosscheck && npm ci --no-audit --no-fund -q)
PORT=19600
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }   # utime+stime, clock ticks (USER_HZ)
HZ=$(getconf CLK_TCK)

echo "| server | conns | size | generator | msgs/s | p50 µs | p99 µs | generator CPU % | server CPU µs/msg (loadgen, schedstat) | server CPU µs/msg (this script, /proc/PID/stat) |"
echo "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"
for c in $CASES; do
  IFS=: read -r srv conns size <<<"$c"
  case $srv in raw-tcp) exe=echo-raw; raw=--raw ;; tokio-tungstenite) exe=echo-tungstenite; raw= ;; *) exe=echo-$srv; raw= ;; esac
  for gen in loadgen node-ws; do
    PORT=$((PORT + 1))
    taskset -c 0 "$BIN/$exe" --listen 127.0.0.1:$PORT 2>/dev/null &
    pid=$!
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done
    t0=$(ticks $pid)
    if [[ $gen == loadgen ]]; then
      j=$(timeout $((DURATION + 60)) taskset -c 1 "$BIN/loadgen" --url ws://127.0.0.1:$PORT $raw --conns "$conns" --size "$size" \
          --duration "$DURATION" --warmup 0 --server-pid $pid --json)
    else
      j=$(timeout $((DURATION + 60)) taskset -c 1 node crosscheck/node-loadgen.mjs --url ws://127.0.0.1:$PORT $raw --conns "$conns" \
          --size "$size" --duration "$DURATION" --warmup 0)
    fi
    t1=$(ticks $pid)
    kill $pid; wait $pid 2>/dev/null || true
    msgs=$(jq .msgs <<<"$j")
    ext=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v m="$msgs" 'BEGIN{ if (m>0) printf "%.2f", d/hz*1e6/m; else print "—" }')
    echo "| $srv | $conns | $size | $gen | $(jq '.msgs_per_s|floor' <<<"$j") | $(jq .lat_us.p50 <<<"$j") | $(jq .lat_us.p99 <<<"$j") \
| $(jq '((.loadgen_cpu_util // .client_cpu_util)*100|floor)' <<<"$j") | $(jq '.server_cpu_us_per_msg // "—"' <<<"$j") | $ext (whole run) |"
  done
done
