#!/usr/bin/env bash
# Scale test: how many idle WebSocket connections `tidewire serve` holds on this machine,
# what they cost (server RSS, kernel memory, the generator's memory) and how long they take
# to open. See benches/SCALE.md for what it measured. Everything targets 127.0.0.1 and every
# wait is bounded; every process the script starts is stopped on exit (trap).
#
# One process cannot hold more connections than its open-files limit (RLIMIT_NOFILE: each
# connection is a descriptor); without CAP_SYS_RESOURCE the hard limit cannot be raised.
# So there are two modes:
#
#   MODE=scale (default): TOTAL connections spread over ceil(TOTAL/PER_PROC) pairs of
#     `tidewire serve` (each on its own port: serve has no SO_REUSEPORT) and
#     `tidewire bench connections` (it has the same fd limit). All are held at once for
#     HOLD seconds and sampled: sum of server VmRSS and per connection, generator VmRSS,
#     kernel memory (/proc/meminfo Slab/SUnreclaim, /proc/slabinfo, /proc/net/sockstat
#     before and after), CPU time, time to open them all.
#   MODE=ceiling: one `tidewire serve`, a first generator holding CEILING_HOLDERS
#     connections, a second one asking for enough to pass the fd limit by CEILING_EXCESS.
#     Reports how many the server held, what the excess clients got, what the server
#     logged and its listen queue; then the second generator leaves and a last handshake
#     checks that the server accepts again, while the first generator's connections are
#     checked to have lived through it.
#
# Environment knobs (defaults in brackets):
#   MODE [scale]              scale | ceiling
#   TOTAL [1000000]           connections in all (scale)
#   PER_PROC [19500]          connections per server process (and per generator), under
#                             the open-files hard limit (ulimit -Hn) less a few dozen
#   GEN_SOURCES [TOTAL/25000] source addresses 127.0.0.1..N each generator spreads over
#   URL_PATH [/rooms/lobby]   the endpoint: /rooms/NAME (raw room: every connection joins
#                             the same room) or /ws (tidewire.v1 channels, offered as the
#                             subprotocol; with auth off, as here, no `connect` is needed). Not PATH: that is the shell's.
#   HOLD [30]                 seconds all connections are held once open; sampled at the
#                             end (CPU while idle, connections lost)
#   CONNECT_CONCURRENCY [100] handshakes in flight per generator
#   RAMP_TIMEOUT [900]        seconds allowed for all connections to open
#   MIN_AVAIL_MB [3072]       abort (stop everything) if MemAvailable falls below this
#   MAX_SECONDS [2400]        hard bound on the whole run
#   SERVER_THREADS [1]        serve --threads (1: a process per core-share, less memory)
#   SERVER_ARGS []            extra `tidewire serve` flags
#   SET_SYSCTLS [1]           raise the sysctls below when lower than needed (root only);
#                             they are printed before and after, and left raised
#   JSON [0]                  1 (or --json): one JSON object on stdout, the summary on stderr
#   OUT [target/scale/MODE-DATE]   logs, generator reports, samples
#   TIDEWIRE_BIN [target/release/tidewire]   SKIP_BUILD [0]
#   CEILING_HOLDERS [12000]   ceiling: connections of the first generator
#   CEILING_EXCESS [1000]     ceiling: connections asked for beyond the fd limit
#   CEILING_MAX_CONNECTIONS []  ceiling: serve --max-connections (e.g. 19900: the excess
#                             gets HTTP 503 instead of waiting on the listen queue)
#
# Examples:
#   TOTAL=100000 benches/scale.sh                 # 6 pairs of ~16,667
#   benches/scale.sh --json > scale-1m.json       # 1,000,000 (52 pairs of ~19,231)
#   MODE=ceiling benches/scale.sh
#   MODE=ceiling CEILING_MAX_CONNECTIONS=19900 benches/scale.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
for a in "$@"; do
  case "$a" in
    --json) JSON=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument: $a (knobs are environment variables; see --help)" >&2; exit 2 ;;
  esac
done
MODE=${MODE:-scale}
TOTAL=${TOTAL:-1000000}
PER_PROC=${PER_PROC:-19500}
# Source addresses per generator (127.0.0.1..N). All generators from 127.0.0.1 alone share
# its 28,232 ephemeral ports among 52 destinations, and on the AMD host of 2026-11-24 the
# kernel's connect() port search slowed to ~100 connections/s after ~735,000 (SYNs
# retransmitted, no listen drops). One source per 25,000 connections in all keeps each
# source address under its port range.
GEN_SOURCES=${GEN_SOURCES:-$(( (TOTAL + 24999) / 25000 ))}
URL_PATH=${URL_PATH:-/rooms/lobby}
HOLD=${HOLD:-30}
CONNECT_CONCURRENCY=${CONNECT_CONCURRENCY:-100}
RAMP_TIMEOUT=${RAMP_TIMEOUT:-900}
MIN_AVAIL_MB=${MIN_AVAIL_MB:-3072}
MAX_SECONDS=${MAX_SECONDS:-2400}
SERVER_THREADS=${SERVER_THREADS:-1}
SERVER_ARGS=${SERVER_ARGS:-}
SET_SYSCTLS=${SET_SYSCTLS:-1}
JSON=${JSON:-0}
CEILING_HOLDERS=${CEILING_HOLDERS:-12000}
CEILING_EXCESS=${CEILING_EXCESS:-1000}
CEILING_MAX_CONNECTIONS=${CEILING_MAX_CONNECTIONS:-}
TIDEWIRE_BIN=${TIDEWIRE_BIN:-$ROOT/target/release/tidewire}
OUT=${OUT:-$ROOT/target/scale/$MODE-$(date +%Y%m%d-%H%M%S)}
T_START=$(date +%s)

log() { echo "[scale $(( $(date +%s) - T_START ))s] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ "$MODE" == scale || "$MODE" == ceiling ]] || die "MODE must be scale or ceiling, not $MODE"
[[ "$URL_PATH" == /* ]] || die "URL_PATH must start with /"
for tool in jq curl ss awk; do
  command -v "$tool" >/dev/null || die "$tool is needed (apt-get install $tool)"
done
mkdir -p "$OUT"

# ---------------------------------------------------------------- processes and cleanup
SERVER_PIDS=()
GEN_PIDS=()
# Stops the given pids: SIGNAL first, SIGKILL after GRACE seconds, or at once when
# MemAvailable falls under MIN_AVAIL_MB (closing a million connections politely costs
# memory for a while: close frames in flight, TIME_WAIT). Only our own children.
stop_pids() {
  local sig=$1 grace=$2; shift 2
  local p alive
  for p in "$@"; do kill "-$sig" "$p" 2>/dev/null || true; done
  for ((i = 0; i < grace * 10; i++)); do
    alive=0
    for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    if (( i % 10 == 0 && $(mem_avail_mb) < MIN_AVAIL_MB )); then
      log "MemAvailable $(mem_avail_mb) MB < $MIN_AVAIL_MB MB while stopping: SIGKILL"
      break
    fi
    sleep 0.1
  done
  for p in "$@"; do kill -KILL "$p" 2>/dev/null || true; done
  for p in "$@"; do wait "$p" 2>/dev/null || true; done
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((${#GEN_PIDS[@]})); then stop_pids INT 30 "${GEN_PIDS[@]}"; fi
  if ((${#SERVER_PIDS[@]})); then stop_pids TERM 15 "${SERVER_PIDS[@]}"; fi
  GEN_PIDS=(); SERVER_PIDS=()
  log "stopped every process started; logs in $OUT"
  exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

past_deadline() { (( $(date +%s) - T_START > MAX_SECONDS )); }
mem_avail_mb() { awk '/^MemAvailable:/ {print int($2 / 1024)}' /proc/meminfo; }
# Aborts (cleanup stops everything) when memory runs low or the run is too long.
guard() {
  local a; a=$(mem_avail_mb)
  if ((a < MIN_AVAIL_MB)); then
    die "MemAvailable ${a} MB < MIN_AVAIL_MB ${MIN_AVAIL_MB}: aborting, stopping everything"
  fi
  past_deadline && die "run longer than MAX_SECONDS=$MAX_SECONDS: aborting"
  return 0
}

# ---------------------------------------------------------------- build
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "building tidewire (cargo build --release -p tidewire-cli)"
  cargo build --release -p tidewire-cli -q
fi
[[ -x "$TIDEWIRE_BIN" ]] || die "no $TIDEWIRE_BIN"

# ---------------------------------------------------------------- limits and sysctls
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE_HARD=$(ulimit -Hn)
if [[ "$MODE" == scale ]]; then
  (( PER_PROC + 64 <= NOFILE_HARD )) || die "PER_PROC=$PER_PROC does not fit the open-files hard limit $NOFILE_HARD (each process needs a few dozen descriptors of its own)"
  NPROC=$(( (TOTAL + PER_PROC - 1) / PER_PROC ))
  SOCKETS=$(( 2 * TOTAL ))
else
  NPROC=1
  SOCKETS=$(( 2 * (NOFILE_HARD + CEILING_EXCESS) ))
fi
SYSCTL_JSON='{}'
# need NAME MINIMUM [VALUE_TO_SET]: prints the setting; raises it when lower (root, SET_SYSCTLS=1).
need() {
  local name=$1 min=$2 value=${3:-$2} path cur first after
  path=/proc/sys/${name//.//}
  if [[ ! -r "$path" ]]; then
    log "sysctl $name: not present"
    return 0
  fi
  cur=$(tr -s '\t ' ' ' < "$path")
  first=${cur%% *}
  # A range (ip_local_port_range) is judged by its width.
  [[ "$name" == net.ipv4.ip_local_port_range ]] && first=$(( ${cur##* } - first + 1 ))
  after=$cur
  if (( first < min )); then
    if [[ "$SET_SYSCTLS" == 1 && $EUID == 0 ]] && echo "$value" > "$path" 2>/dev/null; then
      after=$(tr -s '\t ' ' ' < "$path")
      log "sysctl $name: $cur -> $after (needed >= $min)"
    else
      log "WARNING: sysctl $name = $cur, below the $min this run needs (set it: sysctl -w $name=\"$value\")"
    fi
  else
    log "sysctl $name = $cur (needed >= $min)"
  fi
  SYSCTL_JSON=$(jq -c --arg k "$name" --arg before "$cur" --arg after "$after" --arg min "$min" \
    '. + {($k): {before: $before, after: $after, needed: $min}}' <<< "$SYSCTL_JSON")
}
need fs.file-max $(( SOCKETS + 200000 ))
need fs.nr_open $(( PER_PROC + 1024 ))
need fs.epoll.max_user_watches $(( SOCKETS + 100000 ))
need net.ipv4.ip_local_port_range $(( PER_PROC + 1000 )) "1024 65535"
need net.core.somaxconn 4096
need net.ipv4.tcp_max_syn_backlog 4096
for info in net.ipv4.tcp_mem net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_count \
            net.ipv4.tcp_max_orphans net.ipv4.tcp_max_tw_buckets; do
  p=/proc/sys/${info//.//}
  [[ -r "$p" ]] && log "sysctl $info = $(tr -s '\t ' ' ' < "$p") (reported, not changed)"
done
log "open-files limit per process: soft $(ulimit -Sn), hard $NOFILE_HARD (raising the hard limit needs CAP_SYS_RESOURCE)"

# ---------------------------------------------------------------- samples
CLK_TCK=$(getconf CLK_TCK)
# meminfo field in kB
mem_kb() { awk -v k="$1:" '$1 == k {print $2}' /proc/meminfo; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
sum_rss_kb() { local s=0 p; for p in "$@"; do s=$(( s + $(rss_kb "$p") )); done; echo "$s"; }
# CPU seconds (utime + stime) of the given pids, as a decimal.
sum_cpu_s() {
  local t=0 p f
  for p in "$@"; do
    f=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    f=${f##*) }   # the fields after "(comm) "
    read -r -a a <<< "$f"
    t=$(( t + a[11] + a[12] ))
  done
  awk -v t="$t" -v hz="$CLK_TCK" 'BEGIN {printf "%.2f", t / hz}'
}
sockstat_tcp() { awk '$1 == "TCP:" {print $3, $5, $7, $9, $11}' /proc/net/sockstat; }  # inuse orphan tw alloc mem
# slabinfo: name active_objs objsize (root only; empty otherwise)
slab_snapshot() { awk 'NR > 2 {print $1, $2, $4}' /proc/slabinfo 2>/dev/null | sort; }
meminfo_json() {
  jq -n -c --argjson total "$(mem_kb MemTotal)" --argjson avail "$(mem_kb MemAvailable)" \
    --argjson free "$(mem_kb MemFree)" --argjson slab "$(mem_kb Slab)" \
    --argjson srecl "$(mem_kb SReclaimable)" --argjson sunrecl "$(mem_kb SUnreclaim)" \
    --argjson pt "$(mem_kb PageTables)" --argjson ks "$(mem_kb KernelStack)" \
    '{MemTotal: $total, MemAvailable: $avail, MemFree: $free, Slab: $slab,
      SReclaimable: $srecl, SUnreclaim: $sunrecl, PageTables: $pt, KernelStack: $ks}'
}
sockstat_json() {
  read -r inuse orphan tw alloc mem <<< "$(sockstat_tcp)"
  jq -n -c --argjson inuse "$inuse" --argjson orphan "$orphan" --argjson tw "$tw" \
    --argjson alloc "$alloc" --argjson mem "$mem" \
    '{tcp_inuse: $inuse, tcp_orphan: $orphan, tcp_tw: $tw, tcp_alloc: $alloc, tcp_mem_pages: $mem}'
}
# Sum of the hub's open-connections gauge over the given ports (empty when unreachable).
metrics_connections() {
  local s=0 p v
  for p in "$@"; do
    v=$(curl -s --max-time 3 "http://127.0.0.1:$p/metrics" | awk '/^tidewire_connections\{/ {s += $2} END {print s + 0}') || return 0
    [[ -n "$v" ]] || return 0
    s=$(( s + v ))
  done
  echo "$s"
}
fd_count() { local n; n=$(find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l); echo "$n"; }

# ---------------------------------------------------------------- starting processes
# start_server INDEX [EXTRA FLAGS...]: sets SERVER_PORT
start_server() {
  local i=$1; shift
  # shellcheck disable=SC2086
  "$TIDEWIRE_BIN" serve --listen 127.0.0.1:0 --threads "$SERVER_THREADS" --no-demo \
    $SERVER_ARGS "$@" > "$OUT/server-$i.out" 2> "$OUT/server-$i.log" &
  SERVER_PIDS+=($!)
  SERVER_PORT=
  for ((t = 0; t < 100; t++)); do
    SERVER_PORT=$(grep -o -m1 'http://127.0.0.1:[0-9]*' "$OUT/server-$i.out" 2>/dev/null | cut -d: -f3) || true
    [[ -n "$SERVER_PORT" ]] && return 0
    kill -0 "${SERVER_PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  die "server $i did not start: $(tail -3 "$OUT/server-$i.log")"
}
# start_gen NAME PORT SERVER_PID CONNS CONCURRENCY HOLD
start_gen() {
  local name=$1 port=$2 spid=$3 n=$4 cc=$5 hold=$6
  local proto=()
  [[ "$URL_PATH" == /ws* ]] && proto=(--subprotocol tidewire.v1)
  "$TIDEWIRE_BIN" bench connections "ws://127.0.0.1:$port$URL_PATH" --conns "$n" \
    "${proto[@]}" --sources "$GEN_SOURCES" \
    --hold "$hold" --connect-concurrency "$cc" --server-pid "$spid" --json \
    > "$OUT/gen-$name.json" 2> "$OUT/gen-$name.err" &
  GEN_PIDS+=($!)
}
# wait_holding NAME...: until each generator said it holds its connections (its stderr
# line), or one died, or RAMP_TIMEOUT. Logs progress every 10 s.
wait_holding() {
  local t0 n now ready inuse last=0 name pid
  t0=$(date +%s)
  while true; do
    ready=0
    for name in "$@"; do
      if grep -q 'holding' "$OUT/gen-$name.err" 2>/dev/null; then
        ready=$(( ready + 1 ))
      fi
    done
    (( ready == $# )) && return 0
    for pid in "${GEN_PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null || die "a generator ended early: $(cat "$OUT"/gen-*.err | grep -v holding | tail -3)"
    done
    now=$(date +%s)
    (( now - t0 > RAMP_TIMEOUT )) && die "connections not open after RAMP_TIMEOUT=$RAMP_TIMEOUT s ($ready/$# generators ready)"
    guard
    if (( now - last >= 10 )); then
      last=$now
      read -r inuse _ <<< "$(sockstat_tcp)"
      log "opening: $ready/$# generators holding, TCP sockets in use $inuse, MemAvailable $(mem_avail_mb) MB"
    fi
    sleep 0.5
  done
}

# ================================================================ MODE=scale
run_scale() {
  local i n base extra ports=() spids=() names=()
  base=$(( TOTAL / NPROC )); extra=$(( TOTAL % NPROC ))
  log "scale: $TOTAL connections to $URL_PATH over $NPROC servers and $NPROC generators (~$base each), hold $HOLD s"
  log "MemAvailable $(mem_avail_mb) MB; aborts below $MIN_AVAIL_MB MB"

  for ((i = 0; i < NPROC; i++)); do
    start_server "$i"
    ports+=("$SERVER_PORT")
  done
  spids=("${SERVER_PIDS[@]}")
  sleep 1
  # Baseline: servers up, no connection yet.
  local mem0 sock0 rss0 cpu0 slab0 fnr0
  mem0=$(meminfo_json); sock0=$(sockstat_json); slab0=$(slab_snapshot)
  rss0=$(sum_rss_kb "${spids[@]}"); cpu0=$(sum_cpu_s "${spids[@]}")
  fnr0=$(awk '{print $1}' /proc/sys/fs/file-nr)
  log "servers started (ports ${ports[0]}..${ports[-1]}), VmRSS $(( rss0 / 1024 )) MB in all"

  local gen_hold=$(( RAMP_TIMEOUT + HOLD + 120 ))
  local t_open0 t_open1
  t_open0=$(date +%s.%N)
  for ((i = 0; i < NPROC; i++)); do
    n=$(( base + (i < extra ? 1 : 0) ))
    start_gen "$i" "${ports[i]}" "${spids[i]}" "$n" "$CONNECT_CONCURRENCY" "$gen_hold"
    names+=("$i")
  done
  local gpids=("${GEN_PIDS[@]}")
  wait_holding "${names[@]}"
  t_open1=$(date +%s.%N)
  local open_s
  open_s=$(awk -v a="$t_open0" -v b="$t_open1" 'BEGIN {printf "%.1f", b - a}')
  log "all generators hold their connections after $open_s s"

  # Sample 1: just open.
  local rss1 cpu1 gcpu1 mem1
  rss1=$(sum_rss_kb "${spids[@]}"); cpu1=$(sum_cpu_s "${spids[@]}"); gcpu1=$(sum_cpu_s "${gpids[@]}")
  mem1=$(meminfo_json)
  log "open: servers VmRSS $(( rss1 / 1024 )) MB, MemAvailable $(mem_avail_mb) MB; holding $HOLD s"
  local t_hold0 now
  t_hold0=$(date +%s)
  while (( (now = $(date +%s)) - t_hold0 < HOLD )); do guard; sleep 1; done

  # Sample 2: after the hold. Memory, kernel, CPU while idle, the servers' own count.
  local rss2 grss2 cpu2 gcpu2 mem2 sock2 slab2 fnr2 metr
  rss2=$(sum_rss_kb "${spids[@]}"); grss2=$(sum_rss_kb "${gpids[@]}")
  cpu2=$(sum_cpu_s "${spids[@]}"); gcpu2=$(sum_cpu_s "${gpids[@]}")
  mem2=$(meminfo_json); sock2=$(sockstat_json); slab2=$(slab_snapshot)
  fnr2=$(awk '{print $1}' /proc/sys/fs/file-nr)
  metr=$(metrics_connections "${ports[@]}")
  log "sampled after the hold: servers VmRSS $(( rss2 / 1024 )) MB, generators $(( grss2 / 1024 )) MB, hub gauge ${metr:-?} connections"
  join <(echo "$slab0") <(echo "$slab2") \
    | awk '{d = ($4 - $2) * $3; if (d > 1048576 || d < -1048576) printf "%s %d %d\n", $1, $4 - $2, d / 1024}' \
    | sort -k3 -n -r > "$OUT/slab-delta.txt" || true

  # The generators end their hold and report.
  log "ending the hold (SIGINT to the generators: each closes its connections politely)"
  local t_close0 close_s
  t_close0=$(date +%s.%N)
  stop_pids INT 120 "${gpids[@]}"
  GEN_PIDS=()
  close_s=$(awk -v a="$t_close0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
  log "generators done after $close_s s, MemAvailable $(mem_avail_mb) MB"
  jq -s -c '.' "$OUT"/gen-*.json > "$OUT/generators.json" 2>/dev/null || die "a generator report is missing: $(tail -n 2 "$OUT"/gen-*.err)"

  local gsum
  gsum=$(jq -c '{
      reports: length,
      open: (map(.open) | add), held: (map(.held) | add), failed: (map(.failed) | add),
      errors: (map(.errors | to_entries) | add | group_by(.key)
               | map({key: .[0].key, value: (map(.value) | add)}) | from_entries),
      connect_s_max: (map(.connect_s) | max),
      server_kb_per_conn_min: (map(.kb_per_conn) | min), server_kb_per_conn_max: (map(.kb_per_conn) | max),
      generator_kb_per_conn_mean: ((map(.generator_kb_per_conn) | add) / length),
      server_cpu_us_per_connect_mean: ((map(.server_cpu_us_per_connect) | add) / length)
    }' "$OUT/generators.json")
  stop_pids TERM 30 "${SERVER_PIDS[@]}"
  SERVER_PIDS=()

  RESULT=$(jq -n -c \
    --arg mode scale --arg path "$URL_PATH" --argjson total "$TOTAL" --argjson nproc "$NPROC" \
    --argjson per_proc "$PER_PROC" --argjson hold "$HOLD" --argjson cc "$CONNECT_CONCURRENCY" \
    --argjson open_s "$open_s" --argjson close_s "$close_s" --argjson rss0 "$rss0" --argjson rss1 "$rss1" --argjson rss2 "$rss2" \
    --argjson grss2 "$grss2" --argjson cpu0 "$cpu0" --argjson cpu1 "$cpu1" --argjson cpu2 "$cpu2" \
    --argjson gcpu1 "$gcpu1" --argjson gcpu2 "$gcpu2" \
    --argjson mem0 "$mem0" --argjson mem1 "$mem1" --argjson mem2 "$mem2" \
    --argjson sock0 "$sock0" --argjson sock2 "$sock2" --argjson fnr0 "$fnr0" --argjson fnr2 "$fnr2" \
    --argjson gens "$gsum" --arg metr "${metr:-}" --argjson sysctls "$SYSCTL_JSON" \
    --argjson nofile "$NOFILE_HARD" --arg kernel "$(uname -r)" --argjson ncpu "$(nproc)" \
    --rawfile slab "$OUT/slab-delta.txt" '
    ($gens.held) as $held | (if $held > 0 then $held else 1 end) as $h |
    {
      mode: $mode, path: $path, total: $total, processes: $nproc, per_proc: $per_proc,
      hold_s: $hold, connect_concurrency: $cc, kernel: $kernel, cpus: $ncpu,
      nofile_hard: $nofile, sysctls: $sysctls,
      open: $gens.open, held: $held, failed: $gens.failed, errors: $gens.errors,
      hub_gauge_connections: (if $metr == "" then null else ($metr | tonumber) end),
      open_s: $open_s, close_s: $close_s, opens_per_s: (($gens.open / $open_s) | floor),
      server_rss_kb: {before: $rss0, open: $rss1, after_hold: $rss2},
      server_rss_total_mb: (($rss2 / 1024) | floor),
      server_kb_per_conn: ((($rss2 - $rss0) / $h * 100 | round) / 100),
      generator_rss_total_mb: (($grss2 / 1024) | floor),
      generator_kb_per_conn: $gens.generator_kb_per_conn_mean,
      kernel: {
        slab_delta_kb: ($mem2.Slab - $mem0.Slab),
        sunreclaim_delta_kb: ($mem2.SUnreclaim - $mem0.SUnreclaim),
        sreclaimable_delta_kb: ($mem2.SReclaimable - $mem0.SReclaimable),
        pagetables_delta_kb: ($mem2.PageTables - $mem0.PageTables),
        slab_kb_per_socket_pair: ((($mem2.Slab - $mem0.Slab) / $h * 100 | round) / 100),
        sunreclaim_kb_per_socket_pair: ((($mem2.SUnreclaim - $mem0.SUnreclaim) / $h * 100 | round) / 100),
        slab_top_caches_kb: ($slab | split("\n") | map(select(length > 0) | split(" "))
                             | .[:10] | map({(.[0]): (.[2] | tonumber)}) | add)
      },
      memory_used_delta_mb: (((($mem0.MemAvailable - $mem2.MemAvailable)) / 1024) | floor),
      memfree_delta_mb: (((($mem0.MemFree - $mem2.MemFree)) / 1024) | floor),
      accounted_mb: ((($rss2 - $rss0 + $grss2 + ($mem2.Slab - $mem0.Slab) + ($mem2.PageTables - $mem0.PageTables)) / 1024) | floor),
      mem_available_mb: {before: (($mem0.MemAvailable / 1024) | floor), open: (($mem1.MemAvailable / 1024) | floor), after_hold: (($mem2.MemAvailable / 1024) | floor)},
      sockstat_before: $sock0, sockstat_after: $sock2,
      file_nr: {before: $fnr0, after: $fnr2},
      server_cpu_s: {opening: (($cpu1 - $cpu0) * 100 | round / 100), holding: (($cpu2 - $cpu1) * 100 | round / 100)},
      generator_cpu_s: {opening: $gcpu1, holding: (($gcpu2 - $gcpu1) * 100 | round / 100)},
      generators: $gens
    }')
  echo "$RESULT" > "$OUT/result.json"
  {
    echo "== tidewire serve: $(jq -r '.held' <<< "$RESULT") idle connections held at once on $URL_PATH by $NPROC processes"
    jq -r '
      "opened          \(.open) of \(.total) in \(.open_s) s (\(.opens_per_s)/s), \(.failed) failed, held \(.hold_s) s: \(.held) still open at the end; hub gauge \(.hub_gauge_connections)",
      "errors          \(.errors)",
      "server RSS      \(.server_rss_total_mb) MB in all (\(.server_rss_kb.before / 1024 | floor) MB before): \(.server_kb_per_conn) KB per connection (per process: \(.generators.server_kb_per_conn_min)-\(.generators.server_kb_per_conn_max))",
      "generator RSS   \(.generator_rss_total_mb) MB in all, \(.generator_kb_per_conn * 100 | round / 100) KB per connection (growth while opening, mean over the generators)",
      "kernel slab     +\(.kernel.slab_delta_kb / 1024 | floor) MB (SUnreclaim +\(.kernel.sunreclaim_delta_kb / 1024 | floor) MB): \(.kernel.slab_kb_per_socket_pair) KB per connection (2 sockets), \(.kernel.sunreclaim_kb_per_socket_pair) KB unreclaimable",
      "top slab caches \(.kernel.slab_top_caches_kb | to_entries | map("\(.key) \(.value / 1024 | floor) MB") | join(", "))",
      "memory          servers + generators + slab + page tables: +\(.accounted_mb) MB; MemAvailable \(.mem_available_mb.before) -> \(.mem_available_mb.after_hold) MB (it counts reclaimable slab as available)",
      "closing         \(.close_s) s for the generators to close every connection and exit",
      "sockstat TCP    before \(.sockstat_before | tostring), after \(.sockstat_after | tostring)",
      "CPU             servers \(.server_cpu_s.opening) s opening, \(.server_cpu_s.holding) s holding; generators \(.generator_cpu_s.opening) s opening, \(.generator_cpu_s.holding) s holding"
    ' <<< "$RESULT"
  } > "$OUT/summary.txt"
}

# ================================================================ MODE=ceiling
run_ceiling() {
  local flags=() spid port
  [[ -n "$CEILING_MAX_CONNECTIONS" ]] && flags=(--max-connections "$CEILING_MAX_CONNECTIONS")
  start_server 0 "${flags[@]}"
  spid=${SERVER_PIDS[0]}; port=$SERVER_PORT
  local limit fd0 nb
  limit=$(awk '/^Max open files/ {print $5}' "/proc/$spid/limits")
  sleep 0.5
  fd0=$(fd_count "$spid")
  nb=$(( limit - CEILING_HOLDERS + CEILING_EXCESS ))
  (( nb > 0 && nb + 64 <= NOFILE_HARD && CEILING_HOLDERS + 64 <= NOFILE_HARD )) || die "CEILING_HOLDERS=$CEILING_HOLDERS does not leave room for two generators under $NOFILE_HARD"
  log "ceiling: server pid $spid on port $port, open-files limit $limit, $fd0 descriptors before any connection${CEILING_MAX_CONNECTIONS:+, --max-connections $CEILING_MAX_CONNECTIONS}"
  local hold=$(( RAMP_TIMEOUT + 300 ))

  log "generator A: $CEILING_HOLDERS connections"
  start_gen A "$port" "$spid" "$CEILING_HOLDERS" "$CONNECT_CONCURRENCY" "$hold"
  local pa=${GEN_PIDS[-1]}
  wait_holding A
  log "generator B: $nb more connections (total $(( CEILING_HOLDERS + nb )), $CEILING_EXCESS beyond the limit), 500 handshakes at a time"
  local tb0 tb1
  tb0=$(date +%s.%N)
  start_gen B "$port" "$spid" "$nb" 500 "$hold"
  local pb=${GEN_PIDS[-1]}
  wait_holding A B
  tb1=$(date +%s.%N)

  # At the ceiling: the server's descriptors, its listen queue, whether /metrics answers.
  local fd1 lq rss1 metr1 sock1
  fd1=$(fd_count "$spid")
  lq=$(ss -Hltn "sport = :$port" | awk '{print $2 "/" $3}')
  rss1=$(rss_kb "$spid")
  metr1=$(metrics_connections "$port")
  sock1=$(sockstat_json)
  log "at the ceiling: server has $fd1 descriptors (limit $limit), listen queue (waiting/backlog) $lq, /metrics: ${metr1:-no answer within 3 s}"

  log "generator B leaves (SIGINT)"
  stop_pids INT 60 "$pb"
  GEN_PIDS=("$pa")
  # Recovery: a fresh handshake must succeed (the accept loop retries every second).
  local t_rec0 rec ok=false rec_s=null
  t_rec0=$(date +%s.%N)
  for ((t = 0; t < 30; t++)); do
    local proto=()
    [[ "$URL_PATH" == /ws* ]] && proto=(--subprotocol tidewire.v1)
    if rec=$("$TIDEWIRE_BIN" bench connections "ws://127.0.0.1:$port$URL_PATH" "${proto[@]}" --conns 10 --hold 0 --json 2> "$OUT/recover.err"); then
      if [[ $(jq '.open' <<< "$rec") == 10 ]]; then
        ok=true
        rec_s=$(awk -v a="$t_rec0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
        break
      fi
    fi
    sleep 1
  done
  local fd2 metr2
  fd2=$(fd_count "$spid")
  metr2=$(metrics_connections "$port")
  if [[ $ok == true ]]; then
    log "after B left: a new handshake succeeded after $rec_s s; server has $fd2 descriptors, hub gauge ${metr2:-no answer}"
  else
    log "after B left: no new handshake succeeded within 30 tries: $(tail -1 "$OUT/recover.err")"
  fi

  log "generator A ends its hold (SIGINT)"
  stop_pids INT 60 "$pa"
  GEN_PIDS=()
  local logs
  logs=$(grep -v -E 'listening|shutting down|stopped' "$OUT/server-0.log" | sed 's/\x1b\[[0-9;]*m//g' | sort | uniq -c | sort -rn | head -5 || true)
  stop_pids TERM 30 "${SERVER_PIDS[@]}"
  SERVER_PIDS=()

  RESULT=$(jq -n -c --arg mode ceiling --arg path "$URL_PATH" --argjson limit "$limit" \
    --argjson fd0 "$fd0" --argjson fd1 "$fd1" --argjson fd2 "$fd2" --arg lq "$lq" \
    --argjson rss1 "$rss1" --arg metr1 "${metr1:-}" --arg metr2 "${metr2:-}" \
    --argjson ok "$ok" --argjson rec_s "$rec_s" --arg logs "$logs" --argjson sock1 "$sock1" \
    --arg maxc "$CEILING_MAX_CONNECTIONS" --argjson sysctls "$SYSCTL_JSON" \
    --argjson b_s "$(awk -v a="$tb0" -v b="$tb1" 'BEGIN {printf "%.1f", b - a}')" \
    --slurpfile a "$OUT/gen-A.json" --slurpfile b "$OUT/gen-B.json" \
    --slurpfile rec <(echo "${rec:-null}") '
    {
      mode: $mode, path: $path, nofile_limit: $limit, max_connections: (if $maxc == "" then "default (100000)" else ($maxc | tonumber) end),
      server_fds: {idle: $fd0, at_ceiling: $fd1, after_excess_left: $fd2},
      connections_at_ceiling: ($a[0].open + $b[0].open),
      listen_queue_at_ceiling: $lq,
      metrics_at_ceiling: (if $metr1 == "" then "no answer within 3 s" else ($metr1 | tonumber) end),
      server_rss_kb_at_ceiling: $rss1,
      sockstat_at_ceiling: $sock1,
      a: {asked: $a[0].conns, open: $a[0].open, held: $a[0].held, failed: $a[0].failed, errors: $a[0].errors},
      b: {asked: $b[0].conns, open: $b[0].open, failed: $b[0].failed, errors: $b[0].errors, seconds_until_all_settled: $b_s},
      recovered: $ok, recovery_s: $rec_s, recovery_probe: $rec[0],
      gauge_after_recovery: (if $metr2 == "" then null else ($metr2 | tonumber) end),
      server_log: $logs, sysctls: $sysctls
    }')
  echo "$RESULT" > "$OUT/result.json"
  {
    echo "== single-process ceiling of tidewire serve (open-files limit $limit) on $URL_PATH"
    jq -r '
      "held            \(.connections_at_ceiling) connections at once (A \(.a.open) + B \(.b.open)); server descriptors \(.server_fds.idle) idle -> \(.server_fds.at_ceiling) at the ceiling",
      "excess clients  B asked \(.b.asked): \(.b.failed) failed: \(.b.errors) (all settled after \(.b.seconds_until_all_settled) s)",
      "listen queue    \(.listen_queue_at_ceiling) (waiting / backlog) at the ceiling; /metrics: \(.metrics_at_ceiling)",
      "server log      \(if .server_log == "" then "nothing (no line about the failed accepts)" else .server_log end)",
      "recovery        after B left: new handshake \(if .recovered then "succeeded after \(.recovery_s) s" else "FAILED" end); gauge \(.gauge_after_recovery); descriptors \(.server_fds.after_excess_left)",
      "holders         A held \(.a.held) of \(.a.open) through it (errors \(.a.errors))",
      "server RSS      \(.server_rss_kb_at_ceiling / 1024 | floor) MB at the ceiling"
    ' <<< "$RESULT"
  } > "$OUT/summary.txt"
}

if [[ "$MODE" == scale ]]; then run_scale; else run_ceiling; fi
if [[ "$JSON" == 1 ]]; then
  cat "$OUT/summary.txt" >&2
  echo "$RESULT"
else
  cat "$OUT/summary.txt"
fi
