#!/usr/bin/env bash
# Soak run of the hub (issue 15): one `tidewire serve` (release build) and
# `tidewire bench soak` against it for SOAK_SECONDS of mixed traffic (client sessions that
# subscribe, resume with `since`, read slowly or not at all, leave by a close or an abrupt
# kill; publications through POST /api/publish). The bench prints the server's RSS and
# open descriptors every SOAK_INTERVAL seconds and fails when a publication was lost or
# duplicated, a resume was not recovered, or RSS / descriptors grew past their bounds
# after the warm-up. Everything targets 127.0.0.1 and is bounded in time; the server is
# stopped on exit.
#
# Usage: benches/soak.sh [--no-build]
# Environment (defaults in brackets):
#   SOAK_SECONDS [3600]       length of the run (CI: 300)
#   SOAK_INTERVAL [60]        seconds between samples (CI: 30)
#   SOAK_WARMUP [300]         seconds before the samples are judged: the channels' history
#                             must be full by then (history_size / publications per second
#                             per channel: 400 / 5 = 80 s here)
#   SOAK_CLIENTS [200]        client slots
#   SOAK_MAX_RSS_GROWTH [32]  MiB the server's RSS may grow after the warm-up
#   SOAK_MAX_FD_GROWTH [64]   descriptors it may gain after the warm-up (client slots come
#                             and go: at most SOAK_CLIENTS + a few are open at once)
#   SOAK_PORT [0]             the server's port; 0: one the system picks (read from its log)
#   SOAK_OUT [benches/results/soak-DATE]  where the logs and the JSON report go
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

build=1
for a in "$@"; do
  case $a in
    --no-build) build=0 ;;
    -h|--help) awk 'NR > 1 && /^#/ {sub(/^# ?/, ""); print; next} NR > 1 {exit}' "$0"; exit 0 ;;
    *) echo "soak.sh: unknown option $a (see --help)" >&2; exit 2 ;;
  esac
done

seconds=${SOAK_SECONDS:-3600}
interval=${SOAK_INTERVAL:-60}
warmup=${SOAK_WARMUP:-300}
clients=${SOAK_CLIENTS:-200}
max_rss=${SOAK_MAX_RSS_GROWTH:-32}
max_fd=${SOAK_MAX_FD_GROWTH:-64}
port=${SOAK_PORT:-0}
out=${SOAK_OUT:-$root/benches/results/soak-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$out"

target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
bin="$target_dir/release/tidewire"
if ((build)); then
  cargo build --release -p tidewire-cli
fi
[[ -x $bin ]] || { echo "soak.sh: $bin not found (build it, or drop --no-build)" >&2; exit 2; }

# History long enough for the longest absence (a slow reader stays up to 30 s; 400
# publications at 5 per second per channel are 80 s), publications of 8 KB so that slow
# readers overflow the kernel's buffers and the hub's 256 KiB send buffer.
cat >"$out/soak.toml" <<'EOF'
[namespaces.soak]
history_size = 400
history_ttl = "5m"
presence = true
publish = true
EOF
key="soak-api-key-$RANDOM$RANDOM"

server_pid=
cleanup() {
  if [[ -n $server_pid ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT

"$bin" serve --listen "127.0.0.1:$port" --no-demo --config "$out/soak.toml" \
  --send-buffer 262144 --api-key "$key" >"$out/serve.log" 2>&1 &
server_pid=$!
# The port it listens on, from its first line ("... listening on http://127.0.0.1:PORT/ ...");
# a server that exits (a port in use, a bad flag) ends the run with its reason.
alive() { [[ -e /proc/$server_pid ]] && ! grep -q '^State:.*Z' "/proc/$server_pid/status" 2>/dev/null; }
listening=
for _ in $(seq 100); do
  listening=$(grep -o 'listening on http://127\.0\.0\.1:[0-9]*' "$out/serve.log" | head -n 1 || true)
  [[ -n $listening ]] && break
  alive || break
  sleep 0.1
done
if [[ -z $listening ]]; then
  echo "soak.sh: the server did not start; its log:" >&2
  cat "$out/serve.log" >&2
  exit 1
fi
port=${listening##*:}

echo "soak: $seconds s, samples every $interval s, judged after $warmup s; logs in $out"
rc=0
timeout --kill-after=10 $((seconds + 120)) \
  "$bin" bench soak "ws://127.0.0.1:$port/ws" --prefix "soak:$RANDOM-" \
  --duration "$seconds" --interval "$interval" --warmup "$warmup" \
  --clients "$clients" --channels 20 --rate 100 --payload 8000 --slow 0.1 \
  --api-key "$key" --server-pid "$server_pid" --history-size 400 \
  --max-rss-growth "$max_rss" --max-fd-growth "$max_fd" --json \
  >"$out/report.json" 2> >(tee "$out/samples.log" >&2) || rc=$?
[[ -s $out/report.json ]] && python3 - "$out/report.json" <<'PY' || true
import json, sys
r = json.load(open(sys.argv[1]))
print("minute  RSS MiB  fds  open  sessions  published  received")
for s in r.get("samples", []):
    print(f'{s["at_s"] / 60:6.1f}  {s["rss_kb"] / 1024:7.1f}  {s["fds"]:3}  {s["open"]:4}  '
          f'{s["sessions"]:8}  {s["published"]:9}  {s["received"]:8}')
keys = ["sessions", "abrupt_kills", "slow_sessions", "closed_by_server", "resumes",
        "published", "received", "gaps", "duplicates", "unrecovered", "beyond_history",
        "rss_after_warmup_kb", "rss_max_kb", "rss_growth_mib", "fds_after_warmup", "fds_max",
        "failures"]
print({k: r.get(k) for k in keys})
PY
if ! alive; then
  echo "soak.sh: the server died during the run; last lines of its log:" >&2
  tail -n 20 "$out/serve.log" >&2
  rc=1
fi
exit "$rc"
